"""The `preferences` step: on-policy DPO pairs from the newest checkpoint before it (else the base student):
k sampled answers per prompt, scored by IFEval's checkers (the share of a prompt's constraints met) or, for
a prompt without constraints, by the judge; chosen = best, rejected = worst when they differ by `margin`.

    RUN_DIR/<name>/pairs.jsonl     TRL's prompt/chosen/rejected, with lineage and scores
    RUN_DIR/<name>/dropped.jsonl   every prompt not turned into a pair, with its reason and scores

Hands on `pairs`. Listed again after a dpo step, it samples from that step's model: iterative DPO.
"""
from __future__ import annotations

import math
from itertools import islice
from pathlib import Path
from typing import Literal

from bezoar.config_base import ModelConfig, RecipeView
from bezoar.findings import count_lines, preview_jsonl
from bezoar.llm.cache import CachedModel
from bezoar.plan import Calls, PlanContext, PlanLine, conversation_tokens, lines_for, mean_tokens
from bezoar.preferences.config import PreferencesConfig
from bezoar.preferences.stage import constraints_of, load_prompts, make_pairs
from bezoar.records import Record, read_jsonl, write_json
from bezoar.steps.base import CheckContext, Step, StepContext, StepResult


TYPICAL_PROMPT = [{"role": "user", "content": "x" * 4 * 35}]
"""A constraint prompt before any exists: verifiable.yaml's 400 came to 39 tokens each (`conversation_tokens`)."""
PAIR_YIELD = 0.43
"""Pairs per prompt, before any is made (recipes/verifiable.yaml: 400 prompts -> 173 pairs)."""


class PreferencesStep(Step, PreferencesConfig):
    """On-policy preference pairs, verified by program where possible."""

    type: Literal["preferences"] = "preferences"
    DECODES = True

    def roles(self, recipe: RecipeView) -> dict[str, tuple[tuple, ModelConfig]]:
        found = {"student": (("models", "student"), recipe.models.student)}
        if self.judge_unconstrained:
            found["judge"] = (("models", "judge"), recipe.models.judge)
        return found

    def inputs(self, recipe: RecipeView) -> list[str]:
        return [] if self.prompts else ["constraints"]

    def provides(self, recipe: RecipeView) -> list[str]:
        return ["pairs"]

    def run(self, context: StepContext) -> StepResult:
        records = load_prompts(self.prompts or context.input("constraints"), self.limit)
        _, current = context.continued_from()
        student = sampling_student(context, current)
        judge = context.models["judge"] if self.judge_unconstrained and any(not constraints_of(r)[0] for r in records) \
            else None
        context.progress(0, len(records), "prompts sampled")
        summary = make_pairs(student, judge, records, self, current, context.recipe.run.seed, context.out_dir,
                             listener=context.progress.add)
        summary.pop("pairs_data")
        write_json(context.out_dir / "summary.json", summary)
        counts = {k: summary[k] for k in ("prompts", "pairs", "ties", "all_fail", "unscored")}
        return StepResult(outputs=context.handed_on({"pairs": context.out_dir / "pairs.jsonl"}), counts=counts,
                          details=summary)

    def check(self, context: CheckContext) -> None:
        if self.prompts is not None:
            preview_jsonl(self.prompts, ("prompts",), context.add, context.missing)

    def plan(self, context: PlanContext) -> list[PlanLine]:
        prompts, prompt_tokens = planned_prompts(self.prompts, self.limit, context)
        context.expected["pairs"] = prompts * PAIR_YIELD
        context.assumptions["preferences_pairs_per_prompt"] = PAIR_YIELD
        if not prompts:
            return []
        student = context.recipe.models.student
        calls = Calls("student", student, prompts * self.k, prompt_tokens, self.max_new_tokens)
        return lines_for(context.name, [calls])


def sampling_student(context: StepContext, current: str) -> CachedModel:
    """The base student from the run's models, or the trained checkpoint with the student's settings
    (its own role, so that usage and budgets count it)."""
    base = context.recipe.models.student
    if current == base.spec:
        return context.models["student"]
    config = base.model_copy(update={"spec": f"local:{Path(current).resolve()}"})
    return context.models.open_extra(f"student:{Path(current).name}", config)  # type: ignore[attr-defined]


def planned_prompts(prompts: Path | None, limit: int | None, context: PlanContext) -> tuple[float, float]:
    """(prompts, tokens of one) a sampling step plans for: from `prompts:` or the earlier step's constraints file
    when it exists (the count and the first 50 prompts' length), else the count the earlier step plans."""
    path = prompts or context.measured("constraints")
    exists = path is not None and Path(path).is_file()
    found = count_lines(path) if exists else None if prompts else context.records("constraints")
    sample = list(islice(read_jsonl(path, Record, skip_bad=True), 50)) if exists else []
    tokens = mean_tokens([[{"role": "user", "content": r.instruction}] for r in sample]) if sample else \
        conversation_tokens(TYPICAL_PROMPT)
    return min(found or 0, limit or math.inf), tokens


STEP = PreferencesStep
