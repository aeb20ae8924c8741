"""GPU benchmark: decode tokens/s of random GPT-2 at the four real shapes against the bandwidth bound.

For a GPU host; needs only torch and transformers (the shapes come from models_registry.weights,
which imports no Django). Without CUDA it prints {"skipped": "no CUDA device", "pass": null} (nothing
was measured, so nothing passed) and exits 0.

For each shape (gpt2 .. gpt2-xl, fp16, random weights, vocabulary 50257) and batch (1, 8, 32):
prefill a 16-token prompt, then time a fixed number of greedy decode steps, two ways:
  - eager: the model's forward with the default dynamic KV cache;
  - static: the engine's own StaticDecoder (inference/static_decode.py), the path a GPU worker
    serves with: a preallocated KV pool and one CUDA graph per (batch bucket, context window),
    captured before timing (capture time reported as capture_s).
The bound: a decode step must read every weight once plus the KV cache so far, so with the
measured device copy bandwidth B, steps/s <= B / bytes_per_step and tokens/s <= batch x that.
Everything runs inside a time budget (default 270 s): eager everywhere first for each shape, then
static points (batch 1 first) while that shape's share of the budget lasts; what did not fit is
listed under "skipped_for_budget". Batches above the largest bucket (64) have no static point.

    .venv/bin/python bench/gpu.py [--shapes gpt2,gpt2-xl] [--batches 1,8,32] [--steps 64]
    .venv/bin/python bench/gpu.py --cpu    # (or --smoke, --dry-run) CPU, tiny shape, static path
                                           # eager: proves the code runs end to end; the figures
                                           # mean nothing on a CPU
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(_ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != _ROOT / "bench"]

import argparse  # noqa: E402
import gc  # noqa: E402
import time  # noqa: E402

from bench._common import emit, machine_info, quiet_transformers, stdout_to_stderr  # noqa: E402

VOCAB = 50257
PROMPT_LEN = 16
WARM_STEPS = 3


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def copy_bandwidth(device: str, mib: int = 1024, repeats: int = 10) -> float:
    """Bytes moved per second by a device-to-device copy (each copy reads and writes the buffer)."""
    import torch

    n = mib * 1024 * 1024 // 2
    src = torch.empty(n, dtype=torch.float16, device=device).normal_()
    dst = torch.empty_like(src)
    for _ in range(2):
        dst.copy_(src)
    _sync(device)
    started = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src)
    _sync(device)
    elapsed = time.perf_counter() - started
    moved = 2 * src.numel() * src.element_size() * repeats
    del src, dst
    return moved / elapsed


def build_model(shape, device: str, dtype):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        n_layer=shape.n_layer, n_embd=shape.n_embd, n_head=shape.n_head, n_positions=shape.n_positions,
        vocab_size=shape.vocab_size or VOCAB,
    )  # fmt: skip
    with torch.device(device):  # allocate and initialise on the device: gpt2-xl on a CPU takes long
        model = GPT2LMHeadModel(config)
    return model.to(dtype).eval()


def bytes_per_step(model, batch: int, context: int) -> int:
    """Weights read once per step (a tied head counted once) plus the K and V of `context` tokens."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    cfg = model.config
    itemsize = next(model.parameters()).element_size()
    kv = 2 * cfg.n_layer * batch * context * cfg.n_embd * itemsize
    return weights + kv


def decode(model, forward, batch: int, steps: int, device: str, *, static: bool, seed: int = 0):
    """Prefill PROMPT_LEN tokens, then WARM_STEPS + `steps` greedy steps; time the last `steps`."""
    import torch
    from transformers import StaticCache

    generator = torch.Generator(device="cpu").manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch, PROMPT_LEN), generator=generator).to(device)
    total = PROMPT_LEN + WARM_STEPS + steps + 1
    cache = StaticCache(config=model.config, max_cache_len=total) if static else None
    tokens = []
    with torch.inference_mode():
        positions = torch.arange(PROMPT_LEN, device=device)[None, :].expand(batch, -1)
        # The prompt runs eagerly in both cases (as transformers' own generate() does): prefill
        # shapes differ from decode shapes, and only the decode step is worth a CUDA graph.
        out = model(input_ids=ids, position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1)
        cache = out.cache
        nxt = out.logits[:, -1, :].argmax(-1, keepdim=True)
        position = PROMPT_LEN
        started = None
        for step in range(WARM_STEPS + steps):
            if step == WARM_STEPS:
                _sync(device)
                started = time.perf_counter()
            pos = torch.full((batch, 1), position, dtype=torch.long, device=device)
            out = forward(input_ids=nxt, position_ids=pos, cache=cache, use_cache=True, logits_to_keep=1)
            cache = out.cache
            # A new tensor: with CUDA graphs the output buffer is overwritten by the next replay.
            nxt = out.logits[:, -1, :].argmax(-1, keepdim=True)
            if step < 8:
                tokens.append(nxt.clone())
            position += 1
        _sync(device)
        elapsed = time.perf_counter() - started
    first = torch.cat(tokens, dim=-1).cpu()
    return elapsed, first


