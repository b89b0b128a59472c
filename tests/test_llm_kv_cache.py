"""The decoder's KV cache (written in place) holds exactly what transformers' concatenating cache holds,
through growth, rows joining, rows leaving and trimming."""
from __future__ import annotations

import torch

from bezoar.llm import kv_cache
from bezoar.llm.kv_cache import GrowingLayer, merge, new_cache, select, trim


def _states(rows: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, 3, length, 8, generator=generator), torch.randn(rows, 3, length, 8, generator=generator))


def test_steps_append_in_place_and_growth_keeps_every_column():
    layer, keys, values = GrowingLayer(), *_states(2, 5, 0)
    got = layer.update(keys, values)
    buffer = layer.buffers[0]
    for step in range(kv_cache.SPARE + 10):  # past the first buffer's spare room
        new_keys, new_values = _states(2, 1, step + 1)
        keys, values = torch.cat([keys, new_keys], 2), torch.cat([values, new_values], 2)
        got = layer.update(new_keys, new_values)
        if step < kv_cache.SPARE - 5:
            assert layer.buffers[0] is buffer  # written in place while there is room
    assert layer.buffers[0] is not buffer and layer.buffers[0].shape[2] > keys.shape[2]  # grew once, with room
    assert torch.equal(got[0], keys) and torch.equal(got[1], values) and layer.get_seq_length() == keys.shape[2]


def test_rows_join_leave_and_padding_columns_are_trimmed():
    old, joining = new_cache(2), new_cache(2)
    old_states = [_states(2, 6, seed) for seed in (1, 2)]
    new_states = [_states(1, 4, seed) for seed in (3, 4)]
    for cache, states in ((old, old_states), (joining, new_states)):
        for index, (keys, values) in enumerate(states):
            cache.layers[index].update(keys, values)
    merged, mask = merge(old, torch.ones(2, 6, dtype=torch.long), joining, torch.ones(1, 4, dtype=torch.long))
    assert mask.tolist()[2] == [0, 0, 1, 1, 1, 1]
    for layer, (keys, _), (joining_keys, _) in zip(merged.layers, old_states, new_states):
        assert torch.equal(layer.keys[:2], keys)
        assert torch.equal(layer.keys[2:, :, 2:], joining_keys) and not layer.keys[2:, :, :2].any()  # zeros, masked

    kept = select(merged, torch.tensor([2]))  # the two old rows finished
    trimmed, kept_mask = trim(kept, mask.index_select(0, torch.tensor([2])))
    assert kept_mask.tolist() == [[1, 1, 1, 1]]
    for layer, (joining_keys, joining_values) in zip(trimmed.layers, new_states):
        assert torch.equal(layer.keys, joining_keys) and torch.equal(layer.values, joining_values)
        step_keys, step_values = _states(1, 1, 9)
        keys, values = layer.update(step_keys, step_values)  # decoding goes on after a trim
        assert torch.equal(keys, torch.cat([joining_keys, step_keys], 2))
        assert torch.equal(values, torch.cat([joining_values, step_values], 2))
