"""A step type from outside bezoar, registered through BEZOAR_STEPS: everything it needs is this module.

`shout` reads the prompts an earlier step handed on (`constraints` by default), writes each instruction in
capitals `times` times, and hands the file on as `shouted`. No model: its plan is its own arithmetic.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from bezoar.plan import PlanLine
from bezoar.records import read_jsonl, write_jsonl
from bezoar.steps.base import CheckContext, PlanContext, Step, StepContext, StepResult


class ShoutStep(Step):
    """Instructions in capitals."""

    type: Literal["shout"] = "shout"
    source: str = "constraints"
    """The output name of the records to shout."""
    times: int = Field(1, ge=0)
    """Copies of each line."""

    def inputs(self, recipe) -> list[str]:
        return [self.source]

    def provides(self, recipe) -> list[str]:
        return ["shouted"]

    def check(self, context: CheckContext) -> None:
        if self.times == 0:
            context.add(("times",), "0 copies make an empty file; set times: 1 or more")

    def plan(self, context: PlanContext) -> list[PlanLine]:
        context.expected["shouted"] = (context.records(self.source) or 0) * self.times
        return []

    def run(self, context: StepContext) -> StepResult:
        records = list(read_jsonl(context.input(self.source)))  # records, or lines shouted before
        context.progress(0, len(records), "records")
        texts = [r.get("text") or r["messages"][0]["content"] for r in records]
        lines = [{"text": text.upper()} for text in texts for _ in range(self.times)]
        out = context.out_dir / "shouted.jsonl"
        write_jsonl(out, lines)
        context.progress(len(records))
        return StepResult(outputs=context.handed_on({"shouted": out}), counts={"lines": len(lines)})


STEP = ShoutStep
