"""The static decode path (preallocated KV pool, fixed-shape steps) gives what the dynamic path gives.

On the CPU, with tiny demo checkpoints: the static path is the GPU default, and here a batch asks
for it with `static=True`. The CUDA graphs themselves need a GPU (bench/gpu.py exercises them);
the torch.compile'd steps run here.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterator
from pathlib import Path

import pytest
import torch

from inference import engine, static_decode
from inference.engine import (
    GenerationOOM,
    GenerationRequest,
    LoadedModel,
    ModelCache,
    RequestResult,
    RunningBatch,
    SampleResult,
    SamplingParams,
)
from inference.static_decode import StaticDecoder
from models_registry.weights import DEMO_CORPUS_PATH, DEMO_SHAPES, build_demo_checkpoint

Schedule = dict[int, list[GenerationRequest]]


def greedy(max_new_tokens: int, num_samples: int = 1) -> SamplingParams:
    return SamplingParams(max_new_tokens=max_new_tokens, temperature=0, num_samples=num_samples)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    # Steps of a tiny model are all overhead: a second thread only contends on a shared machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The largest demo shape: five heads of 32, six blocks, so the pool has some depth to it.
    shape = DEMO_SHAPES["gpt2-xl"]
    path = tmp_path_factory.mktemp("static") / "demo"
    build_demo_checkpoint(
        path,
        n_layer=shape.n_layer,
        n_embd=shape.n_embd,
        n_head=shape.n_head,
        seed=7,
        corpus=DEMO_CORPUS_PATH.read_text(encoding="utf-8"),
    )
    return path


@pytest.fixture
def loaded(folder: Path) -> LoadedModel:
    """A model of its own per test, so each test's static decoder starts fresh."""
    return ModelCache().get(folder, "cpu")


def drive(
    loaded: LoadedModel,
    schedule: Schedule,
    *,
    static: bool,
    max_rows: int = 0,
    cancel: dict[int, set[Hashable]] | None = None,
) -> dict[Hashable, RequestResult]:
    """Run a batch where `schedule[n]` joins before step n and `cancel[n]` stops before it."""
    batch = RunningBatch(loaded, max_rows=max_rows, static=static)
    results: dict[Hashable, RequestResult] = {}
    step = 0
    while step <= max(schedule) or batch:
        finished = batch.add(schedule.get(step, []))
        finished += batch.cancel((cancel or {}).get(step, set()))
        finished += batch.step()
        results.update((result.key, result) for result in finished)
        step += 1
    return results


def samples(results: dict[Hashable, RequestResult]) -> dict[Hashable, list[SampleResult]]:
    return {key: result.samples for key, result in results.items()}


def assert_same(loaded: LoadedModel, schedule: Schedule, **kwargs: object) -> dict[Hashable, RequestResult]:
    dynamic = drive(loaded, schedule, static=False, **kwargs)  # type: ignore[arg-type]
    assert loaded.static is None, "the dynamic path makes no static pool"
    static = drive(loaded, schedule, static=True, **kwargs)  # type: ignore[arg-type]
    assert loaded.static is not None and loaded.static.shapes, "the batch decoded through the static pool"
    assert samples(static) == samples(dynamic)
    assert {k: (r.prompt_tokens, r.new_tokens, r.cancelled) for k, r in static.items()} == {
        k: (r.prompt_tokens, r.new_tokens, r.cancelled) for k, r in dynamic.items()
    }
    assert all(sample.token_count for result in static.values() for sample in result.samples)
    return static


def test_greedy_rows_of_different_prompt_lengths_match_the_dynamic_path(loaded: LoadedModel) -> None:
    schedule = {
        0: [
            GenerationRequest("short", "Term", greedy(20)),
            GenerationRequest("medium", "The Partner may publish findings after review", greedy(12)),
            GenerationRequest("long", "Each amendment names the agreement it changes. " * 6, greedy(25)),
            GenerationRequest("empty", "", greedy(8, num_samples=2)),
        ]
    }
    assert_same(loaded, schedule)


def test_requests_joining_mid_flight_and_rows_leaving_match_the_dynamic_path(loaded: LoadedModel) -> None:
    schedule = {
        0: [GenerationRequest("a", "Liability", greedy(30)), GenerationRequest("b", "Notices", greedy(4))],
        3: [GenerationRequest("c", "Signed for the Lab " * 8, greedy(10))],
        7: [GenerationRequest("d", "Security of the weights", greedy(12, num_samples=3))],
        9: [GenerationRequest("e", "Publication", greedy(6))],
    }
    results = assert_same(loaded, schedule, cancel={14: {"a"}})
    assert results["a"].cancelled and 0 < results["a"].new_tokens < 30


def test_seeded_sampling_matches_the_dynamic_path(loaded: LoadedModel) -> None:
    seeded = SamplingParams(max_new_tokens=16, temperature=0.9, top_k=40, top_p=0.9, num_samples=2, seed=1234)
    schedule = {
        0: [
            GenerationRequest("seeded", "Each amendment names the agreement it changes", seeded),
            GenerationRequest("hot", "Quota", SamplingParams(max_new_tokens=9, temperature=1.3, seed=9)),
        ],
        4: [GenerationRequest("nucleus", "Term", SamplingParams(max_new_tokens=8, top_p=0.5, num_samples=3, seed=5))],
    }
    assert_same(loaded, schedule)


