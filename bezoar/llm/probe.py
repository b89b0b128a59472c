"""Probe each remote role once before a run spends anything: is every endpoint up, and is the key taken?

OpenAI-compatible servers: `GET {url}/models`; a server without that route (404/405) gets one chat
call of one token instead. Anthropic: one messages call of one token (it has no free route that checks
a key). No retries: a probe asks "does this work now", and the answer must come in seconds.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx

from bezoar.errors import BackendError
from bezoar.llm.protocol import Sampling

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 10.0


class RoleUnreachable(BackendError):
    """A role's every endpoint failed its probe; the run has not started."""


@dataclass(frozen=True)
class ProbeResult:
    url: str
    ok: bool
    cause: str = ""


def public_url(url: str) -> str:
    """The URL without user-info or query: what may appear in a message (credentials never do)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _headers(dialect, url: str) -> dict[str, str]:
    """The dialect's headers for this endpoint (dialects that decide per URL whether a key goes there take it)."""
    try:
        return dialect.headers(url)
    except TypeError:
        return dialect.headers()


def probe_endpoint(backend, url: str, client: httpx.Client) -> ProbeResult:
    """One endpoint of a remote backend: ok, or why not (status and the server's words, or the transport error)."""
    dialect, headers = backend.dialect, _headers(backend.dialect, url)
    try:
        if not backend.name.startswith("anthropic:"):
            response = client.get(f"{url}/models", headers=headers)
            if response.status_code == 200:
                return ProbeResult(url, True)
            if response.status_code not in (404, 405):
                return ProbeResult(url, False, _cause(response))
        body = dialect.body([{"role": "user", "content": "ping"}], Sampling(temperature=0.0, max_new_tokens=1), 0)
        response = client.post(dialect.url(url), json=body, headers=headers)
    except httpx.TimeoutException:
        return ProbeResult(url, False, f"no answer within {PROBE_TIMEOUT_S:.0f} s")
    except httpx.TransportError as error:
        return ProbeResult(url, False, f"unreachable ({type(error).__name__}: {error})")
    return ProbeResult(url, True) if response.status_code == 200 else ProbeResult(url, False, _cause(response))


def _cause(response: httpx.Response) -> str:
    what = {401: "unauthorised: the key was refused", 403: "forbidden: the key may not use this"}.get(
        response.status_code, "refused")
    text = " ".join(response.text.split())[:160]
    return f"HTTP {response.status_code} {what} ({text})"


def probe_role(role: str, backend) -> list[ProbeResult]:
    """Every endpoint of one role; raises RoleUnreachable when none answers, logs the dead ones otherwise."""
    with httpx.Client(timeout=PROBE_TIMEOUT_S) as client:
        results = [probe_endpoint(backend, url, client) for url in backend.urls]
    dead = [r for r in results if not r.ok]
    if dead and len(dead) == len(results):
        first = dead[0]
        raise RoleUnreachable(f"role '{role}' ({backend.name}): endpoint {public_url(first.url)} {first.cause}"
                              + (f" (and {len(dead) - 1} more endpoint(s) down)" if len(dead) > 1 else "")
                              + "; start the server or fix the URL/key, or run with --no-probe to skip this check")
    for result in dead:
        log.warning("role '%s': endpoint %s is down (%s); the other endpoints take its calls",
                    role, public_url(result.url), result.cause)
    return results
