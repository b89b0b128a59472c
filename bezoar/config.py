"""The recipe: YAML validated into typed config, with every problem reported as `FILE:LINE: key: what`.

A recipe is the run's settings, its model roles and a list of steps:

    run: {name: tiny, seed: 0}
    models: {teacher: local, judge: local, student: local}
    steps:
      - type: generate
        lamini: {n: 6, seeds: [...]}
      - type: filter
      - type: sft
      ...

Each step type is one module in `bezoar/steps/` (its settings are the class's fields, with
defaults); `bezoar recipe --reference` lists every key. A type that repeats is numbered (`dpo-1`,
`dpo-2`) unless the step gives a `name`.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import Field, ValidationError, model_validator
from pydantic_core import ErrorDetails

from bezoar.config_base import ModelConfig, ModelsConfig, RunConfig, StrictModel, expand_env
from bezoar.errors import ConfigError
from bezoar.llm.endpoints import public_spec
from bezoar.steps import step_types
from bezoar.steps.base import Step
from bezoar.yaml_lines import one_line, parse_yaml

__all__ = ["ModelConfig", "ModelsConfig", "Recipe", "RunConfig", "StrictModel", "expand_env", "load_recipe",
           "parse_yaml", "validation_lines"]

AT = "at "
"""A cross-step rule's message starts `at steps.N.key: ...`: the loader places it on that key's line."""
LEGACY_SECTIONS = ("generate", "filter", "sft", "sft_hh", "preferences", "dpo", "eval")
"""Top-level stage sections of recipes written before steps; refused with a line saying how to write them."""


if TYPE_CHECKING:
    AnyStep = Step
else:  # every registered step type, told apart by its `type` key
    AnyStep = Annotated[Union[tuple(step_types().values())], Field(discriminator="type")]


class Recipe(StrictModel):
    """A whole recipe: the run, the model roles, and the steps in order."""

    run: RunConfig = Field(default_factory=RunConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    steps: list[AnyStep] = Field(default_factory=list)
    """The steps, in the order they run; each `- type: NAME` with that type's settings."""

    @model_validator(mode="before")
    @classmethod
    def _no_legacy_sections(cls, value: Any) -> Any:
        if isinstance(value, dict) and (old := [k for k in LEGACY_SECTIONS if k in value]):
            raise ValueError(legacy_message(old[0]))
        return value

    @model_validator(mode="after")
    def _named(self) -> "Recipe":
        unnamed = [s.type for s in self.steps if not s.name]
        seen: dict[str, int] = {}
        for step in self.steps:
            if not step.name:
                seen[step.type] = seen.get(step.type, 0) + 1
                step.name = step.type if unnamed.count(step.type) == 1 else f"{step.type}-{seen[step.type]}"
        names = [s.name for s in self.steps]
        for index, step in enumerate(self.steps):
            if names.index(step.name) != index:
                raise ValueError(f"{AT}steps.{index}.name: '{step.name}' is the name of step {names.index(step.name)} "
                                 "too; step names must be unique")
            sources = step.from_.values() if isinstance(step.from_, dict) else [step.from_] if step.from_ else []
            unknown = [s for s in sources if s not in names[:index]]
            if unknown:
                raise ValueError(f"{AT}steps.{index}.from: {', '.join(unknown)} must name a step before this one "
                                 f"(before it: {', '.join(names[:index]) or 'none'})")
        return self

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise ConfigError(f"no step named '{name}' in this recipe; its steps are: {', '.join(self.names()) or 'none'}")

    def names(self) -> list[str]:
        return [s.name for s in self.steps]

    def names_before(self, name: str) -> list[str]:
        names = self.names()
        return names[:names.index(name)]

    def steps_of(self, kind: str) -> list[Step]:
        return [s for s in self.steps if s.type == kind]


def legacy_message(section: str) -> str:
    return (f"top-level '{section}:' sections are gone: a recipe lists its steps now; move the section under "
            f"`steps:` as `- type: {section}` followed by its keys, in run order (docs/recipe.md, recipes/tiny.yaml)")


# --- loading with line numbers --------------------------------------------------------------

UNKNOWN_KEY = "unknown key (check the spelling; every key is in docs/recipe.md, or run `bezoar recipe --reference`)"


def validation_lines(path: Path, error: ValidationError, lines: dict[tuple, int]) -> list[str]:
    """One `FILE:LINE: key.path: message` per problem, in file order."""
    return [text for _, text in sorted(_located(path, error, lines))]


def _located(path: Path, error: ValidationError, lines: dict[tuple, int]) -> list[tuple[int, str]]:
    found = []
    for problem in error.errors():
        loc, message = _recipe_path(problem["loc"]), _message(problem)
        if message.startswith(AT):  # a rule across steps names its key itself
            where, _, message = message.removeprefix(AT).partition(": ")
            loc = tuple(int(p) if p.isdigit() else p for p in where.split("."))
        line = next((lines[loc[:i]] for i in range(len(loc), 0, -1) if loc[:i] in lines), 1)
        key = ".".join(str(p) for p in loc) or "(recipe)"
        found.append((line, one_line(f"{path}:{line}: {key}: {message}")))
    return found


def _recipe_path(loc: tuple) -> tuple:
    """pydantic's error location as the recipe's key path: without its validator markers, and without the
    step type it inserts after `steps.N` (the discriminated union's tag is not a key of the file)."""
    loc = tuple(p for p in loc if not (isinstance(p, str) and p.startswith(("function-", "constrained"))))
    if len(loc) > 2 and loc[0] == "steps" and isinstance(loc[1], int) and loc[2] in step_types():
        loc = loc[:2] + loc[3:]
    return loc


def _message(problem: ErrorDetails) -> str:
    kind, message = problem["type"], problem["msg"]
    if kind == "extra_forbidden":
        return UNKNOWN_KEY
    if kind == "missing":
        return "required key is missing"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        return f"`type` must be one of: {', '.join(step_types())} (a step is `- type: NAME` and that type's keys)"
    message = message.removeprefix("Value error, ")
    got = problem.get("input")
    secret = any("key" in str(part) for part in problem["loc"])  # never echo what might be a secret
    if problem["loc"] and problem["loc"][-1] == "spec" and isinstance(got, str):
        got = public_spec(got)  # a URL in a spec may carry a credential
    if not secret and not isinstance(got, (dict, list)) and got is not None:
        message += f" (got {got!r})"
    return message


def load_recipe(path: Path | str) -> Recipe:
    """Parse and validate a recipe file; all problems are raised together as one ConfigError."""
    path = Path(path)
    data, lines = parse_yaml(path)
    legacy = [k for k in LEGACY_SECTIONS if k in data]
    if legacy:  # one line for the whole layout: every other problem would follow from it
        raise ConfigError(f"{path}:{lines[(legacy[0],)]}: {legacy[0]}: {legacy_message(legacy[0])}")
    try:
        return Recipe.model_validate(data)
    except ValidationError as error:
        raise ConfigError("\n".join(validation_lines(path, error, lines))) from None
