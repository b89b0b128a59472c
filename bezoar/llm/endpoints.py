"""Where a remote role's requests go and what they carry, with the credentials kept apart.

A URL in a spec may carry a credential: user-info (`https://user:token@host/v1`) or a query
parameter (`?api-key=...`, `?key=...`). It is used on the wire and nowhere else:

- user-info is sent as HTTP Basic auth (what curl, httpx and an nginx/Caddy basic-auth proxy in front
  of vLLM expect); a Bearer token belongs in an environment variable named by the role's `api_key_env`;
- a secret query parameter stays in the query of the request itself (Gemini-style `?key=`, Azure-style
  `?api-key=`), never in the identity.

`public_url` / `public_spec` give the credential-free text that identities, cache keys, logs, error
messages, manifests and records may show: the same with or without the credential, so the cache key is
stable when a token rotates.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlencode, urlsplit, urlunsplit

PROVIDER_URLS = {"openai": "https://api.openai.com/v1", "anthropic": "https://api.anthropic.com"}
"""Where a spec without @URL goes."""
PROVIDER_KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
"""A provider's default key variable: sent to that provider's own host only (https), never elsewhere."""

SECRET_WORDS = ("key", "token", "secret", "password", "passwd", "auth", "sig", "credential")
"""A query parameter whose name contains one of these is a credential (api-key, access_token, sig...)."""

_USERINFO = re.compile(r"(//)[^/@?#]*@")


def secret_param(name: str) -> bool:
    return any(word in name.lower() for word in SECRET_WORDS)


def provider_host(kind: str, url: str) -> bool:
    """Is `url` the provider's own API (exact host, https)? `api.openai.com.example.org` is not."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    own = urlsplit(PROVIDER_URLS[kind])
    return parts.scheme == "https" and parts.hostname == own.hostname and parts.port in (None, 443)


def public_url(url: str) -> str:
    """The URL without user-info or secret query parameters (other parameters are kept: they may
    select a deployment or an API version)."""
    try:
        parts = urlsplit(url)
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not secret_param(k)]
    except ValueError:  # not a URL at all: drop whatever looks like user-info and the whole query
        return _USERINFO.sub(r"\1", url).split("?")[0]
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, urlencode(query), ""))



def public_spec(text: str) -> str:
    """A model spec with every URL made public (`openai:m@https://u:t@h/v1` -> `openai:m@https://h/v1`)."""
    kind, colon, rest = text.partition(":")
    model, at, urls = rest.partition("@")
    if not at:
        return text
    return f"{kind}{colon}{model}@" + ",".join(public_url(u.strip()) for u in urls.split(","))


def scrub(text: str, secrets: list[str]) -> str:
    """`text` with every known secret replaced by `***` (servers echo keys back in 401 messages)."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


@dataclass(frozen=True)
class Endpoint:
    """One URL of a role: its public name, what goes on the wire, and the key it may carry."""

    public: str
    """Credential-free: identity, logs, errors."""
    base: str
    """scheme://host[:port]/path, where the dialect appends its route."""
    params: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    """The URL's query, secret parameters included: sent with each request, shown nowhere."""
    auth: tuple[str, str] | None = field(default=None, repr=False)
    """User-info, sent as HTTP Basic auth."""
    api_key: str | None = field(default=None, repr=False)
    key_source: str | None = None
    """The environment variable the key came from (named in error messages, the key never is)."""

    @classmethod
    def parse(cls, url: str, api_key: str | None = None, key_source: str | None = None) -> "Endpoint":
        parts = urlsplit(url)
        userinfo, at, host = parts.netloc.rpartition("@")
        base = urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))
        auth = None
        if at:
            user, _, password = userinfo.partition(":")
            auth = (unquote(user), unquote(password))
        params = tuple(parse_qsl(parts.query, keep_blank_values=True))
        return cls(public_url(url), base, params, auth, api_key, key_source)

    def secrets(self) -> list[str]:
        """Every credential this endpoint carries, raw and as written in the URL (for `scrub`)."""
        found = [v for k, v in self.params if secret_param(k)] + list(self.auth or ()) + [self.api_key or ""]
        found += [quote_plus(v) for v in found] + [quote(v, safe="") for v in found]  # as a URL shows them
        return sorted({s for s in found if len(s) >= 4})  # shorter ones cannot be told from ordinary text

    def credential_hint(self) -> str:
        """Where the credential this endpoint sends comes from, for a 401/403 message."""
        if self.key_source:
            return f"check the key in {self.key_source}"
        if self.auth:
            return "check the user-info credential in the URL"
        if any(secret_param(k) for k, _ in self.params):
            return "check the key in the URL's query"
        return "no key was sent: name the environment variable that holds it with the role's api_key_env"
