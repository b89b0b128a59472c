"""Log-probabilities only where a loss needs them: bezoar's two forward-pass levers on top of TRL.

TRL's trainers call the model with `fused_lm_head=True` and read per-token log-probabilities
(`trl.trainer.utils.add_fused_lm_head`). On devices without Triton (CPUs) that head projects
*every* position through the 49k-word vocabulary, prompt and padding included. We wrap TRL's
forward (the trainer code above it is unchanged) and:

1. **compact head** (SFT and DPO): run the LM head and log-softmax only on positions whose label
   carries loss, with TRL's own chunked kernel (`trl.kernels.ChunkedLogProbFunction`);
2. **shared prompt** (DPO): when the batch carries a packed layout (`SharedPromptCollator`), run
   prompt + chosen + rejected as ONE sequence per pair, with a mask that hides the chosen reply
   from the rejected one and rejected positions that continue right after the prompt, so a long
   HH-RLHF prompt is encoded once instead of twice. Results are scattered back into the
   [chosen rows; rejected rows] layout TRL's DPO loss expects.
"""
from __future__ import annotations

import logging
import types

from bezoar.private_apis import require

log = logging.getLogger(__name__)

PACKED_KEYS = ("packed_input_ids", "packed_position_ids", "packed_attention_mask", "packed_src_row",
               "packed_src_col", "packed_dst_row", "packed_dst_col", "packed_targets")
# Configs that scale logits in ways only TRL's own head knows; there we leave TRL's head alone.
_EXOTIC_SCALING = ("output_multiplier", "lm_head_multiplier", "logits_scaling")
_VOCAB_CHUNK = 32768  # vocabulary columns per tile, as in TRL


def install_compact_head(model, outputs: tuple[str, ...]) -> bool:
    """Wrap the TRL-patched forward of `model` (the base model, not the PeftModel). False if skipped."""
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled


    require("trl", "bezoar's compact LM head (trl.kernels.ChunkedLogProbFunction, FusedCausalLMOutput)")

    text_config = model.config.get_text_config()
    if any(getattr(text_config, name, None) is not None for name in _EXOTIC_SCALING) or is_deepspeed_zero3_enabled():
        log.info("compact LM head skipped (logit scaling or ZeRO-3 sharding): using TRL's head")
        return False
    trl_forward = model.forward

    def forward(self, *args, fused_lm_head=False, labels=None, num_items_in_batch=None, **kwargs):
        packed = {k: kwargs.pop(k) for k in PACKED_KEYS if k in kwargs}
        if not fused_lm_head or args or kwargs.get("output_router_logits") or labels is None:
            return trl_forward(*args, fused_lm_head=fused_lm_head, labels=labels,
                               num_items_in_batch=num_items_in_batch, **kwargs)
        if packed:
            return _shared_prompt_forward(self, labels, packed, outputs)
        return _compact_forward(self, labels, num_items_in_batch, outputs, kwargs)

    model.forward = types.MethodType(forward, model)
    return True


def _log_probs(model, hidden, targets, outputs):
    """TRL's chunked log-softmax of `hidden @ lm_head.T` at `targets`, for the given rows only."""
    from trl.kernels import ChunkedLogProbFunction

    text_config = model.config.get_text_config()
    lm_head = model.get_output_embeddings()
    weight, bias = lm_head.weight, lm_head.bias
    if type(weight).__name__ == "DTensor":  # FSDP2 shards the head; gather it once for the kernel
        weight = weight.full_tensor()
        bias = bias.full_tensor() if bias is not None else None
    scale = getattr(text_config, "logit_scale", None)
    return ChunkedLogProbFunction.apply(
        hidden.to(weight.device), weight, bias, targets.to(weight.device), 1.0, _VOCAB_CHUNK,
        getattr(text_config, "final_logit_softcapping", None), 1.0 if scale is None else scale, outputs)


def _compact_forward(model, labels, num_items_in_batch, outputs, kwargs):
    from trl.trainer.utils import FusedCausalLMOutput

    kwargs["use_cache"] = False
    hidden = model.base_model(**kwargs).last_hidden_state[:, :-1]
    labels = labels[:, 1:].to(hidden.device)
    mask = labels != -100
    per_token = _log_probs(model, hidden[mask], labels[mask], outputs)
    log_probs, entropy, _, mean_logits, is_top1 = (
        None if x is None else x.new_zeros(mask.shape).masked_scatter(mask, x) for x in per_token)
    count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
    return FusedCausalLMOutput(loss=-log_probs.sum() / count, log_probs=log_probs, entropy=entropy,
                               mean_logits=mean_logits, is_top1=is_top1, label_mask=mask)


