"""The recipe: YAML validated into typed config, with every problem reported as `FILE:LINE: key: what`.

A recipe nests one model per concern. The stage sections are defined beside their stages
(`bezoar.generate.config`, `bezoar.filter.config`, `bezoar.train.config`, `bezoar.evaluate.config`)
on the shared base (`bezoar.config_base`) and assembled here into `Recipe`. Every field has a
default, so a recipe only says what differs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError
from pydantic_core import ErrorDetails

from bezoar.config_base import ModelConfig, StrictModel, expand_env
from bezoar.errors import ConfigError, located
from bezoar.evaluate.config import EvalConfig
from bezoar.filter.config import FilterConfig
from bezoar.generate.config import GenerateConfig
from bezoar.llm.endpoints import public_spec
from bezoar.preferences.config import PreferencesConfig
from bezoar.train.config import DPOStageConfig, SFTHHStageConfig, SFTStageConfig

__all__ = ["ModelConfig", "ModelsConfig", "Recipe", "RunConfig", "StrictModel", "expand_env", "load_recipe",
           "parse_yaml", "recipe_model", "validation_lines"]


class ModelsConfig(StrictModel):
    teacher: ModelConfig = Field(default_factory=ModelConfig)
    judge: ModelConfig = Field(default_factory=ModelConfig)
    student: ModelConfig = Field(default_factory=ModelConfig)


class RunConfig(StrictModel):
    name: str = Field("run", pattern=r"^[A-Za-z0-9._-]+$")
    run_dir: Path | None = None
    """Where outputs go; default `runs/<name>`."""
    seed: int = 0
    require_commercial_use: bool = False
    """Refuse, before any call, a seed or teacher whose licence is not clearly commercial."""
    max_failure_rate: float = Field(0.05, ge=0, le=1)
    """A stage stops only when more than this share of the items it tried failed (judged once 20 were
    tried, so one bad item in a small run never stops it); failed items are kept in its failed.jsonl."""
    deterministic: bool = False
    """Decode in fp32, in which a batched reply equals the one-by-one reply, so a killed and resumed run is
    identical to one never killed. Off (fast, the default): bf16 where the machine is faster in it (measured;
    ~1.5-3x on CPUs with AVX512-BF16/AMX), and a resumed run keeps every finished call from the call cache but
    may decode the calls in flight at the kill differently. `bezoar run --deterministic` sets it too."""

    @property
    def directory(self) -> Path:
        return self.run_dir or Path("runs") / self.name


class Recipe(StrictModel):
    """A whole recipe: the run, the model roles, and one section per stage (each with its defaults)."""

    run: RunConfig = Field(default_factory=RunConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    sft: SFTStageConfig = Field(default_factory=SFTStageConfig)
    sft_hh: SFTHHStageConfig = Field(default_factory=SFTHHStageConfig)
    preferences: PreferencesConfig = Field(default_factory=PreferencesConfig)
    dpo: DPOStageConfig = Field(default_factory=DPOStageConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    source_path: Path | None = Field(None, exclude=True)
    """The file the recipe was read from (set by `load_recipe`, not a recipe key): excluded from dumps,
    so the manifest, the fingerprints and the hand-over to a stage process do not depend on where it lies."""


def recipe_model() -> type[Recipe]:
    """`Recipe`, for callers written when it was built at run time."""
    return Recipe


# --- loading with line numbers --------------------------------------------------------------

UNKNOWN_KEY = "unknown key (check the spelling; see the recipe reference in README)"

def _to_python(node: yaml.Node, path: tuple, lines: dict[tuple, int]) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        result = {}
        for key_node, value_node in node.value:
            key = key_node.value
            if not isinstance(key, str):  # `? [a, b]`: YAML allows it, a recipe has no such key
                raise yaml.MarkedYAMLError(problem="a key must be a plain name, not a list or mapping",
                                           problem_mark=key_node.start_mark)
            if key in result:  # YAML itself lets the last one win silently
                raise yaml.MarkedYAMLError(problem=f"key '{key}' repeats line {lines[path + (key,)]}",
                                           problem_mark=key_node.start_mark)
            lines[path + (key,)] = key_node.start_mark.line + 1
            result[key] = _to_python(value_node, path + (key,), lines)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(item, path + (i,), lines) for i, item in enumerate(node.value)]
    value = yaml.SafeLoader.construct_object(yaml.SafeLoader(""), node, deep=True)
    return expand_env(value) if isinstance(value, str) else value


def parse_yaml(path: Path) -> tuple[dict, dict[tuple, int]]:
    """The YAML as plain data plus a map from key path to line number."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read ({error.strerror})") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        lines: dict[tuple, int] = {}
        data = _to_python(node, (), lines) if node is not None else {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(_one_line(located(path, mark.line + 1 if mark else None, f"not valid YAML: {problem}"))) from None
    if not isinstance(data, dict):
        raise ConfigError(located(path, 1, "a recipe must be a mapping of sections (run, models, generate, ...)"))
    return data, lines


def validation_lines(path: Path, error: ValidationError, lines: dict[tuple, int]) -> list[str]:
    """One `FILE:LINE: key.path: message` per problem, in file order."""
    return [text for _, text in sorted(_located(path, error, lines))]


def _located(path: Path, error: ValidationError, lines: dict[tuple, int]) -> list[tuple[int, str]]:
    found = []
    for problem in error.errors():
        loc = tuple(p for p in problem["loc"] if not (isinstance(p, str) and p.startswith(("function-", "constrained"))))
        line = next((lines[loc[:i]] for i in range(len(loc), 0, -1) if loc[:i] in lines), 1)
        key = ".".join(str(p) for p in loc) or "(recipe)"
        found.append((line, _one_line(f"{path}:{line}: {key}: {_message(problem)}")))
    return found


def _one_line(text: str) -> str:
    """A key or value holding a line break or control character must not split its problem's line."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _message(problem: ErrorDetails) -> str:
    kind, message = problem["type"], problem["msg"]
    if kind == "extra_forbidden":
        return UNKNOWN_KEY
    if kind == "missing":
        return "required key is missing"
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
    found: list[tuple[int, str]] = []
    if "source_path" in data:  # bezoar fills it in from the file it reads; a recipe never sets it
        line = lines[("source_path",)]
        found.append((line, f"{path}:{line}: source_path: {UNKNOWN_KEY}"))
    try:
        recipe = Recipe.model_validate({**data, "source_path": path})
    except ValidationError as error:
        found += _located(path, error, lines)
    if found:
        raise ConfigError("\n".join(text for _, text in sorted(found)))
    return recipe