def test_a_prompt_that_nearly_fills_the_context_shifts_the_pool_and_matches(loaded: LoadedModel) -> None:
    filler = "agreement " * 2000
    ids = loaded.tokenizer(filler, add_special_tokens=False)["input_ids"][:1000]
    long_prompt = loaded.tokenizer.decode(ids)
    length = len(loaded.tokenizer(long_prompt, add_special_tokens=False)["input_ids"])
    assert 990 <= length <= loaded.n_positions - 20
    schedule = {
        0: [GenerationRequest("early", "The Partner may", greedy(60))],
        # Joins at column ~10 with ~1000 tokens: everything shifts right to make room; when it
        # leaves near the end of the context, the early row is compacted back to column 0.
        5: [GenerationRequest("long", long_prompt, greedy(loaded.n_positions - length))],
    }
    assert_same(loaded, schedule)
    decoder = loaded.static
    assert decoder is not None
    assert decoder.shifts >= 2
    assert {window for _, window in decoder.shapes} >= {64, loaded.n_positions}


def test_the_bucket_follows_the_rows_down_and_up_and_matches(loaded: LoadedModel) -> None:
    schedule = {
        0: [GenerationRequest(f"r{n}", f"Clause {n} of the agreement", greedy(3 + 3 * n)) for n in range(7)],
        # Row n ends after step 3n + 1: at two rows left (r5, r6) they move down to slots 0 and 1,
        # and the bucket drops from 8 to 2; r6 alone stays in slot 1; two more rows make it 4.
        18: [GenerationRequest("late", "Termination", greedy(10, num_samples=2))],
    }
    assert_same(loaded, schedule, max_rows=8)
    decoder = loaded.static
    assert decoder is not None and decoder.rows == 8
    assert {bucket for bucket, _ in decoder.shapes} == {2, 4, 8}


def test_rows_beyond_the_pool_carry_on_in_the_dynamic_cache(loaded: LoadedModel) -> None:
    loaded.static = StaticDecoder(loaded.model, rows=2, compile=False)
    schedule = {
        0: [GenerationRequest("a", "Liability", greedy(20)), GenerationRequest("b", "Notices", greedy(15))],
        4: [GenerationRequest("c", "Quota", greedy(10))],  # a third row: no slot left
    }
    dynamic = drive(loaded, schedule, static=False)
    assert samples(drive(loaded, schedule, static=True)) == samples(dynamic)
    assert loaded.static.shapes == [(2, 64)], "the first steps ran static"


def test_a_second_batch_on_the_same_model_decodes_dynamically(loaded: LoadedModel) -> None:
    request = GenerationRequest("a", "The Partner may", greedy(10))
    first = RunningBatch(loaded, static=True)
    first.add([request])
    assert loaded.static is not None
    second = RunningBatch(loaded, static=True)
    second.add([GenerationRequest("b", "The Partner may", greedy(10))])
    for _ in range(3):
        first.step()
        second.step()
    assert loaded.static.shapes == [(1, 64)]
    assert loaded.static.rows == engine.DEFAULT_STATIC_ROWS
    assert first.progress()["a"] == second.progress()["b"] == 4