def _shared_prompt_forward(model, labels, packed, outputs):
    """One forward over [prompt, chosen, rejected] per pair; outputs in TRL's [2B, L-1] layout."""
    from trl.trainer.utils import FusedCausalLMOutput

    hidden = model.base_model(input_ids=packed["packed_input_ids"], position_ids=packed["packed_position_ids"],
                              attention_mask=packed["packed_attention_mask"], use_cache=False).last_hidden_state
    rows = hidden[packed["packed_src_row"], packed["packed_src_col"]]
    per_token = _log_probs(model, rows, packed["packed_targets"], outputs)
    shape = (labels.shape[0], labels.shape[1] - 1)
    where = (packed["packed_dst_row"], packed["packed_dst_col"])
    log_probs, entropy, _, mean_logits, is_top1 = (
        None if x is None else x.new_zeros(shape).index_put(where, x) for x in per_token)
    mask = labels[:, 1:] != -100
    return FusedCausalLMOutput(loss=-log_probs.sum() / mask.sum().clamp(min=1), log_probs=log_probs,
                               entropy=entropy, mean_logits=mean_logits, is_top1=is_top1, label_mask=mask)


SHARED_PROMPT_ATTENTION = ("sdpa", "eager")  # flash-attention kernels take no arbitrary mask


def shared_prompt_layout(examples: list[dict], pad_token_id: int, dtype) -> dict:
    """The packed tensors for `_shared_prompt_forward`, from examples with prompt/chosen/rejected ids.

    Pair i becomes one row [prompt (P), chosen (C), rejected (R)]. Rejected tokens take positions
    P.. (as if they followed the prompt directly) and may see the prompt and earlier rejected tokens
    only. The reply token at sequence position t is predicted by the hidden state at t-1, except the
    first rejected token, which is predicted from the last prompt token, like the first chosen one.
    """
    import torch

    count = len(examples)
    width = max(len(e["prompt_ids"]) + len(e["chosen_ids"]) + len(e["rejected_ids"]) for e in examples)
    ids = torch.full((count, width), pad_token_id, dtype=torch.long)
    positions = torch.zeros((count, width), dtype=torch.long)
    allowed = torch.eye(width, dtype=torch.bool).repeat(count, 1, 1)  # padding rows see themselves: no NaN
    src_row, src_col, dst_row, dst_col, targets = [], [], [], [], []
    for i, example in enumerate(examples):
        prompt, chosen, rejected = example["prompt_ids"], example["chosen_ids"], example["rejected_ids"]
        p, c, r = len(prompt), len(chosen), len(rejected)
        ids[i, :p + c + r] = torch.tensor(prompt + chosen + rejected)
        positions[i, :p + c] = torch.arange(p + c)
        positions[i, p + c:p + c + r] = torch.arange(p, p + r)
        allowed[i, :p + c + r, :p + c + r] = torch.ones(p + c + r, p + c + r, dtype=torch.bool).tril()
        allowed[i, p + c:p + c + r, p:p + c] = False  # the rejected reply never sees the chosen one
        for k in range(c):
            src_row.append(i), src_col.append(p - 1 + k), targets.append(chosen[k])
            dst_row.append(i), dst_col.append(p - 1 + k)
        for k in range(r):
            src_row.append(i), src_col.append(p - 1 if k == 0 else p + c + k - 1), targets.append(rejected[k])
            dst_row.append(count + i), dst_col.append(p - 1 + k)
    # sdpa takes a boolean mask (True = attend) whatever the compute dtype; eager adds a float one.
    mask = allowed[:, None] if dtype == torch.bool else \
        torch.zeros((count, 1, width, width), dtype=dtype).masked_fill(~allowed[:, None], torch.finfo(dtype).min)
    tensor = lambda values: torch.tensor(values, dtype=torch.long)  # noqa: E731
    return {"packed_input_ids": ids, "packed_position_ids": positions, "packed_attention_mask": mask,
            "packed_src_row": tensor(src_row), "packed_src_col": tensor(src_col), "packed_targets": tensor(targets),
            "packed_dst_row": tensor(dst_row), "packed_dst_col": tensor(dst_col)}
