"""Linear layers with their weights pre-packed for oneDNN, for inference on CPU (fp32, and bf16 where
the CPU has native bf16).

A plain `nn.Linear` goes through MKL's sgemm, which re-packs the whole weight matrix on every call
once a batch has more than a row or so. Decoding is memory-bound, so for a 135M model at batch 8
that repacking costs more than the arithmetic: measured on a 2-core AVX2 machine, a decode step took
190 ms at batch 8 against ~100 ms at batch 1. Packing each weight once into oneDNN's blocked layout
(what PyTorch's inductor does for frozen CPU graphs, through the same two ops) gave 58.7 tok/s at
batch 8 against 31.8, 12.2 against 9.3 at batch 1 and 75.8 against 58.7 at batch 32, with the same
greedy text, still independent of what shares a row's batch. bf16 weights gain as much on an
AVX512-BF16 CPU (a 1536x576 layer at 32 rows: 87 us packed against 154 plain; fp32 packed: 149).

Inference only: the packed weight has no gradient and is not a parameter, so only models loaded for
generation and scoring are packed, never a model being trained.
"""
from __future__ import annotations

import logging

import torch  # imported only by `bezoar.llm.local` when it loads a model

log = logging.getLogger(__name__)

# The row count oneDNN picks its weight layout for: layouts for 8 and for 32 rows measured equally fast
# at batches 1-32, so take the middle.
LAYOUT_ROWS = 16


class PackedLinear(torch.nn.Module):
    """Stands in for an `nn.Linear` whose weight was packed once (see the module's docstring)."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), LAYOUT_ROWS)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, oneDNN pre-packed"


def packable_dtypes() -> tuple:
    """fp32 always; bf16 where oneDNN has native bf16 kernels for this CPU (AVX512-BF16, AMX)."""
    return (torch.float32, torch.bfloat16) if torch.ops.mkldnn._is_mkldnn_bf16_supported() else (torch.float32,)


def pack_linear_weights(model) -> int:
    """Replace every fp32 (or, on CPUs with native bf16, bf16) `nn.Linear` of `model` (on CPU) by a
    pre-packed one; returns how many.

    Leaves the model as it was (and says why) where oneDNN is missing or refuses a layer."""
    if not torch.backends.mkldnn.is_available():
        log.info("oneDNN is not available in this PyTorch build: linear weights stay unpacked")
        return 0
    dtypes = packable_dtypes()
    targets = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if isinstance(child, torch.nn.Linear) and child.weight.dtype in dtypes
               and child.weight.device.type == "cpu"]
    try:
        packed = [PackedLinear(child) for _, _, child in targets]
    except (RuntimeError, AttributeError) as error:
        log.info("oneDNN could not pack the linear weights (%s): they stay unpacked", error)
        return 0
    for (parent, name, _), replacement in zip(targets, packed):
        setattr(parent, name, replacement)
    return len(packed)
