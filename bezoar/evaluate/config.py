"""The recipe's `eval` section (placeholder: the eval stage fills it in)."""
from __future__ import annotations

from bezoar.config import StrictModel


class EvalConfig(StrictModel):
    pass
