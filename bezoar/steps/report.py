"""The `report` step: one self-contained HTML page of the run (funnel, samples, licence lineage, loss curves,
scores by category, the comparison, costs) and data set / model cards, from what the steps before it
handed on.

    RUN_DIR/<name>/index.html
    RUN_DIR/<name>/cards/<set>.md, <checkpoint>.md

Hands on `report`.
"""
from __future__ import annotations

from typing import Literal

from bezoar.config_base import RecipeView
from bezoar.steps.base import Step, StepContext, StepResult



class ReportStep(Step):
    """The run's report page and cards."""

    type: Literal["report"] = "report"

    def provides(self, recipe: RecipeView) -> list[str]:
        return ["report"]

    def run(self, context: StepContext) -> StepResult:
        from bezoar.report.html import write_report

        page = write_report(context.run_dir, context.out_dir)
        return StepResult(outputs=context.handed_on({"report": page}), headline=str(page))


STEP = ReportStep
