"""`bezoar plan RECIPE`: what a run will cost before anything runs.

Per stage and role: the expected number of calls and tokens, the cost from the recipe's prices and
a wall-time estimate. Calls follow each stage's own batching (`bezoar.generate.runner.Batching` is
replayed with the yields below); prompt tokens come from the real prompt templates rendered on the
recipe's actual seeds; completion tokens are the sampling limits (an upper bound: replies that end
earlier cost less). The same figures go into the manifest at `bezoar run` start, and `bezoar status`
shows planned against done.
"""
from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

from bezoar.config import Recipe
from bezoar.generate.config import METHODS

YIELDS = {
    "lamini_candidates_per_prompt": 0.5,  # share of the asked-for instructions that parse and pass the checks
    "lamini_records_per_answer": 0.9,
    "evol_evolutions_kept": 0.7,  # evolutions that pass elimination rules 1-4 (WizardLM reports ~70-80%)
    "evol_records_per_evolution": 0.9,
    "orca_records_per_answer": 0.95,
    "filter_judged_share": 0.8,  # records left for the judge after heuristics, de-dup and contamination
}
"""Expected yields where a stage cannot know them in advance, assumed for a capable teacher and judge
(the plan prints them). Where a reply always parses they are close: against a loopback server answering
every call with one 8-item list, LaMini n=8 was planned at 15 calls and made 12, Orca 9 and 8. The
embedded 135M teacher yields less (its instruction lists often do not parse), so it needs more calls."""

LOCAL_DECODE_TOK_S = 100.0
LOCAL_PREFILL_TOK_S = 1500.0
"""The embedded model on 2 CPU cores, batch 32-64, from benchmarks/bench_generation.py (README: 86-110
generated tok/s on a slow AVX2 VM); prefill measured in the same runs. Other local models scale with size."""
REMOTE_STREAM_TOK_S = 30.0
"""Assumed generation speed of one request stream on a remote server (vLLM/API); `concurrency` streams run at once."""
PROMPT_SAMPLE = 16
"""Prompts rendered per kind of call to measure their length."""


@dataclass
class PlanLine:
    stage: str
    role: str
    model: str
    calls: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float = 0.0
    wall_s: float | None = None
    note: str = ""
    by_scheme: dict[str, int] = field(default_factory=dict)
    """Generate only: this role's calls per scheme (lamini, evol, orca)."""


@dataclass
class Plan:
    lines: list[PlanLine] = field(default_factory=list)
    tokens_counted_with: str = "chars/4"
    assumptions: dict = field(default_factory=lambda: dict(YIELDS))

    def stage_calls(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for line in self.lines:
            totals[line.stage] = totals.get(line.stage, 0) + line.calls
        return totals

    def to_json(self) -> dict:
        return {"lines": [asdict(line) for line in self.lines], "tokens_counted_with": self.tokens_counted_with,
                "assumptions": self.assumptions, "calls_by_stage": self.stage_calls(),
                "cost_usd": round(sum(line.cost_usd for line in self.lines), 2)}

    def over(self, earlier: dict | None, stages: list[str]) -> dict:
        """This plan's JSON with the lines of stages it did not plan kept from `earlier` (a run with
        --only STAGE re-plans that stage, not the others that `bezoar status` compares against)."""
        kept = [PlanLine(**line) for line in (earlier or {}).get("lines", []) if line.get("stage") not in stages]
        return Plan(kept + self.lines, self.tokens_counted_with, self.assumptions).to_json()


# --- token counting ------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _tokenizer():
    """The embedded SmolLM2 tokenizer when it was converted already (a 50 ms load), else None (chars/4)."""
    from bezoar.llm.weights import models_cache_dir

    found = sorted(models_cache_dir().glob("SmolLM2-135M-Instruct*/tokenizer.json"))
    if not found:
        return None
    try:
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(found[0]))
    except Exception:  # noqa: BLE001 - counting falls back to chars/4; the plan says which it used
        return None


def count_tokens(text: str) -> int:
    tokenizer = _tokenizer()
    return len(tokenizer.encode(text, add_special_tokens=False).ids) if tokenizer else math.ceil(len(text) / 4)


def conversation_tokens(conversation: list[dict]) -> int:
    """Content tokens plus ~4 per message for the chat template's role markers."""
    return sum(count_tokens(m["content"]) + 4 for m in conversation)


def mean_tokens(conversations: list[list[dict]]) -> float:
    return sum(map(conversation_tokens, conversations)) / len(conversations) if conversations else 0.0


# --- replaying a scheme's batching --------------------------------------------------------------

def replay(n: int, cap: int, prior: float, rate: float) -> tuple[int, float]:
    """(work items sent, records expected) for a stream consumed until n records at `rate` records per item."""
    from bezoar.generate.runner import Batching

    batching, sent, made = Batching(cap, prior=prior), 0, 0.0
    while made < n - 1e-9:
        size = batching.size(max(1, math.ceil(n - made)))
        sent, made = sent + size, made + size * rate
        batching.saw(size, round(size * rate))
    return sent, made


