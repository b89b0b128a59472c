"""The recipe: YAML validated into typed config, with every problem reported as `FILE:LINE: key: what`.

A recipe nests one model per concern. The stage sections are defined beside their stages
(`bezoar.generate.config`, `bezoar.filter.config`, `bezoar.train.config`, `bezoar.evaluate.config`)
and assembled here. Every field has a default, so a recipe only says what differs.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, SerializationInfo, ValidationError, field_serializer,
                      field_validator, model_validator)

from bezoar.errors import ConfigError, located


class StrictModel(BaseModel):
    """Unknown keys are errors (a typo must never be silently ignored)."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class ModelConfig(StrictModel):
    """One model role. A bare string in the recipe is shorthand for `{spec: ...}`."""

    spec: str = "local"
    """`local`, `local:PATH`, `openai:MODEL@URL[,URL]` or `anthropic:MODEL` (see README)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Local weights: `auto` measures; on CPU it keeps fp32 so batched output equals one-by-one."""
    batch_size: int = Field(32, ge=1)
    """Local: conversations per forward batch (32-64 is the sweet spot on 2 CPU cores)."""
    concurrency: int = Field(8, ge=1)
    """Remote: requests in flight at once (spread over all URLs)."""
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(6, ge=0)
    """Remote: retries on 429/5xx/timeouts/connection errors, with exponential backoff and jitter."""
    retry_backoff_s: float = Field(0.5, ge=0)
    """Remote: backoff base; retry k waits a random time up to base * 2**k (a server's Retry-After wins)."""
    api_key_env: str | None = None
    """Name of the environment variable holding the API key (the key itself never goes in a recipe)."""
    licence: str | None = None
    """Override the licence registry (e.g. `apache-2.0`) for a model it does not know."""
    max_calls: int | None = Field(None, ge=0)
    max_cost: float | None = Field(None, ge=0)
    """Budgets for this role; a stage about to pass one stops cleanly and can be resumed."""
    input_price_per_mtok: float = Field(0.0, ge=0)
    output_price_per_mtok: float = Field(0.0, ge=0)
    """USD per million tokens, for the cost estimate in the manifest."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"spec": value} if isinstance(value, str) else value

    @field_validator("spec")
    @classmethod
    def _valid_spec(cls, value: str) -> str:
        from bezoar.llm.specs import parse_spec

        parse_spec(value)
        return value

    @classmethod
    def from_option(cls, option: str, spec: str, **settings: Any) -> "ModelConfig":
        """A role given on the command line (`--model SPEC`): a bad spec is one line naming the option."""
        try:
            return cls.model_validate({**settings, "spec": spec})
        except ValidationError as error:
            reasons = "; ".join(p["msg"].removeprefix("Value error, ") for p in error.errors())
            raise ConfigError(f"{option}: {reasons}") from None

    @field_serializer("spec")
    def _public_spec(self, value: str, info: SerializationInfo) -> str:
        """Dumps (manifest, fingerprints, summaries) show the spec without URL credentials; only the hand-over
        to a stage process asks for them, with `context={"credentials": True}`."""
        from bezoar.llm.endpoints import public_spec

        return value if (info.context or {}).get("credentials") else public_spec(value)

    def __repr_args__(self):
        """`repr` and `str` show the spec without URL credentials too."""
        from bezoar.llm.endpoints import public_spec

        for name, value in super().__repr_args__():
            yield name, public_spec(value) if name == "spec" else value

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError("must be the *name* of an environment variable (e.g. OPENAI_API_KEY), not a key")
        return value


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

    @property
    def directory(self) -> Path:
        return self.run_dir or Path("runs") / self.name


def _stage_models() -> dict[str, Any]:
    from bezoar.evaluate.config import EvalConfig
    from bezoar.filter.config import FilterConfig
    from bezoar.generate.config import GenerateConfig
    from bezoar.preferences.config import PreferencesConfig
    from bezoar.train.config import DPOStageConfig, SFTHHStageConfig, SFTStageConfig

    return {"generate": GenerateConfig, "filter": FilterConfig, "sft": SFTStageConfig,
            "sft_hh": SFTHHStageConfig, "preferences": PreferencesConfig, "dpo": DPOStageConfig, "eval": EvalConfig}


def recipe_model() -> type[BaseModel]:
    """The Recipe class, built from the stage sections (imported lazily to keep the CLI fast)."""
    from pydantic import create_model

    stages = {name: (model, Field(default_factory=model)) for name, model in _stage_models().items()}
    return create_model("Recipe", __base__=StrictModel, run=(RunConfig, Field(default_factory=RunConfig)),
                        models=(ModelsConfig, Field(default_factory=ModelsConfig)), **stages)


# --- loading with line numbers --------------------------------------------------------------

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(text: str) -> str:
    """`${VAR}` and `${VAR:-default}` in string values, as in a shell."""
    return _ENV.sub(lambda m: os.environ.get(m.group(1), m.group(2) or ""), text)


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
    found = []
    for problem in error.errors():
        loc = tuple(p for p in problem["loc"] if not (isinstance(p, str) and p.startswith(("function-", "constrained"))))
        line = next((lines[loc[:i]] for i in range(len(loc), 0, -1) if loc[:i] in lines), 1)
        key = ".".join(str(p) for p in loc) or "(recipe)"
        found.append((line, _one_line(f"{path}:{line}: {key}: {_message(problem)}")))
    return [text for _, text in sorted(found)]


def _one_line(text: str) -> str:
    """A key or value holding a line break or control character must not split its problem's line."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _message(problem: dict) -> str:
    kind, message = problem["type"], problem["msg"]
    if kind == "extra_forbidden":
        return "unknown key (check the spelling; see the recipe reference in README)"
    if kind == "missing":
        return "required key is missing"
    message = message.removeprefix("Value error, ")
    got = problem.get("input")
    secret = any("key" in str(part) for part in problem["loc"])  # never echo what might be a secret
    if problem["loc"] and problem["loc"][-1] == "spec" and isinstance(got, str):
        from bezoar.llm.endpoints import public_spec

        got = public_spec(got)  # a URL in a spec may carry a credential
    if not secret and not isinstance(got, (dict, list)) and got is not None:
        message += f" (got {got!r})"
    return message


def load_recipe(path: Path | str):
    """Parse and validate a recipe file; all problems are raised together as one ConfigError."""
    path = Path(path)
    data, lines = parse_yaml(path)
    try:
        recipe = recipe_model().model_validate(data)
    except ValidationError as error:
        raise ConfigError("\n".join(validation_lines(path, error, lines))) from None
    recipe.__dict__["source_path"] = path
    return recipe
