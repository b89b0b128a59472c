"""The recipe's `generate` section (placeholder: the generate stage fills it in)."""
from __future__ import annotations

from bezoar.config import StrictModel


class GenerateConfig(StrictModel):
    pass
