"""The generation engine on tiny demo checkpoints, on the CPU (no Django needed)."""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path

import pytest
import torch

from inference import engine
from inference.engine import (
    GenerationOOM,
    GenerationRequest,
    ModelCache,
    SamplingParams,
    count_prompt_tokens,
    generate,
)
from models_registry.weights import DEMO_CORPUS_PATH, DEMO_SHAPES, build_demo_checkpoint

GREEDY = SamplingParams(max_new_tokens=12, temperature=0)
SEEDED = SamplingParams(max_new_tokens=16, temperature=0.9, top_k=40, top_p=0.9, num_samples=2, seed=1234)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three same-sized checkpoints with different weights, for the cache tests."""
    root = tmp_path_factory.mktemp("checkpoints")
    shape = DEMO_SHAPES["gpt2"]
    corpus = DEMO_CORPUS_PATH.read_text(encoding="utf-8")
    for seed in (1, 2, 3):
        build_demo_checkpoint(
            root / f"seed{seed}",
            n_layer=shape.n_layer,
            n_embd=shape.n_embd,
            n_head=shape.n_head,
            seed=seed,
            corpus=corpus,
        )
    return [root / f"seed{seed}" for seed in (1, 2, 3)]


@pytest.fixture(scope="session")
def folder(checkpoints: list[Path]) -> Path:
    return checkpoints[0]


@pytest.fixture(scope="session")
def cache() -> ModelCache:
    return ModelCache()


def run(folder: Path, cache: ModelCache, *requests: GenerationRequest, **kwargs: object) -> dict:
    return {result.key: result for result in generate(folder, list(requests), device="cpu", cache=cache, **kwargs)}


def test_greedy_generation_is_deterministic(folder: Path, cache: ModelCache) -> None:
    request = GenerationRequest("job", "The Partner may", GREEDY)
    first = run(folder, cache, request)["job"]
    second = run(folder, cache, request)["job"]
    assert first.samples == second.samples
    assert first.samples[0].text
    assert not first.cancelled


def test_a_seeded_job_gives_the_same_samples_alone_and_batched(folder: Path, cache: ModelCache) -> None:
    seeded = GenerationRequest("seeded", "Each amendment names the agreement it changes", SEEDED)
    greedy = GenerationRequest("greedy", "The Partner may", GREEDY)
    others = [
        GenerationRequest("empty", "", SamplingParams(max_new_tokens=5, temperature=1.3, seed=9)),
        GenerationRequest("long", "Signed for the Lab " * 12, SamplingParams(max_new_tokens=30, temperature=0.7)),
        GenerationRequest("nucleus", "Term", SamplingParams(max_new_tokens=8, top_p=0.5, num_samples=3, seed=5)),
    ]
    batched = run(folder, cache, others[0], seeded, others[1], greedy, others[2])
    assert run(folder, cache, seeded)["seeded"].samples == batched["seeded"].samples
    assert run(folder, cache, greedy)["greedy"].samples == batched["greedy"].samples
    assert run(folder, cache, others[0])["empty"].samples == batched["empty"].samples


def test_seeds_change_samples_and_samples_of_one_job_differ(folder: Path, cache: ModelCache) -> None:
    prompt = "Each amendment names the agreement it changes"
    one = run(folder, cache, GenerationRequest("a", prompt, SEEDED))["a"]
    other_seed = SamplingParams(max_new_tokens=16, temperature=0.9, top_k=40, top_p=0.9, num_samples=2, seed=99)
    two = run(folder, cache, GenerationRequest("b", prompt, other_seed))["b"]
    assert one.samples[0].text != one.samples[1].text
    assert [s.text for s in one.samples] != [s.text for s in two.samples]


def test_top_k_of_one_and_a_tiny_top_p_sample_the_greedy_text(folder: Path, cache: ModelCache) -> None:
    prompt = "The Partner will not"
    greedy = run(folder, cache, GenerationRequest("g", prompt, GREEDY))["g"].samples[0].text
    filtered = run(
        folder,
        cache,
        GenerationRequest("k", prompt, SamplingParams(max_new_tokens=12, temperature=1.5, top_k=1, seed=1)),
        GenerationRequest("p", prompt, SamplingParams(max_new_tokens=12, temperature=0.8, top_p=1e-4, seed=2)),
    )
    assert filtered["k"].samples[0].text == filtered["p"].samples[0].text == greedy


def test_max_new_tokens_and_num_samples_are_respected(folder: Path, cache: ModelCache) -> None:
    params = SamplingParams(max_new_tokens=7, temperature=1.0, num_samples=3, seed=3)
    result = run(folder, cache, GenerationRequest("job", "Quota", params), GenerationRequest("g", "Quota", GREEDY))
    job = result["job"]
    assert [sample.index for sample in job.samples] == [0, 1, 2]
    assert all(0 < sample.token_count <= 7 for sample in job.samples)
    assert job.new_tokens == sum(sample.token_count for sample in job.samples)
    assert result["g"].samples[0].token_count <= GREEDY.max_new_tokens


def test_prompt_tokens_are_counted_the_same_way_everywhere(folder: Path, cache: ModelCache) -> None:
    prompt = "The Lab keeps a record of every request."
    result = run(folder, cache, GenerationRequest("job", prompt, GREEDY))["job"]
    assert result.prompt_tokens == count_prompt_tokens(folder, prompt) > 1
    assert count_prompt_tokens(folder, "") == 1, "an empty prompt starts from <|endoftext|>"


def test_a_sample_ends_at_end_of_text(checkpoints: list[Path]) -> None:
    private = ModelCache()
    loaded = private.get(checkpoints[0], "cpu")
    prompt_ids = loaded.tokenizer("The Partner may")["input_ids"]
    with torch.inference_mode():
        first = int(loaded.model(torch.tensor([prompt_ids])).logits[0, -1].argmax())
    loaded.eos_token_id = first  # make the greedy continuation's first token the end of text
    result = run(checkpoints[0], private, GenerationRequest("job", "The Partner may", GREEDY))["job"]
    assert result.samples[0].token_count == 0
    assert result.samples[0].text == ""


def test_cancelling_stops_within_a_few_steps_and_keeps_partial_tokens(folder: Path, cache: ModelCache) -> None:
    polls = 0

    def should_cancel() -> set[Hashable]:
        nonlocal polls
        polls += 1
        return {"cancelled"} if polls > 5 else set()

    long = SamplingParams(max_new_tokens=200, temperature=0)
    result = run(
        folder,
        cache,
        GenerationRequest("cancelled", "Termination", long),
        GenerationRequest("kept", "Termination", SamplingParams(max_new_tokens=20, temperature=0)),
        should_cancel=should_cancel,
    )
    assert result["cancelled"].cancelled
    # Five polls let the prefill's token and five steps' through.
    assert 0 < result["cancelled"].new_tokens <= 6
    assert result["cancelled"].samples[0].text
    assert not result["kept"].cancelled
    assert 5 < result["kept"].new_tokens <= 20, "the other job in the batch runs on"
    assert polls < 30, "the batch ends once the remaining job is done"


def test_progress_is_reported_per_job(folder: Path, cache: ModelCache) -> None:
    reports: list[dict[Hashable, int]] = []
    results = run(
        folder,
        cache,
        GenerationRequest("a", "Publication", SamplingParams(max_new_tokens=10, temperature=0)),
        GenerationRequest("b", "Security", SamplingParams(max_new_tokens=4, temperature=1.0, num_samples=2, seed=1)),
        on_progress=reports.append,
        progress_interval_s=0,
    )
    assert reports and all(set(report) == {"a", "b"} for report in reports)
    assert [r["a"] for r in reports] == sorted(r["a"] for r in reports)
    assert reports[-1] == {key: result.new_tokens for key, result in results.items()}

    throttled: list[dict[Hashable, int]] = []
    run(folder, cache, GenerationRequest("a", "Publication", GREEDY), on_progress=throttled.append)
    assert throttled == [], "a fast job reports nothing within the first half second"


def test_out_of_memory_raises_generation_oom_and_the_engine_recovers(
    folder: Path, cache: ModelCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail_on_third_step(step: int) -> None:
        if step == 2:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    monkeypatch.setattr(engine, "_fault_injector", fail_on_third_step)
    requests = [GenerationRequest("a", "Liability", SEEDED), GenerationRequest("b", "Notices", GREEDY)]
    with pytest.raises(GenerationOOM) as excinfo:
        generate(folder, requests, device="cpu", cache=cache)
    assert excinfo.value.rows == 3

    monkeypatch.setattr(engine, "_fault_injector", None)
    assert len(generate(folder, requests[:1], device="cpu", cache=cache)[0].samples) == 2


def test_a_prompt_too_long_for_the_context_is_refused(folder: Path, cache: ModelCache) -> None:
    params = SamplingParams(max_new_tokens=512, temperature=0)
    with pytest.raises(ValueError, match="exceed the context of 1024"):
        run(folder, cache, GenerationRequest("job", "agreement " * 600, params))


def test_the_cache_evicts_the_least_recently_used_model(checkpoints: list[Path]) -> None:
    a, b, c = checkpoints
    one_model = ModelCache().get(a, "cpu").nbytes
    lru = ModelCache(max_bytes=int(one_model * 2.5))
    first_a = lru.get(a, "cpu")
    lru.get(b, "cpu")
    assert lru.get(a, "cpu") is first_a, "a cached model is reused, not reloaded"
    lru.get(c, "cpu")
    assert [Path(folder).name for folder, _ in lru.cached_keys()] == ["seed1", "seed3"]
    assert lru.total_bytes <= lru.max_bytes

    lru.clear()
    assert lru.cached_keys() == [] and lru.total_bytes == 0


def test_loading_a_checkpoint_writes_no_progress_bar(folder: Path, capfd: pytest.CaptureFixture[str]) -> None:
    # A worker logs whatever reaches stderr as a warning: a bar per model load filled its log.
    capfd.readouterr()
    run(folder, ModelCache(), GenerationRequest("job", "The Partner may", GREEDY))
    assert "Loading weights" not in capfd.readouterr().err


# --- Continuous batching --------------------------------------------------------------------------------

MIXED = [
    GenerationRequest("seeded", "Each amendment names the agreement it changes", SEEDED),
    GenerationRequest("greedy", "The Partner may", GREEDY),
    GenerationRequest("short", "Term", SamplingParams(max_new_tokens=3, temperature=0.8, seed=4)),
    GenerationRequest("long", "Signed for the Lab " * 12, SamplingParams(max_new_tokens=30, temperature=0.7, seed=8)),
    GenerationRequest("nucleus", "Notices", SamplingParams(max_new_tokens=9, top_p=0.5, num_samples=3, seed=5)),
]


def _alone(folder: Path, cache: ModelCache) -> dict[Hashable, list]:
    return {r.key: run(folder, cache, r)[r.key].samples for r in MIXED}


def _drain(batch: engine.RunningBatch, into: dict[Hashable, engine.RequestResult]) -> None:
    while batch:
        into.update((result.key, result) for result in batch.step())


def test_requests_joining_mid_flight_give_the_same_samples_as_alone(folder: Path, cache: ModelCache) -> None:
    alone = _alone(folder, cache)
    batch = engine.RunningBatch(cache.get(folder, "cpu"))
    results: dict[Hashable, engine.RequestResult] = {}
    results.update((r.key, r) for r in batch.add(MIXED[:2]))
    for joining in MIXED[2:]:  # each joins after a few steps, into a cache of a different width
        for _ in range(4):
            results.update((r.key, r) for r in batch.step())
        results.update((r.key, r) for r in batch.add([joining]))
    _drain(batch, results)
    assert {key: result.samples for key, result in results.items()} == alone
    assert not any(result.cancelled for result in results.values())


def test_finished_rows_leave_the_batch_and_its_cache(folder: Path, cache: ModelCache) -> None:
    batch = engine.RunningBatch(cache.get(folder, "cpu"))
    short = GenerationRequest("short", "Signed for the Lab " * 20, SamplingParams(max_new_tokens=2, temperature=0))
    batch.add([short, GenerationRequest("kept", "Term", GREEDY)])
    assert len(batch.rows) == 2 and batch._mask.shape[1] > 60  # the long prompt sets the width
    finished = batch.step()
    assert [r.key for r in finished] == ["short"] and finished[0].samples[0].token_count == 2
    assert len(batch.rows) == 1 and len(batch) == 1
    # The padding the long prompt forced on the short one is gone with it.
    assert batch._cache is not None
    assert batch._mask.shape[1] == batch._mask.sum() == batch._cache.layers[0].keys.shape[-2] == 2


def test_a_row_limit_lets_waiting_requests_join_as_rows_free_up(folder: Path, cache: ModelCache) -> None:
    alone = _alone(folder, cache)
    results = generate(folder, MIXED, device="cpu", cache=cache, max_rows=3)
    assert {r.key: r.samples for r in results} == alone
    batch = engine.RunningBatch(cache.get(folder, "cpu"), max_rows=3)
    assert batch.room == 3
    batch.add(MIXED[:2])  # 2 + 1 rows
    assert batch.room == 0 and len(batch.rows) == 3


def test_longest_first_starts_the_longest_waiting_requests_and_changes_no_output(
    folder: Path, cache: ModelCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    alone = _alone(folder, cache)
    joined: list[list[Hashable]] = []
    add = engine.RunningBatch.add

    def recording_add(batch: engine.RunningBatch, requests: list[GenerationRequest]) -> list:
        joined.append([r.key for r in requests])
        return add(batch, requests)

    monkeypatch.setattr(engine.RunningBatch, "add", recording_add)
    results = generate(folder, MIXED, device="cpu", cache=cache, max_rows=3, longest_first=True)
    assert [r.key for r in results] == [r.key for r in MIXED]  # results still in request order
    assert {r.key: r.samples for r in results} == alone
    # 30 new tokens, then 16 (2 rows) fill the 3 rows; arrival order would have started "seeded", "greedy".
    assert joined[0] == ["long", "seeded"]
    assert sorted(key for keys in joined for key in keys) == sorted(r.key for r in MIXED)


def test_a_prompt_filling_the_context_joins_a_running_batch(folder: Path, cache: ModelCache) -> None:
    loaded = cache.get(folder, "cpu")
    words = "agreement " * 2000
    ids = loaded.tokenizer(words, add_special_tokens=False)["input_ids"][: loaded.n_positions - 4]
    prompt = loaded.tokenizer.decode(ids)
    assert count_prompt_tokens(folder, prompt) == loaded.n_positions - 4
    full = GenerationRequest("full", prompt, SamplingParams(max_new_tokens=4, temperature=0))
    alone = run(folder, cache, full)["full"].samples
    expected = _alone(folder, cache)["long"]

    batch = engine.RunningBatch(loaded)
    results: dict[Hashable, engine.RequestResult] = {}
    batch.add([MIXED[3]])
    for _ in range(5):
        batch.step()
    batch.add([full])
    _drain(batch, results)
    assert results["full"].samples == alone and results["long"].samples == expected
    over = GenerationRequest("over", prompt, SamplingParams(max_new_tokens=5, temperature=0))
    assert "exceed the context of 1024" in (batch.refusal(over) or "")


def test_cancelling_a_request_that_just_joined_keeps_the_others_exact(folder: Path, cache: ModelCache) -> None:
    alone = _alone(folder, cache)
    batch = engine.RunningBatch(cache.get(folder, "cpu"))
    batch.add([MIXED[0]])
    batch.step()
    batch.add([MIXED[3]])
    [cancelled] = batch.cancel({"long", "unknown"})
    assert cancelled.cancelled and cancelled.key == "long" and cancelled.new_tokens == 1
    results: dict[Hashable, engine.RequestResult] = {}
    _drain(batch, results)
    assert results["seeded"].samples == alone["seeded"]


def test_an_out_of_memory_step_leaves_the_batch_as_it_was(
    folder: Path, cache: ModelCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    alone = _alone(folder, cache)
    batch = engine.RunningBatch(cache.get(folder, "cpu"))
    batch.add(MIXED[:4])
    failed = False

    def fail_once(step: int) -> None:
        nonlocal failed
        if step == 3 and not failed:
            failed = True
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    monkeypatch.setattr(engine, "_fault_injector", fail_once)
    results: dict[Hashable, engine.RequestResult] = {}
    for _ in range(3):
        results.update((r.key, r) for r in batch.step())
    with pytest.raises(GenerationOOM):
        batch.step()
    # Halving: the newest requests leave unfinished, to be run again later with the same seeds.
    shed = batch.shed(2)
    assert [r.key for r in shed] == ["greedy", "long"] and len(batch.rows) == 2  # "short" ended at step 3
    _drain(batch, results)
    for request in shed:
        results.update((r.key, r) for r in generate(folder, [request], device="cpu", cache=cache))
    assert {key: r.samples for key, r in results.items()} == {r.key: alone[r.key] for r in MIXED[:4]}


def test_evicting_the_model_mid_batch_changes_nothing(checkpoints: list[Path]) -> None:
    private = ModelCache()
    alone = {r.key: run(checkpoints[0], private, r)[r.key].samples for r in MIXED[:2]}
    batch = engine.RunningBatch(private.get(checkpoints[0], "cpu"))
    batch.add(MIXED[:2])
    batch.step()
    private.clear()  # another checkpoint needed the memory
    private.get(checkpoints[1], "cpu")
    results: dict[Hashable, engine.RequestResult] = {}
    _drain(batch, results)
    assert {key: r.samples for key, r in results.items()} == alone
