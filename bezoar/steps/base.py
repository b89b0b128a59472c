"""What a step is: a config that runs, checks and plans itself, and the typed result it hands on.

A step type is one module in `bezoar/steps/` holding one subclass of `Step`: its settings (the
recipe keys of a `- type: NAME` entry), `run` (the work, in a process of its own), `check`
(problems found before any model call), `plan` (calls, tokens, cost and time), `roles` (the model
roles it calls) and `provides` (the names of what it hands on). It is registered once, in
`bezoar.steps.STEP_MODULES`. The pipeline, preflight, plan, status, compare and the report loop over
steps through this class and read `StepResult`s; none of them knows a step's insides.

A step reads what earlier steps handed on by name (`StepContext.input`): by default from the nearest
step before it that handed on that name, or from the step `from:` names. A training step continues
from the newest checkpoint any step before it trained.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Type, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from bezoar import handoff
from bezoar.config_base import ModelConfig, RecipeView, StrictModel
from bezoar.findings import Findings
from bezoar.llm.cache import CachedModel
from bezoar.plan import PlanContext, PlanLine


SettingsT = TypeVar("SettingsT", bound=BaseModel)


class StepResult(BaseModel):
    """What a finished step hands on and reports: recorded in the run's manifest, read by later steps,
    `bezoar status`, compare and the report."""

    model_config = ConfigDict(extra="forbid")

    outputs: dict[str, str] = Field(default_factory=dict)
    """Files handed on, by name (paths relative to the run directory, so a moved run still resolves)."""
    checkpoints: dict[str, str] = Field(default_factory=dict)
    """Models trained, by name, in training order (directories relative to the run directory)."""
    reference: str | None = None
    """A preference-trained checkpoint's reference: the checkpoint name it started from, or "base"."""
    counts: dict[str, float] = Field(default_factory=dict)
    """The few numbers that say what the step did (records, kept, pairs, steps, ...)."""
    headline: str = ""
    """One line for `bezoar status` (default: the counts)."""
    failed_items: int = 0
    """Items recorded in the step's failed.jsonl (asked again by `bezoar run --retry-failed`)."""
    funnel: Literal["generated", "kept"] | None = None
    """Where the record sets it hands on (by method name) sit in the data funnel the report draws."""
    lineage: list[dict[str, str]] = Field(default_factory=list)
    """Data sets and models it brought into the run: {name, kind, licence} (the report's licence lineage)."""
    details: dict[str, Any] = Field(default_factory=dict)
    """Everything else the step reports (per-scheme summaries, training metrics, usage)."""

    def line(self) -> str:
        return self.headline or ", ".join(f"{k} {v:g}" for k, v in self.counts.items()) or "-"


class Progress:
    """Work done out of work planned, as a running step reports it (`bezoar status` shows it)."""

    def __init__(self, report: Callable[[dict], None] | None = None):
        self.report = report
        self.done, self.total, self.unit = 0, 0, ""

    def __call__(self, done: int, total: int | None = None, unit: str | None = None) -> None:
        self.done, self.total = done, self.total if total is None else total
        self.unit = unit or self.unit
        if self.report is not None:
            self.report({"done": self.done, "total": self.total, "unit": self.unit})

    def add(self, count: int = 1) -> None:
        self(self.done + count)


@dataclass
class StepContext:
    """What a running step sees: the recipe, its place in it, its own folder, what earlier steps handed on
    (through the run's manifest) and the model roles (opened on first use)."""

    recipe: RecipeView
    run_dir: Path
    name: str
    models: Mapping[str, CachedModel] = field(default_factory=dict)
    retry_failed: bool = False
    progress: Progress = field(default_factory=Progress)

    @property
    def step(self) -> "Step":
        return self.recipe.step(self.name)

    @property
    def out_dir(self) -> Path:
        """The step's own folder, `RUN_DIR/NAME`: no step writes anywhere else in the run."""
        return Path(self.run_dir) / self.name

    def before(self) -> list[str]:
        return self.recipe.names_before(self.name)

    def input(self, output: str) -> Path:
        """The file an earlier step handed on as `output` (see the module docstring); a one-line DataError
        naming the step to run when none did."""
        source = self.step.source_for(output)
        return handoff.required(self.run_dir, self.before(), output, source, source or self.maker_of(output))

    def maker_of(self, output: str) -> str | None:
        """The nearest step before this one that hands on `output` when it is done (what to run first)."""
        before = self.recipe.steps[:self.recipe.names().index(self.name)]
        return next((s.name for s in reversed(before) if output in s.provides(self.recipe)), None)

    def optional_input(self, output: str) -> Path | None:
        return handoff.find(self.run_dir, self.before(), output, self.step.source_for(output))

    def checkpoints(self) -> list[tuple[str, Path]]:
        """(name, directory) of every model the done steps before this one trained, in order."""
        return handoff.checkpoints(self.run_dir, self.before())

    def continued_from(self) -> tuple[str, str]:
        """(name, model spec) this step trains or samples from: the newest checkpoint before it, else the
        base student ("base", its spec)."""
        trained = self.checkpoints()
        if trained:
            return trained[-1][0], str(trained[-1][1])
        return "base", self.recipe.models.student.spec

    def handed_on(self, paths: Mapping[str, Path | str]) -> dict[str, str]:
        return handoff.relative(self.run_dir, paths)


