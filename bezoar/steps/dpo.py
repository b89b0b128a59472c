"""The `dpo` step: DPO with a LoRA adapter from the newest checkpoint before it, on HH-RLHF's DPO slice
(`hh_dpo`), a preferences step's on-policy pairs (`pairs`), or both; its reference is the model it starts
from. Repeat preferences → dpo for iterative on-policy DPO: each round samples from the newest model.

    RUN_DIR/<name>/            the adapter, metrics.jsonl, tensorboard/, summary.json
    RUN_DIR/<name>/ref-logps/  reference log-probs, cached by reference and pairs (a resume skips that pass)

Hands on one checkpoint named after the step, and its `reference` (the checkpoint it started from, or
"base"), which the evaluation's implicit-reward accuracy is measured against.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Literal

from bezoar.config_base import ModelConfig, RecipeView
from bezoar.findings import preview_pairs
from bezoar.records import PreferencePair, read_jsonl
from bezoar.plan import PlanContext, PlanLine
from bezoar.steps.base import CheckContext, Step, StepContext, StepResult
from bezoar.steps.training import training_counts, training_headline, training_wall_s
from bezoar.train.config import DPOData, DPOStageConfig



class DPOStep(Step, DPOStageConfig):
    """Direct preference optimisation on preference pairs."""

    type: Literal["dpo"] = "dpo"
    CONTINUES = True
    HAS_REFERENCE = True

    def roles(self, recipe: RecipeView) -> dict[str, tuple[tuple, ModelConfig]]:
        return {"student": (("models", "student"), recipe.models.student)}

    def inputs(self, recipe: RecipeView) -> list[str]:
        needs = ["hh_dpo"] if self.data.source != "generated" else []
        return needs + (["pairs"] if self.data.source != "hh_rlhf" and self.data.generated is None else [])

    def run(self, context: StepContext) -> StepResult:
        from bezoar.train.dpo import train_dpo
        from bezoar.train.metrics import StepProgress

        hh = _read_pairs(context.input("hh_dpo")) if self.data.source != "generated" else []
        pairs, counts = dpo_pairs(self.data, hh, context, self.seed)
        heldout = context.optional_input("hh_heldout")  # TRL's reward accuracy on them after training
        reference, base = context.continued_from()
        summary = train_dpo(base, pairs, context.out_dir, self.as_settings(DPOStageConfig),
                            heldout=_read_pairs(heldout) if heldout else [],
                            ref_cache_dir=context.out_dir / "ref-logps", stage=self.name,
                            callbacks=[StepProgress(context.progress)])
        counts |= training_counts([summary])
        return StepResult(checkpoints=context.handed_on({self.name: context.out_dir}), reference=reference,
                          counts=counts, headline=training_headline(counts), details=summary)

    def check(self, context: CheckContext) -> None:
        if self.data.generated is not None:
            preview_pairs(self.data.generated, ("data", "generated"), context.add, context.missing)

    def plan(self, context: PlanContext) -> list[PlanLine]:
        hh = context.records("hh_dpo") or 0 if self.data.source != "generated" else 0
        generated = context.records("pairs") or 0 if self.data.source != "hh_rlhf" else 0
        pairs = hh + generated if self.data.source != "mix" else generated * 2
        context.other_wall_s = training_wall_s(self, pairs, "dpo")
        return []

    def disk_mb(self, recipe: RecipeView) -> float:
        return (self.save_total_limit + 1) * 30.0


def _read_pairs(path: Path) -> list[PreferencePair]:
    return list(read_jsonl(path, PreferencePair))


def dpo_pairs(data: DPOData, hh: list[PreferencePair], context: StepContext,
              seed: int) -> tuple[list[PreferencePair], dict]:
    """`data`: the HH-RLHF slice, the generated pairs, or both in the weights' proportion (shuffled)."""
    if data.source == "hh_rlhf":
        return hh, {"hh_pairs": len(hh)}
    generated = _read_pairs(data.generated or context.input("pairs"))
    if data.source == "generated":
        return generated, {"generated_pairs": len(generated)}
    share = data.weights.get("hh_rlhf", 0.0) / max(data.weights.get("generated", 0.0), 1e-9)
    taken = hh[:min(len(hh), round(len(generated) * share))]
    mixed = generated + taken
    random.Random(seed).shuffle(mixed)
    return mixed, {"generated_pairs": len(generated), "hh_pairs": len(taken)}


STEP = DPOStep
