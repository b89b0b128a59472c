"""Model specs: one string names any backend, and `open_model` turns it into a cached, role-bound model.

    local                      the embedded SmolLM2-135M-Instruct (offline, the default everywhere)
    local:PATH                 a transformers directory, a LoRA adapter directory, or a .gguf file
    local:ORG/NAME             a hub id, for users with hub access
    openai:MODEL@URL[,URL...]  any OpenAI-compatible server (vLLM, TGI, llama.cpp, bezoar serve, OpenAI);
                               several URLs spread the load and fail over; without @URL, api.openai.com
    anthropic:MODEL[@URL,...]  the Anthropic Messages API (e.g. anthropic:claude-2.1, the paper's judge),
                               or any server speaking it (bezoar serve: anthropic:NAME@http://HOST:PORT)

Keys: OPENAI_API_KEY / ANTHROPIC_API_KEY go only to api.openai.com / api.anthropic.com; any other URL
gets a key only from the variable the role names in `api_key_env`. Credentials written into a URL are
used on the wire and stripped everywhere else (see `bezoar.llm.endpoints`).
"""
from __future__ import annotations

import os
import weakref
from typing import Protocol

from bezoar.errors import ConfigError
from bezoar.llm.anthropic_api import AnthropicBackend
from bezoar.llm.batch_prices import PricedRole, role_prices
from bezoar.llm.batches import BatchBackend, BatchSettings
from bezoar.llm.cache import Budget, CachedModel, CallCache, default_cache_path
from bezoar.llm.device import deterministic
from bezoar.llm.endpoints import PROVIDER_KEY_ENV, Endpoint, provider_host
from bezoar.llm.local import LocalBackend
from bezoar.llm.openai_compat import OpenAIBackend
from bezoar.llm.protocol import Backend
from bezoar.llm.remote import RetryPolicy
from bezoar.llm.spec_syntax import Spec, parse_spec


class RoleSettings(PricedRole, Protocol):
    """What opening a role needs of its settings (`bezoar.config_base.ModelConfig`, the recipe's model role):
    declared here, read-only, so that llm/ depends on nothing above it."""

    @property
    def spec(self) -> str: ...

    @property
    def dtype(self) -> str: ...

    @property
    def batch_size(self) -> int: ...

    @property
    def concurrency(self) -> int: ...

    @property
    def timeout_s(self) -> float: ...

    @property
    def max_retries(self) -> int: ...

    @property
    def retry_backoff_s(self) -> float: ...

    @property
    def api_key_env(self) -> str | None: ...

    @property
    def max_calls(self) -> int | None: ...

    @property
    def max_cost(self) -> float | None: ...

    @property
    def batch_poll_s(self) -> float: ...

    @property
    def batch_wait_s(self) -> float | None: ...

    @property
    def batch_max_requests(self) -> int | None: ...


def build_backend(config: RoleSettings) -> Backend:
    """The backend object for a model config (loads local weights; checks API keys up front)."""
    spec = parse_spec(config.spec)
    if spec.kind == "local":

        return LocalBackend(spec.model, batch_size=config.batch_size, dtype=config.dtype)

    assert spec.model is not None  # parse_spec refuses a remote spec without a model
    endpoints = endpoints_for(config, spec)
    policy = RetryPolicy(config.max_retries, config.timeout_s, config.retry_backoff_s)
    if spec.kind == "openai":

        return OpenAIBackend(spec.model, endpoints, concurrency=config.concurrency, policy=policy)

    return AnthropicBackend(spec.model, endpoints, concurrency=config.concurrency, policy=policy)


def endpoints_for(config: RoleSettings, spec: Spec) -> tuple[Endpoint, ...]:
    """Each URL with the key it may carry: the variable named by `api_key_env` goes to every URL of
    the role; a provider's default variable only to that provider's own host; other URLs get none.
    Raises ConfigError when a key the role needs is not set (the key itself is never stored)."""
    found = []
    for url in spec.urls:
        name = config.api_key_env or (PROVIDER_KEY_ENV[spec.kind] if provider_host(spec.kind, url) else None)
        key = os.environ.get(name) if name else None
        if name and not key:
            raise ConfigError(f"model '{spec}': environment variable {name} is not set (it must hold the API key)")
        found.append(Endpoint.parse(url, api_key=key, key_source=name))
    return tuple(found)


def check_api_keys(config: RoleSettings, spec: Spec) -> None:
    """Check that every key the role needs is set (raises ConfigError naming the variable)."""
    endpoints_for(config, spec)


# Weak, like bezoar.llm.local's loaded models: a backend is shared while some role holds it and is
# never kept alive by this cache (the eval stage lets each checkpoint go before the next loads).
_BACKENDS: weakref.WeakValueDictionary[tuple, Backend] = weakref.WeakValueDictionary()


def open_model(config: RoleSettings, role: str = "model", cache: CallCache | None = None) -> CachedModel:
    """A role-bound, cached model. Roles with the same config share one backend (and its weights)."""
    names = [config.api_key_env, *PROVIDER_KEY_ENV.values()]  # a changed key builds a new backend
    key = (config.spec, config.dtype, deterministic(), config.batch_size, config.concurrency, config.api_key_env, config.timeout_s,
           config.max_retries, config.retry_backoff_s, tuple(os.environ.get(n) for n in names if n))
    backend = _BACKENDS.get(key)
    if backend is None:
        backend = _BACKENDS[key] = build_backend(config)
    prices = role_prices(config)
    budget = Budget(max_calls=config.max_calls, max_cost=config.max_cost,
                    input_per_mtok=prices.input_per_mtok, output_per_mtok=prices.output_per_mtok)
    cache = cache if cache is not None else CallCache(default_cache_path())  # an empty cache is falsy (len 0)
    if config.batch:  # per role, never shared: its batch records live in this role's cache

        backend = BatchBackend(backend, cache, BatchSettings.from_config(config))  # type: ignore[arg-type]
    return CachedModel(backend, cache, role=role, budget=budget)
