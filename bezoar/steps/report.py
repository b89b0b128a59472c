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
from bezoar.report.html import write_report
from bezoar.report.hub_models import write_hub_folder
from bezoar.steps.base import Step, StepContext, StepResult


class ReportStep(Step):
    """The run's report page and cards (and, with `hub_folder`, the data and models as Hugging Face folders)."""

    type: Literal["report"] = "report"
    hub_folder: bool = False
    """Also write `hub/dataset` (parquet configs and a dataset card: `datasets.load_dataset` loads it offline,
    `push_to_hub` ships it) and `hub/models/<checkpoint>` (adapter and model card), as `bezoar export-data`
    and `bezoar export-models` do."""
    merged: bool = False
    """With hub_folder: also merge each adapter into its base and save the full weights beside it."""

    def provides(self, recipe: RecipeView) -> list[str]:
        return ["report", "hub"] if self.hub_folder else ["report"]

    def run(self, context: StepContext) -> StepResult:

        outputs = {"report": write_report(context.run_dir, context.out_dir)}
        if self.hub_folder:
            write_hub_folder(context.run_dir, context.out_dir / "hub", self.merged)
            outputs["hub"] = context.out_dir / "hub"
        return StepResult(outputs=context.handed_on(outputs), headline=", ".join(map(str, outputs.values())))


STEP = ReportStep
