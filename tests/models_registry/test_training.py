"""The English corpus the demo checkpoints learn from, and the brief training itself."""

from __future__ import annotations

import json

import pytest

from models_registry.training import CorpusSplit, corpus_split, corpus_text, held_out_passages
from models_registry.weights import TRAINING_FILE, build_demo_checkpoint, read_training_report


def test_the_corpus_is_over_a_megabyte_and_the_same_on_every_build():
    assert len(corpus_text().encode("utf-8")) >= 1_000_000
    rebuilt = corpus_split.__wrapped__()  # bypass the cache: assemble it again from the files
    assert rebuilt == corpus_split()


def test_held_out_passages_are_about_one_in_twenty_and_never_in_the_training_part():
    split = corpus_split()
    passages = held_out_passages()
    assert passages == list(split.held_out)
    assert 0.04 < len(passages) / (len(split.train) + len(passages)) < 0.06
    training = split.train_text
    leaked = [p[:60] for p in passages if p in training]
    assert leaked == []
    # Long enough to measure a watermark detector's false positives on.
    assert min(len(p) for p in passages) >= 400


@pytest.fixture(scope="module")
def small_split() -> CorpusSplit:
    """A tenth of the corpus, so a tokenizer and a few steps of training take about a second."""
    split = corpus_split()
    return CorpusSplit(train=split.train[::10], held_out=split.held_out[::2])


def build(folder, split: CorpusSplit, train_steps: int):
    return build_demo_checkpoint(
        folder,
        n_layer=1,
        n_embd=32,
        n_head=2,
        seed=7,
        corpus=split.train_text,
        train_steps=train_steps,
        split=split,
    )


def test_brief_training_beats_the_uniform_guess_and_repeats_byte_for_byte(tmp_path, small_split):
    first = build(tmp_path / "a", small_split, train_steps=200)
    report = read_training_report(tmp_path / "a")
    assert report is not None
    assert report["steps"] == 200
    assert report["uniform_perplexity"] == 2000
    assert report["validation_perplexity"] < 2000 / 4, "far better than guessing uniformly"

    second = build(tmp_path / "b", small_split, train_steps=200)
    assert second.sha256 == first.sha256
    report_b = json.loads((tmp_path / "b" / TRAINING_FILE).read_text())
    assert report_b["validation_perplexity"] == report["validation_perplexity"]


def test_untrained_demo_checkpoints_stay_random_and_record_no_training(tmp_path, small_split):
    random_weights = build(tmp_path / "random", small_split, train_steps=0)
    trained = build(tmp_path / "trained", small_split, train_steps=5)
    assert read_training_report(tmp_path / "random") is None
    assert not (tmp_path / "random" / TRAINING_FILE).exists()
    assert random_weights.sha256 != trained.sha256