def decode_static(model, batch: int, steps: int, device: str, *, compile: bool, seed: int = 0):
    """As `decode`, through a StaticDecoder; returns (seconds, first tokens, capture seconds, decoder)."""
    import torch

    from inference.static_decode import StaticDecoder, bucket_for

    generator = torch.Generator(device="cpu").manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch, PROMPT_LEN), generator=generator).to(device)
    decoder = StaticDecoder(model, rows=batch, compile=compile)
    # Every window the timed steps reach, captured before the clock starts.
    last = next(w for w in decoder.windows if w >= PROMPT_LEN + WARM_STEPS + steps + 1)
    t = time.perf_counter()
    decoder.warm(buckets=[bucket_for(batch)], windows=[w for w in decoder.windows if w <= last])
    _sync(device)
    capture_s = time.perf_counter() - t
    tokens = []
    with torch.inference_mode():
        positions = torch.arange(PROMPT_LEN, device=device)[None, :].expand(batch, -1)
        # The prompt runs eagerly, as in the engine; its keys and values go into the pool.
        out = model(input_ids=ids, position_ids=positions, use_cache=True, logits_to_keep=1)
        slots = decoder.allocate(batch)
        layers = out.cache.layers
        mask = torch.ones((batch, PROMPT_LEN), dtype=torch.long, device=device)
        decoder.admit(slots, [layer.keys for layer in layers], [layer.values for layer in layers], mask)
        nxt = out.logits[:, -1, :].argmax(-1)
        started = None
        for step in range(WARM_STEPS + steps):
            if step == WARM_STEPS:
                _sync(device)
                started = time.perf_counter()
            nxt = decoder.step(nxt, slots).argmax(-1)
            if step < 8:
                tokens.append(nxt[:, None].clone())
        _sync(device)
        elapsed = time.perf_counter() - started
    first = torch.cat(tokens, dim=-1).cpu()
    return elapsed, first, capture_s, decoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="gpt2,gpt2-medium,gpt2-large,gpt2-xl")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--steps", type=int, default=64, help="timed decode steps per point")
    parser.add_argument("--budget-s", type=float, default=270, help="whole run, build and compile included")
    parser.add_argument("--no-compile", action="store_true", help="static path without CUDA graphs")
    parser.add_argument(
        "--smoke", "--cpu", "--dry-run", dest="smoke", action="store_true",
        help="CPU, tiny shape, fp32: check that the code runs (the figures mean nothing)",
    )  # fmt: skip
    parser.add_argument(
        "--smoke-compile", action="store_true", help="with --smoke, torch.compile the static steps on CPU (slow)"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    deadline = started + args.budget_s

    with stdout_to_stderr():
        quiet_transformers()
        import torch

        from models_registry.weights import GPT2_SHAPES, GPT2Shape

        no_cuda = not args.smoke and not torch.cuda.is_available()
    if no_cuda:
        emit({"benchmark": "gpu", "skipped": "no CUDA device", "pass": None, "machine": machine_info("cpu")})
        return

    with stdout_to_stderr():
        if args.smoke:
            device, dtype = "cpu", torch.float32
            torch.set_num_threads(1)  # a shared CPU: more threads only contend
            shapes = {"smoke": GPT2Shape("smoke", 2, 64, 2, n_positions=128, vocab_size=VOCAB)}
            batches = [1, 2]
            steps = min(args.steps, 4)
            compile_enabled = args.smoke_compile and not args.no_compile
        else:
            device, dtype = "cuda", torch.float16
            shapes = {name: GPT2_SHAPES[name] for name in args.shapes.split(",")}
            batches = [int(b) for b in args.batches.split(",")]
            steps = args.steps
            compile_enabled = not args.no_compile
        from inference.static_decode import BUCKETS

        bandwidth = copy_bandwidth(device, mib=64 if args.smoke else 1024)
        results = []
        skipped: list[str] = []
        errors: list[str] = []
        mismatches: list[str] = []
        over_bound: list[str] = []
        compile_estimate = 30.0  # seconds for one static point, refined by the first measurement
        for n, (name, shape) in enumerate(shapes.items()):
            # An even share of what is left, so the largest shape still gets measured.
            shape_deadline = time.perf_counter() + (deadline - time.perf_counter()) / (len(shapes) - n)
            if time.perf_counter() > deadline - 5:
                skipped.append(f"{name}: all")
                continue
            t = time.perf_counter()
            model = build_model(shape, device, dtype)
            build_s = time.perf_counter() - t
            params = sum(p.numel() for p in model.parameters())
            entry = {
                "shape": name,
                "parameters": params,
                "weight_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
                "build_s": round(build_s, 1),
                "batches": {},
            }
            eager_tokens = {}
            for batch in batches:
                if time.perf_counter() > shape_deadline:
                    skipped.append(f"{name} b{batch}: eager")
                    continue
                point = {}
                try:
                    seconds, eager_tokens[batch] = decode(model, model.forward, batch, steps, device, static=False)
                    context = PROMPT_LEN + WARM_STEPS + steps // 2  # the average KV length while timed
                    bound_steps = bandwidth / bytes_per_step(model, batch, context)
                    point["eager_tokens_per_s"] = round(batch * steps / seconds, 1)
                    point["eager_ms_per_step"] = round(seconds / steps * 1000, 3)
                    point["bound_tokens_per_s"] = round(batch * bound_steps, 1)
                    fraction = point["eager_tokens_per_s"] / point["bound_tokens_per_s"]
                    point["eager_fraction_of_bound"] = round(fraction, 3)
                    if point["eager_fraction_of_bound"] > 1.05:
                        over_bound.append(f"{name} b{batch} eager")
                except torch.OutOfMemoryError:
                    point["error"] = "out of memory"
                    gc.collect()
                    torch.cuda.empty_cache()
                except Exception as exc:  # one failed point must not lose the others
                    point["error"] = f"{type(exc).__name__}: {exc}"[:300]
                    errors.append(f"{name} b{batch} eager: {point['error']}")
                entry["batches"][str(batch)] = point

            # Batch 1 first: that is where per-step overhead, which CUDA graphs remove, matters most.
            for batch in sorted(batches, key=lambda b: (b != 1, b)):
                point = entry["batches"].get(str(batch))
                if point is None or "error" in point:
                    continue
                if batch > BUCKETS[-1]:
                    point["static_error"] = f"no static bucket above {BUCKETS[-1]} rows"
                    continue
                if time.perf_counter() + compile_estimate > shape_deadline:
                    skipped.append(f"{name} b{batch}: static")
                    continue
                try:
                    t = time.perf_counter()
                    seconds, tokens, capture_s, decoder = decode_static(
                        model, batch, steps, device, compile=compile_enabled
                    )
                    wall = time.perf_counter() - t
                    compile_estimate = max(10.0, wall * 1.2)
                    point["static_tokens_per_s"] = round(batch * steps / seconds, 1)
                    point["static_ms_per_step"] = round(seconds / steps * 1000, 3)
                    point["static_fraction_of_bound"] = round(
                        point["static_tokens_per_s"] / point["bound_tokens_per_s"], 3
                    )
                    point["static_vs_eager"] = round(point["static_tokens_per_s"] / point["eager_tokens_per_s"], 2)
                    point["static_shapes"] = [list(shape) for shape in decoder.shapes]
                    point["static_eager_fallbacks"] = [list(shape) for shape in sorted(decoder.eager_steps)]
                    point["capture_s"] = round(capture_s, 2)
                    point["static_run_s"] = round(wall, 1)
                    # fp16 kernels differ between the two paths, so near-ties may flip: report only.
                    point["static_first_tokens_match_eager"] = bool(torch.equal(tokens, eager_tokens[batch]))
                    if not point["static_first_tokens_match_eager"]:
                        mismatches.append(f"{name} b{batch}")
                    if decoder.eager_steps:
                        errors.append(f"{name} b{batch} static: steps ran eagerly {sorted(decoder.eager_steps)}")
                    if point["static_fraction_of_bound"] > 1.05:
                        over_bound.append(f"{name} b{batch} static")
                    del decoder
                except torch.OutOfMemoryError:
                    point["static_error"] = "out of memory"
                    gc.collect()
                    torch.cuda.empty_cache()
                except Exception as exc:
                    point["static_error"] = f"{type(exc).__name__}: {exc}"[:300]
                    errors.append(f"{name} b{batch} static: {point['static_error']}")
            results.append(entry)
            del model
            gc.collect()
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
            torch._dynamo.reset()

    measured = [p for r in results for p in r["batches"].values() if "eager_tokens_per_s" in p]
    best_eager = max((p["eager_fraction_of_bound"] for p in measured), default=None)
    best_static = max((p.get("static_fraction_of_bound", 0) for p in measured), default=None) or None
    out = {
        "benchmark": "gpu",
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "static_steps": ("CUDA graphs" if device.startswith("cuda") else "torch.compile")
        if compile_enabled
        else "eager",
        "decode_steps": steps,
        "prompt_len": PROMPT_LEN,
        "copy_bandwidth_GBps": round(bandwidth / 1e9, 1),
        "bound": "tokens/s <= batch * copy_bandwidth / (weight bytes + KV bytes at mean context)",
        "results": results,
        "best_fraction_of_bound": {"eager": best_eager, "static": best_static},
        "ratio": best_static or best_eager,
        "target": "every eager point measured, no error, none above the bound (x1.05)",
        "skipped_for_budget": skipped,
        "errors": errors,
        "static_token_mismatches": mismatches,
        "above_bound": over_bound,
        # Static points skipped for time and fp16 near-tie token flips are reported, not failures.
        "pass": bool(measured) and not errors and not over_bound and not any("static" not in x for x in skipped),
    }
    if device == "cpu":
        out["note"] = "CPU dry run on a tiny shape: proves the code runs end to end; the figures mean nothing"
    out["machine"] = machine_info(device)
    out["elapsed_s"] = round(time.perf_counter() - started, 1)
    emit(out)


if __name__ == "__main__":
    main()