# --- per stage -----------------------------------------------------------------------------------

def _seeds(config):
    from bezoar.generate.seeds import load_seed_files

    return load_seed_files(config.seeds, skip_bad=True).seeds


def _context(recipe: Recipe):
    from bezoar.generate.runner import Context

    return Context(None, recipe.models.teacher.spec, "unknown", recipe.run.seed)


def plan_lamini(recipe: Recipe, config) -> list[tuple[str, int, float, int]]:
    """(role, calls, prompt tokens per call, completion tokens per call) for each kind of call."""
    from bezoar.generate.lamini import _one_line, load_topics
    from bezoar.prompts import template

    # Rendered as LaMini.plan renders them, without building its near-copy index (seconds, not needed here).
    seeds, topics, rng = _seeds(config), load_topics(config.topics_file), random.Random(recipe.run.seed)
    lists = []
    for i in range(PROMPT_SAMPLE):
        mode = "topic_guided" if rng.random() < config.topic_guided_fraction else "example_guided"
        examples = rng.sample(seeds, min(config.examples_per_prompt, len(seeds)))
        listed = "\n".join(f"{k}. {_one_line(seed.instruction)}" for k, seed in enumerate(examples, 1))
        chosen = rng.sample(topics, min(config.topics_per_prompt, len(topics))) if mode == "topic_guided" else []
        lists.append(template("lamini", mode).render(examples=listed, count=str(config.instructions_per_prompt),
                                                     topics=", ".join(chosen)))
    per_prompt = config.instructions_per_prompt * YIELDS["lamini_candidates_per_prompt"]
    answers, _ = replay(config.n, config.batch_size, 1.0, YIELDS["lamini_records_per_answer"])
    prompts, _ = replay(answers, config.batch_size, 2.0, per_prompt)
    answer = template("lamini", "response")
    responses = [answer.render(instruction=s.instruction) for s in _sample(seeds, recipe.run.seed)]
    return [("teacher", prompts, mean_tokens(lists), config.instruction_sampling.max_new_tokens),
            ("teacher", answers, mean_tokens(responses), config.response_sampling.max_new_tokens)]


def plan_evol(recipe: Recipe, config) -> list[tuple[str, int, float, int]]:
    from bezoar.generate.evol_instruct import Draw, EvolInstruct, Member
    from bezoar.prompts import template

    scheme = EvolInstruct(_context(recipe), _seeds(config), config)
    kept, per_evolution = YIELDS["evol_evolutions_kept"], YIELDS["evol_records_per_evolution"]
    evolutions, _ = replay(config.n, config.batch_size, 0.7, kept * per_evolution)
    members = [Member(s, scheme._seed_text(s), s.id) for s in scheme.order[:PROMPT_SAMPLE]]
    draws = [Draw("in_depth", op) for op in config.operations] or [Draw("in_breadth", None)]
    evolve = [scheme._evolve_prompt(m, draws[i % len(draws)])[0] for i, m in enumerate(members)]
    answer = [template("evol_instruct", "response").render(instruction=m.text) for m in members]
    lines = [("teacher", evolutions, mean_tokens(evolve), config.evolve_sampling.max_new_tokens),
             ("teacher", math.ceil(evolutions * kept), mean_tokens(answer), config.response_sampling.max_new_tokens)]
    if config.equality_check:
        equal = [template("evol_instruct", "equality").render(first=m.text, second=m.text) for m in members]
        lines.append(("judge", math.ceil(evolutions * kept), mean_tokens(equal), 24))
    return lines


def plan_orca(recipe: Recipe, config) -> list[tuple[str, int, float, int]]:
    from bezoar.generate.orca import Orca

    scheme = Orca(_context(recipe), _seeds(config), config)
    calls, _ = replay(config.n, config.batch_size, 1.0, YIELDS["orca_records_per_answer"])
    draws = [d for d in (scheme._draw(i) for i in range(PROMPT_SAMPLE)) if d is not None]
    conversations = [scheme._conversation(seed, message) for seed, _, message in draws]
    return [("teacher", calls, mean_tokens(conversations), config.response_sampling.max_new_tokens)]


def _sample(seeds: list, seed: int) -> list:
    return random.Random(seed).sample(seeds, min(PROMPT_SAMPLE, len(seeds)))


def plan_generate(recipe: Recipe) -> list[PlanLine]:
    planners = {"lamini": plan_lamini, "evol": plan_evol, "orca": plan_orca}
    calls: list[tuple[str, int, float, int]] = []
    by_scheme: dict[str, dict[str, int]] = {}
    for method, planner in planners.items():
        config = recipe.generate.scheme(method)
        if config.n > 0:
            found = planner(recipe, config)
            calls += found
            for role, count, _, _ in found:
                by_scheme.setdefault(role, {}).setdefault(method, 0)
                by_scheme[role][method] += int(count)
    lines = _merge(recipe, "generate", calls)
    for line in lines:
        line.by_scheme = by_scheme.get(line.role, {})
    return lines


