"""The `filter` step: heuristics → exact/near de-duplication → contamination → judge, over the records
earlier steps handed on.

    RUN_DIR/filter/<method>.jsonl   kept records of each method, with `meta.judge`
    RUN_DIR/filter/rejected.jsonl   every rejected record, with its step, reasons and evidence
    RUN_DIR/filter/failed.jsonl     records the judge could not decide (asked again by --retry-failed)
    RUN_DIR/filter/judgments.jsonl  every judge decision with the raw reply
    RUN_DIR/filter/summary.json     counts per step, reason and method

Hands on each method's kept records under its name and the rejected ones as `rejected`.
"""
from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from bezoar.config_base import ModelConfig, RecipeView
from bezoar.filter import contamination
from bezoar.filter.config import FilterConfig
from bezoar.filter.judge import load_prompt
from bezoar.filter.runner import run
from bezoar.findings import count_lines, preview_pairs
from bezoar.generate.config import METHODS
from bezoar.plan import Calls, PlanContext, PlanLine, is_local, lines_for
from bezoar.steps.base import CheckContext, Step, StepContext, StepResult

START_S = 10.0
"""The step's process, the judge's and the embedder's weights (the eval sets' index is counted apart: built
once, then cached by content)."""
INSTRUCTION_TOKENS = 40
"""A generated instruction's length before any is made (recipes/tiny.yaml's: 27 tokens on average)."""
JUDGED_SHARE = 0.75
"""Records expected to reach the judge after heuristics, de-dup and contamination, before any is made
(recipes/tiny.yaml: 13 of 20; the tests' smoke recipe: 8 of 9)."""


class FilterStep(Step, FilterConfig):
    """Keep what a judge (and cheap rules) accept; reject the rest with reasons, never silently."""

    type: Literal["filter"] = "filter"
    DECODES = True
    methods: list[str] = Field(default_factory=lambda: list(METHODS))
    """The record sets to filter, by the names earlier steps handed them on under (missing ones are skipped)."""

    def roles(self, recipe: RecipeView) -> dict[str, tuple[tuple, ModelConfig]]:
        return {"judge": (("models", "judge"), recipe.models.judge)} if self._judges() else {}

    def _judges(self) -> bool:
        """The judge is asked: about records, about duplicate clusters, or whether two questions are the same."""
        return self.judge.enabled or self.dedup.judge_clusters or \
            (self.contamination.enabled and self.contamination.judge.enabled)

    def provides(self, recipe: RecipeView) -> list[str]:
        return [*self.methods, "rejected"]

    def run(self, context: StepContext) -> StepResult:
        # In name order, as the filter always read them: near-dedup keeps the first record of a cluster.
        found = {m: context.optional_input(m) for m in sorted(self.methods)}
        inputs = [path for path in found.values() if path is not None]
        if not inputs:
            return StepResult(headline="skipped: no earlier step handed on records to filter")
        judge = context.models["judge"] if self._judges() else None
        alive = sum(count_lines(path) for path in inputs)
        context.progress(0, alive, "records judged")
        summary = run(inputs, context.out_dir, self, judge, per_method=True,
                      max_failure_rate=context.recipe.run.max_failure_rate, progress=context.progress.add)
        outputs = {k: v for k, v in summary.pop("outputs").items() if k in (*self.methods, "rejected")}
        return StepResult(outputs=context.handed_on(outputs), counts={"in": summary["input"], "kept": summary["kept"]}, funnel="kept",
                          failed_items=summary["failed_items"], details=summary)

    def check(self, context: CheckContext) -> None:
        if self.judge_check.enabled and self.judge_check.pairs is not None:
            preview_pairs(self.judge_check.pairs, ("judge_check", "pairs"), context.add, context.missing)
        if self.contamination.enabled:
            for i, path in enumerate(self.contamination.eval_paths):
                if not path.exists():
                    context.missing(("contamination", "eval_paths", i), str(path))
            for problem in contamination.problems(self.contamination):
                context.add(("contamination",), problem.removeprefix("filter.contamination."))

    def plan(self, context: PlanContext) -> list[PlanLine]:
        """The judge sees each record that survives the cheap filters once (+ re-asks of unreadable replies)."""

        counted = {m: context.records(m) for m in self.methods}
        records = sum(n or 0 for n in counted.values())
        context.other_wall_s = START_S + contamination.index_build_s(self.contamination) if records else 0.0
        for method, n in counted.items():
            context.expected[method] = (n or 0) * JUDGED_SHARE
        judge = context.recipe.models.judge
        calls = self._contamination_calls(records, judge)
        if not self.judge.enabled or not records:
            return lines_for(context.name, calls)
        template = load_prompt(self.judge.prompt)
        survivors = self._survivors(context) if context.wanted else None
        if survivors is None:
            judged = math.ceil(records * JUDGED_SHARE)
            context.assumptions["filter_judged_share"] = JUDGED_SHARE
            response = "x" * 4 * int(context.expected.get("response_tokens", 256))  # ~4 characters a token
            instruction = "x" * 4 * INSTRUCTION_TOKENS
            conversations = [template.render(instruction=instruction, response=response)]
        else:  # the records exist: the judge's real prompts
            judged = len(survivors)
            conversations = [template.render(instruction=r.instruction, response=r.response) for r in survivors]
        next_token = self.judge.scoring == "logprobs" or (self.judge.scoring == "auto" and is_local(judge))
        completion = 0 if next_token else self.judge.max_new_tokens  # a next-token rating generates nothing
        rating = Calls.asking("judge", judge, judged, conversations, completion, greedy=True)
        return lines_for(context.name, [rating, *calls])

    def _contamination_calls(self, records: float, judge: ModelConfig) -> list[Calls]:
        """The judge's "same question?" confirmations of embedding candidates (the contamination check's cost)."""
        calls, prompt, completion = contamination.judge_cost(int(records), self.contamination)
        return [Calls("judge", judge, calls, prompt / calls, completion / calls, greedy=True)] if calls else []

    def _survivors(self, context: PlanContext) -> list | None:
        """Once the records exist, those that reach the judge: the cheap filters run as the step runs them
        (seconds; the judge is the only costly part)."""
        paths = [p for p in (context.measured(m) for m in sorted(self.methods)) if p is not None and p.is_file()]
        if not paths:
            return None
        from bezoar.filter.runner import filter_items, load_inputs

        items = load_inputs(paths)
        filter_items(items, self.model_copy(update={"judge": self.judge.model_copy(update={"enabled": False})}), None)
        return [item.record for item in items if item.alive]


STEP = FilterStep
