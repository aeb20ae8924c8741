"""Batched sample generation for GPT-2 checkpoints.

Django-free so a bare GPU host and the benchmarks can run it. Decoding is written out by hand
rather than using `model.generate()`: each row needs its own sampling parameters, its own random
stream (a seeded job must give the same samples batched or alone), and the loop must stop rows
on cancellation and report progress between steps.
"""

from __future__ import annotations

import gc
import hashlib
import logging
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
from transformers import AutoTokenizer, Cache, DynamicCache, GPT2LMHeadModel, PreTrainedTokenizerBase
from transformers.cache_utils import DynamicLayer
from transformers.utils import logging as transformers_logging

from inference.static_decode import BUCKETS, StaticDecoder, bucket_for
from inference.watermark import DELTA, GREEN_BELOW, MASK32, MULTIPLIER, WatermarkKey

logger = logging.getLogger(__name__)
# Loading weights draws a progress bar on stderr, which a Celery worker logs as a warning per load.
transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # unannotated in transformers

DEFAULT_CACHE_BYTES = 8 * 1024**3
# Slots of a model's static KV pool when nothing asked for another size (see `warm`).
DEFAULT_STATIC_ROWS = 32

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
    token_ids: tuple[int, ...] = ()
    # Sampled rows carry the watermark when the batch has a key; greedy ones never can.
    watermarked: bool = False


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
    # The static KV pool and decode steps (CUDA graphs on a GPU), made by `warm` or the first
    # batch that decodes statically; it goes with the model when the cache evicts it.
    static: StaticDecoder | None = None
    # Set by the cache holding this model: make_room(n) evicts other models until n more bytes fit.
    make_room: Callable[[int], None] | None = None
    # The device had no room for the static pool: this model decodes dynamically until it is loaded again.
    static_failed: bool = False

    @property
    def total_bytes(self) -> int:
        """The weights and, once made, the static KV pool: what keeping this model costs the device."""
        return self.nbytes + (self.static.nbytes if self.static is not None else 0)

    def make_static(self, rows: int, compile: bool) -> StaticDecoder | None:
        """Make this model's static decoder of `rows` slots, or None when its pool does not fit.

        Other cached models are evicted first if the pool would take the cache past its budget. When
        the device has no room even then, batches decode on the dynamic cache instead (one warning).
        """
        self.static = None  # an old pool goes before a new one is allocated
        _free_memory()
        if self.make_room is not None:
            self.make_room(StaticDecoder.pool_bytes(self.model, rows))
        try:
            self.static = StaticDecoder(self.model, rows=rows, compile=compile)
        except torch.OutOfMemoryError:
            oom = True
        else:
            oom = False
        self.static_failed = oom
        if oom:  # outside the except block, the frames holding the partial pool are gone
            _free_memory()
            logger.warning(
                "No device memory for a static KV pool of %d rows (%.1f GB); decoding on the dynamic cache.",
                bucket_for(rows), StaticDecoder.pool_bytes(self.model, rows) / 1e9,
            )  # fmt: skip
        return self.static


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
    """Loaded checkpoints of this process, least recently used evicted past `max_bytes`.

    A model's static KV pool counts with its weights (LoadedModel.total_bytes): on a GPU the pool of
    a large checkpoint can outweigh the weights, and loading another checkpoint evicts both.
    """

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
            entry.make_room = lambda incoming: self._make_room(incoming, keep=key)
            self._entries[key] = entry
            self._evict(incoming=0, keep=key)
            return entry

    def _make_room(self, incoming: int, *, keep: tuple[str, str]) -> None:
        with self._lock:
            if keep in self._entries:
                self._entries.move_to_end(keep)  # the model growing is in use: the others go first
            self._evict(incoming=incoming, keep=keep)

    def cached_keys(self) -> list[tuple[str, str]]:
        """Cached (folder, device) pairs, least recently used first."""
        return list(self._entries)

    @property
    def total_bytes(self) -> int:
        return sum(entry.total_bytes for entry in self._entries.values())

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


