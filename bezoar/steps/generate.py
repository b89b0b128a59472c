"""The `generate` step: instruction/response records by LaMini-LM, Evol-Instruct and Orca, with the teacher,
and constraint prompts (no teacher) for the preferences step.

    RUN_DIR/generate/<method>.jsonl           records, with provenance and licence lineage
    RUN_DIR/generate/<method>.rejected.jsonl  candidates that failed a scheme's own checks, with reasons
    RUN_DIR/generate/<method>.failed.jsonl    items a server refused (asked again by --retry-failed)
    RUN_DIR/generate/constraints.jsonl        constraint prompts (when constraints.n > 0)

Hands on each method's records under its name (lamini, evol, orca) and the prompts as `constraints`.
"""
from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Literal

from bezoar.config_base import ModelConfig, RecipeView
from bezoar.errors import DataError, LicenceError
from bezoar.findings import count_lines
from bezoar.generate.config import METHODS, GenerateConfig, SchemeConfig
from bezoar.generate.evol_instruct import EvolInstruct
from bezoar.generate.lamini import by_source, draw_prompt, load_topics
from bezoar.generate.orca import Orca
from bezoar.generate.runner import Context, OutputFiles
from bezoar.generate.seeds import load_seed_files, read_seeds
from bezoar.generate.stage import check_licences, generate
from bezoar.plan import Calls, PlanContext, PlanLine, expected_completion, is_embedded, is_local, lines_for, replay
from bezoar.prompts import template
from bezoar.steps.base import CheckContext, Step, StepContext, StepResult

PREVIEW_ROWS = 20
"""Seed rows parsed with the real reader before the run (whole files are only counted)."""
PROMPT_SAMPLE = 16
"""Prompts rendered per kind of call to measure their length."""
START_S = 3.0
"""The step's process, reading the seeds and opening the roles (the rehearsal's generate, against a loopback
server: 2.5-2.8 s beside its calls)."""
LOCAL_START_S = 4.0
"""Loading a local teacher or judge: torch, the weights, pre-packing (tiny.yaml's generate step with the weights
converted: 6.5-8.2 s beside its calls, in six runs; converting them is `plan.WEIGHTS_CONVERSION_S`)."""
CAPABLE_YIELDS = {
    "lamini_candidates_per_prompt": 0.5,  # share of the asked-for instructions that parse and pass the checks
    "lamini_records_per_answer": 0.9,
    "evol_evolutions_kept": 0.7,  # evolutions that pass elimination rules 1-4 (WizardLM reports ~70-80%)
    "evol_evolutions_judged": 0.8,  # evolutions that pass rules 2-4 and so reach the equality check (rule 1)
    "evol_records_per_evolution": 0.9,
    "evol_equality_calls_per_pair": 1.0,  # a capable judge answers "equal?" on the first ask
    "orca_records_per_answer": 0.95,
}
"""Expected yields of a capable teacher and judge, where the step cannot know them in advance (the plan prints them)."""
EMBEDDED_YIELDS = {
    "lamini_candidates_per_prompt": 0.07,  # most of its lists do not parse
    "lamini_records_per_answer": 1.0,
    "evol_evolutions_kept": 0.6,  # answered: most of the rest leak the template
    "evol_evolutions_judged": 0.7,
    "evol_records_per_evolution": 0.6,  # of those answered: the answers leak it too
    "evol_equality_calls_per_pair": 2.0,  # its "equal?" replies often do not parse: asked again
    "orca_records_per_answer": 1.0,
}
"""The embedded SmolLM2-135M as teacher and judge: recipes/tiny.yaml's generate step run 9 times (seeds 1-6, and
seed 0 three times: in fp32, and in bf16 before and after a change to the decoder's arithmetic) made 41-71
teacher calls (mean 54) and 21-34 judge calls (mean 26); these yields plan 54 and 26. With 6 records a scheme,
one run lands within +-20% of that mean in 6 (teacher) and 7 (judge) of the 9 (`bench_plan.py --seeds`)."""


def yields_for(teacher: ModelConfig, judge: ModelConfig) -> dict[str, float]:
    """The yields the plan assumes: the embedded model's where it is the teacher (or judge), else a capable one's."""
    found = dict(EMBEDDED_YIELDS if is_embedded(teacher) else CAPABLE_YIELDS)
    found["evol_equality_calls_per_pair"] = (EMBEDDED_YIELDS if is_embedded(judge) else CAPABLE_YIELDS)[
        "evol_equality_calls_per_pair"]
    return found


