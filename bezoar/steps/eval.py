"""The `eval` step: MT-Bench, the LM Evaluation Harness, IFEval and preference accuracy on the base student
and every checkpoint the steps before it trained (or those `checkpoints` names), then one comparison.

    RUN_DIR/<name>/{mt_bench,harness,ifeval,preference}/<checkpoint>/summary.json (+ their files)
    RUN_DIR/<name>/comparison.json

Hands on `comparison`; its result lists every summary it wrote (what `bezoar compare` and the report read).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from bezoar.config_base import ModelConfig, RecipeView
from bezoar.errors import ConfigError, DataError
from bezoar.evaluate.compare import describe_decoding
from bezoar.evaluate import ifeval
from bezoar.evaluate.config import EvalConfig
from bezoar.evaluate.harness_tasks import LEADERBOARD, expand_tasks
from bezoar.evaluate.mt_bench import load_references, single_prompt
from bezoar.evaluate.mt_bench_files import Question, load_judge_prompts, load_questions
from bezoar.findings import preview_jsonl, preview_pairs
from bezoar.handoff import done_results
from bezoar.plan import LOCAL_PREFILL_TOK_S, Calls, PlanContext, PlanLine, is_local, lines_for
from bezoar.steps.base import CheckContext, Step, StepContext, StepResult

log = logging.getLogger(__name__)

EVAL_STEP_START_S = 6.0
"""The step's process and its comparison (recipes/tiny.yaml, the rehearsal and verifiable.yaml on an idle
2-core AVX-512 machine: 4.5-6 s before the first model answers, ~2 s after the last)."""
EVAL_START_S = 3.0
"""Per evaluated model and kind of evaluation: loading the checkpoint (and lm-eval's task set-up, ~3.8 s a
model for tiny.yaml's 20 ARC items)."""
HARNESS_ITEM_TOKENS = 320
"""Tokens scored per multiple-choice item: ~4 choices of ~80 tokens with their context."""
HARNESS_ITEMS_UNLIMITED = 1000
"""Items assumed per harness task without a `limit` (the shipped tasks hold a few hundred to ~10k)."""
PREFERENCE_PAIR_TOKENS = 350
"""Tokens scored per preference pair: the prompt with the chosen reply and again with the rejected one (333
tokens on average over the last 200 pairs of HH-RLHF harmless-base test, which hh_slices holds out)."""

class EvalStep(Step, EvalConfig):
    """Every chosen evaluation on every checkpoint, and the comparison."""

    type: Literal["eval"] = "eval"
    DECODES = True

    def roles(self, recipe: RecipeView) -> dict[str, tuple[tuple, ModelConfig]]:
        found = {"student": (("models", "student"), recipe.models.student)}
        if self.mt_bench.enabled:
            own = self.mt_bench.judge
            found["mt_bench_judge" if own else "judge"] = (("mt_bench", "judge"), own) if own else \
                (("models", "judge"), recipe.models.judge)
        return found

    def provides(self, recipe: RecipeView) -> list[str]:
        return ["comparison"]

    def run(self, context: StepContext) -> StepResult:
        from bezoar.evaluate.runner import Evaluation, evaluate

        checkpoints = self.chosen(context)
        recipe = context.recipe
        evaluation = Evaluation(self, context.out_dir, recipe.models.student, recipe.models.judge,
                                recipe.run.max_failure_rate, context.optional_input("hh_heldout"),
                                references(context, [n for n, _ in checkpoints]))
        context.progress(0, len(checkpoints), "checkpoints")
        summary = evaluate(evaluation, checkpoints, context.models, context.progress)
        summary["summaries"] = context.handed_on(summary["summaries"])
        outputs = {"comparison": context.out_dir / "comparison.json"} if "comparison" in summary else {}
        # How the answers were decoded (fast or deterministic, and the dtype) is part of what the numbers mean.
        headline = f"checkpoints {len(checkpoints)}, {describe_decoding(summary['decoding'])}" \
            if "decoding" in summary else ""
        return StepResult(outputs=context.handed_on(outputs), counts={"checkpoints": len(checkpoints)},
                          headline=headline, failed_items=summary["failed_items"], details=summary)

    def chosen(self, context: StepContext) -> list[tuple[str, str]]:
        """(name, model spec): the base student, then every checkpoint before this step, in training order."""
        found = [("base", context.recipe.models.student.spec)] if self.include_base else []
        for name, path in context.checkpoints():
            if path.is_dir():
                found.append((name, f"local:{path.resolve()}"))
            else:
                log.warning("eval: checkpoint %s is recorded in the manifest but %s is gone; skipped", name, path)
        if self.checkpoints is not None:
            names = [name for name, _ in found]
            unknown = [c for c in self.checkpoints if c not in names]
            if unknown:
                raise ConfigError(f"{self.name}.checkpoints: {unknown} are not among the checkpoints the steps before "
                                  f"it trained (found: {names})")
            found = [(n, s) for n, s in found if n in self.checkpoints or (n == "base" and self.include_base)]
        return found

    def check(self, context: CheckContext) -> None:

        if self.mt_bench.enabled:
            preview_jsonl(self.mt_bench.questions, ("mt_bench", "questions"), context.add, context.missing, Question)
            if self.mt_bench.reference_answers is not None:
                preview_jsonl(self.mt_bench.reference_answers, ("mt_bench", "reference_answers"), context.add,
                              context.missing)
        if self.harness.enabled:
            _check_harness(self, context)
        if self.preference.enabled and self.preference.pairs is not None:
            preview_pairs(self.preference.pairs, ("preference", "pairs"), context.add, context.missing)
        if self.ifeval.enabled:
            preview_jsonl(self.ifeval.prompts, ("ifeval", "prompts"), context.add, context.missing)

    def plan(self, context: PlanContext) -> list[PlanLine]:
        """MT-Bench per checkpoint: the student answers both turns, the judge grades both turns; IFEval:
        the student answers each prompt."""
        recipe = context.recipe
        trained = [s for s in recipe.steps[:context.index] if s.CONTINUES]
        models = (len(self.checkpoints) if self.checkpoints is not None else sum(_checkpoints_of(s) for s in trained))
        models += int(self.include_base)
        calls = _mt_bench_calls(self, recipe, models) + _ifeval_calls(self, recipe, models)
        references = sum(s.HAS_REFERENCE for s in trained if self.checkpoints is None or s.name in self.checkpoints)
        context.other_wall_s = _scoring_wall_s(self, context, models, references)
        return lines_for(context.name, calls)

    def disk_mb(self, recipe: RecipeView) -> float:
        return 50.0


def references(context: StepContext, names: list[str]) -> dict[str, str]:
    """Checkpoint -> the model spec its preference training started from (its recorded `reference`)."""
    results = {n: r for n, r in done_results(context.run_dir).items() if n in context.before()}
    paths = dict(context.checkpoints())
    found = {}
    for result in results.values():
        reference = result.get("reference")
        for checkpoint in result.get("checkpoints") or {}:
            if reference == "base":
                found[checkpoint] = context.recipe.models.student.spec
            elif reference in paths:
                found[checkpoint] = f"local:{paths[reference].resolve()}"
    return {name: spec for name, spec in found.items() if name in names}


def _checkpoints_of(step: Step) -> int:
    return len(getattr(step, "datasets", [])) or 1


def _mt_bench_calls(step: EvalStep, recipe: RecipeView, models: int) -> list[Calls]:
    """The student answers each turn (turn 2 sees turn 1 and its answer); the judge grades each turn with
    FastChat's templates, rendered here on the real questions with answers of `max_new_tokens` tokens."""

    config = step.mt_bench
    if not config.enabled or not Path(config.questions).is_file():
        return []
    questions = load_questions(Path(config.questions), config.limit, config.per_category)
    prompts, references = load_judge_prompts(config.judge_prompts), load_references(config.reference_answers)
    answer = " ".join(["word"] * config.max_new_tokens)  # one token a word for this tokenizer
    asks, grades = [], []
    for question in questions:
        for turn in range(1, len(question.turns) + 1):
            history = [m for t in question.turns[:turn - 1] for m in ({"role": "user", "content": t},
                                                                        {"role": "assistant", "content": answer})]
            asks.append(history + [{"role": "user", "content": question.turns[turn - 1]}])
            grades.append(single_prompt(question, [answer] * len(question.turns), turn, prompts,
                                        references.get(question.question_id))[1])
    judge = config.judge or recipe.models.judge
    next_token = config.judge_mode == "next_token" or (config.judge_mode == "auto" and is_local(judge))
    return [Calls.asking("student", recipe.models.student, len(asks) * models, asks, config.max_new_tokens,
                         rows=len(questions)),  # a question's second turn waits for its first
            Calls.asking("mt_bench_judge" if config.judge else "judge", judge,
                         len(grades) * models * config.judge_repeats, grades,
                         0 if next_token else config.judge_max_new_tokens, greedy=config.judge_repeats == 1)]


def _scoring_wall_s(step: EvalStep, context: PlanContext, models: int, references: int) -> float:
    """Time beyond the model calls: loading each model for each kind of evaluation, and scoring the harness's
    choices and the preference pairs by log-likelihood (at the prefill speed); the `references` checkpoints
    trained against a reference model (DPO) are scored twice, under themselves and under it."""
    kinds = [step.mt_bench.enabled, step.ifeval.enabled, step.harness.enabled, step.preference.enabled]
    tokens = 0.0
    if step.harness.enabled:
        per_task = step.harness.limit if step.harness.limit and step.harness.limit >= 1 else HARNESS_ITEMS_UNLIMITED
        tokens += models * len(step.harness.tasks) * per_task * HARNESS_ITEM_TOKENS
    if step.preference.enabled:
        pairs = step.preference.limit or step.preference.heldout_n or context.records("hh_heldout") or 0
        tokens += (models + references) * pairs * PREFERENCE_PAIR_TOKENS
    return EVAL_STEP_START_S + models * sum(kinds) * EVAL_START_S + tokens / LOCAL_PREFILL_TOK_S


def _ifeval_calls(step: EvalStep, recipe: RecipeView, models: int) -> list[Calls]:

    config = step.ifeval
    if not config.enabled or not Path(config.prompts).is_file():
        return []
    asks = ifeval.conversations(ifeval.load_prompts(Path(config.prompts), config.limit))
    return [Calls.asking("student", recipe.models.student, len(asks) * models, asks, config.max_new_tokens,
                         greedy=True)]


def _check_harness(step: EvalStep, context: CheckContext) -> None:
    """The harness's local task data exist (lm-eval itself is not imported: it takes seconds)."""

    quiet = logging.getLogger("bezoar.evaluate.harness_tasks")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # `leaderboard` skips a task without data by design: no warning from a check
    try:
        local, _ = expand_tasks(step.harness.tasks, step.harness.data_dir, step.harness.data_paths)
    except DataError as error:
        context.add(("harness", "tasks"), str(error))
        return
    finally:
        quiet.setLevel(level)
    if not local and step.harness.tasks == [LEADERBOARD]:
        context.add(("harness", "data_dir"), f"no harness task data under {step.harness.data_dir}; "
                                             "fix the path or set harness.enabled: false")


STEP = EvalStep
