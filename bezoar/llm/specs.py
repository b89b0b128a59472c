"""Model specs: one string names any backend, and `open_model` turns it into a cached, role-bound model.

    local                      the embedded SmolLM2-135M-Instruct (offline, the default everywhere)
    local:PATH                 a transformers directory, a LoRA adapter directory, or a .gguf file
    local:ORG/NAME             a hub id, for users with hub access
    openai:MODEL@URL[,URL...]  any OpenAI-compatible server (vLLM, TGI, llama.cpp, bezoar serve, OpenAI);
                               several URLs spread the load; without @URL, api.openai.com
    anthropic:MODEL            the Anthropic Messages API (e.g. anthropic:claude-2.1, the paper's judge)
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bezoar.errors import ConfigError
from bezoar.llm.cache import Budget, CachedModel, CallCache, default_cache_path

if TYPE_CHECKING:
    from bezoar.config import ModelConfig

OPENAI_URL = "https://api.openai.com/v1"
ANTHROPIC_URL = "https://api.anthropic.com"
KINDS = ("local", "openai", "anthropic")


@dataclass(frozen=True)
class Spec:
    kind: str
    model: str | None = None
    urls: tuple[str, ...] = field(default_factory=tuple)

    def __str__(self) -> str:
        text = self.kind + (f":{self.model}" if self.model else "")
        return text + (f"@{','.join(self.urls)}" if self.urls and self.kind != "local" else "")


def parse_spec(text: str) -> Spec:
    """Parse a spec string; raises ValueError with the accepted forms when it is not one."""
    text = (text or "").strip()
    kind, _, rest = text.partition(":")
    if kind not in KINDS:
        raise ValueError(f"model spec '{text}' must start with one of {', '.join(KINDS)} "
                         "(e.g. local, local:PATH, openai:MODEL@URL, anthropic:MODEL)")
    if kind == "local":
        return Spec("local", rest or None)
    model, _, urls = rest.partition("@")
    if not model:
        raise ValueError(f"model spec '{text}' names no model: write {kind}:MODEL")
    default = OPENAI_URL if kind == "openai" else ANTHROPIC_URL
    url_list = tuple(u.strip().rstrip("/") for u in urls.split(",") if u.strip()) or (default,)
    for url in url_list:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"model spec '{text}': '{url}' is not an http(s) URL")
    return Spec(kind, model, url_list)


def build_backend(config: "ModelConfig"):
    """The backend object for a model config (loads local weights; checks API keys up front)."""
    spec = parse_spec(config.spec)
    if spec.kind == "local":
        from bezoar.llm.local import LocalBackend

        return LocalBackend(spec.model, batch_size=config.batch_size, dtype=config.dtype)
    api_key = _api_key(config, spec)
    if spec.kind == "openai":
        from bezoar.llm.openai_compat import OpenAIBackend

        return OpenAIBackend(spec.model, spec.urls, api_key, concurrency=config.concurrency,
                             timeout_s=config.timeout_s, max_retries=config.max_retries)
    from bezoar.llm.anthropic_api import AnthropicBackend

    return AnthropicBackend(spec.model, spec.urls[0], api_key, concurrency=config.concurrency,
                            timeout_s=config.timeout_s, max_retries=config.max_retries)


def _api_key(config: "ModelConfig", spec: Spec) -> str | None:
    """The key is read from the environment variable the recipe names; the key itself is never stored."""
    name = config.api_key_env or ("OPENAI_API_KEY" if spec.kind == "openai" else "ANTHROPIC_API_KEY")
    key = os.environ.get(name)
    needs_key = spec.kind == "anthropic" or any("api.openai.com" in u for u in spec.urls)
    if needs_key and not key:
        raise ConfigError(f"model '{spec}': environment variable {name} is not set (it must hold the API key)")
    return key


_BACKENDS: dict[tuple, object] = {}


def release_models(keep: list[CachedModel]) -> None:
    """Drop every backend (and local weights) that none of `keep` uses."""
    from bezoar.llm import local

    backends = [m.backend for m in keep]
    for key in [k for k, b in _BACKENDS.items() if not any(b is kept for kept in backends)]:
        del _BACKENDS[key]
    local.release_except([b.loaded for b in backends if hasattr(b, "loaded")])


def open_model(config: "ModelConfig", role: str = "model", cache: CallCache | None = None) -> CachedModel:
    """A role-bound, cached model. Roles with the same config share one backend (and its weights)."""
    key = (config.spec, config.dtype, config.batch_size, config.concurrency, config.api_key_env)
    if key not in _BACKENDS:
        _BACKENDS[key] = build_backend(config)
    budget = Budget(max_calls=config.max_calls, max_cost=config.max_cost,
                    input_per_mtok=config.input_price_per_mtok, output_per_mtok=config.output_price_per_mtok)
    cache = cache if cache is not None else CallCache(default_cache_path())  # an empty cache is falsy (len 0)
    return CachedModel(_BACKENDS[key], cache, role=role, budget=budget)
