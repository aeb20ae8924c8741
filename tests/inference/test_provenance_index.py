"""The near-duplicate index: a pasted passage finds the stored sample it was cut from."""

from __future__ import annotations

import io
import random

import pytest
from django.core.management import call_command

from inference import services
from inference.models import GenerationJob, Sample, SampleFingerprint
from inference.selectors import sample_matches
from inference.services import JobParams
from inference.shingles import fingerprints, fingerprints_many

pytestmark = pytest.mark.django_db

MODEL_CARD = (
    "The released checkpoint was trained on a filtered crawl of outbound links and evaluated on "
    "reading comprehension, translation and summarisation benchmarks before the staged release began. "
    "Partners who hold a signed agreement may generate samples for research into detection, bias and "
    "misuse, and must report any finding that bears on the safety of a wider release within thirty days. "
    "Each sample carries the identifier of the job that produced it, so a researcher who later quotes a "
    "passage in a paper can show which agreement covered the generation and which checkpoint wrote it, "
    "together with the sampling temperature, the seed and the exact prompt that was used at the time."
)
WEATHER = (
    "A cold front moving in from the northwest will bring heavy rain to the coast overnight, with gusts "
    "strong enough to bring down branches along the ridge road. Farmers in the valley have been told to "
    "move livestock to higher ground, and the ferry timetable for Saturday morning is already reduced."
)
# Human prose on the same subject that shares common phrases, but no passage, with the model card.
UNRELATED = (
    "Which agreement covered the work is a question the review board asks of every research project, and "
    "the answer is kept with the data. The board reads each paper before it is published and may ask the "
    "authors to report any finding that bears on the people who took part, within a few weeks of the "
    "request, together with the consent forms and the exact questions that were used at the time."
)


def _store(user, checkpoint, texts: list[str]) -> list[Sample]:
    """Samples stored the way the worker stores them: one job completed through the service."""
    params = JobParams(
        prompt="Write a model card", max_new_tokens=200, temperature=0.8, top_k=0, top_p=1.0,
        num_samples=len(texts), seed=1,
    )  # fmt: skip
    job = services.job_submit(actor=user, checkpoint=checkpoint, params=params)
    [claimed] = services.jobs_claim(job_id=job.pk, worker="w1", device="cpu", rows=32)
    result = services.JobResult(
        job=claimed, samples=[(i, text, 150) for i, text in enumerate(texts)], prompt_tokens=4,
        cancelled=False, batch_size=1, timings={},
    )  # fmt: skip
    assert services.jobs_complete(results=[result], worker="w1", device="cpu")
    return list(Sample.objects.filter(job=job).order_by("index"))


