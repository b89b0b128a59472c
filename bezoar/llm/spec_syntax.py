"""The model spec string's syntax: `parse_spec` reads it into a `Spec` (see `bezoar.llm.specs` for the forms).

A leaf below the config base, which validates every role's spec with it; opening the model a spec
names is `bezoar.llm.specs`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from bezoar.llm.endpoints import PROVIDER_URLS, public_spec, public_url

KINDS = ("local", "openai", "anthropic")


@dataclass(frozen=True)
class Spec:
    kind: str
    model: str | None = None
    urls: tuple[str, ...] = field(default_factory=tuple)
    """As written, credentials included: for requests only (`str` and `repr` show them public)."""

    def __repr__(self) -> str:
        return f"Spec({str(self)!r})"

    def __str__(self) -> str:
        """The spec without the credentials its URLs may carry."""
        text = self.kind + (f":{self.model}" if self.model else "")
        return text + (f"@{','.join(public_url(u) for u in self.urls)}" if self.urls and self.kind != "local" else "")


def parse_spec(text: str) -> Spec:
    """Parse a spec string; raises ValueError with the accepted forms when it is not one."""
    text = (text or "").strip()
    shown = public_spec(text)  # messages never echo a credential
    kind, _, rest = text.partition(":")
    if kind not in KINDS:
        raise ValueError(f"model spec '{shown}' must start with one of {', '.join(KINDS)} "
                         "(e.g. local, local:PATH, openai:MODEL@URL, anthropic:MODEL)")
    if kind == "local":
        return Spec("local", rest or None)
    model, _, urls = rest.partition("@")
    if not model:
        raise ValueError(f"model spec '{shown}' names no model: write {kind}:MODEL")
    url_list = tuple(u.strip().rstrip("/") for u in urls.split(",") if u.strip()) or (PROVIDER_URLS[kind],)
    for url in url_list:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"model spec '{shown}': '{public_url(url)}' is not an http(s) URL")
    return Spec(kind, model, url_list)
