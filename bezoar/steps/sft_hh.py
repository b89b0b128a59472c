"""The `sft_hh` step: SFT on the chosen replies of HH-RLHF's SFT slice (the `hh_sft` an `hh_slices` step
hands on), continuing the newest checkpoint before it, to move the policy towards HH-RLHF's dialogue
before DPO (the paper's step 4).

    RUN_DIR/sft_hh/   the adapter, metrics.jsonl, tensorboard/, summary.json

Hands on one checkpoint, named after the step (`sft_hh`).
"""
from __future__ import annotations

from typing import Literal

from bezoar.config_base import ModelConfig, RecipeView
from bezoar.plan import PlanContext, PlanLine
from bezoar.records import PreferencePair, read_jsonl
from bezoar.steps.base import Step, StepContext, StepResult
from bezoar.steps.training import training_counts, training_headline, training_wall_s
from bezoar.train.config import SFTHHStageConfig
from bezoar.train.encoding import load_tokenizer
from bezoar.train.examples import pair_conversations, prepare_sft


class SFTHHStep(Step, SFTHHStageConfig):
    """SFT on HH-RLHF chosen replies."""

    type: Literal["sft_hh"] = "sft_hh"
    CONTINUES = True

    def roles(self, recipe: RecipeView) -> dict[str, tuple[tuple, ModelConfig]]:
        return {"student": (("models", "student"), recipe.models.student)}

    def inputs(self, recipe: RecipeView) -> list[str]:
        return ["hh_sft"]

    def run(self, context: StepContext) -> StepResult:
        from bezoar.train.metrics import StepProgress
        from bezoar.train.sft import train_sft
        from bezoar.train.student import resolve_base

        pairs = list(read_jsonl(context.input("hh_sft"), PreferencePair))
        _, base = context.continued_from()
        weights = resolve_base(base)
        tokenizer = load_tokenizer(weights.adapter_dir or weights.base_dir, self.template)
        conversations = pair_conversations(pairs)
        prepared = prepare_sft(tokenizer, conversations, self.max_length, self.loss, self.validation_fraction,
                               self.seed, self.max_validation_examples)
        settings = self.as_settings(SFTHHStageConfig)
        summary = train_sft(base, prepared, context.out_dir, settings, self.loss, stage=self.name,
                            sample=conversations[0], callbacks=[StepProgress(context.progress)])
        counts = {**training_counts([summary]), "pairs": len(pairs)}
        return StepResult(checkpoints=context.handed_on({self.name: context.out_dir}), counts=counts,
                          headline=training_headline(counts), details=summary)

    def plan(self, context: PlanContext) -> list[PlanLine]:
        context.other_wall_s = training_wall_s(self, context.records("hh_sft"), "sft")
        return []

    def disk_mb(self, recipe: RecipeView) -> float:
        return (self.save_total_limit + 1) * 30.0


STEP = SFTHHStep
