"""The `sft` step: sequential LoRA SFT over record sets earlier steps handed on (the paper: LaMini →
Evol-Instruct → Orca), each set continuing the adapter the one before it left.

    RUN_DIR/sft/sft-<i>-<set>/   the adapter (best validation checkpoint), metrics.jsonl, tensorboard/,
                                 summary.json (written last: marks that set done)

Hands on one checkpoint per set, named `sft-<i>-<set>` (`<step name>-<i>-<set>` for a renamed step).
"""
from __future__ import annotations

import logging
from typing import Literal

from bezoar.config_base import ModelConfig, RecipeView
from bezoar.findings import preview_jsonl
from bezoar.records import Record, open_data
from bezoar.plan import PlanContext, PlanLine
from bezoar.steps.base import CheckContext, Step, StepContext, StepResult
from bezoar.steps.training import training_counts, training_headline, training_wall_s
from bezoar.train.config import SFTStageConfig


log = logging.getLogger(__name__)


class SFTStep(Step, SFTStageConfig):
    """Supervised fine-tuning, one adapter continued over every data set in order."""

    type: Literal["sft"] = "sft"
    CONTINUES = True

    def roles(self, recipe: RecipeView) -> dict[str, tuple[tuple, ModelConfig]]:
        return {"student": (("models", "student"), recipe.models.student)}

    def inputs(self, recipe: RecipeView) -> list[str]:
        return [d.name for d in self.datasets if d.path is None]

    def checkpoint_name(self, index: int, dataset: str) -> str:
        return f"{'sft' if self.name == 'sft' else self.name}-{index}-{dataset}"

    def run(self, context: StepContext) -> StepResult:
        from bezoar.train.sft import train_sft

        _, current = context.continued_from()
        settings = self.as_settings(SFTStageConfig)
        runs, trained = [], {}
        context.progress(0, len(self.datasets), "data sets")
        for index, dataset in enumerate(self.datasets, 1):
            name = self.checkpoint_name(index, dataset.name)
            path = dataset.path or context.input(dataset.name)  # the filter's kept records
            if path.exists() and not any(line.strip() for line in open_data(path)):
                log.warning("%s is empty (nothing was kept): skipping SFT on %s", path, dataset.name)
                runs.append({"stage": name, "skipped": f"{path} is empty"})
                continue
            out = context.out_dir / name
            runs.append(train_sft(current, [path], out, settings, self.loss, stage=name))
            current, trained[name] = str(out), out
            context.progress(index)
        counts = training_counts(runs)
        return StepResult(checkpoints=context.handed_on(trained), counts=counts, headline=training_headline(counts),
                          details={"runs": runs})

    def check(self, context: CheckContext) -> None:
        for i, dataset in enumerate(self.datasets):
            if dataset.path is not None:
                preview_jsonl(dataset.path, ("datasets", i, "path"), context.add, context.missing, Record)

    def plan(self, context: PlanContext) -> list[PlanLine]:
        examples = [context.records(d.name) if d.path is None else None for d in self.datasets]
        context.other_wall_s = sum(training_wall_s(self, n, "sft", first=i == 0) for i, n in enumerate(examples))
        return []

    def disk_mb(self, recipe: RecipeView) -> float:
        return len(self.datasets) * (self.save_total_limit + 1) * 30.0


STEP = SFTStep
