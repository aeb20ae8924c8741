"""Decode steps of a fixed shape over a preallocated KV cache, so a GPU can replay them as CUDA graphs.

Django-free, like the engine that uses it. A GPT-2 decode step is bound by memory bandwidth (every
weight is read once per step), but in eager PyTorch the Python and kernel-launch overhead of a
small step costs more than the reads. A CUDA graph replays the step's kernels without either; it
needs every tensor the step touches at a fixed address and shape. So:

- keys and values live in one preallocated pool per layer, [rows, heads, n_positions, head_dim];
- a row of the running batch owns a *slot* (a row of the pool) from its prefill to its last token;
- every slot writes its new key and value at one shared column `t`, held in a device tensor so one
  graph serves every column; each slot's real tokens end at column t - 1, left-padded like the
  dynamic path's cache, and a boolean mask [rows, n_positions] marks them;
- the step runs on the first `bucket` slots (1, 2, 4 ... 64) and the first `window` columns
  (64, 128 ... n_positions): one graph per (bucket, window), so a batch of three rows early in
  its context reads a little more than three rows' worth of cache, not the whole pool.

When `t` reaches the end of the window while the oldest slot starts well to the right of column 0,
everything shifts left to start at 0 (compaction); a prompt longer than `t` shifts everything right.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import Cache, GPT2LMHeadModel
from transformers.cache_utils import CacheLayerMixin

logger = logging.getLogger(__name__)

BUCKETS = (1, 2, 4, 8, 16, 32, 64)
SMALLEST_WINDOW = 64

_Step = Callable[[], torch.Tensor]


def bucket_for(rows: int) -> int:
    """The smallest bucket holding `rows` rows (the largest bucket when none does)."""
    return next((bucket for bucket in BUCKETS if bucket >= rows), BUCKETS[-1])


class _SlotLayer(CacheLayerMixin):
    """One layer's window on the pool: the step writes its column `t`, attention reads the window."""

    is_compileable = True

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, column: torch.Tensor) -> None:
        super().__init__()
        self.keys, self.values, self.column = keys, values, column
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Nothing to allocate: the pool exists before the first step."""

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # In place, at a device-held column: the same kernels serve every step.
        assert self.keys is not None and self.values is not None
        self.keys.index_copy_(2, self.column, key_states)
        self.values.index_copy_(2, self.column, value_states)
        return self.keys, self.values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        assert self.keys is not None
        return self.keys.shape[-2], 0

    def get_seq_length(self) -> int:
        assert self.keys is not None
        return self.keys.shape[-2]

    def get_max_length(self) -> int:
        assert self.keys is not None
        return self.keys.shape[-2]


class StaticDecoder:
    """A preallocated KV pool of `rows` slots and the fixed-shape decode steps that run on it.

    With `compile`, each (bucket, window) step is captured as a CUDA graph on a CUDA device and
    compiled with torch.compile elsewhere; a step that fails to capture or compile runs eagerly,
    with one warning. One running batch at a time owns the decoder (`claim`, `release_owner`).
    """

    def __init__(self, model: GPT2LMHeadModel, *, rows: int, compile: bool) -> None:
        config = model.config
        weight = next(model.parameters())
        self.model = model
        self.device = weight.device
        self.rows = bucket_for(rows)
        self.n_positions: int = config.n_positions
        self.compile = compile
        heads, head_dim = config.n_head, config.n_embd // config.n_head
        shape = (self.rows, heads, self.n_positions, head_dim)
        self.keys = [torch.zeros(shape, dtype=weight.dtype, device=self.device) for _ in range(config.n_layer)]
        self.values = [torch.zeros(shape, dtype=weight.dtype, device=self.device) for _ in range(config.n_layer)]
        self.mask = torch.zeros((self.rows, self.n_positions), dtype=torch.bool, device=self.device)
        self.ids = torch.zeros((self.rows, 1), dtype=torch.long, device=self.device)
        # (Every method that writes these runs in inference mode: a pool made inside it, by a batch's
        # first prefill, holds inference tensors, which only inference mode may change in place.)
        self.column = torch.zeros((1,), dtype=torch.long, device=self.device)
        self.t = 0  # the host's copy of the write column: it decides buckets, windows and shifts
        self.starts: dict[int, int] = {}  # occupied slot -> its first real column
        windows: list[int] = []
        window = SMALLEST_WINDOW
        while window < self.n_positions:
            windows.append(window)
            window *= 2
        self.windows = (*windows, self.n_positions)
        # GPT-2's eager attention adds its mask to the scores; SDPA takes a boolean one.
        self._additive = config._attn_implementation not in ("sdpa", "flex_attention")
        self._steps: dict[tuple[int, int], _Step] = {}
        self._graph_pool: Any = None
        self._warned = False
        self.shifts = 0  # how often the pool was shifted (compaction, or room for a long prompt)
        self.eager_steps: set[tuple[int, int]] = set()  # those that failed to capture or compile
        self._index: tuple[tuple[int, ...], torch.Tensor] | None = None
        self._owner: object | None = None
        self._lock = threading.Lock()

    # Ownership -----------------------------------------------------------------------------

    def claim(self, owner: object) -> bool:
        """Take the decoder for `owner` (emptied first); False when another owner holds it."""
        with self._lock:
            if self._owner is not None and self._owner is not owner:
                return False
            self._owner = owner
        self.reset()
        return True

    def release_owner(self, owner: object) -> None:
        with self._lock:
            if self._owner is owner:
                self._owner = None

    @property
    def nbytes(self) -> int:
        """Device memory the pool holds, counted in the model cache's budget."""
        return self.pool_bytes(self.model, self.rows)

    @staticmethod
    def pool_bytes(model: GPT2LMHeadModel, rows: int) -> int:
        """What a decoder of `rows` slots on `model` allocates: keys and values for every layer."""
        config = model.config
        itemsize = next(model.parameters()).element_size()
        return 2 * config.n_layer * bucket_for(rows) * config.n_positions * config.n_embd * itemsize

    @torch.inference_mode()
    def reset(self) -> None:
        """Free every slot; the pool's contents are left as they are (the mask hides them)."""
        self.starts.clear()
        self.mask.zero_()
        self.t = 0

    # Slots ---------------------------------------------------------------------------------

    @property
    def free(self) -> int:
        return self.rows - len(self.starts)

    def allocate(self, count: int) -> list[int]:
        """The `count` lowest free slots (not yet occupied: `admit` fills them)."""
        slots = [slot for slot in range(self.rows) if slot not in self.starts][:count]
        if len(slots) < count:
            raise ValueError(f"{count} rows do not fit in the {self.free} free slots of this decoder")
        return slots

    @torch.inference_mode()
    def admit(
        self, slots: Sequence[int], keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor], mask: torch.Tensor
    ) -> None:
        """Write a prefill's per-layer keys and values [n, heads, P, head_dim] and its mask [n, P]
        into `slots`, ending at column t - 1 like every other slot."""
        width = mask.shape[1]
        if width >= self.n_positions:
            raise ValueError(f"a prompt of {width} tokens leaves no room to decode in {self.n_positions} positions")
        if self.t >= self.n_positions:
            self._compact()
        if self.t < width:
            self._shift(width - self.t)  # right, making room before t for the prompt
        index = torch.tensor(list(slots), device=self.device)
        begin = self.t - width
        for pool_keys, pool_values, new_keys, new_values in zip(self.keys, self.values, keys, values, strict=True):
            pool_keys[index, :, begin : self.t] = new_keys.to(pool_keys.dtype)
            pool_values[index, :, begin : self.t] = new_values.to(pool_values.dtype)
        self.mask[index] = False
        self.mask[index, begin : self.t] = mask.to(device=self.device, dtype=torch.bool)
        lengths = mask.sum(-1).tolist()
        for slot, length in zip(slots, lengths, strict=True):
            self.starts[slot] = self.t - int(length)

    @torch.inference_mode()
    def release(self, slots: Sequence[int]) -> None:
        for slot in slots:
            del self.starts[slot]
        if not self.starts:
            self.reset()

    @torch.inference_mode()
    def repack(self, slots: list[int]) -> list[int]:
        """`slots` (the occupied ones, in the caller's order), moved down when that lets the step
        use a bucket at least four times smaller; returns where each now is."""
        if not slots:
            return slots
        current, wanted = bucket_for(max(slots) + 1), bucket_for(len(slots))
        if wanted * 4 > current:
            return slots  # hysteresis: a batch hovering at a bucket edge is not moved every step
        free = iter(sorted(set(range(wanted)) - set(slots)))
        moved: dict[int, int] = {slot: next(free) for slot in sorted(slots) if slot >= wanted}
        begin = min(self.starts.values())
        source = torch.tensor(list(moved), device=self.device)
        target = torch.tensor(list(moved.values()), device=self.device)
        for pool in (*self.keys, *self.values):
            pool[target, :, begin : self.t] = pool[source, :, begin : self.t]
        self.mask[target] = self.mask[source]
        self.mask[source] = False
        for old, new in moved.items():
            self.starts[new] = self.starts.pop(old)
        return [moved.get(slot, slot) for slot in slots]

    @torch.inference_mode()
    def export(self, slots: Sequence[int]) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """Copies of `slots`' keys, values and mask from their first real column to t, left-padded."""
        begin = min(self.starts[slot] for slot in slots)
        index = torch.tensor(list(slots), device=self.device)
        keys = [pool[index, :, begin : self.t] for pool in self.keys]
        values = [pool[index, :, begin : self.t] for pool in self.values]
        return keys, values, self.mask[index, begin : self.t].long()

    # Steps ---------------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor, slots: Sequence[int]) -> torch.Tensor:
        """Feed `tokens[i]` to `slots[i]` at column t; returns their next-token logits [n, vocab].

        On an exception (out of memory) the decoder is as before the call: column t is only
        unmasked again, its stale keys and values are overwritten by the next step.
        """
        self._fit()
        bucket, window = bucket_for(max(slots) + 1), self._window_for(self.t + 1)
        index = self._slot_index(slots)
        self.ids[:, 0].index_copy_(0, index, tokens)
        # Every slot of the bucket attends to column t: a free slot then never has a fully
        # masked row (which gives NaN in attention); `admit` clears what it leaves behind.
        self.mask[:bucket, self.t] = True
        self.column.fill_(self.t)
        try:
            logits = self._step_for(bucket, window)()
        except BaseException:
            self.mask[:, self.t] = False
            raise
        self.t += 1
        return logits.index_select(0, index)  # a copy: a graph's output is overwritten by its next replay

    def warm(self, buckets: Sequence[int] | None = None, windows: Sequence[int] | None = None) -> int:
        """Capture (or compile) the steps ahead of serving; returns how many ran compiled.

        Only on an empty decoder: the warm-up steps write junk into column 0 of every slot.
        """
        if self.starts:
            raise RuntimeError("warm an empty decoder")
        keys = [(b, w) for b in buckets or [b for b in BUCKETS if b <= self.rows] for w in windows or self.windows]
        with torch.inference_mode():
            for bucket, window in keys:
                self.mask[:bucket, 0] = True
                self.column.fill_(0)
                self._step_for(bucket, window)()
        self.reset()
        return sum(key not in self.eager_steps for key in keys) if self.compile else 0

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """The (bucket, window) steps made so far."""
        return sorted(self._steps)

    def _slot_index(self, slots: Sequence[int]) -> torch.Tensor:
        key = tuple(slots)
        if self._index is None or self._index[0] != key:
            self._index = (key, torch.tensor(key, device=self.device))
        return self._index[1]

    def _window_for(self, columns: int) -> int:
        return next(window for window in self.windows if window >= columns)

    def _fit(self) -> None:
        """Shift left when column t is past the pool, or when that lets the step read a smaller window."""
        if not self.starts:
            return
        begin = min(self.starts.values())
        if self.t >= self.n_positions or self._window_for(self.t + 1 - begin) < self._window_for(self.t + 1):
            self._compact()

    def _compact(self) -> None:
        begin = min(self.starts.values())
        if begin == 0:
            # The context check at admission keeps every row within n_positions, so this is a bug.
            raise RuntimeError("the static KV cache is full")
        self._shift(-begin)

    def _shift(self, by: int) -> None:
        """Move every occupied slot's columns by `by` (right when positive), and t with them."""
        rows = max(self.starts, default=-1) + 1
        begin = min(self.starts.values(), default=self.t)
        if rows and begin < self.t:
            for pool in (*self.keys, *self.values):
                # clone(): the source and target ranges overlap.
                pool[:rows, :, begin + by : self.t + by] = pool[:rows, :, begin : self.t].clone()
            self.mask[:rows, begin + by : self.t + by] = self.mask[:rows, begin : self.t].clone()
        # Columns the shift uncovered hold stale entries: unmask them.
        if by > 0:
            self.mask[:, : begin + by] = False
        else:
            self.mask[:, self.t + by :] = False
        self.starts = {slot: start + by for slot, start in self.starts.items()}
        self.t += by
        self.shifts += 1

    def _step_for(self, bucket: int, window: int) -> _Step:
        step = self._steps.get((bucket, window))
        if step is None:
            step = self._steps[bucket, window] = self._build(bucket, window)
        return step

    def _build(self, bucket: int, window: int) -> _Step:
        model, dtype = self.model, self.keys[0].dtype
        ids, mask = self.ids[:bucket], self.mask[:bucket, :window]
        layers = [
            _SlotLayer(keys[:bucket, :, :window], values[:bucket, :, :window], self.column)
            for keys, values in zip(self.keys, self.values, strict=True)
        ]
        cache = Cache(layers=list(layers))
        additive = self._additive

        def forward() -> torch.Tensor:
            # Positions count real tokens, as on the dynamic path; column t is already in the mask.
            positions = mask.sum(-1, keepdim=True) - 1
            allowed = mask[:, None, None, :]
            # A 4D mask goes to attention as it is: no causal mask to build (one query per row,
            # and the columns after t are unmasked anyway).
            attention: torch.Tensor = allowed
            if additive:
                attention = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
                attention = attention.masked_fill(~allowed, torch.finfo(dtype).min)
            out = model(input_ids=ids, attention_mask=attention, position_ids=positions, cache=cache, use_cache=True)
            logits: torch.Tensor = out.logits[:, -1, :]
            return logits

        if not self.compile:
            return forward
        try:
            if self.device.type == "cuda":
                return self._capture(forward)
            return self._compiled(forward, (bucket, window))
        except Exception as exc:  # any failure to capture or compile: serve eagerly
            self._fall_back((bucket, window), exc)
            return forward

    def _capture(self, forward: _Step) -> _Step:
        # Warm-up on a side stream first, as CUDA graph capture requires; the warm-up steps write
        # column t exactly as the real step will, so capturing during serving changes nothing.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                forward()
        torch.cuda.current_stream().wait_stream(stream)
        if self._graph_pool is None:
            self._graph_pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        # One memory pool for every graph of this decoder: they never run at the same time.
        with torch.cuda.graph(graph, pool=self._graph_pool):
            output = forward()

        def replay() -> torch.Tensor:
            graph.replay()
            return output

        return replay

    def _compiled(self, forward: _Step, key: tuple[int, int]) -> _Step:
        compiled = torch.compile(forward, dynamic=False)
        fallback: list[_Step] = []

        def run() -> torch.Tensor:
            # torch.compile compiles on the first call, so that is where it fails.
            if fallback:
                return fallback[0]()
            try:
                result: torch.Tensor = compiled()
            except Exception as exc:
                self._fall_back(key, exc)
                fallback.append(forward)
                return forward()  # the failed call wrote nothing it would not write again
            return result

        return run

    def _fall_back(self, key: tuple[int, int], exc: Exception) -> None:
        self.eager_steps.add(key)
        if not self._warned:
            self._warned = True
            logger.warning(
                "static decode step (%d rows, %d columns) could not be compiled, running it eagerly: %s: %s",
                *key,
                type(exc).__name__,
                exc,
            )
