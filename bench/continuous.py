"""Continuous batching benchmark: even against mixed job lengths, five ways of decoding them.

Django-free. Builds a random GPT-2 with the 124M body (12 layers x 768, 12 heads, 1024 positions;
demo vocabulary from a locally trained tokenizer) in a temporary folder, then runs 16 greedy jobs
two ways: (a) every job asks for 64 new tokens, (b) the jobs ask for 8..128 new tokens (a fixed
list). Each workload goes through five implementations:

- `engine`: inference.engine's continuous batching (`generate(..., max_rows=8, longest_first=True)`,
  as the worker's running batch decodes and takes queued jobs): all 16 queued at once, at most 8
  rows decoding, the longest waiting job joining at the step a row ends;
- `engine_arrival`: the same, waiting jobs joining in arrival order (first come, first served);
- `engine_static`: inference.engine.generate in batches of 8, each run until its longest job ends
  (the worker before continuous batching);
- `hf_generate`: transformers `model.generate()` in batches of 8, left padded, each batch run to
  its longest job and the shorter rows truncated afterwards;
- `hf_continuous`: transformers continuous batching, at most 8 requests per forward pass.
  `model.generate_batch()` takes one max_new_tokens for all its inputs, so the even workload goes
  through it and the mixed one through the manager it wraps, one `add_request` per job.

It prints one JSON object: useful tokens/s (the tokens each job asked for and got, never padding
or a truncated row's extra steps) per implementation and workload, mixed/even per implementation,
and whether the greedy tokens are identical across the five, with every mismatch listed. It also
times the engine's decode step at 1..8 rows and works out the best mixed/even a continuous batcher
could reach with those step costs and free joins, taking jobs first come (`fifo_bound`) or longest
first (`longest_first_bound`): on a CPU a step of few rows is not proportionally cheaper, so a
first-come batcher pays for the mixed workload's tail of few rows, and one that starts the long
jobs first does not. It then times the engine's prefill of each group of prompts such a batcher
takes in together (all 8 at the start, then as rows free up) and adds those to each bound
(`with_prefills`): the prompts must be read whoever schedules them, and one prompt at a time reads
them less efficiently than eight.

    .venv/bin/python bench/continuous.py [--threads 1] [--budget-s 300]

Target for the engine: mixed/even throughput at least 0.85, identical greedy outputs.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(_ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != _ROOT / "bench"]

import argparse  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from bench._common import emit, machine_info, quiet_transformers, stdout_to_stderr  # noqa: E402

TARGET_RATIO = 0.85
JOBS = 16
BATCH = 8
EVEN_TOKENS = 64
# 8, 16, ... 128 in a fixed shuffled order, so each batch of 8 holds short and long jobs alike
# (sorted, one batch would get all the short jobs and static batching would look better than it is).
MIXED_TOKENS = [128, 8, 96, 40, 64, 16, 120, 32, 72, 24, 112, 56, 88, 48, 104, 80]
IMPLEMENTATIONS = ("engine", "engine_arrival", "engine_static", "hf_generate", "hf_continuous")
# Continuous batching's paged KV cache: 64-token pages, enough for every job at once (a job needs
# at most 3 pages: prompt under 20 tokens plus 128 new ones), sized here because on a CPU transformers
# cannot infer it from free GPU memory.
CB_PAGE_SIZE = 64
CB_NUM_BLOCKS = 64
CB_MAX_BATCH_TOKENS = 256


def _prompts(corpus: str, count: int) -> list[str]:
    """Different prompts of different lengths (3 to 3 + count words), as in bench/batching.py."""
    words = corpus.split()
    return [" ".join(words[n * 11 : n * 11 + 3 + n]) for n in range(count)]


def _forbid_eos(folder: Path, eos: int) -> None:
    """Rewrite the random weights so eos is never the argmax, hence every job runs to its own limit.

    A random model can pick eos at any step, and the engine always stops there. Instead of turning
    eos stopping off in three different ways, dimension 0 of the final hidden state is made a
    constant 100 (ln_f weight 0, bias 100) and only eos reads it in the (tied) output embedding,
    with -100: its logit sits near -1e4 while the others keep their random values. The same
    checkpoint goes to every implementation, so the comparison stays exact.
    """
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    tensors = load_file(path)
    tensors["transformer.ln_f.weight"][0] = 0.0
    tensors["transformer.ln_f.bias"][0] = 100.0
    for name in ("transformer.wte.weight", "lm_head.weight"):
        if name in tensors:
            tensors[name][:, 0] = 0.0
            tensors[name][eos, 0] = -100.0
    save_file(tensors, path, metadata={"format": "pt"})
    path.chmod(0o644)


def _run_engine(engine, folder, prompts, limits, cache, *, continuous: bool, longest_first: bool = False) -> list:
    requests = [
        engine.GenerationRequest(n, prompt, engine.SamplingParams(max_new_tokens=limits[n], temperature=0))
        for n, prompt in enumerate(prompts)
    ]
    if continuous:  # all queued at once, at most BATCH rows decoding, a waiting job joining as a row ends
        results = engine.generate(
            folder, requests, device="cpu", cache=cache, max_rows=BATCH, longest_first=longest_first
        )
    else:  # batches of BATCH, each run until its longest job ends
        results = []
        for start in range(0, len(requests), BATCH):
            results += engine.generate(folder, requests[start : start + BATCH], device="cpu", cache=cache)
    return [list(result.samples[0].token_ids) for result in results]


def _run_hf_generate(model, prompt_ids, limits, eos: int) -> list[list[int]]:
    """Left padded as the engine pads, position ids from the mask; the batch runs to its longest job."""
    import torch
    from transformers import GenerationConfig

    from inference import engine

    outputs: list[list[int]] = []
    for start in range(0, len(prompt_ids), BATCH):
        rows = prompt_ids[start : start + BATCH]
        row_limits = limits[start : start + BATCH]
        input_ids, mask = engine.left_padded(rows, pad=eos)
        width = input_ids.shape[1]
        config = GenerationConfig(
            do_sample=False, max_new_tokens=max(row_limits), eos_token_id=eos, pad_token_id=eos, bos_token_id=eos
        )
        with torch.inference_mode():
            out = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config)
        for i, limit in enumerate(row_limits):
            outputs.append(out[i, width : width + limit].tolist())
    return outputs


def _cb_configs(eos: int, max_new_tokens: int):
    from transformers import ContinuousBatchingConfig, GenerationConfig

    generation = GenerationConfig(
        do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=eos, bos_token_id=eos
    )
    batching = ContinuousBatchingConfig(
        page_size=CB_PAGE_SIZE,
        num_blocks=CB_NUM_BLOCKS,
        max_batch_tokens=CB_MAX_BATCH_TOKENS,
        max_requests_per_batch=BATCH,  # as many rows per forward pass as the other two get
        allow_block_sharing=False,  # the prompts share no prefix
    )
    return generation, batching


def _run_hf_continuous(model, prompt_ids, limits, eos: int) -> list[list[int]]:
    """generate_batch() when every job asks the same; otherwise its manager, one request per job."""
    from transformers.generation.continuous_batching.utils import WorkloadHints

    generation, batching = _cb_configs(eos, max(limits))
    if len(set(limits)) == 1:
        results = model.generate_batch(
            inputs=prompt_ids,
            generation_config=generation,
            continuous_batching_config=batching,
            max_new_tokens=limits[0],
        )
        ordered = list(results.values())
    else:
        hints = WorkloadHints(
            max_prompt_length=max(len(ids) for ids in prompt_ids),
            max_generated_length=max(limits),
            num_requests=len(prompt_ids),
        )
        by_id = {}
        with model.continuous_batching_context_manager(
            generation_config=generation,
            continuous_batching_config=batching,
            block=True,
            timeout=5,
            workload_hints=hints,
        ) as manager:
            for n, (ids, limit) in enumerate(zip(prompt_ids, limits, strict=True)):
                manager.add_request(input_ids=ids, request_id=f"job{n}", max_new_tokens=limit)
            while len(by_id) < len(prompt_ids):
                result = manager.get_result(timeout=1)
                if result is not None and result.is_finished():
                    by_id[result.request_id] = result
                elif result is None and not manager.is_running():
                    break
        ordered = [by_id.get(f"job{n}") for n in range(len(prompt_ids))]
    # generate_batch logs a failed or lost request and carries on; a benchmark must not.
    problems = [
        f"job {n}: " + ("no result" if r is None else str(r.error))
        for n, r in enumerate(ordered)
        if r is None or r.error
    ]
    if len(ordered) != len(prompt_ids) or problems:
        raise RuntimeError(f"continuous batching returned {len(ordered)} results; " + "; ".join(problems))
    return [list(r.generated_tokens) for r in ordered]


def _step_costs(engine, loaded, prompts: list[str], *, rounds: int = 4, steps: int = 6) -> dict[int, float]:
    """Median seconds of one decode step of the engine's running batch with 1..BATCH rows.

    One batch per row count, stepped in turns (`rounds` times `steps` steps each), so a change in the
    machine's load hits every row count alike; each batch first decodes 32 tokens, so its cache is
    about as long as the workloads' average."""
    params = engine.SamplingParams(max_new_tokens=32 + rounds * steps + 2, temperature=0)
    batches = {}
    for rows in range(1, BATCH + 1):
        batch = engine.RunningBatch(loaded)
        batch.add([engine.GenerationRequest(n, prompts[n], params) for n in range(rows)])
        for _ in range(32):
            batch.step()
        batches[rows] = batch
    times: dict[int, list[float]] = {rows: [] for rows in batches}
    for _ in range(rounds):
        for rows, batch in batches.items():
            for _ in range(steps):
                t = time.perf_counter()
                batch.step()
                times[rows].append(time.perf_counter() - t)
    return {rows: statistics.median(values) for rows, values in times.items()}


