"""Batched sample generation for GPT-2 checkpoints.

Django-free so a bare GPU host and the benchmarks can run it. Decoding is written out by hand
rather than using `model.generate()`: each row needs its own sampling parameters, its own random
stream (a seeded job must give the same samples batched or alone), and the loop must stop rows
on cancellation and report progress between steps.
"""

from __future__ import annotations

import gc
import hashlib
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import cast

# Before transformers loads huggingface_hub, which reads this once. local_files_only=True on every
# load is what really keeps a worker off the network; this covers anything else that might ask.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from safetensors import safe_open
from transformers import AutoTokenizer, Cache, GPT2LMHeadModel, PreTrainedTokenizerBase
from transformers.utils import logging as transformers_logging

# Loading weights draws a progress bar on stderr, which a Celery worker logs as a warning per load.
transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # unannotated in transformers

DEFAULT_CACHE_BYTES = 8 * 1024**3

# Test seam: called with the step number before every forward pass, so a test can raise
# torch.OutOfMemoryError on a CPU-only machine.
_fault_injector: Callable[[int], None] | None = None


@dataclass(frozen=True)
class SamplingParams:
    """How to sample; temperature 0 is greedy, top_k 0 and top_p 1.0 switch those filters off."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    num_samples: int = 1
    seed: int | None = None

    def __post_init__(self) -> None:
        # The service validates with user-facing messages; this only stops nonsense reaching the GPU.
        if self.max_new_tokens < 1 or self.num_samples < 1:
            raise ValueError("max_new_tokens and num_samples must be at least 1")
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError("temperature and top_k must be >= 0 and top_p in (0, 1]")


@dataclass
class GenerationRequest:
    key: Hashable
    prompt: str
    params: SamplingParams


@dataclass
class SampleResult:
    index: int
    text: str
    token_count: int


@dataclass
class RequestResult:
    key: Hashable
    samples: list[SampleResult]
    prompt_tokens: int
    new_tokens: int
    cancelled: bool


class GenerationOOM(Exception):
    """The GPU ran out of memory; memory has been freed, so a smaller batch may succeed."""

    def __init__(self, rows: int) -> None:
        super().__init__(f"CUDA ran out of memory generating {rows} rows; retry with a smaller batch")
        self.rows = rows


@dataclass
class LoadedModel:
    model: GPT2LMHeadModel
    tokenizer: PreTrainedTokenizerBase
    device: str
    nbytes: int
    eos_token_id: int
    n_positions: int


def pick_device(preferred: str | None = None) -> str:
    """`preferred` when usable; otherwise CUDA when present, else the CPU."""
    if preferred is not None and (not preferred.startswith("cuda") or torch.cuda.is_available()):
        return preferred
    return "cuda" if torch.cuda.is_available() else "cpu"


@lru_cache(maxsize=32)
def _load_tokenizer(folder: str) -> PreTrainedTokenizerBase:
    # Cached apart from the models: the web tier counts prompt tokens without loading weights.
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    tokenizer.padding_side = "left"
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _encode(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    ids: list[int] = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    # GPT-2 saw <|endoftext|> before every training document, so an empty prompt starts there.
    return ids or [tokenizer.eos_token_id]


def count_prompt_tokens(folder: Path | str, prompt: str) -> int:
    """Tokens the engine will feed for `prompt`, for the context-length check at submission."""
    return len(_encode(_load_tokenizer(str(Path(folder).resolve())), prompt))


class ModelCache:
    """Loaded checkpoints of this process, least recently used evicted past `max_bytes`."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, str], LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, folder: Path | str, device: str) -> LoadedModel:
        key = (str(Path(folder).resolve()), device)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                return entry
            # Make room first: on a GPU the old weights must be gone before the new ones land.
            self._evict(incoming=_estimate_bytes(Path(key[0]), _dtype_for(device)))
            entry = _load_model(Path(key[0]), device)
            self._entries[key] = entry
            self._evict(incoming=0, keep=key)
            return entry

    def cached_keys(self) -> list[tuple[str, str]]:
        """Cached (folder, device) pairs, least recently used first."""
        return list(self._entries)

    @property
    def total_bytes(self) -> int:
        return sum(entry.nbytes for entry in self._entries.values())

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            _free_memory()

    def _evict(self, *, incoming: int, keep: tuple[str, str] | None = None) -> None:
        evicted = False
        while self._entries and self.total_bytes + incoming > self.max_bytes:
            oldest = next(iter(self._entries))
            if oldest == keep:  # the model just loaded stays, even alone over budget
                break
            del self._entries[oldest]
            evicted = True
        if evicted:
            _free_memory()


_default_cache: ModelCache | None = None


def get_default_cache(max_bytes: int | None = None) -> ModelCache:
    """The process-wide cache; a budget given later replaces the earlier one."""
    global _default_cache
    if _default_cache is None:
        _default_cache = ModelCache(DEFAULT_CACHE_BYTES)
    if max_bytes is not None:
        _default_cache.max_bytes = max_bytes
    return _default_cache


