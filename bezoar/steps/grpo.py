"""The `grpo` step: GRPO (TRL's GRPOTrainer) with a LoRA adapter from the newest checkpoint before it, on
constraint prompts (a generate step's `constraints`, or `prompts:`), rewarded by lm-eval's IFEval checkers
(the share of a prompt's constraints met; `bezoar.train.grpo`). With `selection:`, the model it starts
from first samples k answers per prompt and only the prompts whose scores spread are trained on (prompts
that teach: `bezoar.preferences.teaching`).

    RUN_DIR/<name>/             the adapter, metrics.jsonl (reward, its spread, completion lengths per
                                step), tensorboard/, summary.json (written last: marks the run done)
    RUN_DIR/<name>/selection/   kept.jsonl, dropped.jsonl, summary.json of the prompt selection

Hands on one checkpoint named after the step, and its `reference` (the checkpoint it started from, or
"base"), as the dpo step does. A killed run resumes from its newest checkpoint with the same seeded
rollouts (`bezoar.train.rollouts`).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import Field

from bezoar.config_base import ModelConfig, RecipeView
from bezoar.errors import DataError
from bezoar.findings import preview_jsonl
from bezoar.llm.endpoints import public_spec
from bezoar.plan import LOCAL_PREFILL_TOK_S, Calls, PlanContext, PlanLine, lines_for
from bezoar.preferences.config import SelectionConfig
from bezoar.preferences.stage import load_prompts
from bezoar.preferences.teaching import select_teaching_prompts
from bezoar.records import Record
from bezoar.steps.base import CheckContext, Step, StepContext, StepResult
from bezoar.steps.preferences import planned_prompts, sampling_student
from bezoar.steps.training import START_S, TOKENS_PER_S, training_counts, training_headline
from bezoar.train.config import GRPOStageConfig

ROLLOUT_TOK_S = {"bezoar": 63.0, "transformers": 44.0, "transformers_continuous": 44.0}
"""Rollout tokens per second of the embedded policy in training on 2 CPU cores (benchmarks/bench_rollouts.py:
32 rollouts of up to 128 tokens, bezoar's decoder against TRL's `generate` and `generate_batch`)."""
GENERATED_SHARE = 0.46
"""Tokens a rollout generates, as a share of `max_completion_length` (the same runs: ~59 of 128)."""
KEPT_SHARE = 0.43
"""Prompts the selection keeps, before any is sampled (recipes/verifiable.yaml's base student: of 400
constraint prompts, 187 had four failing answers and 40 four alike)."""
STEP_OVERHEAD_S = 3.0
"""Per optimizer step beyond its rollouts and training tokens (log-probs, optimizer, the decoder's set-up): a
tiny step (2 prompts x 2 completions of 32 tokens) took 6.9 s on one thread, ~3.5 of them rollouts and tokens."""


class GRPOStep(Step, GRPOStageConfig):
    """GRPO on constraint prompts, the IFEval checkers as the reward."""

    type: Literal["grpo"] = "grpo"
    CONTINUES = True
    HAS_REFERENCE = True

    prompts: Path | None = None
    """JSONL of constraint prompt records; None: the `constraints` an earlier generate step handed on."""
    limit: int | None = Field(None, ge=1)
    """Only the first N prompts (before selection)."""
    selection: SelectionConfig | None = None
    """Keep only the prompts the starting model sometimes meets (k samples each, scored by the checkers);
    None trains on every prompt."""

    def roles(self, recipe: RecipeView) -> dict[str, tuple[tuple, ModelConfig]]:
        return {"student": (("models", "student"), recipe.models.student)}

    def inputs(self, recipe: RecipeView) -> list[str]:
        return [] if self.prompts else ["constraints"]

    def run(self, context: StepContext) -> StepResult:
        from bezoar.train.grpo import train_grpo
        from bezoar.train.metrics import StepProgress

        reference, start = context.continued_from()
        records, counts, selected = self.chosen_prompts(context, start)
        summary = train_grpo(self.as_settings(GRPOStageConfig), records, start, context.out_dir, stage=self.name,
                             callbacks=[StepProgress(context.progress)])
        counts |= training_counts([summary])
        counts |= {key: round(summary[key], 4) for key in ("first_reward", "last_reward") if key in summary}
        details = {**summary, "selection": selected} if selected else summary
        return StepResult(checkpoints=context.handed_on({self.name: context.out_dir}), reference=reference,
                          counts=counts, headline=grpo_headline(counts), details=details)

    def chosen_prompts(self, context: StepContext, start: str) -> tuple[list[Record], dict[str, float], dict | None]:
        """(prompts to train on, their counts, the selection's summary when there is one)."""
        records = load_prompts(self.prompts or context.input("constraints"), self.limit)
        if self.selection is None:
            return records, {"prompts": len(records)}, None
        selected = select(context, start, records, self.selection)
        kept = selected.pop("records")
        if not kept:
            raise DataError(f"{self.name}: the selection kept no prompt of {len(records)} ({selected['reasons']}); "
                            f"see {context.out_dir / 'selection' / 'dropped.jsonl'}")
        return kept, {"prompts": len(records), "kept": len(kept)}, selected

    def check(self, context: CheckContext) -> None:
        if self.prompts is not None:
            preview_jsonl(self.prompts, ("prompts",), context.add, context.missing, Record)

    def plan(self, context: PlanContext) -> list[PlanLine]:
        prompts, prompt_tokens = self.planned_prompts(context)
        student = context.recipe.models.student
        lines = []
        if prompts and self.selection is not None:
            lines.append(selection_line(context.name, student, prompts, prompt_tokens, self.selection))
            prompts *= KEPT_SHARE
            context.assumptions["grpo_selection_kept_share"] = KEPT_SHARE
        if not prompts:
            return lines
        rollouts, steps = self.rollouts(prompts)
        engine = "bezoar" if self.rollout == "auto" else self.rollout  # the plan assumes a CPU
        generated = self.max_completion_length * GENERATED_SHARE
        context.assumptions["grpo_generated_share_of_max_completion_length"] = GENERATED_SHARE
        lines.append(PlanLine(context.name, "student", public_spec(student.spec), int(rollouts),
                              round(rollouts * prompt_tokens), int(rollouts * self.max_completion_length),
                              wall_s=round(rollouts * (prompt_tokens / LOCAL_PREFILL_TOK_S + generated / ROLLOUT_TOK_S[engine])),
                              note=f"rollouts by the policy in training ({engine}, {steps} steps; not in call usage)"))
        passes = 1 + (self.beta > 0) + (self.num_iterations > 1)  # policy, reference, old log-probs
        trained = steps * self.completions_per_step() * (prompt_tokens + generated) * passes
        context.other_wall_s = START_S + trained / TOKENS_PER_S["sft"] + steps * STEP_OVERHEAD_S
        return lines

    def planned_prompts(self, context: PlanContext) -> tuple[float, float]:
        """(prompts, tokens of one): from `prompts:` or the earlier step's file when they exist, else as planned."""
        return planned_prompts(self.prompts, self.limit, context)

    def completions_per_step(self) -> int:
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * self.launch.num_processes

    def rollouts(self, prompts: float) -> tuple[float, int]:
        """(rollouts generated, optimizer steps) for `prompts` prompts: TRL repeats each prompt
        `num_generations` times; a generated batch serves `num_iterations` optimizer steps."""
        per_step = self.completions_per_step()
        steps = self.max_steps or math.ceil(math.ceil(prompts * self.num_generations / per_step)
                                            * self.num_train_epochs) * self.num_iterations
        return steps * per_step / self.num_iterations, steps

    def disk_mb(self, recipe: RecipeView) -> float:
        return (self.save_total_limit + 1) * 30.0


def select(context: StepContext, start: str, records: list[Record], config: SelectionConfig) -> dict:
    """Prompts that teach, sampled from the model the step starts from (its weights let go of afterwards)."""

    student = sampling_student(context, start)
    try:
        return select_teaching_prompts(student, records, config, context.recipe.run.seed, context.out_dir / "selection")
    finally:
        close = getattr(context.models, "close", None)
        if close is not None:
            close(student.role)


def selection_line(step: str, student: ModelConfig, prompts: float, prompt_tokens: float,
                   config: SelectionConfig) -> PlanLine:
    return lines_for(step, [Calls("student", student, prompts * config.k, prompt_tokens, config.max_new_tokens)])[0]


def grpo_headline(counts: dict[str, float]) -> str:
    """`4 steps, reward 0.25 → 0.5, 8 prompts, 5 kept`."""
    text = training_headline({k: v for k, v in counts.items() if k not in ("first_reward", "last_reward")})
    if "first_reward" in counts and "last_reward" in counts:
        steps, _, rest = text.partition(", ")
        text = ", ".join(p for p in (steps, f"reward {counts['first_reward']:.3g} → {counts['last_reward']:.3g}", rest) if p)
    return text


STEP = GRPOStep
