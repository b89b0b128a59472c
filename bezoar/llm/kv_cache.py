"""The running batch's KV cache: one buffer per layer with room to grow, written in place.

transformers' `DynamicLayer` appends a step's keys and values with `torch.cat`, which copies the whole
cache of every layer at every decoded token. Here each layer keeps a buffer with spare columns and a
step writes one column into it; the cache handed to attention is a view (`keys`, `values`) of the
filled columns. Rows joining the batch (`merge`), rows leaving it (`select`) and columns that became
padding in every row (`trim`) cost one copy each, or none (`trim` only moves the view's start).

Like the plain `DynamicCache` built from tensors that it replaces, it keeps every column: models with
sliding-window layers attend over their whole history here.
"""
from __future__ import annotations

import torch  # imported only by `bezoar.llm.continuous` when it decodes
from transformers.cache_utils import Cache, DynamicLayer

SPARE = 64
"""Columns of room a buffer gets when made or grown: a copy every 64 tokens instead of every token."""


class GrowingLayer(DynamicLayer):
    """A layer's keys and values as views of buffers [batch, heads, capacity, head_dim], kept in `dtype`
    (None: the model's)."""

    def __init__(self, dtype: torch.dtype | None = None):
        super().__init__()
        self.dtype = dtype
        self.buffers: tuple[torch.Tensor, torch.Tensor] | None = None
        self.start = self.end = 0

    @property
    def held(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The (keys, values) buffers, made by the first update (or by `stacking`, `rows_of`)."""
        if self.buffers is None:
            raise RuntimeError("GrowingLayer: read before its first update")
        return self.buffers

    @classmethod
    def stacking(cls, first: "GrowingLayer", second: "GrowingLayer", length: int) -> "GrowingLayer":
        """The rows of `first`, then those of `second`, each left-padded with zeros to `length` columns (the
        padding is masked out, but must hold numbers: a masked NaN would still poison the softmax)."""
        layer, rows = cls(first.dtype), first.keys.shape[0]
        layer._allocate(first.keys, first.values, length, rows=rows + second.keys.shape[0])
        for buffer, upper, lower in zip(layer.held, (first.keys, first.values), (second.keys, second.values)):
            buffer[:, :, :length].zero_()
            buffer[:rows, :, length - upper.shape[-2]:length] = upper
            buffer[rows:, :, length - lower.shape[-2]:length] = lower
        layer._show(0, length)
        return layer

    @classmethod
    def rows_of(cls, other: "GrowingLayer", index: torch.Tensor) -> "GrowingLayer":
        """The rows at `index` of `other`, copied once (straight into the new buffers)."""
        layer, length = cls(other.dtype), other.keys.shape[-2]
        layer._allocate(other.keys, other.values, length, rows=len(index))
        for source, buffer in zip((other.keys, other.values), layer.held):
            torch.index_select(source, 0, index, out=buffer[:, :, :length])
        layer._show(0, length)
        return layer

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if self.buffers is None:
            self._allocate(key_states, value_states, key_states.shape[-2])
        elif self.end + key_states.shape[-2] > self.held[0].shape[-2]:
            self._grow(key_states.shape[-2])
        self._fill(key_states, value_states)
        return self.keys, self.values

    def _allocate(self, keys: torch.Tensor, values: torch.Tensor, needed: int, rows: int | None = None) -> None:
        """Empty buffers for `needed` columns and SPARE more (shaped like `keys`, `values` but for the time)."""
        rows = keys.shape[0] if rows is None else rows
        capacity, dtype = needed + SPARE, self.dtype or keys.dtype
        self.buffers = (keys.new_empty((rows, keys.shape[1], capacity, keys.shape[-1]), dtype=dtype),
                        values.new_empty((rows, values.shape[1], capacity, values.shape[-1]), dtype=dtype))
        self.start = self.end = 0
        self.device, self.is_initialized = keys.device, True

    def _grow(self, incoming: int) -> None:
        """Bigger buffers holding the filled columns from their start (the old ones are let go). Half the
        length again on top, so a long generation copies its cache a logarithmic number of times."""
        keys, values = self.keys, self.values
        self._allocate(keys, values, keys.shape[-2] + incoming + keys.shape[-2] // 2)
        self._fill(keys, values)

    def _fill(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        count, (key_buffer, value_buffer) = keys.shape[-2], self.held
        key_buffer[:, :, self.end:self.end + count] = keys
        value_buffer[:, :, self.end:self.end + count] = values
        self._show(self.start, self.end + count)

    def _show(self, start: int, end: int) -> None:
        """Point `keys` and `values` (what attention reads) at the columns [start, end) of the buffers."""
        self.start, self.end = start, end
        key_buffer, value_buffer = self.held
        self.keys, self.values = key_buffer[:, :, start:end], value_buffer[:, :, start:end]


def new_cache(layers: int, dtype: torch.dtype | None = None) -> Cache:
    """An empty cache for a prefill, kept in `dtype` (None: the model's); each layer allocates on its first
    update. A bf16 model decoding on the CPU keeps it in fp32: attention runs in fp32 there
    (bezoar.llm.attention), and casting the whole cache to fp32 at every step cost 17% of a step."""
    return Cache(layers=[GrowingLayer(dtype) for _ in range(layers)])


def merge(cache: Cache, mask: torch.Tensor, joining: Cache, joining_mask: torch.Tensor) -> tuple[Cache, torch.Tensor]:
    """Both batches' rows in one cache, the shorter history left-padded (and masked out)."""
    import torch.nn.functional as F

    length = max(mask.shape[1], joining_mask.shape[1])
    layers = [GrowingLayer.stacking(old, new, length) for old, new in zip(cache.layers, joining.layers)]
    masks = torch.cat([F.pad(mask, (length - mask.shape[1], 0)), F.pad(joining_mask, (length - joining_mask.shape[1], 0))])
    return Cache(layers=layers), masks


def select(cache: Cache, index: torch.Tensor) -> Cache:
    """Only the rows at `index` (the others finished)."""
    return Cache(layers=[GrowingLayer.rows_of(layer, index) for layer in cache.layers])


def trim(cache: Cache, mask: torch.Tensor) -> tuple[Cache, torch.Tensor]:
    """Drop leading columns that are padding in every row (no copy: the views start later), so that
    attention does not read a history that grows without bound as rows come and go."""
    first = int(torch.argmax((mask.sum(0) > 0).int()))
    if first == 0:
        return cache, mask
    for layer in cache.layers:
        layer._show(layer.start + first, layer.end)
    return cache, mask[:, first:]
