"""Attention in fp32 for a model that decodes in bf16 on the CPU.

PyTorch's CPU flash-attention kernel is far slower in bf16 than in fp32 for the shapes of a decode
step (measured on a 2-core AVX512-BF16 machine, 32 rows x 90 cached tokens, GQA 9/3 heads, 1 thread:
2,228 us in bf16, 288 us in fp32), and a bf16 decode step spent half its time there. So the weights stay
bf16 (half the bytes to read per token) while the decoder keeps its KV cache in fp32
(`bezoar.llm.kv_cache`) and attention runs in fp32: only the query is upcast and the output cast back.
A scoring pass without that cache (many query positions, bf16 keys) stays in bf16: there the kernel is
as fast in bf16 as in fp32 (16 rows x 300 tokens: 61.8 ms against 57.9) and casts would only add to it
(76.7 ms). Registered with transformers' AttentionInterface, so the model code is transformers' own.
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
    if attention_mask is not None and attention_mask.is_floating_point():  # an additive mask: same dtype as scores
        attention_mask = attention_mask.float()
    output, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask, **kwargs)
    return output.to(query.dtype), weights


def use_fp32_attention(model) -> None:
    """Make `model` (a transformers model using SDPA) compute attention as `fp32_sdpa` does."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask

    if NAME not in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionInterface.register(NAME, fp32_sdpa)
        AttentionMaskInterface.register(NAME, sdpa_mask)  # the masks SDPA takes
    model.set_attn_implementation(NAME)