@dataclass
class CheckContext:
    """What `Step.check` reports to: problems placed on the recipe line of the step's key."""

    recipe: RecipeView
    index: int
    findings: Findings
    run_dir: Path

    @property
    def key(self) -> tuple:
        return ("steps", self.index)

    def add(self, key: tuple, message: str) -> None:
        self.findings.add(self.key + key, message)

    def missing(self, key: tuple, what: str) -> None:
        self.findings.missing(self.key + key, what)

    def before(self) -> list["Step"]:
        return list(self.recipe.steps[:self.index])


class Step(StrictModel):
    """One entry of a recipe's `steps:` list. Subclasses set `type` (a Literal) and add their settings."""

    type: str
    """The step type (generate, filter, sft, hh_slices, sft_hh, preferences, dpo, grpo, eval, report, ...)."""
    name: str = Field("", pattern=r"^([A-Za-z0-9][A-Za-z0-9._-]*)?$")
    """Its name in the run (its folder, `--from`, `from:`); default: the type, numbered (`dpo-1`,
    `dpo-2`) when the type repeats."""
    from_: str | dict[str, str] | None = Field(None, alias="from")
    """Where its inputs come from when more than one earlier step could supply them: a step name (every
    input from it), or {input name: step name}. Default: the nearest step before it that handed it on."""

    model_config = ConfigDict(extra="forbid", validate_default=True, populate_by_name=True,
                              use_attribute_docstrings=True)

    CONTINUES: ClassVar[bool] = False
    """A training step: it continues from the newest checkpoint before it and hands on checkpoints."""
    HAS_REFERENCE: ClassVar[bool] = False
    """Its checkpoint is scored against the model it started from (DPO's implicit reward): evaluating its
    preference accuracy takes two passes over the pairs."""
    DECODES: ClassVar[bool] = False
    """Its outputs are what its model roles decode, so they depend on the decoding mode (fast or
    deterministic, bezoar.llm.device): a deterministic run re-runs it where a fast one did it, and the reverse."""

    def as_settings(self, kind: Type[SettingsT]) -> SettingsT:
        """Its settings as the plain class the library functions take, without `type`, `name` and `from` (a
        training run's fingerprint must not change when its step is renamed, or differ from `bezoar sft`'s)."""
        return kind.model_validate(self.model_dump(include=set(kind.model_fields)))

    def source_for(self, output: str) -> str | None:
        if isinstance(self.from_, dict):
            return self.from_.get(output)
        return self.from_

    def roles(self, recipe: RecipeView) -> dict[str, tuple[tuple, ModelConfig]]:
        """Model roles this step calls: role -> (its key in the recipe, its config)."""
        return {}

    def inputs(self, recipe: RecipeView) -> list[str]:
        """Output names of earlier steps this step reads (checked before the run starts)."""
        return []

    def provides(self, recipe: RecipeView) -> list[str]:
        """Output names this step hands on."""
        return []

    def check(self, context: CheckContext) -> None:
        """Add every problem found without a model call (input files, counts, licences) to `context`."""

    def plan(self, context: PlanContext) -> list[PlanLine]:
        """Expected calls, tokens, cost and wall time per role (and `context.expected` for later steps)."""
        return []

    def disk_mb(self, recipe: RecipeView) -> float:
        """A rough upper estimate of what the step writes."""
        return 0.0

    def run(self, context: StepContext) -> StepResult:
        raise NotImplementedError(f"step type {self.type} has no run")