class GenerateStep(Step, GenerateConfig):
    """Synthetic instruction data: each scheme with `n > 0`, resumable, licence-gated before any call."""

    type: Literal["generate"] = "generate"
    DECODES = True

    def roles(self, recipe: RecipeView) -> dict[str, tuple[tuple, ModelConfig]]:
        found = {}
        if self.enabled_methods():
            found["teacher"] = (("models", "teacher"), recipe.models.teacher)
            if self.evol.n and self.evol.equality_check:
                found["judge"] = (("models", "judge"), recipe.models.judge)
        return found

    def provides(self, recipe: RecipeView) -> list[str]:
        return self.enabled_methods() + (["constraints"] if self.constraints.n else [])

    def run(self, context: StepContext) -> StepResult:
        recipe, models = context.recipe, context.models
        teacher = recipe.models.teacher
        enabled = self.enabled_methods()
        if recipe.run.require_commercial_use:  # every scheme's seeds pass before any scheme starts
            for method in enabled:
                check_licences(self.scheme(method).seeds, teacher.spec, teacher.licence)
        total = sum(self.scheme(m).n for m in enabled)
        context.progress(0, total, "records")
        results, done = {}, 0
        for method in enabled:
            out = context.out_dir / f"{method}.jsonl"
            # Models are opened on first use: only after the gate, and the judge only for the equality check.
            judge = (lambda: models["judge"]) if method == "evol" and self.evol.equality_check else None
            results[method] = generate(method, self.scheme(method), lambda: models["teacher"], teacher.spec, out,
                                       seed=recipe.run.seed, judge=judge, judge_spec=recipe.models.judge.spec,
                                       teacher_licence=teacher.licence, restart_on_change=True,
                                       max_failure_rate=recipe.run.max_failure_rate,
                                       listener=lambda n, before=done: context.progress(before + n))
            done += self.scheme(method).n
        outputs = {m: OutputFiles(Path(r["output"])).records for m, r in results.items()}
        if self.constraints.n > 0:  # prompts only: no record of them is an instruction/response pair
            out = context.out_dir / "constraints.jsonl"
            results["constraints"] = generate("constraints", self.constraints, None, "", out, seed=recipe.run.seed,
                                              require_commercial_use=recipe.run.require_commercial_use)
            outputs["constraints"] = out
        counts = {m: r["records"] for m, r in results.items()}
        return StepResult(outputs=context.handed_on(outputs), counts=counts, details={"schemes": results}, funnel="generated",
                          failed_items=sum(r["failed_items"] for r in results.values()))

    def check(self, context: CheckContext) -> None:
        recipe = context.recipe
        for method in [*METHODS, "constraints"]:
            config = self.scheme(method)
            if config.n == 0:
                continue
            key = (method, "seeds")
            if not config.seeds:
                context.add(key, "no seed files given; add at least one (or set n: 0 to skip this scheme)")
                continue
            rows = sum(_seed_rows(seed, config.skip_bad_lines, key + (i,), context) for i, seed in enumerate(config.seeds))
            _check_reach(method, config, rows, context)
            if recipe.run.require_commercial_use and method != "constraints" and \
                    all(Path(seed.path).is_file() for seed in config.seeds):
                try:
                    check_licences(config.seeds, recipe.models.teacher.spec, recipe.models.teacher.licence)
                except LicenceError as error:
                    context.findings.add(("run", "require_commercial_use"), str(error))

    def plan(self, context: PlanContext) -> list[PlanLine]:
        recipe, calls = context.recipe, []
        planners = {"lamini": _plan_lamini, "evol": _plan_evol, "orca": _plan_orca}
        yields = yields_for(recipe.models.teacher, recipe.models.judge)
        local = any(is_local(config) for _, config in self.roles(recipe).values())
        context.other_wall_s = START_S + LOCAL_START_S * local if self.enabled_methods() else 0.0
        for method in self.enabled_methods():
            calls += planners[method](recipe, self.scheme(method), yields)  # type: ignore[operator]
            context.assumptions |= {k: v for k, v in yields.items() if k.startswith(method)}
            context.expected[method] = self.scheme(method).n
        if self.enabled_methods():  # the longest a record's response is expected to be: what a judge reads
            budget = max(self.scheme(m).response_sampling.max_new_tokens  # type: ignore[attr-defined]
                         for m in self.enabled_methods())
            context.expected["response_tokens"] = expected_completion(budget) if is_embedded(recipe.models.teacher) \
                else budget
        if self.constraints.n:
            context.expected["constraints"] = self.constraints.n
        return lines_for(context.name, calls)

    def disk_mb(self, recipe: RecipeView) -> float:
        # ~6 KB per generated record over the records, rejections and cached calls (measured on the tiny run)
        return sum(self.scheme(m).n for m in METHODS) * 6 / 1024