def plan_filter(recipe: Recipe) -> list[PlanLine]:
    """The judge sees each generated record that survives the cheap filters, once (+ re-asks of unreadable replies)."""
    from bezoar.filter.judge import load_prompt

    config = recipe.filter.judge
    if not config.enabled:
        return []
    records = sum(recipe.generate.scheme(m).n for m in METHODS)
    judged = math.ceil(records * YIELDS["filter_judged_share"])
    schemes = recipe.generate
    longest = max(schemes.lamini.response_sampling.max_new_tokens, schemes.evol.response_sampling.max_new_tokens,
                  schemes.orca.response_sampling.max_new_tokens)
    reply = "x" * 4 * longest  # ~4 characters a token
    prompt = load_prompt(config.prompt).render(instruction="x" * 400, response=reply)
    completion = 1 if _next_token(recipe.models.judge.spec, config.scoring) else config.max_new_tokens
    return _merge(recipe, "filter", [("judge", judged, conversation_tokens(prompt), completion)])


def _next_token(spec: str, mode: str) -> bool:
    """A local judge in auto mode reads its rating from one forward pass (bezoar.llm.next_token)."""
    from bezoar.llm.specs import parse_spec

    return mode in ("logprobs", "next_token") or (mode == "auto" and parse_spec(spec).kind == "local")


def plan_eval(recipe: Recipe) -> list[PlanLine]:
    """MT-Bench per checkpoint: the student answers both turns, the judge grades both turns."""
    from bezoar.evaluate.mt_bench_files import load_questions

    config = recipe.eval.mt_bench
    if not config.enabled or not Path(config.questions).is_file():
        return []
    questions = load_questions(Path(config.questions), config.limit, config.per_category)
    checkpoints = (len(recipe.eval.checkpoints) if recipe.eval.checkpoints is not None
                   else len(recipe.sft.datasets) + 2) + int(recipe.eval.include_base)
    turns = sum(len(q.turns) for q in questions)
    question_tokens = sum(count_tokens(t) for q in questions for t in q.turns) / max(turns, 1)
    judge_role = "mt_bench_judge" if config.judge is not None else "judge"
    judge_prompt = 350 + question_tokens + 2 * config.max_new_tokens  # FastChat's judge template is ~350 tokens
    judge_spec = (config.judge or recipe.models.judge).spec
    judge_reply = 1 if _next_token(judge_spec, config.judge_mode) else config.judge_max_new_tokens
    calls = [("student", turns * checkpoints, question_tokens + config.max_new_tokens / 2, config.max_new_tokens),
             (judge_role, turns * checkpoints * config.judge_repeats, judge_prompt, judge_reply)]
    return _merge(recipe, "eval", calls)


def _role_config(recipe: Recipe, role: str):
    if role == "mt_bench_judge":
        return recipe.eval.mt_bench.judge
    return getattr(recipe.models, role)


def _merge(recipe: Recipe, stage: str, calls: list[tuple[str, int, float, int]]) -> list[PlanLine]:
    """One line per role: calls summed, tokens from each kind's per-call figures, cost and wall time."""
    from bezoar.llm.endpoints import public_spec  # a credential in a URL never reaches a plan or manifest
    from bezoar.llm.specs import parse_spec

    by_role: dict[str, PlanLine] = {}
    for role, count, prompt, completion in calls:
        config = _role_config(recipe, role)
        line = by_role.setdefault(role, PlanLine(stage, role, public_spec(config.spec), 0, 0, 0, wall_s=0.0))
        line.calls += int(count)
        line.prompt_tokens += round(count * prompt)
        line.completion_tokens += int(count * completion)
    for line in by_role.values():
        config = _role_config(recipe, line.role)
        line.cost_usd = round((line.prompt_tokens * config.input_price_per_mtok
                               + line.completion_tokens * config.output_price_per_mtok) / 1e6, 2)
        spec = parse_spec(config.spec)
        if spec.kind == "local":
            line.wall_s = round(line.completion_tokens / LOCAL_DECODE_TOK_S + line.prompt_tokens / LOCAL_PREFILL_TOK_S)
            line.note = "wall time at the embedded model's measured CPU speed" + ("" if spec.model is None else
                                                                                  " (this model's will differ)")
        else:
            line.wall_s = round(line.completion_tokens / (REMOTE_STREAM_TOK_S * config.concurrency))
            line.note = f"wall time assumes {REMOTE_STREAM_TOK_S:.0f} tok/s per request, {config.concurrency} in flight"
    return list(by_role.values())


def make_plan(recipe: Recipe, stages: list[str] | None = None) -> Plan:
    """The plan for these stages (all by default)."""
    from bezoar.stages import STAGE_NAMES

    stages = list(stages or STAGE_NAMES)
    plan = Plan(tokens_counted_with="the embedded SmolLM2 tokenizer" if _tokenizer() else "chars/4")
    if "generate" in stages:
        plan.lines += plan_generate(recipe)
    if "filter" in stages:
        plan.lines += plan_filter(recipe)
    if "eval" in stages:
        plan.lines += plan_eval(recipe)
    return plan
