"""The settings of on-policy pairs from the current student (the `preferences` step, benchmarks)."""
from __future__ import annotations

from pathlib import Path

from pydantic import Field

from bezoar.config_base import StrictModel
from bezoar.filter.config import JudgeConfig


class PreferencesConfig(StrictModel):
    prompts: Path | None = None
    """JSONL of prompt records (constraint prompts, or any records whose first user turn is the prompt);
    None: the constraint prompts an earlier generate step handed on."""
    limit: int | None = Field(None, ge=1)
    """Only the first N prompts."""
    k: int = Field(4, ge=2)
    """Answers sampled per prompt (Tulu 3 / on-policy DPO practice: 4-8)."""
    temperature: float = Field(0.8, gt=0, le=2)
    """Sampling temperature: diversity among the k answers is what makes a pair."""
    top_p: float = Field(0.95, gt=0, le=1)
    """Nucleus sampling for the k answers."""
    max_new_tokens: int = Field(256, ge=1)
    """Longest answer; a batch runs until its longest member stops, so keep it tight on CPU."""
    margin: float = Field(0.25, ge=0, le=1)
    """Keep a pair only when best - worst score reaches this (scores are in [0, 1]: the share of
    constraints met, or the judge's rating / 10); a smaller gap is counted as a tie and dropped."""
    judge: JudgeConfig = Field(default_factory=lambda: JudgeConfig(rule="rating"))
    """How prompts without constraints are scored (a rating of each answer by models.judge)."""
    judge_unconstrained: bool = True
    """Score prompts without constraints with the judge; False drops them."""
