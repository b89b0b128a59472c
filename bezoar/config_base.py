"""The config base every recipe part builds on: strict models, one model role, the run's settings and its
roles, `${VAR}` expansion, the data default.

A leaf: the step types (`bezoar.steps.*`) and their settings (`bezoar.generate.config`, ...) import it,
and `bezoar.config` assembles them into the `Recipe`, so nothing here may import a step or the recipe.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Literal, Protocol

from pydantic import (BaseModel, ConfigDict, Field, SerializationInfo, ValidationError, field_serializer,
                      field_validator, model_validator)

from bezoar.errors import ConfigError
from bezoar.llm.endpoints import public_spec
from bezoar.llm.spec_syntax import parse_spec


class StrictModel(BaseModel):
    """Unknown keys are errors (a typo must never be silently ignored)."""

    model_config = ConfigDict(extra="forbid", validate_default=True, use_attribute_docstrings=True)


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
    stream_tok_s: float = Field(30.0, gt=0)
    """Remote, for the plan's wall time: tokens a second one request receives while `concurrency` run at
    once (vLLM and the APIs: ~30; a server sharing two CPU cores with the run: far less)."""
    timeout_s: float = Field(120.0, gt=0)
    """Remote: seconds to wait for one reply before it counts as a timeout (and is retried)."""
    max_retries: int = Field(6, ge=0)
    """Remote: retries on 429/5xx/timeouts/connection errors, with exponential backoff and jitter."""
    retry_backoff_s: float = Field(0.5, ge=0)
    """Remote: backoff base; retry k waits a random time up to base * 2**k (a server's Retry-After wins)."""
    api_key_env: str | None = None
    """Name of the environment variable holding the API key (the key itself never goes in a recipe)."""
    licence: str | None = None
    """Override the licence registry (e.g. `apache-2.0`) for a model it does not know."""
    max_calls: int | None = Field(None, ge=0)
    """Budget: most calls this role may make over the run (None: no limit)."""
    max_cost: float | None = Field(None, ge=0)
    """Budgets for this role; a stage about to pass one stops cleanly and can be resumed."""
    input_price_per_mtok: float = Field(0.0, ge=0)
    """USD per million prompt tokens (for the cost estimate and max_cost)."""
    output_price_per_mtok: float = Field(0.0, ge=0)
    """USD per million tokens, for the cost estimate in the manifest."""
    batch: bool = False
    """Remote (openai, anthropic): send the role's calls as provider batches (OpenAI Batch, Anthropic Message
    Batches): answered within 24 h at `batch_price_factor` of the price. Batch ids and their items are
    recorded in the run's call cache before anything is sent, so a killed run polls the same batches."""
    batch_price_factor: float = Field(0.5, gt=0, le=1)
    """The batch price as a fraction of the online price (both providers: 0.5); plan and status use it."""
    batch_poll_s: float = Field(30.0, gt=0)
    """First wait between polls of a batch; it grows by half each poll up to 10 minutes."""
    batch_wait_s: float | None = Field(None, ge=0)
    """How long a stage waits for its batches before it stops (exit 75) and a later run collects them;
    unset: until they are done (up to the providers' 24 h window). 0: submit and stop at once."""
    batch_max_requests: int | None = Field(None, ge=1)
    """Requests per batch; more are split over several batches. Unset: the provider's limit
    (OpenAI 50,000 and 200 MB, Anthropic 100,000 and 256 MB; the byte limits always apply)."""

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

    @model_validator(mode="after")
    def _batch_is_remote(self) -> "ModelConfig":
        if self.batch and parse_spec(self.spec).kind == "local":
            raise ValueError("batch: true needs an openai: or anthropic: spec (a local model has no batch API; "
                             "it batches its own decoding already)")
        return self

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError("must be the *name* of an environment variable (e.g. OPENAI_API_KEY), not a key")
        return value


DATA_DEFAULT = "../shared/data"
"""Where bezoar looks for data when BEZOAR_DATA is unset: the one default of every command and recipe
(recipes write `${BEZOAR_DATA:-../shared/data}`), relative to the current directory."""


def data_path(relative: str) -> Path:
    """`$BEZOAR_DATA/relative`, or `../shared/data/relative` when the variable is unset."""
    return Path(os.environ.get("BEZOAR_DATA") or DATA_DEFAULT) / relative


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(text: str) -> str:
    """`${VAR}` and `${VAR:-default}` in string values, as in a shell."""
    return _ENV.sub(lambda m: os.environ.get(m.group(1), m.group(2) or ""), text)


class ModelsConfig(StrictModel):
    teacher: ModelConfig = Field(default_factory=ModelConfig)
    """Writes instructions and responses (generate)."""
    judge: ModelConfig = Field(default_factory=ModelConfig)
    """Scores them (filter, Evol-Instruct's equality check, MT-Bench unless eval.mt_bench.judge is set)."""
    student: ModelConfig = Field(default_factory=ModelConfig)
    """The model trained and evaluated: the base every training step starts from."""


class RunConfig(StrictModel):
    name: str = Field("run", pattern=r"^[A-Za-z0-9._-]+$")
    """The run's name: its directory is runs/NAME unless run_dir is set."""
    run_dir: Path | None = None
    """Where outputs go; default `runs/<name>`."""
    seed: int = 0
    """Seeds every sampled choice of every step (prompts drawn, sampling streams)."""
    require_commercial_use: bool = False
    """Refuse, before any call, a seed or teacher whose licence is not clearly commercial."""
    max_failure_rate: float = Field(0.05, ge=0, le=1)
    """A step stops only when more than this share of the items it tried failed (judged once 20 were
    tried, so one bad item in a small run never stops it); failed items are kept in its failed.jsonl."""
    deterministic: bool = False
    """Decode in fp32, in which a batched reply equals the one-by-one reply, so a killed and resumed run is
    identical to one never killed. Off (fast, the default): bf16 where the machine is faster in it (measured;
    ~1.5-3x on CPUs with AVX512-BF16/AMX), and a resumed run keeps every finished call from the call cache but
    may decode the calls in flight at the kill differently. `bezoar run --deterministic` sets it too."""

    @property
    def directory(self) -> Path:
        return self.run_dir or Path("runs") / self.name


class RecipeView(Protocol):
    """What a step and the planner see of the recipe they are in (`bezoar.config.Recipe`, which holds the
    steps: typed loosely here, so that the step types need not import the recipe that lists them)."""

    run: RunConfig
    models: ModelsConfig

    @property
    def steps(self) -> Sequence[Any]: ...

    def step(self, name: str) -> Any: ...

    def names(self) -> list[str]: ...

    def names_before(self, name: str) -> list[str]: ...