def test_out_of_memory_in_a_static_step_leaves_the_batch_as_before(
    loaded: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    schedule = {
        0: [GenerationRequest("a", "Liability", greedy(12)), GenerationRequest("b", "Notices", greedy(8, 2))],
        2: [GenerationRequest("c", "Quota", greedy(6))],
    }
    expected = samples(drive(loaded, schedule, static=False))

    failures = 0

    def fail_twice(step: int) -> None:
        nonlocal failures
        if step == 4 and failures < 2:
            failures += 1
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    monkeypatch.setattr(engine, "_fault_injector", fail_twice)
    batch = RunningBatch(loaded, static=True)
    results: dict[Hashable, RequestResult] = {}
    step = 0
    while step <= max(schedule) or batch:
        results.update((r.key, r) for r in batch.add(schedule.get(step, [])))
        try:
            results.update((r.key, r) for r in batch.step())
        except GenerationOOM as exc:
            assert exc.rows == 4
            continue  # the same step again
        step += 1
    assert failures == 2
    assert samples(results) == expected


def test_compiled_static_steps_match_the_dynamic_path(loaded: LoadedModel) -> None:
    # Slot 1 (b) outlives slot 0 (a), and c joins into slot 0: every step is the one compiled shape.
    schedule = {
        0: [GenerationRequest("a", "Liability", greedy(4)), GenerationRequest("b", "Notices", greedy(14))],
        5: [GenerationRequest("c", "Signed for the Lab", greedy(8))],
    }
    expected = samples(drive(loaded, schedule, static=False))
    loaded.static = StaticDecoder(loaded.model, rows=2, compile=True)
    # Inductor on a CPU takes some 20 s per shape here, hence only one.
    if loaded.static.warm(buckets=[2], windows=[64]) == 0:  # pragma: no cover - depends on the machine
        pytest.skip("torch.compile failed on this machine's CPU (the warning says why); the eager steps are tested")
    assert samples(drive(loaded, schedule, static=True)) == expected
    assert loaded.static.shapes == [(2, 64)] and not loaded.static.eager_steps


def test_a_step_that_fails_to_compile_runs_eagerly_with_one_warning(
    loaded: LoadedModel, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_compile(*args: object, **kwargs: object) -> object:
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(static_decode.torch, "compile", broken_compile)
    schedule = {0: [GenerationRequest("a", "Liability", greedy(10)), GenerationRequest("b", "Notices", greedy(4))]}
    expected = samples(drive(loaded, schedule, static=False))
    loaded.static = StaticDecoder(loaded.model, rows=4, compile=True)
    with caplog.at_level(logging.WARNING, logger="inference.static_decode"):
        assert samples(drive(loaded, schedule, static=True)) == expected
    assert loaded.static.eager_steps == {(1, 64), (2, 64)}
    warnings = [r for r in caplog.records if "could not be compiled" in r.getMessage()]
    assert len(warnings) == 1 and "no compiler here" in warnings[0].getMessage()


def test_warm_makes_the_static_decoder_a_worker_starts_with(folder: Path) -> None:
    cache = ModelCache()
    loaded = engine.warm(folder, "cpu", rows=5, cache=cache, compile=False)
    assert cache.get(folder, "cpu") is loaded
    assert loaded.static is not None and loaded.static.rows == 8 and not loaded.static.compile
    assert engine.warm(folder, "cpu", rows=8, cache=cache, compile=False).static is loaded.static, "kept"
    result = engine.generate(folder, [GenerationRequest("job", "Term", greedy(5))], device="cpu", cache=cache)
    assert result[0].new_tokens == 5
    assert loaded.static.shapes == [], "on the CPU, generate() keeps to the dynamic path"


def test_the_static_pool_counts_in_the_model_cache_budget(folder: Path, tmp_path: Path) -> None:
    """A GPU worker keeps several checkpoints: each one's KV pool must count, or they overfill the device."""
    small = tmp_path / "small"
    shape = DEMO_SHAPES["gpt2"]
    corpus = DEMO_CORPUS_PATH.read_text(encoding="utf-8")
    build_demo_checkpoint(small, n_layer=shape.n_layer, n_embd=shape.n_embd, n_head=shape.n_head, seed=3, corpus=corpus)
    probe = ModelCache()
    weights = probe.get(folder, "cpu").nbytes
    pool = StaticDecoder.pool_bytes(probe.get(folder, "cpu").model, 4)
    small_weights = probe.get(small, "cpu").nbytes
    # Room for both models' weights, not for the large one's pool on top.
    cache = ModelCache(max_bytes=weights + small_weights + pool - 1)
    cache.get(small, "cpu")
    loaded = cache.get(folder, "cpu")
    assert cache.total_bytes == weights + small_weights, "both fit while neither has a pool"

    schedule = {0: [GenerationRequest("a", "Liability", greedy(6))]}
    expected = samples(drive(loaded, schedule, static=False))
    assert samples(drive(loaded, schedule, static=True, max_rows=4)) == expected
    assert loaded.static is not None and loaded.static.rows == 4
    actual = sum(t.numel() * t.element_size() for t in (*loaded.static.keys, *loaded.static.values))
    assert loaded.static.nbytes == actual, "the pool's size as counted is what it allocated"
    assert loaded.total_bytes == weights + actual
    assert cache.cached_keys() == [(str(folder.resolve()), "cpu")], "the idle model made room for the pool"
    assert cache.total_bytes == weights + actual


def test_no_room_for_the_static_pool_decodes_on_the_dynamic_cache(
    folder: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cache = ModelCache()
    loaded = cache.get(folder, "cpu")

    class NoRoom(StaticDecoder):
        def __init__(self, *args: object, **kwargs: object) -> None:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    schedule = {0: [GenerationRequest("a", "Liability", greedy(8)), GenerationRequest("b", "Notices", greedy(3))]}
    expected = samples(drive(loaded, schedule, static=False))
    monkeypatch.setattr(engine, "StaticDecoder", NoRoom)
    with caplog.at_level(logging.WARNING, logger="inference.engine"):
        assert samples(drive(loaded, schedule, static=True)) == expected, "the batch ran, dynamically"
        assert samples(drive(loaded, schedule, static=True)) == expected, "and so does the next one"
        # A GPU worker warms its checkpoint before every batch: that asks for the pool again.
        assert engine.warm(folder, "cpu", rows=4, cache=cache, compile=False) is loaded
    assert loaded.static is None and loaded.total_bytes == loaded.nbytes
    warnings = [r.getMessage() for r in caplog.records if "static KV pool" in r.getMessage()]
    assert len(warnings) == 1 and "decoding on the dynamic cache" in warnings[0], "one warning, not one per batch"
