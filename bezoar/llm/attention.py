"""Attention in fp32 for a model that decodes in bf16 on the CPU.

PyTorch's CPU flash-attention kernel is far slower in bf16 than in fp32 for the shapes of a decode
step (measured on a 2-core AVX512-BF16 machine, 32 rows x 90 cached tokens, GQA 9/3 heads, 1 thread:
2,228 us in bf16, 288 us in fp32), and a bf16 decode step spent half its time there. So the weights stay
bf16 (half the bytes to read per token) while the decoder keeps its KV cache in fp32
(`bezoar.llm.kv_cache`) and attention runs in fp32: only the query is upcast and the output cast back.
A scoring pass without that cache (many query positions, bf16 keys) stays in bf16: there the kernel is
as fast in bf16 as in fp32 (16 rows x 300 tokens: 61.8 ms against 57.9) and casts would only add to it
(76.7 ms). Registered with transformers' AttentionInterface, so the model code is transformers' own.

A decode step does not go through SDPA at all but through `grouped_decode_attention`: two batched
matmuls over the key/value heads, each query head group reading its shared keys once. With a padding
mask, transformers' SDPA path cannot use SDPA's own GQA and its kernel took 1.07 ms a layer on average
in bench_generation's decode (batch 64, 2 threads); the two matmuls take 0.36 ms on that step's shape
(62 rows x 94 cached tokens), fp32 throughout like the kernel, so the scores keep fp32 precision.
"""
from __future__ import annotations

NAME = "bezoar_fp32_sdpa"


def fp32_sdpa(module, query, key, value, attention_mask, **kwargs):
    """transformers' SDPA attention in fp32 when the keys are cached in fp32 or this is a decode step."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    import torch

    decode_step, cached_in_fp32 = query.shape[2] == 1, key.dtype == torch.float32
    if query.dtype == torch.float32 or not (decode_step or cached_in_fp32):  # fp32, or a bf16 scoring pass
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if decode_step and cached_in_fp32 and not _unsupported(kwargs):
        output = grouped_decode_attention(query.float(), key, value, attention_mask, kwargs.get("scaling"))
        return output.to(query.dtype), None
    if attention_mask is not None and attention_mask.is_floating_point():  # an additive mask: same dtype as scores
        attention_mask = attention_mask.float()
    output, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask, **kwargs)
    return output.to(query.dtype), weights


def _unsupported(kwargs: dict) -> bool:
    """Features of some models' attention (logit soft-capping, attention sinks) that the plain matmuls lack."""
    return any(kwargs.get(name) is not None for name in ("softcap", "s_aux", "sinks", "position_bias"))


def grouped_decode_attention(query, key, value, attention_mask, scaling: float | None):
    """Attention of one new token per row: query [batch, heads, 1, dim] over key/value [batch, kv_heads, length,
    dim], heads grouped as transformers' `repeat_kv` groups them (head h reads key/value head h // groups).
    The mask is transformers' for SDPA: boolean (True attends) or additive.
    Returns [batch, 1, heads, dim], the layout transformers' attention functions return."""
    import torch

    rows, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    grouped = query.view(rows, kv_heads, heads // kv_heads, dim)
    # keys @ queries^T, then the small scores transposed: the product with the keys transposed instead was
    # measured 4-10% slower over a whole decode (bench_generation's prompts, batch 64)
    scores = torch.matmul(key, grouped.transpose(-1, -2)).transpose(-1, -2).contiguous()
    scores.mul_(dim ** -0.5 if scaling is None else scaling)
    if attention_mask is not None:
        mask = attention_mask  # [batch or 1, 1, 1, length]: broadcasts over [batch, kv_heads, groups, length]
        scores = scores.masked_fill_(~mask, float("-inf")) if mask.dtype == torch.bool else scores.add_(mask)
    return torch.matmul(torch.softmax(scores, dim=-1), value).view(rows, 1, heads, dim)


def use_fp32_attention(model) -> None:
    """Make `model` (a transformers model using SDPA) compute attention as `fp32_sdpa` does."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask

    if NAME not in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionInterface.register(NAME, fp32_sdpa)
        AttentionMaskInterface.register(NAME, sdpa_mask)  # the masks SDPA takes
    model.set_attn_implementation(NAME)
