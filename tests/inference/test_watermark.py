"""The green-list watermark: what the engine writes, the detector finds, and human text does not trip."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Hashable
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from inference import engine
from inference.engine import GenerationRequest, ModelCache, SamplingParams, generate
from inference.watermark import GAMMA, Score, Verdict, WatermarkKey, mix32, score, verdict
from models_registry.weights import DEMO_CORPUS_PATH

KEY = WatermarkKey.from_secret("lab watermark key for tests")
OTHER_KEY = WatermarkKey.from_secret("some other lab's key")
SAMPLED = SamplingParams(max_new_tokens=100, temperature=0.9, top_p=0.9, seed=11)


@pytest.fixture(scope="module")
def folder(demo_weights: dict[str, Path]) -> Path:
    return demo_weights["gpt2"]


@pytest.fixture(scope="module")
def cache() -> ModelCache:
    return ModelCache()


def run(folder: Path, cache: ModelCache, *requests: GenerationRequest, **kwargs: object) -> dict:
    return {r.key: r for r in generate(folder, list(requests), device="cpu", cache=cache, **kwargs)}


def test_the_engine_hash_matches_the_detector_hash_bit_for_bit() -> None:
    values = [0, 1, 2**31 - 1, 2**31, 2**32 - 1, *random.Random(4).sample(range(2**32), 2000)]
    assert engine.mix32_tensor(torch.tensor(values)).tolist() == [mix32(v) for v in values]
    previous = torch.tensor([0, 7, 50_256, 1999])
    mask = engine.green_mask(KEY, previous, 3000)
    expected = [[KEY.is_green(p, t) for t in range(3000)] for p in previous.tolist()]
    assert mask.tolist() == expected


def test_a_quarter_of_the_vocabulary_is_green_and_it_depends_on_key_and_previous_token() -> None:
    pairs = [(p, t) for p in range(40) for t in range(1000)]
    fraction = sum(KEY.is_green(p, t) for p, t in pairs) / len(pairs)
    assert abs(fraction - GAMMA) < 0.01
    assert [KEY.is_green(1, t) for t in range(200)] != [KEY.is_green(2, t) for t in range(200)]
    assert [KEY.is_green(1, t) for t in range(200)] != [OTHER_KEY.is_green(1, t) for t in range(200)]


def test_green_lists_after_different_tokens_are_unrelated() -> None:
    # Two lists overlapping as much as independent draws would (gamma squared): knowing the green
    # list after one token tells nothing about the list after another.
    tokens = range(4000)
    lists = [[KEY.is_green(p, t) for t in tokens] for p in random.Random(9).sample(range(50_257), 12)]
    for a, b in itertools.pairwise(lists):
        both = sum(x and y for x, y in zip(a, b, strict=True)) / len(tokens)
        assert abs(both - GAMMA**2) < 0.02


def test_the_key_id_names_the_key_without_revealing_it() -> None:
    assert KEY.key_id == WatermarkKey.from_secret("lab watermark key for tests").key_id
    assert KEY.key_id != OTHER_KEY.key_id
    assert "lab" not in KEY.key_id and len(KEY.key_id) == 12
    with pytest.raises(ValueError):
        WatermarkKey.from_secret("")


def test_sampled_text_is_detected_with_its_key_and_not_with_another(folder: Path, cache: ModelCache) -> None:
    result = run(folder, cache, GenerationRequest("job", "The Partner may", SAMPLED), watermark=KEY)["job"]
    sample = result.samples[0]
    assert sample.watermarked
    found = verdict([score(sample.token_ids, KEY)])
    assert found.outcome == Verdict.WATERMARKED
    assert found.best.z_score > 6
    assert verdict([score(sample.token_ids, OTHER_KEY)]).outcome == Verdict.NOT_WATERMARKED


def test_without_a_key_and_for_greedy_rows_nothing_is_watermarked(folder: Path, cache: ModelCache) -> None:
    plain = run(folder, cache, GenerationRequest("job", "The Partner may", SAMPLED))["job"].samples[0]
    assert not plain.watermarked
    assert verdict([score(plain.token_ids, KEY)]).outcome == Verdict.NOT_WATERMARKED

    greedy = SamplingParams(max_new_tokens=40, temperature=0)
    marked = run(folder, cache, GenerationRequest("g", "The Partner may", greedy), watermark=KEY)["g"]
    unmarked = run(folder, cache, GenerationRequest("g", "The Partner may", greedy))["g"]
    # Greedy decoding cannot carry a watermark: its text is exactly what it is without one.
    assert marked.samples == unmarked.samples
    assert not marked.samples[0].watermarked


def test_a_seeded_job_gives_the_same_watermarked_samples_alone_batched_and_joining(
    folder: Path, cache: ModelCache
) -> None:
    requests = [
        GenerationRequest("a", "Each amendment names the agreement it changes", SAMPLED),
        GenerationRequest("b", "The Partner may", SamplingParams(max_new_tokens=30, temperature=0.7, seed=3)),
        GenerationRequest("c", "Term", SamplingParams(max_new_tokens=20, top_k=40, num_samples=2, seed=8)),
        GenerationRequest("greedy", "Signed", SamplingParams(max_new_tokens=10, temperature=0)),
    ]
    alone = {r.key: run(folder, cache, r, watermark=KEY)[r.key].samples for r in requests}
    batched = run(folder, cache, *requests, watermark=KEY)
    assert {key: r.samples for key, r in batched.items()} == alone

    batch = engine.RunningBatch(cache.get(folder, "cpu"), watermark=KEY)
    results: dict[Hashable, engine.RequestResult] = {r.key: r for r in batch.add(requests[:1])}
    for joining in requests[1:]:
        for _ in range(3):
            results.update((r.key, r) for r in batch.step())
        results.update((r.key, r) for r in batch.add([joining]))
    while batch:
        results.update((r.key, r) for r in batch.step())
    assert {key: r.samples for key, r in results.items()} == alone

    # The watermark is really applied: the same seed without it samples other tokens.
    unmarked = run(folder, cache, requests[0])["a"].samples
    assert unmarked != alone["a"]


def test_human_text_is_not_flagged_and_repetition_is_too_short_to_tell(folder: Path) -> None:
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    ids = tokenizer.encode(DEMO_CORPUS_PATH.read_text(encoding="utf-8")).ids
    passages = [ids[start : start + 100] for start in range(0, len(ids) - 100, 100)]
    assert len(passages) >= 20
    flagged = [p for p in passages if verdict([score(p, KEY)]).outcome == Verdict.WATERMARKED]
    assert not flagged

    repeated = tokenizer.encode("the " * 500).ids
    assert verdict([score(repeated, KEY)]).outcome == Verdict.TOO_SHORT
    assert verdict([score([], KEY)]).outcome == Verdict.TOO_SHORT


def test_trying_several_keys_raises_the_bar_for_each() -> None:
    # A borderline score against one key passes alone, not when it is the best of many tries.
    alone = verdict([_score(z=4.2)])
    assert alone.outcome == Verdict.WATERMARKED
    many = verdict([_score(z=4.2)] + [_score(z=0.0)] * 9)
    assert many.outcome == Verdict.NOT_WATERMARKED
    assert many.p_value == pytest.approx(alone.p_value * 10)


def _score(*, z: float) -> Score:
    return Score("k", 100, 0, z, 0.5 * math.erfc(z / math.sqrt(2)))