def _ideal_seconds(
    limits: list[int],
    costs: dict[int, float],
    prefills: dict[tuple[int, ...], float] | None = None,
    *,
    longest_first: bool = False,
) -> float:
    """Decode time of jobs asking for `limits` tokens through an ideal continuous batcher of BATCH
    rows: a job joins at the step a row frees up, leaves cost nothing, each step costs what the
    engine's step of that many rows measured, and each group of jobs joining at one step costs its
    entry in `prefills` (nothing without it)."""
    seconds = 0.0
    for joining, rows in _schedule(limits, longest_first=longest_first):
        if joining and prefills is not None:
            seconds += prefills[joining]
        seconds += costs[rows]
    return seconds


def _schedule(limits: list[int], *, longest_first: bool = False) -> list[tuple[tuple[int, ...], int]]:
    """Per step of a batcher of BATCH rows taking jobs first come (or the longest first): the jobs
    (indices) that join before it, and its rows."""
    waiting, rows, schedule = list(enumerate(limits)), [], []
    if longest_first:
        waiting.sort(key=lambda job: -job[1])
    while waiting or rows:
        joining = []
        while waiting and len(rows) < BATCH:
            n, limit = waiting.pop(0)
            joining.append(n)
            rows.append(limit)
        schedule.append((tuple(joining), len(rows)))
        rows = [left - 1 for left in rows if left > 1]
    return schedule


