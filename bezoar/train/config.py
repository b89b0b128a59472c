"""The recipe's `sft`, `sft_hh` and `dpo` sections (placeholder: the training stages fill them in)."""
from __future__ import annotations

from bezoar.config import StrictModel


class SFTStageConfig(StrictModel):
    pass


class SFTHHStageConfig(StrictModel):
    pass


class DPOStageConfig(StrictModel):
    pass