def _dtype_for(device: str) -> torch.dtype:
    # GPT-2 runs well in fp16 on GPUs; CPUs have no fast fp16 matmul.
    return torch.float16 if device.startswith("cuda") else torch.float32


def _estimate_bytes(folder: Path, dtype: torch.dtype) -> int:
    with safe_open(folder / "model.safetensors", framework="pt") as fh:
        numel = 0
        for name in fh.keys():  # noqa: SIM118 (safe_open is not iterable)
            size = 1
            for dim in fh.get_slice(name).get_shape():
                size *= dim
            numel += size
    return numel * dtype.itemsize


def _load_model(folder: Path, device: str) -> LoadedModel:
    model = GPT2LMHeadModel.from_pretrained(
        folder, local_files_only=True, use_safetensors=True, dtype=_dtype_for(device)
    )
    model.to(device).eval()  # type: ignore[arg-type]  # transformers' wrapped .to() types self as an argument
    tokenizer = _load_tokenizer(str(folder))
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        device=device,
        nbytes=nbytes,
        eos_token_id=tokenizer.eos_token_id,
        n_positions=model.config.n_positions,
    )


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class _Row:
    """One sample being decoded: a request expands to num_samples rows."""

    request: int
    index: int
    prompt_ids: list[int]
    params: SamplingParams
    generator: torch.Generator | None


def _row_seed(seed: int, index: int) -> int:
    # Hashing keeps the streams of samples 0, 1, 2... of one seed unrelated to each other.
    digest = hashlib.sha256(f"{seed}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def generate(
    folder: Path | str,
    requests: list[GenerationRequest],
    *,
    device: str | None = None,
    cache: ModelCache | None = None,
    on_progress: Callable[[dict[Hashable, int]], None] | None = None,
    should_cancel: Callable[[], AbstractSet[Hashable]] | None = None,
    progress_interval_s: float = 0.5,
) -> list[RequestResult]:
    """Run `requests` against one checkpoint as a single batch, results in request order.

    `on_progress` gets new tokens so far per key, at most every `progress_interval_s`.
    `should_cancel` is polled between steps; the keys it returns stop and keep what they have.
    Raises GenerationOOM when CUDA runs out of memory, after freeing it.
    """
    if not requests:
        return []
    if len({r.key for r in requests}) != len(requests):
        raise ValueError("request keys must be unique within a batch")
    loaded = (cache if cache is not None else get_default_cache()).get(folder, pick_device(device))

    rows: list[_Row] = []
    prompt_tokens: list[int] = []
    for n, request in enumerate(requests):
        ids = _encode(loaded.tokenizer, request.prompt)
        params = request.params
        if len(ids) + params.max_new_tokens > loaded.n_positions:
            raise ValueError(
                f"request {request.key!r}: {len(ids)} prompt tokens plus max_new_tokens "
                f"{params.max_new_tokens} exceed the context of {loaded.n_positions}"
            )
        prompt_tokens.append(len(ids))
        for index in range(params.num_samples):
            generator = None
            if params.temperature > 0:
                seed = secrets.randbits(63) if params.seed is None else _row_seed(params.seed, index)
                generator = torch.Generator().manual_seed(seed)
            rows.append(_Row(n, index, ids, params, generator))

    try:
        generated, stopped = _decode(loaded, rows, requests, on_progress, should_cancel, progress_interval_s)
    except torch.OutOfMemoryError:
        oom = True
    else:
        oom = False
    if oom:
        # Outside the except block the traceback, and the batch tensors its frames hold, are gone.
        _free_memory()
        raise GenerationOOM(len(rows))

    results = [RequestResult(r.key, [], prompt_tokens[n], 0, cancelled=n in stopped) for n, r in enumerate(requests)]
    for row, tokens in zip(rows, generated, strict=True):
        # One sequence of ids decodes to one string (a batch would give a list).
        text = cast(str, loaded.tokenizer.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False))
        result = results[row.request]
        result.samples.append(SampleResult(row.index, text, len(tokens)))
        result.new_tokens += len(tokens)
    return results