STEP = GenerateStep


# --- checks --------------------------------------------------------------------------------------

def _seed_rows(seed, skip_bad: bool, key: tuple, context: CheckContext) -> int:
    """Rows of one seed file (its `limit` applied); its first rows are parsed with the real reader."""

    path = Path(seed.path)
    if not path.is_file():
        context.missing(key, f"seed file {path}")
        return 0
    try:
        read_seeds(path, seed.licence, skip_bad, limit=min(seed.limit or PREVIEW_ROWS, PREVIEW_ROWS))
        rows = len(read_seeds(path, seed.licence, True).seeds) if path.suffix == ".json" else count_lines(path)
    except DataError as error:
        context.add(key, f"{error}; fix the file or set skip_bad_lines: true")
        return 0
    return min(rows, seed.limit) if seed.limit else rows


def _check_reach(method: str, config, rows: int, context: CheckContext) -> None:
    """Orca answers each seed once, Evol-Instruct evolves each seed at most once per epoch."""
    most = {"orca": rows, "evol": rows * getattr(config, "epochs", 1)}.get(method)
    if most is not None and rows and most < config.n:
        how = "one record per seed row" if method == "orca" else f"{rows:,} seed rows x {config.epochs} epochs"
        context.add((method, "n"), f"n={config.n:,} cannot be reached: at most {most:,} records ({how}); "
                                   "add seed files or lower n")


# --- plan: each scheme's calls, rendered with its own prompt builders ---------------------------

def _seeds(config: SchemeConfig) -> list:

    return load_seed_files(config.seeds, skip_bad=True).seeds


def _context(recipe: RecipeView):

    return Context(None, recipe.models.teacher.spec, "unknown", recipe.run.seed)


def _sample(seeds: list, seed: int) -> list:
    return random.Random(seed).sample(seeds, min(PROMPT_SAMPLE, len(seeds)))


def _plan_lamini(recipe: RecipeView, config, yields: dict[str, float]) -> list[Calls]:

    seeds, topics, rng = _seeds(config), load_topics(config.topics_file), random.Random(recipe.run.seed)
    grouped = by_source(seeds)
    lists = [draw_prompt(i, rng, config, grouped, topics).conversation for i in range(PROMPT_SAMPLE)]
    per_prompt = config.instructions_per_prompt * yields["lamini_candidates_per_prompt"]
    answers, _ = replay(config.n, config.batch_size, 1.0, yields["lamini_records_per_answer"])
    prompts, _ = replay(answers, config.batch_size, 2.0, per_prompt)
    answer = template("lamini", "response")
    responses = [answer.render(instruction=s.instruction) for s in _sample(seeds, recipe.run.seed)]
    teacher = recipe.models.teacher
    return [Calls.asking("teacher", teacher, prompts, lists, config.instruction_sampling.max_new_tokens,
                         rows=config.batch_size),
            Calls.asking("teacher", teacher, answers, responses, config.response_sampling.max_new_tokens,
                         rows=config.batch_size)]


def _plan_evol(recipe: RecipeView, config, yields: dict[str, float]) -> list[Calls]:

    scheme = EvolInstruct(_context(recipe), _seeds(config), config)
    kept, per_evolution = yields["evol_evolutions_kept"], yields["evol_records_per_evolution"]
    evolutions, _ = replay(config.n, config.batch_size, 0.7, kept * per_evolution)
    evolve, answer, equal = scheme.sample_prompts(PROMPT_SAMPLE)
    teacher = recipe.models.teacher
    calls = [Calls.asking("teacher", teacher, evolutions, evolve, config.evolve_sampling.max_new_tokens,
                          rows=config.batch_size),
             Calls.asking("teacher", teacher, math.ceil(evolutions * kept), answer,
                          config.response_sampling.max_new_tokens, rows=config.batch_size)]
    if config.equality_check:
        pairs = math.ceil(evolutions * max(kept, yields["evol_evolutions_judged"]))
        asked = math.ceil(pairs * min(yields["evol_equality_calls_per_pair"], config.equality_attempts))
        calls.append(Calls.asking("judge", recipe.models.judge, asked, equal, 24, rows=config.batch_size))
    return calls


def _plan_orca(recipe: RecipeView, config, yields: dict[str, float]) -> list[Calls]:

    scheme = Orca(_context(recipe), _seeds(config), config)
    calls, _ = replay(config.n, config.batch_size, 1.0, yields["orca_records_per_answer"])
    conversations = scheme.sample_conversations(PROMPT_SAMPLE)
    return [Calls.asking("teacher", recipe.models.teacher, calls, conversations,
                         config.response_sampling.max_new_tokens, rows=config.batch_size)]
