"""`bezoar plan RECIPE`: what a run will cost before anything runs.

Per step and role: the expected number of calls and tokens, the cost from the recipe's prices and a
wall-time estimate. Each step plans itself (`Step.plan`) with its own prompt builders and batching,
on the recipe's real seeds; a step that reads what an earlier step made counts it when that step is
done (a measured yield), else takes the earlier step's planned count (`PlanContext.expected`).
Completion tokens are the expected reply lengths where a step knows them, else the sampling limits.
The figures go into the manifest at `bezoar run` start and again, re-planned with what the run has
measured so far, as each step starts; `bezoar status` shows planned against done.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

from bezoar import handoff
from bezoar.config_base import ModelConfig, RecipeView
from bezoar.generate.runner import Batching
from bezoar.llm.batch_prices import role_cost
from bezoar.llm.endpoints import public_spec
from bezoar.llm.spec_syntax import parse_spec
from bezoar.llm.weights import models_cache_dir

LOCAL_GREEDY_TOK_S = 420.0
LOCAL_SAMPLED_TOK_S = 260.0
LOCAL_BATCH = 64
"""Generated tokens/s of the embedded model on 2 CPU cores with LOCAL_BATCH answers decoded at once, greedy
and sampled (fast mode, idle AVX-512 machine, recipes/verifiable.yaml on 2026-12-08: IFEval's 541 prompts
answered greedily twice, 133,685 tokens in 320 s; 1,600 answers sampled at temperature 1, 117,348 tokens in
505 s and, hours later, in ~410 s: a sampled row draws its token from its own generator). Fewer rows at once go slower
(`local_decode_tok_s`). A slow AVX2 VM decodes fp32 at ~100. Other local models scale with size."""
LOCAL_PREFILL_TOK_S = 1500.0
WEIGHTS_CONVERSION_S = 16.0
"""Converting the embedded GGUF to safetensors, once per model cache: the first step that loads it pays it
(tiny.yaml's generate step spent 23-25 s beside its calls from nothing, 6.5-8.2 s with the weights converted)."""
EMBEDDED_REPLY_TOKENS = 140.0
"""The embedded model's uncut reply length, on average (`expected_completion`)."""


EMBEDDED_TEMPLATE_TOKENS = 4.0
"""What the embedded model's chat template adds to `conversation_tokens`' count: the answer's header (3 tokens)
and a token more per message than counted."""
EMBEDDED_DEFAULT_SYSTEM_TOKENS = 22.0
"""The system message SmolLM2's template puts before a conversation that has none ("You are a helpful AI
assistant named SmolLM, trained by Hugging Face"). With the two: a one-message conversation counts 26 tokens
more than `conversation_tokens`, as the template renders it; verifiable.yaml's sampling and IFEval prompts were
recorded at 64.9 and 77.7 tokens a call, planned now at 64.9 and 77.7."""


def embedded_template_tokens(without_system: float) -> float:
    """Tokens the embedded model's template adds to a call whose conversation lacks a system message with
    probability `without_system`."""
    return EMBEDDED_TEMPLATE_TOKENS + EMBEDDED_DEFAULT_SYSTEM_TOKENS * without_system


def local_decode_tok_s(rows: float, greedy: bool = False) -> float:
    """Generated tokens/s with `rows` answers decoded at once: LOCAL_GREEDY_TOK_S or LOCAL_SAMPLED_TOK_S at
    LOCAL_BATCH, as the square root of the rows below it (measured ~130 at 16 rows: recipes/tiny.yaml's
    generate and MT-Bench)."""
    speed = LOCAL_GREEDY_TOK_S if greedy else LOCAL_SAMPLED_TOK_S
    return speed * math.sqrt(min(max(rows, 1.0), LOCAL_BATCH) / LOCAL_BATCH)


def expected_completion(budget: float) -> float:
    """Tokens the embedded model generates under a `budget` of max_new_tokens: its uncut replies taken as
    exponentially distributed around EMBEDDED_REPLY_TOKENS. Measured shares of the budget used: 0.94 of 64
    (tiny.yaml's MT-Bench answers), 0.58 of 80-96 (its generate step), 0.57 of 128 (verifiable.yaml's
    sampling), 0.61 of 192 (its IFEval answers, base and DPO); the model says 0.80, 0.72, 0.66 and 0.54."""
    return EMBEDDED_REPLY_TOKENS * (1 - math.exp(-budget / EMBEDDED_REPLY_TOKENS)) if budget > 0 else 0.0


@dataclass
class PlanLine:
    step: str
    role: str
    model: str
    calls: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float = 0.0
    """What the role will pay, as configured (at the batch rate for a `batch: true` role)."""
    online_usd: float = 0.0
    batch_usd: float = 0.0
    """The same calls online and as provider batches (`batch_price_factor` of the online price)."""
    wall_s: float | None = None
    note: str = ""


@dataclass
class Calls:
    """One kind of call a step makes: how many, and the tokens of one."""

    role: str
    config: ModelConfig
    count: float
    prompt_tokens: float
    completion_tokens: float
    """The sampling limit, or the expected reply length where the step knows it."""
    rows: float | None = None
    """Calls a local model decodes at once (a step's batch size); None: all of them, up to LOCAL_BATCH."""
    without_system: float = 1.0
    """The share of these calls' conversations without a system message (`share_without_system`)."""
    greedy: bool = False
    """Decoded at temperature 0 (a local model decodes those faster than sampled ones)."""

    @classmethod
    def asking(cls, role: str, config: ModelConfig, count: float, conversations: list[list[dict]],
               completion_tokens: float, rows: float | None = None, greedy: bool = False) -> "Calls":
        """`count` calls like `conversations` (a sample of the real ones): their mean length, and how many lack
        a system message."""
        return cls(role, config, count, mean_tokens(conversations), completion_tokens, rows,
                   share_without_system(conversations), greedy)


@dataclass
class Plan:
    lines: list[PlanLine] = field(default_factory=list)
    tokens_counted_with: str = "chars/4"
    assumptions: dict = field(default_factory=dict)
    wall_s: dict[str, float] = field(default_factory=dict)
    """Per step: expected wall time, model calls and anything else it does (training, scoring)."""

    def step_calls(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for line in self.lines:
            totals[line.step] = totals.get(line.step, 0) + line.calls
        return totals

    def to_json(self) -> dict:
        return {"lines": [asdict(line) for line in self.lines], "tokens_counted_with": self.tokens_counted_with,
                "assumptions": self.assumptions, "calls_by_step": self.step_calls(), "wall_s": self.wall_s,
                "cost_usd": round(sum(line.cost_usd for line in self.lines), 2)}

    def over(self, earlier: dict | None, steps: list[str]) -> dict:
        """This plan's JSON with the lines of steps it did not plan kept from `earlier` (a run with
        --only STEP re-plans that step, not the others that `bezoar status` compares against)."""
        kept = [PlanLine(**line) for line in (earlier or {}).get("lines", []) if line.get("step") not in steps]
        walls = {k: v for k, v in ((earlier or {}).get("wall_s") or {}).items() if k not in steps}
        return Plan(kept + self.lines, self.tokens_counted_with, self.assumptions, {**walls, **self.wall_s}).to_json()


@dataclass
class PlanContext:
    """What `Step.plan` knows: the recipe, what earlier steps of the run handed on (when they are done:
    measured yields) or are expected to (planned counts, in `expected`)."""

    recipe: RecipeView
    index: int
    run_dir: Path
    expected: dict[str, float] = field(default_factory=dict)
    """Output name -> records it is expected to hold, filled in by earlier steps' plans."""
    other_wall_s: float = 0.0
    """Time the step spends beyond its model calls (training, scoring), set by its plan."""
    assumptions: dict[str, float] = field(default_factory=dict)
    """Yields the plan assumed where nothing was measured (the plan prints them)."""
    wanted: bool = True
    """This step's lines are kept: worth measuring what it can (planned only for what it hands on, else)."""

    @property
    def name(self) -> str:
        return self.recipe.steps[self.index].name

    def measured(self, output: str) -> Path | None:
        """The file an earlier, done step of this run handed on as `output` (None before the run)."""
        step = self.recipe.steps[self.index]
        return handoff.find(self.run_dir, self.recipe.names_before(self.name), output, step.source_for(output))

    def records(self, output: str) -> float | None:
        """Rows of the earlier step's `output`: counted when it exists, else as planned, else None."""
        found = self.measured(output)
        if found is not None and found.is_file():
            with open(found, "rb") as handle:
                return float(sum(1 for line in handle if line.strip()))
        return self.expected.get(output)


# --- token counting ------------------------------------------------------------------------------

def _converted_embedded(name: str) -> Path | None:
    """A file of the embedded model as its one conversion wrote it into the model cache, None before it."""
    found = sorted(models_cache_dir().glob(f"SmolLM2-135M-Instruct*/{name}"))
    return found[0] if found else None


def _loads_embedded_gguf(roles: dict[str, tuple[tuple, ModelConfig]]) -> bool:
    """One of a step's roles is the embedded model, which the first load converts from its GGUF."""
    specs = [parse_spec(config.spec) for _, config in roles.values()]
    return any(spec.kind == "local" and spec.model is None for spec in specs)


@lru_cache(maxsize=1)
def _tokenizer():
    """The embedded SmolLM2 tokenizer when it was converted already (a 50 ms load), else None (chars/4)."""
    found = _converted_embedded("tokenizer.json")
    if found is None:
        return None
    try:
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(found))
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


def share_without_system(conversations: list[list[dict]]) -> float:
    """The share of `conversations` without a system message, to which the embedded model's template adds its own."""
    if not conversations:
        return 1.0
    return sum(all(m["role"] != "system" for m in c) for c in conversations) / len(conversations)


# --- replaying a scheme's batching --------------------------------------------------------------

def replay(n: float, cap: int, prior: float, rate: float) -> tuple[int, float]:
    """(work items sent, records expected) for a stream consumed until n records at `rate` records per item."""

    batching, sent, made = Batching(cap, prior=prior), 0, 0.0
    while made < n - 1e-9:
        size = batching.size(max(1, math.ceil(n - made)))
        sent, made = sent + size, made + size * rate
        batching.saw(size, round(size * rate))
    return sent, made


# --- from calls to lines -------------------------------------------------------------------------

def is_local(config: ModelConfig) -> bool:
    return parse_spec(config.spec).kind == "local"


def is_embedded(config: ModelConfig) -> bool:
    """The embedded SmolLM2 (`local`, or a local copy of SmolLM2-135M), whose reply lengths the plan knows."""
    spec = parse_spec(config.spec)
    return spec.kind == "local" and (spec.model is None or "smollm2-135m" in spec.model.lower())


def lines_for(step: str, calls: list[Calls]) -> list[PlanLine]:
    """One line per role: calls summed, tokens from each kind's per-call figures, cost and wall time."""
    by_role: dict[str, PlanLine] = {}
    configs: dict[str, ModelConfig] = {}
    local_s: dict[str, float] = {}
    for kind in calls:
        configs[kind.role] = kind.config
        line = by_role.setdefault(kind.role, PlanLine(step, kind.role, public_spec(kind.config.spec), 0, 0, 0, wall_s=0.0))
        embedded = is_embedded(kind.config)
        completion = expected_completion(kind.completion_tokens) if embedded else kind.completion_tokens
        prompt = kind.prompt_tokens + (embedded_template_tokens(kind.without_system) if embedded else 0.0)
        line.calls += int(kind.count)
        line.prompt_tokens += round(kind.count * prompt)
        line.completion_tokens += int(kind.count * completion)
        rows = kind.rows if kind.rows is not None else kind.count
        local_s[kind.role] = local_s.get(kind.role, 0.0) + kind.count * (
            completion / local_decode_tok_s(rows, kind.greedy) + prompt / LOCAL_PREFILL_TOK_S)
    for line in by_role.values():
        config = configs[line.role]
        cost = role_cost(config, line.prompt_tokens, line.completion_tokens)
        line.cost_usd, line.online_usd, line.batch_usd = (round(x, 2) for x in (cost.usd, cost.online_usd, cost.batch_usd))
        if config.batch:
            line.wall_s = None
            line.note = "provider batch: answered within 24 h"
        elif is_local(config):
            line.wall_s = round(local_s[line.role])
            line.note = "wall time at the embedded model's measured CPU speed" + (
                "" if parse_spec(config.spec).model is None else " (this model's will differ)")
        else:
            line.wall_s = round(line.completion_tokens / (config.stream_tok_s * config.concurrency))
            line.note = f"wall time assumes {config.stream_tok_s:g} tok/s per request, {config.concurrency} in flight"
    return list(by_role.values())


def make_plan(recipe: RecipeView, names: list[str] | None = None, run_dir: Path | None = None) -> Plan:
    """The plan for these steps (all by default). Every step plans in order, so each knows what the steps
    before it are expected to hand on; only the chosen steps' lines are kept. With `run_dir`, steps that
    read an earlier step's output count what that step really made when it is done."""
    chosen = set(names or recipe.names())
    last = max(recipe.names().index(name) for name in chosen)
    plan = Plan(tokens_counted_with="the embedded SmolLM2 tokenizer" if _tokenizer() else "chars/4")
    expected: dict[str, float] = {}
    unconverted = _converted_embedded("model.safetensors") is None
    for index, step in enumerate(recipe.steps[:last + 1]):  # later steps cannot change these
        context = PlanContext(recipe, index, Path(run_dir or recipe.run.directory), expected,
                              wanted=step.name in chosen)
        lines = step.plan(context)
        converts = unconverted and _loads_embedded_gguf(step.roles(recipe))
        unconverted = unconverted and not converts
        if step.name in chosen:
            plan.lines += lines
            plan.wall_s[step.name] = round(sum(line.wall_s or 0 for line in lines) + context.other_wall_s
                                           + WEIGHTS_CONVERSION_S * converts)
            plan.assumptions.update(context.assumptions)
    return plan