def _prefill_costs(engine, loaded, prompts: list[str], groups: set[tuple[int, ...]], rounds: int = 3) -> dict:
    """Median seconds of the engine's prefill (RunningBatch.add) of each group of prompts, in turns."""
    params = engine.SamplingParams(max_new_tokens=2, temperature=0)
    times: dict[tuple[int, ...], list[float]] = {group: [] for group in groups}
    for _ in range(rounds):
        for group in groups:
            batch = engine.RunningBatch(loaded)
            requests = [engine.GenerationRequest(n, prompts[n], params) for n in group]
            t = time.perf_counter()
            batch.add(requests)
            times[group].append(time.perf_counter() - t)
    return {group: statistics.median(values) for group, values in times.items()}


def _first_difference(a: list[int], b: list[int]) -> int:
    for n, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return n
    return min(len(a), len(b))


def _figures(seconds: list[float], useful: int) -> dict:
    return {
        "seconds": [round(s, 3) for s in seconds],
        "tokens_per_s": round(useful / min(seconds), 1),
        "tokens_per_s_median": round(useful / statistics.median(seconds), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads, also for transformers' own thread")
    parser.add_argument("--reps", type=int, default=3, help="most repetitions of each run (best one counts)")
    parser.add_argument("--budget-s", type=float, default=300, help="stop repeating after this long")
    parser.add_argument("--layers", type=int, default=12, help="fewer for a quick trial of the script itself")
    args = parser.parse_args()
    started = time.perf_counter()
    deadline = started + args.budget_s
    # Before torch loads: continuous batching decodes on a thread of its own, which would otherwise
    # get OpenMP's default thread count rather than set_num_threads' value.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)

    workloads = {"even": [EVEN_TOKENS] * JOBS, "mixed": MIXED_TOKENS}
    with stdout_to_stderr():
        quiet_transformers()
        import torch
        from transformers import GPT2LMHeadModel
        from transformers.generation.continuous_batching.utils import logger as cb_logger

        from inference import engine
        from models_registry.weights import DEMO_CORPUS_PATH, build_demo_checkpoint

        torch.set_num_threads(args.threads)
        # Its CPU memory probe wants psutil, which is not installed and not needed with the cache sized.
        cb_logger.setLevel("CRITICAL")
        corpus = DEMO_CORPUS_PATH.read_text(encoding="utf-8")
        machine = machine_info("cpu")
        with tempfile.TemporaryDirectory(prefix="mp-bench-continuous-") as tmp:
            folder = Path(tmp) / "checkpoint"
            info = build_demo_checkpoint(folder, n_layer=args.layers, n_embd=768, n_head=12, seed=7, corpus=corpus)
            cache = engine.ModelCache()
            loaded = cache.get(folder, "cpu")
            eos = loaded.eos_token_id
            cache.clear()
            _forbid_eos(folder, eos)
            loaded = cache.get(folder, "cpu")
            # A second copy for transformers: continuous batching switches its attention implementation.
            model = GPT2LMHeadModel.from_pretrained(folder, local_files_only=True, dtype=torch.float32).eval()

            prompts = _prompts(corpus, JOBS)
            prompt_ids = [loaded.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
            runners = {
                "engine": lambda limits: _run_engine(
                    engine, folder, prompts, limits, cache, continuous=True, longest_first=True
                ),
                "engine_arrival": lambda limits: _run_engine(engine, folder, prompts, limits, cache, continuous=True),
                "engine_static": lambda limits: _run_engine(engine, folder, prompts, limits, cache, continuous=False),
                "hf_generate": lambda limits: _run_hf_generate(model, prompt_ids, limits, eos),
                "hf_continuous": lambda limits: _run_hf_continuous(model, prompt_ids, limits, eos),
            }
            errors: dict[str, str] = {}
            step_costs = _step_costs(engine, loaded, prompts)
            groups = {
                g
                for limits in workloads.values()
                for longest_first in (False, True)
                for g, _ in _schedule(limits, longest_first=longest_first)
                if g
            }
            prefill_costs = _prefill_costs(engine, loaded, prompts, groups)
            # Warm-up: first-call allocations of every path, on a few short jobs.
            for name, run in runners.items():
                try:
                    run([4] * JOBS)
                except Exception as exc:  # reported in the JSON; the others still run
                    errors[name] = f"{type(exc).__name__}: {exc}"

            seconds: dict[str, dict[str, list[float]]] = {i: {w: [] for w in workloads} for i in IMPLEMENTATIONS}
            outputs: dict[str, dict[str, list[list[int]]]] = {i: {} for i in IMPLEMENTATIONS}
            unstable: list[dict] = []
            reps = 0
            # Alternate implementations and workloads within each repetition, so load from other
            # processes hits all of them alike.
            while reps < args.reps:
                rep_started = time.perf_counter()
                for workload, limits in workloads.items():
                    for name, run in runners.items():
                        if name in errors:
                            continue
                        run_started = time.perf_counter()
                        try:
                            tokens = run(limits)
                        except Exception as exc:
                            errors[name] = f"{type(exc).__name__}: {exc}"
                            continue
                        seconds[name][workload].append(time.perf_counter() - run_started)
                        first = outputs[name].setdefault(workload, tokens)
                        if tokens != first:
                            unstable.append({"implementation": name, "workload": workload, "rep": reps})
                reps += 1
                rep_s = time.perf_counter() - rep_started
                if time.perf_counter() + rep_s > deadline:
                    break

    implementations: dict[str, dict] = {}
    for name in IMPLEMENTATIONS:
        if name in errors or not seconds[name]["mixed"]:
            implementations[name] = {"error": errors.get(name, "did not run")}
            continue
        entry: dict = {}
        for workload, limits in workloads.items():
            entry[workload] = _figures(seconds[name][workload], sum(limits))
        entry["mixed_over_even"] = round(entry["mixed"]["tokens_per_s"] / entry["even"]["tokens_per_s"], 2)
        entry["mixed_over_even_median"] = round(
            entry["mixed"]["tokens_per_s_median"] / entry["even"]["tokens_per_s_median"], 2
        )
        entry["pass"] = entry["mixed_over_even"] >= TARGET_RATIO
        implementations[name] = entry

    # Every job must have produced exactly what it asked for, and no eos; then token-for-token.
    short_jobs = [
        {"implementation": name, "workload": workload, "job": n, "asked": limits[n], "got": len(tokens[n])}
        for name in IMPLEMENTATIONS
        for workload, limits in workloads.items()
        if (tokens := outputs[name].get(workload)) is not None
        for n in range(JOBS)
        if len(tokens[n]) != limits[n] or eos in tokens[n]
    ]
    mismatches = []
    ran = [name for name in IMPLEMENTATIONS if all(w in outputs[name] for w in workloads)]
    for workload in workloads:
        for n in range(JOBS):
            reference = outputs["engine"][workload][n] if "engine" in ran else None
            for name in ran[1:] if reference is not None else []:
                other = outputs[name][workload][n]
                if other != reference:
                    mismatches.append(
                        {
                            "workload": workload,
                            "job": n,
                            "implementations": ["engine", name],
                            "first_difference_at_token": _first_difference(reference, other),
                        }
                    )

    def bound(longest_first: bool, engine_ratio: float | None) -> dict:
        """Best mixed/even for a batcher of BATCH rows taking jobs in this order, given how the
        engine's step cost grows with rows (free joins, then paying the engine's own prefills)."""
        free, paid = (
            {
                workload: sum(limits) / _ideal_seconds(limits, step_costs, prefills, longest_first=longest_first)
                for workload, limits in workloads.items()
            }
            for prefills in (None, prefill_costs)
        )
        ratio, ratio_paid = round(free["mixed"] / free["even"], 3), round(paid["mixed"] / paid["even"], 3)
        return {
            "mixed_over_even": ratio,
            "engine_share_of_bound": round(engine_ratio / ratio, 3) if engine_ratio else None,
            "with_prefills": {
                "mixed_over_even": ratio_paid,
                "engine_share": round(engine_ratio / ratio_paid, 3) if engine_ratio else None,
                "prefill_s": {
                    workload: round(
                        sum(prefill_costs[g] for g, _ in _schedule(limits, longest_first=longest_first) if g), 3
                    )
                    for workload, limits in workloads.items()
                },
            },
        }

    # The tail of the mixed workload runs few rows when jobs join first come, and a step of few rows
    # is not proportionally cheaper here; taking the longest first leaves no such tail.
    fifo_bound = {
        **bound(False, implementations["engine_arrival"].get("mixed_over_even")),
        "step_ms_by_rows": {rows: round(cost * 1000, 1) for rows, cost in step_costs.items()},
        "prefill_ms_by_group_size": {
            size: round(statistics.median(c for g, c in prefill_costs.items() if len(g) == size) * 1000, 1)
            for size in sorted({len(g) for g in prefill_costs})
        },
        "note": (
            "best mixed/even for a first-come continuous batcher of this many rows whose step costs what the "
            "engine's measured step of that many rows costs, with joins and leaves free, then with each group "
            "of jobs joining at one step paying the engine's measured prefill; engine share: engine_arrival's"
        ),
    }
    longest_first_bound = {
        **bound(True, implementations["engine"].get("mixed_over_even")),
        "note": "the same, the longest waiting job joining first; engine share: engine's",
    }
    out = {
        "benchmark": "continuous",
        "checkpoint": {
            "shape": f"gpt2 body ({args.layers} layers x 768, 12 heads, 1024 positions), demo vocabulary",
            "n_layer": info.n_layer,
            "n_embd": info.n_embd,
            "n_head": info.n_head,
            "vocab_size": info.vocab_size,
            "parameters": info.parameter_count,
            "eos": "logit held near -1e4, so every job runs to its own limit in all five",
        },
        "jobs": JOBS,
        "batch": BATCH,
        "greedy": True,
        "torch_threads": args.threads,
        "workloads": {
            workload: {"new_tokens": limits, "useful_tokens": sum(limits)} for workload, limits in workloads.items()
        },
        "reps": reps,
        "implementations": implementations,
        "fifo_bound": fifo_bound,
        "longest_first_bound": longest_first_bound,
        "hf_continuous_api": {
            "even": "model.generate_batch(max_new_tokens=64)",
            "mixed": "model.continuous_batching_context_manager() + add_request(max_new_tokens=limit) per job",
            "config": {
                "page_size": CB_PAGE_SIZE,
                "num_blocks": CB_NUM_BLOCKS,
                "max_batch_tokens": CB_MAX_BATCH_TOKENS,
                "max_requests_per_batch": BATCH,
                "attn_implementation": model.config._attn_implementation,
            },
        },
        "all_jobs_full_length": not short_jobs,
        "short_jobs": short_jobs,
        "identical": bool(len(ran) == len(IMPLEMENTATIONS) and not mismatches and not unstable),
        "compared": ran,
        "mismatches": mismatches,
        "unstable_across_reps": unstable,
        "target": f"mixed/even >= {TARGET_RATIO} (useful tokens/s, best of reps), identical greedy outputs",
        "pass": bool(implementations["engine"].get("pass")) and not mismatches,
    }
    machine["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    out["machine"] = machine
    out["elapsed_s"] = round(time.perf_counter() - started, 1)
    emit(out)


if __name__ == "__main__":
    main()