@torch.inference_mode()
def _decode(
    loaded: LoadedModel,
    rows: list[_Row],
    requests: list[GenerationRequest],
    on_progress: Callable[[dict[Hashable, int]], None] | None,
    should_cancel: Callable[[], AbstractSet[Hashable]] | None,
    progress_interval_s: float,
) -> tuple[list[list[int]], set[int]]:
    """Decode every row to eos or its own limit; return its tokens and the cancelled requests."""
    device, eos = loaded.device, loaded.eos_token_id
    width = max(len(row.prompt_ids) for row in rows)
    # Left padding lines the last prompt tokens up, so each step appends one column for all rows.
    input_ids = torch.full((len(rows), width), eos, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row.prompt_ids) :] = torch.tensor(row.prompt_ids)
        mask[i, width - len(row.prompt_ids) :] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    # Positions count real tokens only, so a padded row sees the positions it would see alone.
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    sampler = _Sampler(rows, device)

    generated: list[list[int]] = [[] for _ in rows]
    done = [False] * len(rows)
    stopped: set[int] = set()
    cache: Cache | None = None
    last_progress = time.monotonic()
    step = 0
    while True:
        if should_cancel is not None:
            cancelled = should_cancel()
            for i, row in enumerate(rows):
                if not done[i] and requests[row.request].key in cancelled:
                    done[i] = True
                    stopped.add(row.request)
        if all(done):
            break
        if _fault_injector is not None:
            _fault_injector(step)

        # transformers 5 names the KV cache `cache`, in and out; `past_key_values` is deprecated.
        out = loaded.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,  # the prompt's other positions need no logits
        )
        cache = out.cache
        next_tokens = sampler.choose(out.logits[:, -1, :].float(), done)
        for i, token in enumerate(next_tokens.tolist()):
            if done[i]:
                continue
            if token == eos:
                done[i] = True
                continue
            generated[i].append(token)
            done[i] = len(generated[i]) >= rows[i].params.max_new_tokens

        # Finished rows ride along on eos until the batch ends; their outputs are ignored.
        input_ids = next_tokens.masked_fill(torch.tensor(done, device=device), eos)[:, None]
        mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=-1)
        # Clamped: a finished short row would otherwise run past the position table.
        positions = (mask.sum(-1, keepdim=True) - 1).clamp(max=loaded.n_positions - 1)
        step += 1

        now = time.monotonic()
        if on_progress is not None and now - last_progress >= progress_interval_s:
            last_progress = now
            counts: dict[Hashable, int] = {r.key: 0 for r in requests}
            for row, tokens in zip(rows, generated, strict=True):
                counts[requests[row.request].key] += len(tokens)
            on_progress(counts)
    return generated, stopped


class _Sampler:
    """Applies each row's temperature, top-k and top-p, and draws from that row's own stream."""

    def __init__(self, rows: list[_Row], device: str) -> None:
        self.rows = rows
        params = [row.params for row in rows]
        self.greedy = torch.tensor([p.temperature == 0 for p in params], device=device)
        self.all_greedy = bool(self.greedy.all())
        temperature = [p.temperature if p.temperature > 0 else 1.0 for p in params]
        self.temperature = torch.tensor(temperature, device=device)[:, None]
        self.top_k = torch.tensor([p.top_k for p in params], device=device)[:, None]
        self.top_p = torch.tensor([p.top_p for p in params], device=device)[:, None]
        sampled = [row.params for row in rows if row.generator is not None]
        # Sorting the whole vocabulary every step costs as much as a small model's forward pass:
        # skip it when no sampled row filters, and look only at the top k when every row has a k.
        self.no_filter = all(p.top_k == 0 and p.top_p >= 1 for p in sampled)
        self.k_bound = max(p.top_k for p in sampled) if sampled and all(p.top_k > 0 for p in sampled) else 0

    def choose(self, logits: torch.Tensor, done: list[bool]) -> torch.Tensor:
        greedy_tokens = logits.argmax(dim=-1)
        if self.all_greedy:
            return greedy_tokens
        logits = logits / self.temperature
        vocab = logits.shape[-1]
        if self.no_filter:
            probs = logits.softmax(dim=-1)
        else:
            if 0 < self.k_bound < vocab:
                sorted_logits, order = logits.topk(self.k_bound, dim=-1)  # sorted, most likely first
            else:
                sorted_logits, order = logits.sort(dim=-1, descending=True)
            ranks = torch.arange(sorted_logits.shape[-1], device=logits.device)[None, :]
            drop = (self.top_k > 0) & (ranks >= self.top_k)
            sorted_probs = sorted_logits.masked_fill(drop, float("-inf")).softmax(dim=-1)
            # Drop a token once the more likely ones already reach top_p; the most likely always stays.
            mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
            drop |= (self.top_p < 1) & (mass_before >= self.top_p)
            # Back to vocabulary order; tokens outside the top k_bound are dropped outright.
            outside = torch.full_like(logits, sorted_logits.shape[-1] < vocab, dtype=torch.bool)
            drop = outside.scatter(-1, order, drop)
            probs = logits.masked_fill(drop, float("-inf")).softmax(dim=-1)

        # Inverse-CDF sampling in vocabulary order with one uniform draw per row and step: the
        # draw depends only on the row's own generator, and tiny numeric differences between
        # batched and solo logits move interval edges slightly instead of reordering tokens.
        draws = torch.zeros(len(self.rows), 1)
        for i, row in enumerate(self.rows):
            if row.generator is not None and not done[i]:
                draws[i, 0] = torch.rand((), generator=row.generator)
        cdf = probs.cumsum(dim=-1)
        targets = draws.to(logits.device) * cdf[:, -1:]
        sampled = torch.searchsorted(cdf, targets, right=True).squeeze(-1)
        # Rounding can put a draw at the very top of the CDF; fall back to the last allowed token.
        last_allowed = logits.shape[-1] - 1 - (probs.flip(-1) > 0).int().argmax(dim=-1)
        sampled = torch.minimum(sampled, last_allowed)
        return torch.where(self.greedy, greedy_tokens, sampled)