def warm(
    folder: Path | str,
    device: str | None = None,
    *,
    rows: int = DEFAULT_STATIC_ROWS,
    cache: ModelCache | None = None,
    compile: bool | None = None,
    ahead: bool = True,
) -> LoadedModel:
    """Load a checkpoint and make its static decoder: a KV pool of `rows` slots and, with
    `compile` (default: on CUDA), a CUDA graph per batch-size bucket and context window, captured
    now when `ahead` (a few seconds per model) or else on first use. For a GPU worker's start.

    A step that fails to capture runs eagerly, with one warning; serving goes on.
    """
    loaded = (cache if cache is not None else get_default_cache()).get(folder, pick_device(device))
    compile = loaded.device.startswith("cuda") if compile is None else compile
    decoder = loaded.static
    if loaded.static_failed:
        return loaded  # a worker warms on every batch: one failed pool is one warning, not one per batch
    if decoder is None or decoder.rows != bucket_for(rows) or decoder.compile != compile:
        decoder = loaded.make_static(rows, compile)
    if decoder is not None and ahead and compile and decoder.claim(warm):
        try:
            decoder.warm()
        finally:
            decoder.release_owner(warm)
    return loaded


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class _Row:
    """One sample being decoded: a request expands to num_samples rows."""

    key: Hashable
    index: int
    params: SamplingParams
    generator: torch.Generator | None
    tokens: list[int]


@dataclass
class _Request:
    """A request in a running batch: its rows still decoding and the samples already finished."""

    request: GenerationRequest
    prompt_tokens: int
    open_rows: int
    samples: list[SampleResult]


