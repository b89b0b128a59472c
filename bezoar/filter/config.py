"""The recipe's `filter` section (placeholder: the filter stage fills it in)."""
from __future__ import annotations

from bezoar.config import StrictModel


class FilterConfig(StrictModel):
    pass
