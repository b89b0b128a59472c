"""The `preferences` step: on-policy DPO pairs from the newest checkpoint before it (else the base student):
k sampled answers per prompt, scored by IFEval's checkers (the share of a prompt's constraints met) or, for
a prompt without constraints, by the judge; chosen = best, rejected = worst when they differ by `margin`.

    RUN_DIR/<name>/pairs.jsonl     TRL's prompt/chosen/rejected, with lineage and scores
    RUN_DIR/<name>/dropped.jsonl   every prompt not turned into a pair, with its reason and scores

Hands on `pairs`. Listed again after a dpo step, it samples from that step's model: iterative DPO.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from bezoar.config_base import ModelConfig, RecipeView
from bezoar.errors import DataError
from bezoar.findings import preview_jsonl
from bezoar.llm.cache import CachedModel
from bezoar.plan import Calls, PlanContext, PlanLine, conversation_tokens, lines_for
from bezoar.preferences.config import PreferencesConfig
from bezoar.preferences.stage import constraints_of, load_prompts, make_pairs
from bezoar.records import write_json
from bezoar.steps.base import CheckContext, Step, StepContext, StepResult


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
        prompts = self.limit or 0
        if self.prompts is None:
            found = context.records("constraints")
            prompts = min(prompts or found or 0, found or 0)
        context.expected["pairs"] = prompts * PAIR_YIELD
        context.assumptions["preferences_pairs_per_prompt"] = PAIR_YIELD
        if not prompts:
            return []
        prompt_tokens = conversation_tokens([{"role": "user", "content": "x" * 4 * 60}])
        student = context.recipe.models.student
        return lines_for(context.name, [Calls("student", student, prompts * self.k, prompt_tokens, self.max_new_tokens)])


def sampling_student(context: StepContext, current: str) -> CachedModel:
    """The base student from the run's models, or the trained checkpoint with the student's settings
    (its own role, so that usage and budgets count it)."""
    base = context.recipe.models.student
    if current == base.spec:
        return context.models["student"]
    config = base.model_copy(update={"spec": f"local:{Path(current).resolve()}"})
    return context.models.open_extra(f"student:{Path(current).name}", config)  # type: ignore[attr-defined]


STEP = PreferencesStep