def _as_pasted(text: str, *, start: int, words: int, replace_every: int, seed: int = 7) -> str:
    """A cut of the text as someone might paste it: re-cased, re-spaced, punctuated, a word in ten changed."""
    rng = random.Random(seed)
    cut = text.split()[start : start + words]
    for i in range(replace_every // 2, len(cut), replace_every):
        cut[i] = rng.choice(["zebra", "quietly", "orange", "seventeen", "lantern"])
    cut = [w.upper() if i % 3 == 0 else w for i, w in enumerate(cut)]
    return "  ...".join(" ".join(cut[i : i + 6]) + "\n" for i in range(0, len(cut), 6))


def test_a_cut_respaced_recased_and_edited_passage_finds_its_sample_first(researcher_a, active, gpt2):
    card, _ = _store(researcher_a, gpt2, [MODEL_CARD, WEATHER])
    pasted = _as_pasted(MODEL_CARD, start=20, words=45, replace_every=10)
    assert pasted.split() != MODEL_CARD.split()[20:65]

    matches = sample_matches(text=pasted)

    assert [m.sample_id for m in matches] == [card.pk]
    [match] = matches
    assert match.shared >= 3 and 0.2 <= match.overlap <= 1 and match.query == len(fingerprints(pasted))


def test_an_unrelated_human_passage_finds_nothing(researcher_a, active, gpt2):
    _store(researcher_a, gpt2, [MODEL_CARD, WEATHER])
    assert sample_matches(text=UNRELATED) == []


def test_a_passage_too_short_to_judge_finds_nothing(researcher_a, active, gpt2):
    _store(researcher_a, gpt2, [MODEL_CARD])
    assert sample_matches(text="Partners who hold a signed agreement") == []


def test_completing_a_job_indexes_its_samples(researcher_a, active, gpt2):
    card, weather = _store(researcher_a, gpt2, [MODEL_CARD, WEATHER])
    for sample, text in ((card, MODEL_CARD), (weather, WEATHER)):
        stored = sorted(SampleFingerprint.objects.filter(sample=sample).values_list("hash", flat=True))
        assert stored == fingerprints(text) and len(stored) > 20
    assert GenerationJob.objects.get(pk=card.job_id).status == GenerationJob.Status.SUCCEEDED


def test_reindexing_adds_samples_stored_before_the_index_and_is_safe_to_repeat(researcher_a, active, gpt2):
    card, _ = _store(researcher_a, gpt2, [MODEL_CARD, WEATHER])
    expected = len(fingerprints(MODEL_CARD)) + len(fingerprints(WEATHER))
    SampleFingerprint.objects.filter(sample=card).delete()  # as if stored before the index existed

    first, second = io.StringIO(), io.StringIO()
    call_command("provenance_reindex", "--batch-size", "1", stdout=first)
    call_command("provenance_reindex", stdout=second)

    assert SampleFingerprint.objects.count() == expected
    assert (
        f"Indexed 2 samples: {expected} fingerprints, {len(fingerprints(MODEL_CARD))} of them new" in first.getvalue()
    )
    assert f"{expected} fingerprints, 0 of them new" in second.getvalue()
    assert [m.sample_id for m in sample_matches(text=MODEL_CARD)] == [card.pk]


def test_deleting_a_job_removes_its_fingerprints(researcher_a, active, gpt2):
    [card] = _store(researcher_a, gpt2, [MODEL_CARD])
    GenerationJob.objects.filter(pk=card.job_id).delete()
    assert not SampleFingerprint.objects.exists()


@pytest.mark.django_db(False)
def test_spacing_case_and_punctuation_do_not_change_fingerprints():
    plain = "the checkpoint was trained on a filtered crawl of outbound links and evaluated"
    assert fingerprints(plain) == fingerprints(
        "The  CHECKPOINT\twas trained -- on a filtered crawl; of outbound links, and EVALUATED!"
    )
    assert fingerprints(plain) != fingerprints(plain.replace("crawl", "scrape"))


@pytest.mark.django_db(False)
def test_fingerprints_are_stable_across_processes_and_fit_a_signed_bigint():
    # Stored fingerprints must mean the same thing on every machine and after every restart.
    assert fingerprints("The partner shall label every sample it publishes.") == [-7391088899083791150]
    values = fingerprints(MODEL_CARD + " " + WEATHER)
    assert all(-(2**63) <= v < 2**63 for v in values) and any(v < 0 for v in values)


@pytest.mark.django_db(False)
def test_the_bulk_path_gives_exactly_the_per_text_fingerprints():
    rng = random.Random(3)
    vocabulary = (MODEL_CARD + " " + WEATHER + " Straße ÉCOLE ﬁnance naïve 42 x_y").split()
    texts = ["", "one two three", "Repeat repeat repeat repeat repeat repeat repeat", MODEL_CARD, UNRELATED]
    texts += [" ".join(rng.choices(vocabulary, k=rng.randrange(0, 80))) for _ in range(200)]

    positions, hashes = fingerprints_many(texts)

    per_text: list[tuple[int, int]] = [(i, h) for i, text in enumerate(texts) for h in fingerprints(text)]
    assert list(zip(positions.tolist(), hashes.tolist(), strict=True)) == per_text
    assert len(per_text) > 1000
