"""The config base every recipe section builds on: strict models, one model role, `${VAR}` expansion.

A leaf: the stage sections (`bezoar.generate.config`, ...) import it, and `bezoar.config` assembles
them into the `Recipe`, so nothing here may import a section or the recipe.
"""
from __future__ import annotations

import os
import re
from typing import Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, SerializationInfo, ValidationError, field_serializer,
                      field_validator, model_validator)

from bezoar.errors import ConfigError
from bezoar.llm.endpoints import public_spec
from bezoar.llm.spec_syntax import parse_spec


class StrictModel(BaseModel):
    """Unknown keys are errors (a typo must never be silently ignored)."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class ModelConfig(StrictModel):
    """One model role. A bare string in the recipe is shorthand for `{spec: ...}`."""

    spec: str = "local"
    """`local`, `local:PATH`, `openai:MODEL@URL[,URL]` or `anthropic:MODEL` (see README)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Local weights: `auto` is bf16 where it is faster (measured on CPU; GPUs that have it), else fp32; in
    deterministic mode (`run.deterministic`, `--deterministic`) every local model decodes in fp32."""
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
        return value if (info.context or {}).get("credentials") else public_spec(value)

    def __repr_args__(self):
        """`repr` and `str` show the spec without URL credentials too."""
        for name, value in super().__repr_args__():
            yield name, public_spec(value) if name == "spec" else value

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError("must be the *name* of an environment variable (e.g. OPENAI_API_KEY), not a key")
        return value


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(text: str) -> str:
    """`${VAR}` and `${VAR:-default}` in string values, as in a shell."""
    return _ENV.sub(lambda m: os.environ.get(m.group(1), m.group(2) or ""), text)