def _row_seed(seed: int, index: int) -> int:
    # Hashing keeps the streams of samples 0, 1, 2... of one seed unrelated to each other.
    digest = hashlib.sha256(f"{seed}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def left_padded(rows: list[list[int]], *, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows as one batch, right-aligned: (input ids, attention mask), padding masked out."""
    width = max(len(ids) for ids in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for n, ids in enumerate(rows):
        input_ids[n, width - len(ids) :] = torch.tensor(ids)
        mask[n, width - len(ids) :] = 1
    return input_ids, mask


def _pad_left(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """`tensor` widened to `width` along `dim` with zeros in front (padding the attention mask hides)."""
    missing = width - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


class RunningBatch:
    """Rows being decoded on one loaded checkpoint; requests join between steps and leave as they end.

    Iteration-level batching: a row that reaches end of text or its own limit leaves at that step
    (its KV-cache row dropped), and a request admitted between steps is prefilled on its own and
    merged into the running cache, left-padded so that every row appends one column per step.
    Each row keeps its own sampling parameters and random stream, so a seeded request gives the
    same samples alone, batched from the start or joining mid-flight.

    With `static` (default: on CUDA) the rows decode through the model's StaticDecoder instead,
    each in a slot of its preallocated KV pool, with fixed-shape steps a GPU replays as CUDA
    graphs. The batch falls back to the dynamic cache when the decoder is busy with another batch
    or the rows outgrow its pool. Both paths give the same tokens.

    With a `watermark` key, every sampled row is generated with that key's green-list watermark
    (see inference.watermark); it shifts logits only, so the random streams stay as they were.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        max_rows: int = 0,
        static: bool | None = None,
        watermark: WatermarkKey | None = None,
    ) -> None:
        self.loaded = loaded
        self.max_rows = max_rows
        self.watermark = watermark
        self.static = loaded.device.startswith("cuda") if static is None else static
        self._decoder: StaticDecoder | None = None  # held while rows decode through it
        self._slots: list[int] = []  # per row: its slot in the decoder
        self.rows: list[_Row] = []
        self.requests: dict[Hashable, _Request] = {}
        self.steps = 0
        self._cache: Cache | None = None
        self._mask = torch.zeros((0, 0), dtype=torch.long, device=loaded.device)
        self._next = torch.zeros((0,), dtype=torch.long, device=loaded.device)
        self._sampler: _Sampler | None = None

    def __len__(self) -> int:
        """Requests still decoding."""
        return len(self.requests)

    @property
    def room(self) -> int:
        """Rows that may still join (a batch with no limit always has room)."""
        return max(self.max_rows - len(self.rows), 0) if self.max_rows else 2**31

    def refusal(self, request: GenerationRequest) -> str | None:
        """Why `request` cannot run on this checkpoint at all, or None."""
        if request.key in self.requests:
            return f"request {request.key!r} is already in this batch"
        prompt = len(_encode(self.loaded.tokenizer, request.prompt))
        if prompt + request.params.max_new_tokens > self.loaded.n_positions:
            return (
                f"request {request.key!r}: {prompt} prompt tokens plus max_new_tokens "
                f"{request.params.max_new_tokens} exceed the context of {self.loaded.n_positions}"
            )
        return None

    def progress(self) -> dict[Hashable, int]:
        """New tokens so far per request still decoding."""
        counts = {key: sum(s.token_count for s in state.samples) for key, state in self.requests.items()}
        for row in self.rows:
            counts[row.key] += len(row.tokens)
        return counts

    @torch.inference_mode()
    def add(self, requests: list[GenerationRequest]) -> list[RequestResult]:
        """Prefill `requests` and merge them in; returns those already finished by their first token.

        Raises ValueError (nothing admitted) when one cannot run, GenerationOOM (nothing admitted,
        the running rows intact) when the prefill runs out of memory.
        """
        if not requests:
            return []
        if len({r.key for r in requests}) != len(requests):
            raise ValueError("request keys must be unique within a batch")
        for request in requests:
            reason = self.refusal(request)
            if reason:
                raise ValueError(reason)
        tokenizer, device, eos = self.loaded.tokenizer, self.loaded.device, self.loaded.eos_token_id
        prompts = [_encode(tokenizer, r.prompt) for r in requests]
        rows: list[_Row] = []
        owners: list[int] = []  # per new row: which prompt of this prefill it continues
        for n, request in enumerate(requests):
            params = request.params
            for index in range(params.num_samples):
                generator = None
                if params.temperature > 0:
                    seed = secrets.randbits(63) if params.seed is None else _row_seed(params.seed, index)
                    generator = torch.Generator().manual_seed(seed)
                rows.append(_Row(request.key, index, params, generator, []))
                owners.append(n)

        # One prefill row per prompt, its cache then repeated for each sample of that prompt.
        input_ids, mask = left_padded(prompts, pad=eos)
        input_ids, mask = input_ids.to(device), mask.to(device)
        try:
            _inject_fault(self.steps)
            out = self.loaded.model(
                input_ids=input_ids,
                attention_mask=mask,
                # Positions count real tokens only, so a padded row sees the positions it would see alone.
                position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                use_cache=True,
                logits_to_keep=1,  # the prompt's other positions need no logits
            )
        except torch.OutOfMemoryError:
            oom = True
        else:
            oom = False
        if oom:  # outside the except block, the frames holding the tensors are gone
            _free_memory()
            raise GenerationOOM(len(rows))

        expand = torch.tensor(owners, device=device)
        new_cache: Cache = out.cache
        _kv_apply(new_cache, lambda kv: kv[expand])
        # A row's first token follows its prompt's last one, which seeds its first green list.
        previous = torch.tensor([prompts[n][-1] for n in owners], device=device)
        first = _Sampler(rows, device, self.watermark).choose(out.logits[expand, -1, :].float(), previous)
        self._merge(new_cache, mask[expand], rows)
        for n, request in enumerate(requests):
            self.requests[request.key] = _Request(request, len(prompts[n]), request.params.num_samples, [])
        return self._advance(first, start=len(self.rows) - len(rows))

    @torch.inference_mode()
    def step(self) -> list[RequestResult]:
        """One decoding step for every row; returns the requests that finished in it.

        Raises GenerationOOM (the batch intact, as before the step) when the step runs out of memory.
        """
        if not self.rows:
            return []
        if self._decoder is not None:
            return self._static_step()
        width = self._mask.shape[1]
        mask = torch.cat([self._mask, self._mask.new_ones((len(self.rows), 1))], dim=-1)
        try:
            _inject_fault(self.steps)
            out = self.loaded.model(
                input_ids=self._next[:, None],
                attention_mask=mask,
                position_ids=mask.sum(-1, keepdim=True) - 1,
                # transformers 5 names the KV cache `cache`, in and out; `past_key_values` is deprecated.
                cache=self._cache,
                use_cache=True,
            )
        except torch.OutOfMemoryError:
            oom = True
        else:
            oom = False
        if oom:
            # Layers the step reached grew by one column: cut them back so the batch can go on.
            assert self._cache is not None
            _kv_apply(self._cache, lambda kv: kv[..., :width, :])
            _free_memory()
            raise GenerationOOM(len(self.rows))
        self._cache, self._mask = out.cache, mask
        self.steps += 1
        if self._sampler is None:
            self._sampler = _Sampler(self.rows, self.loaded.device, self.watermark)
        return self._advance(self._sampler.choose(out.logits[:, -1, :].float(), self._next), start=0)

    def _static_step(self) -> list[RequestResult]:
        assert self._decoder is not None
        try:
            _inject_fault(self.steps)
            # The decoder undoes its own changes when the step raises.
            logits = self._decoder.step(self._next, self._slots)
        except torch.OutOfMemoryError:
            oom = True
        else:
            oom = False
        if oom:
            _free_memory()
            raise GenerationOOM(len(self.rows))
        self.steps += 1
        if self._sampler is None:
            self._sampler = _Sampler(self.rows, self.loaded.device, self.watermark)
        return self._advance(self._sampler.choose(logits.float(), self._next), start=0)

    def cancel(self, keys: AbstractSet[Hashable]) -> list[RequestResult]:
        """Stop these requests now; each keeps the tokens it has, marked cancelled."""
        keys = {key for key in keys if key in self.requests}
        if not keys:
            return []
        for row in self.rows:
            if row.key in keys:
                self._finish_row(row)
        self._keep([i for i, row in enumerate(self.rows) if row.key not in keys])
        return [self._result(key, cancelled=True) for key in keys]

    def shed(self, rows: int) -> list[GenerationRequest]:
        """Drop the most recently joined requests until at most `rows` rows remain; returns them unfinished.

        Their tokens are discarded: run again later, a seeded request gives the same samples.
        """
        dropped: list[GenerationRequest] = []
        for key in reversed(list(self.requests)):
            if len(self.rows) <= rows or len(self.requests) == 1:
                break
            dropped.append(self.requests.pop(key).request)
            self._keep([i for i, row in enumerate(self.rows) if row.key != key])
        return dropped[::-1]

    def _advance(self, tokens: torch.Tensor, *, start: int) -> list[RequestResult]:
        """Append sampled tokens to rows from `start` on, drop the rows that ended, return finished requests."""
        eos = self.loaded.eos_token_id
        keep: list[int] = list(range(start))
        finished: list[Hashable] = []
        for i, token in enumerate(tokens.tolist(), start=start):
            row = self.rows[i]
            if token != eos:
                row.tokens.append(token)
            if token == eos or len(row.tokens) >= row.params.max_new_tokens:
                if self._finish_row(row):
                    finished.append(row.key)
            else:
                keep.append(i)
        self._next[start:] = tokens
        if len(keep) < len(self.rows):
            self._keep(keep)
        return [self._result(key, cancelled=False) for key in finished]

    def _finish_row(self, row: _Row) -> bool:
        """Keep a row's sample; True when it was its request's last open row."""
        state = self.requests[row.key]
        text = cast(
            str, self.loaded.tokenizer.decode(row.tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        )
        watermarked = self.watermark is not None and row.generator is not None
        state.samples.append(SampleResult(row.index, text, len(row.tokens), tuple(row.tokens), watermarked))
        state.open_rows -= 1
        return state.open_rows == 0

    def _result(self, key: Hashable, *, cancelled: bool) -> RequestResult:
        state = self.requests.pop(key)
        samples = sorted(state.samples, key=lambda s: s.index)
        return RequestResult(key, samples, state.prompt_tokens, sum(s.token_count for s in samples), cancelled)

    def _merge(self, cache: Cache, mask: torch.Tensor, rows: list[_Row]) -> None:
        """Append prefilled rows, left-padding whichever side is narrower (or into free static slots)."""
        self._sampler = None
        if not self.rows:
            self._claim_decoder()
        if self._decoder is not None and len(rows) > self._decoder.free:
            self._leave_decoder()
        if self._decoder is not None:
            slots = self._decoder.allocate(len(rows))
            kv = _kv_layers(cache)
            self._decoder.admit(slots, kv[0::2], kv[1::2], mask)
            self._slots = self._slots + slots
            self._next = torch.cat([self._next, self._next.new_zeros(len(rows))])
            self.rows = self.rows + rows
            return
        if self._cache is None or not self.rows:
            self._cache, self._mask, self.rows = cache, mask, rows
            self._next = torch.zeros((len(rows),), dtype=torch.long, device=mask.device)
            return
        width = max(self._mask.shape[1], mask.shape[1])
        theirs = iter(_kv_layers(cache))
        _kv_apply(self._cache, lambda kv: torch.cat([_pad_left(kv, width, -2), _pad_left(next(theirs), width, -2)]))
        self._mask = torch.cat([_pad_left(self._mask, width, 1), _pad_left(mask, width, 1)])
        self._next = torch.cat([self._next, self._next.new_zeros(len(rows))])
        self.rows = self.rows + rows

    def _keep(self, indices: list[int]) -> None:
        """Keep only these rows, and drop leading columns that are padding for every row left."""
        self._sampler = None
        self.rows = [self.rows[i] for i in indices]
        if self._decoder is not None:
            kept = set(indices)
            self._decoder.release([slot for i, slot in enumerate(self._slots) if i not in kept])
            self._slots = self._decoder.repack([self._slots[i] for i in indices])
            if not indices:
                self._leave_decoder()
        if not indices:
            self._cache = None
            self._mask = self._mask[:0, :0]
            self._next = self._next[:0]
            return
        index = torch.tensor(indices, device=self._next.device)
        if self._decoder is not None:
            self._next = self._next[index]
            return
        mask = self._mask[index]
        first = int(mask.any(0).int().argmax())
        self._mask, self._next = mask[:, first:], self._next[index]
        if self._cache is not None:
            _kv_apply(self._cache, lambda kv: kv[index, :, first:, :])

    def _claim_decoder(self) -> None:
        """Decode through the model's static decoder from now on, when this batch should and may."""
        self._leave_decoder()
        if not self.static:
            return
        decoder = self.loaded.static
        if decoder is None and not self.loaded.static_failed:
            rows = bucket_for(min(self.max_rows, BUCKETS[-1])) if self.max_rows else DEFAULT_STATIC_ROWS
            decoder = self.loaded.make_static(rows, compile=self.loaded.device.startswith("cuda"))
        if decoder is not None and decoder.claim(self):
            self._decoder, self._slots, self._cache = decoder, [], None

    def _leave_decoder(self) -> None:
        """Move the rows (if any) from the static decoder into a dynamic cache, and let the decoder go."""
        decoder, self._decoder = self._decoder, None
        if decoder is None:
            return
        if self.rows:
            keys, values, self._mask = decoder.export(self._slots)
            self._cache = DynamicCache(config=self.loaded.model.config)
            for layer, (layer_keys, layer_values) in enumerate(zip(keys, values, strict=True)):
                self._cache.update(layer_keys, layer_values, layer)
        self._slots = []
        decoder.release_owner(self)


def _kv_layers(cache: Cache) -> list[torch.Tensor]:
    """Every block's keys then values, in the order _kv_apply visits them."""
    tensors: list[torch.Tensor] = []
    for layer in cache.layers:
        layer = cast(DynamicLayer, layer)  # GPT-2's blocks all cache into a DynamicLayer
        if layer.is_initialized and layer.keys is not None and layer.values is not None:
            tensors += [layer.keys, layer.values]
    return tensors


def _kv_apply(cache: Cache, change: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Replace every block's keys and values [rows, heads, columns, head_dim] with change(them)."""
    for layer in cache.layers:
        layer = cast(DynamicLayer, layer)
        if layer.is_initialized and layer.keys is not None and layer.values is not None:
            layer.keys, layer.values = change(layer.keys), change(layer.values)


def _inject_fault(step: int) -> None:
    if _fault_injector is not None:
        _fault_injector(step)


def generate(
    folder: Path | str,
    requests: list[GenerationRequest],
    *,
    device: str | None = None,
    cache: ModelCache | None = None,
    max_rows: int = 0,
    longest_first: bool = False,
    watermark: WatermarkKey | None = None,
    on_progress: Callable[[dict[Hashable, int]], None] | None = None,
    should_cancel: Callable[[], AbstractSet[Hashable]] | None = None,
    progress_interval_s: float = 0.5,
) -> list[RequestResult]:
    """Run `requests` against one checkpoint, results in request order.

    With `max_rows`, at most that many rows decode at once and waiting requests join, in order,
    as rows leave; 0 runs them all together. With `longest_first`, they join the longest (most new
    tokens) first, as the worker takes queued jobs (services.jobs_claim): the last steps then decode
    several rows instead of one long job alone. `on_progress` gets new tokens so far per key, at most
    every `progress_interval_s`. `should_cancel` is polled between steps; the keys it returns stop
    and keep what they have. With `watermark`, sampled rows carry that key's watermark.
    Raises GenerationOOM when the device runs out of memory, after freeing it.
    """
    if not requests:
        return []
    if len({r.key for r in requests}) != len(requests):
        raise ValueError("request keys must be unique within a batch")
    loaded = (cache if cache is not None else get_default_cache()).get(folder, pick_device(device))
    batch = RunningBatch(loaded, max_rows=max_rows, watermark=watermark)
    for request in requests:
        reason = batch.refusal(request)
        if reason:
            raise ValueError(reason)
    waiting = list(requests)
    if longest_first:  # stable: equal lengths keep their order
        waiting.sort(key=lambda request: -request.params.max_new_tokens)
    results: dict[Hashable, RequestResult] = {}
    last_progress = time.monotonic()
    while waiting or batch:
        joining: list[GenerationRequest] = []
        room = batch.room
        while waiting and (waiting[0].params.num_samples <= room or not (batch or joining)):
            room -= waiting[0].params.num_samples
            joining.append(waiting.pop(0))
        finished = batch.add(joining)
        if should_cancel is not None:
            cancelled = set(should_cancel())
            finished += batch.cancel(cancelled)
            for request in [r for r in waiting if r.key in cancelled]:
                waiting.remove(request)
                results[request.key] = RequestResult(request.key, [], 0, 0, cancelled=True)
        finished += batch.step()
        results.update((result.key, result) for result in finished)
        now = time.monotonic()
        if on_progress is not None and now - last_progress >= progress_interval_s:
            last_progress = now
            on_progress(
                {**{r.key: 0 for r in waiting}, **{r.key: r.new_tokens for r in results.values()}, **batch.progress()}
            )
    return [results[r.key] for r in requests]


def mix32_tensor(x: torch.Tensor) -> torch.Tensor:
    """inference.watermark.mix32 on every element of an int64 tensor of 32-bit values."""
    x = x ^ (x >> 16)
    x = (x * MULTIPLIER) & MASK32
    x = x ^ (x >> 16)
    x = (x * MULTIPLIER) & MASK32
    return x ^ (x >> 16)


def _as_int32(x: torch.Tensor) -> torch.Tensor:
    """32-bit values held in int64, as int32 with the same bits (values from 2**31 up turn negative)."""
    return (x - ((x >> 31) << 32)).to(torch.int32)


@lru_cache(maxsize=16)
def _token_parts(key: WatermarkKey, vocab: int, device: str) -> torch.Tensor:
    """The token half of the green-list hash for a whole vocabulary (int32), computed once per key."""
    return _as_int32(mix32_tensor(torch.arange(vocab, dtype=torch.long, device=device) ^ key.token_salt))


def green_mask(key: WatermarkKey, previous: torch.Tensor, vocab: int) -> torch.Tensor:
    """[rows, vocab]: True where a token is green after each row's previous token.

    inference.watermark.combine in int32, whose multiplication wraps modulo 2**32 as `& MASK32` does:
    a quarter of the cost of the same in int64, which matters at GPT-2's 50,257 tokens a row.
    """
    tokens = _token_parts(key, vocab, str(previous.device))
    x = tokens[None, :] ^ _as_int32(mix32_tensor(previous.long() ^ key.previous_salt))[:, None]
    x = x * MULTIPLIER
    x = x ^ ((x >> 16) & 0xFFFF)  # a logical shift: int32's >> copies the sign bit
    x = x * MULTIPLIER
    return (x >= 0) & (x < GREEN_BELOW)  # unsigned x < GREEN_BELOW, which is at most 2**31


class _Sampler:
    """Applies each row's watermark, temperature, top-k and top-p, and draws from that row's own stream."""

    def __init__(self, rows: list[_Row], device: str, watermark: WatermarkKey | None = None) -> None:
        self.rows = rows
        self.watermark = watermark
        # Sampled rows carry the watermark; a greedy row's argmax is left exactly as it was.
        self.marked = torch.tensor([row.generator is not None for row in rows], device=device)[:, None]
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

    def choose(self, logits: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """The next token per row; `previous` holds each row's last token (for the watermark)."""
        greedy_tokens = logits.argmax(dim=-1)
        if self.all_greedy:
            return greedy_tokens
        if self.watermark is not None:
            # Before temperature, as in the paper and transformers' processor: the bias is in logits.
            green = green_mask(self.watermark, previous, logits.shape[-1]) & self.marked
            logits = logits + DELTA * green
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
            if row.generator is not None:
                draws[i, 0] = torch.rand((), generator=row.generator)
        cdf = probs.cumsum(dim=-1)
        targets = draws.to(logits.device) * cdf[:, -1:]
        sampled = torch.searchsorted(cdf, targets, right=True).squeeze(-1)
        # Rounding can put a draw at the very top of the CDF; fall back to the last allowed token.
        last_allowed = logits.shape[-1] - 1 - (probs.flip(-1) > 0).int().argmax(dim=-1)
        sampled = torch.minimum(sampled, last_allowed)
        return torch.where(self.greedy, greedy_tokens, sampled)
