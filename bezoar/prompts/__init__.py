"""Prompt templates and word lists shipped as package data.

One YAML file per scheme (`lamini.yaml`, `evol_instruct.yaml`, `orca.yaml`), each opening with the
paper it follows. A template's id is `scheme.name#hash`, where the hash covers its text: records say
exactly which wording produced them, and editing a template can never pass for the old one.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import yaml

from bezoar.errors import ConfigError


@dataclass(frozen=True)
class Template:
    """A chat prompt: an optional system message and a user message with `{field}` slots."""

    id: str
    user: str
    system: str | None = None

    def render(self, **fields: str) -> list[dict[str, str]]:
        """The conversation for these field values (literal braces in templates are doubled)."""
        messages = [{"role": "system", "content": self.system.format_map(fields)}] if self.system else []
        return messages + [{"role": "user", "content": self.user.format_map(fields)}]


def read_text(name: str) -> str:
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


@lru_cache(maxsize=None)
def scheme(name: str) -> dict:
    """The parsed YAML of one scheme's template file."""
    try:
        return yaml.safe_load(read_text(f"{name}.yaml"))
    except FileNotFoundError:
        raise ConfigError(f"no prompt file '{name}.yaml' in bezoar/prompts") from None


@lru_cache(maxsize=None)
def template(scheme_name: str, key: str) -> Template:
    """Template `key` of a scheme, with its content-derived id."""
    entry = scheme(scheme_name)["templates"].get(key)
    if entry is None:
        raise ConfigError(f"prompt file '{scheme_name}.yaml' has no template '{key}'")
    user, system = entry["user"].strip(), (entry.get("system") or "").strip() or None
    digest = hashlib.sha256(f"{system}\x00{user}".encode()).hexdigest()[:8]
    return Template(id=f"{scheme_name}.{key}#{digest}", user=user, system=system)


@lru_cache(maxsize=None)
def word_list(name: str) -> tuple[str, ...]:
    """A shipped list file: one entry a line, `#` comments and blank lines ignored."""
    lines = (line.strip() for line in read_text(name).splitlines())
    return tuple(line for line in lines if line and not line.startswith("#"))
