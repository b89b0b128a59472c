"""Probe each remote role once before a run spends anything: is every endpoint up, and is the key taken?

OpenAI-compatible servers: `GET {url}/models`; a server without that route (404/405) gets one chat
call of one token instead. Anthropic: one messages call of one token (it has no free route that checks
a key). A temporary answer (429, 5xx, 529 "overloaded", a connection reset mid-answer) is retried
with the role's own retry policy, as a real call would be: a hosted API that is busy for a moment is not
down. A refused connection or a connect timeout is not retried: nothing listens there.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import httpx

from bezoar.errors import BackendError
from bezoar.llm.protocol import Sampling
from bezoar.llm.remote import is_temporary, parse_retry_after, server_message

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 10.0
"""To connect. An answer may take as long as the role's own `timeout_s`: a busy server prefills a queue first."""


class RoleUnreachable(BackendError):
    """A role's every endpoint failed its probe; the run has not started."""


@dataclass(frozen=True)
class ProbeResult:
    url: str
    """The endpoint's public URL (no credential)."""
    ok: bool
    cause: str = ""
    temporary: bool = False
    """Worth another try: a 429/5xx/529 answer, or a connection dropped mid-answer."""
    retry_after: float | None = None


def probe_endpoint(backend, endpoint, client: httpx.Client) -> ProbeResult:
    """One endpoint, retried while its answer is temporary, up to the role's `max_retries`."""
    policy = backend.policy
    attempt = 0
    while True:
        result = _probe_once(backend, endpoint, client)
        if result.ok or not result.temporary or attempt == policy.max_retries:
            return result
        wait = policy.delay(attempt, result.retry_after)
        log.info("role probe %s: %s; retry %d in %.1f s", endpoint.public, result.cause, attempt + 1, wait)
        time.sleep(wait)
        attempt += 1


def _probe_once(backend, endpoint, client: httpx.Client) -> ProbeResult:
    """One try: ok, or why not (status and the server's words, or the transport error)."""
    args = backend.request_args(endpoint)  # url, params, headers, auth: exactly what a real call carries
    wire = {"params": args["params"], "headers": args["headers"], "auth": args["auth"]}
    try:
        if not backend.name.startswith("anthropic:"):
            response = client.get(f"{endpoint.base}/models", **wire)
            if response.status_code not in (404, 405, 501):  # 404/405/501: no such route, ask for one token
                return _answered(backend, endpoint, response)
        one_token = Sampling(temperature=0.0, max_new_tokens=1)
        body = backend.dialect.body([{"role": "user", "content": "ping"}], one_token, 0)
        response = client.post(args["url"], json=body, **wire)
    except httpx.ConnectTimeout:
        return ProbeResult(endpoint.public, False, f"no connection within {PROBE_TIMEOUT_S:.0f} s")
    except httpx.TimeoutException:
        return ProbeResult(endpoint.public, False,
                           f"no answer within the role's timeout_s ({client.timeout.read:.0f} s)")
    except httpx.ConnectError as error:
        return ProbeResult(endpoint.public, False, f"unreachable ({type(error).__name__})")
    except httpx.TransportError as error:  # connected, then the answer broke off: worth another try
        return ProbeResult(endpoint.public, False, f"dropped mid-answer ({type(error).__name__})", temporary=True)
    return _answered(backend, endpoint, response)


def _answered(backend, endpoint, response: httpx.Response) -> ProbeResult:

    if response.status_code == 200:
        return ProbeResult(endpoint.public, True)
    return ProbeResult(endpoint.public, False, _cause(backend, endpoint, response), is_temporary(response.status_code),
                       parse_retry_after(response.headers.get("retry-after")))


def _cause(backend, endpoint, response: httpx.Response) -> str:

    said = backend._scrub(server_message(response))  # servers echo keys back in 401 messages
    if response.status_code in (401, 403):
        what = "unauthorised" if response.status_code == 401 else "forbidden"
        return f"HTTP {response.status_code} {what} ({said}); {endpoint.credential_hint()}"
    return f"HTTP {response.status_code} ({said})"


def probe_role(role: str, backend) -> list[ProbeResult]:
    """Every endpoint of one role; raises RoleUnreachable when none answers, logs the dead ones otherwise."""
    with httpx.Client(timeout=httpx.Timeout(backend.policy.timeout_s, connect=PROBE_TIMEOUT_S)) as client:
        results = [probe_endpoint(backend, endpoint, client) for endpoint in backend.endpoints]
    dead = [r for r in results if not r.ok]
    if dead and len(dead) == len(results):
        first = dead[0]
        raise RoleUnreachable(f"role '{role}' ({backend.name}): endpoint {first.url}: {first.cause}"
                              + (f" (and {len(dead) - 1} more endpoint(s) down)" if len(dead) > 1 else "")
                              + "; start the server or fix the URL or key (or skip this check with --no-probe)")
    for result in dead:
        log.warning("role '%s': endpoint %s is down (%s); the other endpoints take its calls",
                    role, result.url, result.cause)
    return results
