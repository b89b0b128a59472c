"""The decode-step attention (`bezoar.llm.attention.grouped_decode_attention`) computes what transformers'
SDPA path computes: one query per row over grouped key/value heads, with a padding mask in each form
transformers hands it (boolean, additive, none), and in the layout transformers' attention functions return."""
from __future__ import annotations

import torch
from transformers.integrations.sdpa_attention import repeat_kv

from bezoar.llm.attention import grouped_decode_attention

ROWS, HEADS, KV_HEADS, LENGTH, DIM = 5, 9, 3, 17, 64


def _reference(query, key, value, bool_mask):
    groups = HEADS // KV_HEADS
    out = torch.nn.functional.scaled_dot_product_attention(query, repeat_kv(key, groups), repeat_kv(value, groups),
                                                           attn_mask=bool_mask)
    return out.transpose(1, 2)  # [rows, 1, heads, dim]


def test_decode_attention_matches_sdpa_with_every_mask_form():
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(ROWS, HEADS, 1, DIM, generator=generator)
    buffer = torch.randn(2, ROWS, KV_HEADS, LENGTH + 8, DIM, generator=generator)
    key, value = buffer[0, :, :, 3:3 + LENGTH], buffer[1, :, :, 3:3 + LENGTH]  # views into a cache's buffers
    padding = torch.arange(LENGTH) >= torch.tensor([0, 2, 5, 9, 16]).view(ROWS, 1)  # left padding per row
    bool_mask = padding.view(ROWS, 1, 1, LENGTH)
    additive = torch.zeros(ROWS, 1, 1, LENGTH).masked_fill(~bool_mask, torch.finfo(torch.float32).min)
    expected = _reference(query, key, value, bool_mask)
    for mask in (bool_mask, additive):
        got = grouped_decode_attention(query, key, value, mask, DIM ** -0.5)
        assert got.shape == (ROWS, 1, HEADS, DIM)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    unmasked = grouped_decode_attention(query, key, value, None, None)
    torch.testing.assert_close(unmasked, _reference(query, key, value, None), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(unmasked, expected)  # the mask mattered
