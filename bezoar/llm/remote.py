"""Remote backends' shared machinery: bounded concurrency, endpoints that fail over, patient retries,
and failures that are data.

A dialect (OpenAI chat-completions, Anthropic messages) says how to build a request and read a
reply; this module decides when and where to send it, and what an error means:

- retried, with exponential backoff, full jitter and the server's Retry-After (seconds or HTTP date):
  429, 5xx, timeouts, refused or reset connections, truncated bodies, bodies of the wrong shape;
- the item fails (`Reply.failure`, never cached; the stage records it and goes on with the rest):
  other 4xx (400, 404, 413, 422...), a content-filter refusal, a body still unreadable after the
  retries, a 5xx or a timeout still there after the retries while the role otherwise answers;
- the role is unavailable (`RoleUnavailable`, one line; the rest of the batch is cancelled): a refused
  key (401/403), no endpoint reachable after the retries, a rate limit that never lifts, and several
  items in a row failing with 5xx while nothing succeeds.
"""
from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Protocol

import httpx

from bezoar.errors import RoleUnavailable
from bezoar.llm.endpoints import Endpoint, public_url, scrub
from bezoar.llm.protocol import Conversation, OnReply, Reply, Sampling

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504, 529}
KEY_STATUS = {401, 403}
BACKOFF_CAP_S = 30.0
RETRY_AFTER_CAP_S = 120.0
SERVER_ERROR_STREAK = 3
"""Items in a row that exhaust their retries on 5xx, with no success in between, before the role is
declared unavailable: one poisoned prompt is an item failure, a server that fails everything is not."""


def is_temporary(status: int) -> bool:
    """An HTTP status worth asking again: rate limits, timeouts, conflicts and every server error (529 too)."""
    return status in RETRY_STATUS or status >= 500


class MalformedReply(Exception):
    """The server answered 200 with a body we cannot read: worth a retry."""


class Dialect(Protocol):
    def url(self, base: str) -> str: ...
    def headers(self, api_key: str | None) -> dict[str, str]: ...
    def body(self, conversation: Conversation, sampling: Sampling, sample_index: int) -> dict: ...
    def parse(self, payload: dict) -> Reply: ...


@dataclass
class RetryPolicy:
    max_retries: int = 6
    timeout_s: float = 120.0
    backoff_s: float = 0.5
    """Base of the exponential backoff: retry k waits a random time up to backoff_s * 2**k."""

    @property
    def cooldown_s(self) -> float:
        """How long an endpoint that stopped answering gets no new requests (10 s by default)."""
        return min(BACKOFF_CAP_S, 20 * self.backoff_s)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        backoff = random.uniform(0, min(BACKOFF_CAP_S, self.backoff_s * 2 ** attempt))  # full jitter
        return max(backoff, min(retry_after, RETRY_AFTER_CAP_S)) if retry_after is not None else backoff


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After is either seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, parsed.timestamp() - time.time())


@dataclass
class Problem:
    """Why one attempt gave no reply. `kind` says what can be done about it."""

    kind: str  # retried: "rate", "server", "transport", "malformed"; not retried: "item", "key"
    text: str
    retry_after: float | None = None


@dataclass
class EndpointState:
    """Health of one endpoint. A transport error marks it down for the policy's cool-down: new requests
    go to the others meanwhile; afterwards it gets requests again, which either bring it back (any HTTP
    answer) or mark it down once more. No background probing: the next real request is the probe."""

    endpoint: Endpoint
    down_until: float = 0.0
    answered_at: float = 0.0  # monotonic time of its last HTTP answer, whatever the status


class RemoteBackend:
    """Sends each (conversation, sample) as one request; `concurrency` in flight across all endpoints."""

    identity: str
    """The model as the call cache keys it; set by each provider's backend."""

    def __init__(self, name: str, dialect: Dialect, endpoints: tuple[Endpoint, ...], concurrency: int,
                 policy: RetryPolicy):
        self.name, self.dialect, self.endpoints = name, dialect, endpoints
        self.concurrency, self.policy = concurrency, policy
        self.states = [EndpointState(e) for e in endpoints]
        self._secrets = sorted({s for e in endpoints for s in e.secrets()})
        self._next = 0
        self._server_error_streak = 0

    @property
    def urls(self) -> tuple[str, ...]:
        """The endpoints' public URLs (for messages; requests need `request_args`)."""
        return tuple(e.public for e in self.endpoints)

    def request_args(self, endpoint: Endpoint) -> dict:
        """What a POST to this endpoint carries: url, query params, headers and auth (for probes too)."""
        headers = self.dialect.headers(endpoint.api_key)
        auth = endpoint.auth if endpoint.auth and "Authorization" not in headers else None  # a key wins
        return {"url": self.dialect.url(endpoint.base), "params": endpoint.params, "headers": headers, "auth": auth}

    def generate(self, conversations: list[Conversation], sampling: Sampling,
                 on_reply: OnReply | None = None) -> list[list[Reply]]:
        coroutine = self._generate(conversations, sampling, on_reply)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coroutine)
        # Called from inside an event loop (a notebook, a server): run ours in a thread.
        outcome: dict = {}

        def work() -> None:
            try:
                outcome["replies"] = asyncio.run(coroutine)
            except BaseException as error:  # handed to the caller's thread below
                outcome["error"] = error

        worker = threading.Thread(target=work)
        worker.start()
        worker.join()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["replies"]

    async def _generate(self, conversations, sampling, on_reply) -> list[list[Reply]]:
        n = max(1, sampling.n)
        gate = asyncio.Semaphore(self.concurrency)
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        async with httpx.AsyncClient(timeout=self.policy.timeout_s, limits=limits) as client:
            async def answer(index: int) -> list[Reply]:
                replies = [await self._request(client, gate, conversations[index], sampling, s) for s in range(n)]
                if on_reply:
                    on_reply(index, replies)  # at once, so the cache commits it whatever happens next
                return replies

            tasks = [asyncio.ensure_future(answer(i)) for i in range(len(conversations))]
            try:
                return list(await asyncio.gather(*tasks))
            except BaseException:  # RoleUnavailable (or an interrupt): finished items are committed
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise

    async def _request(self, client, gate, conversation, sampling, sample_index) -> Reply:
        body = self.dialect.body(conversation, sampling, sample_index)
        started = time.monotonic()
        attempt, failovers = 0, 0
        while True:
            state = self._pick()
            async with gate:
                outcome = await self._attempt(client, state, body)
            if isinstance(outcome, Reply):
                self._server_error_streak = 0
                return outcome
            problem = outcome
            if problem.kind == "key":
                raise RoleUnavailable(f"{self.name} at {state.endpoint.public}: the server refused the "
                                      f"credentials ({problem.text}); {state.endpoint.credential_hint()}, then run again")
            if problem.kind == "item":
                return Reply.failure(problem.text)
            if problem.kind == "transport" and self._any_up() and failovers < self._failover_limit:
                # A dead endpoint's request moves to a live one at once, and it costs the item no retry:
                # the retries are for what the live endpoints answer.
                failovers += 1
                log.debug("%s: %s; failing over", self.name, problem.text)
                continue
            if attempt >= self.policy.max_retries:
                return self._give_up(problem, started)
            wait = self.policy.delay(attempt, problem.retry_after)
            attempt += 1
            log.debug("%s: %s; retry %d in %.2f s", self.name, problem.text, attempt, wait)
            await asyncio.sleep(wait)

    @property
    def _failover_limit(self) -> int:
        """Free moves off dead endpoints per item: enough to pass every endpoint on every retry."""
        return len(self.states) * (self.policy.max_retries + 1)

    async def _attempt(self, client: httpx.AsyncClient, state: EndpointState, body: dict) -> Reply | Problem:
        where = state.endpoint.public
        try:
            response = await client.post(json=body, **self.request_args(state.endpoint))
        except (httpx.TimeoutException, httpx.TransportError) as error:
            problem = Problem("transport", self._scrub(f"{type(error).__name__} at {where}" + (f": {error}" if str(error) else "")))
            self._mark_down(state, problem.text)
            return problem
        self._mark_answered(state)
        status = response.status_code
        if 200 <= status < 300:
            try:
                return self.dialect.parse(response.json())
            except (ValueError, KeyError, IndexError, TypeError, AttributeError, MalformedReply) as error:
                return Problem("malformed", self._scrub(f"malformed reply from {where} ({type(error).__name__}: {_short(str(error))})"))
        text = self._scrub(f"HTTP {status}: {server_message(response)}")
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        if status in KEY_STATUS:
            return Problem("key", text)
        if status == 429:
            return Problem("rate", text, retry_after)
        if is_temporary(status):
            return Problem("server", text, retry_after)
        return Problem("item", text)

    def _give_up(self, problem: Problem, started: float) -> Reply:
        """After the last retry: this item fails, or the whole role is unavailable."""
        spent = f"after {self.policy.max_retries} retries"
        where = ", ".join(self.urls)
        if problem.kind == "rate":
            raise RoleUnavailable(f"{self.name} at {where}: still rate limited {spent} ({problem.text}); "
                                  "lower the role's concurrency or raise max_retries, then run again")
        if problem.kind == "transport" and not any(s.answered_at > started for s in self.states):
            raise RoleUnavailable(f"{self.name}: no endpoint reachable ({where}) {spent}; last error: "
                                  f"{problem.text}; start the server or fix the URL, then run again")
        if problem.kind == "server":
            self._server_error_streak += 1
            if self._server_error_streak >= SERVER_ERROR_STREAK:
                raise RoleUnavailable(f"{self.name} at {where}: {self._server_error_streak} items in a row failed "
                                      f"with server errors {spent} and none succeeded; last error: {problem.text}")
        return Reply.failure(f"{problem.text} ({spent})")

    def _pick(self) -> EndpointState:
        """Round robin over the endpoints that are up; when all are down, the one that answered last (a
        reset connection marks a live server down too), else the one that rested longest."""
        now = time.monotonic()
        up = [s for s in self.states if s.down_until <= now]
        if not up:
            return min(self.states, key=lambda s: (-s.answered_at, s.down_until))
        self._next += 1
        return up[self._next % len(up)]

    def _any_up(self) -> bool:
        now = time.monotonic()
        return any(s.down_until <= now for s in self.states)

    def _mark_down(self, state: EndpointState, why: str) -> None:
        now = time.monotonic()
        if state.down_until <= now and len(self.states) > 1:
            log.warning("%s: endpoint %s is down (%s); the others take its requests for %.1f s",
                        self.name, state.endpoint.public, why, self.policy.cooldown_s)
        state.down_until = now + self.policy.cooldown_s

    def _mark_answered(self, state: EndpointState) -> None:
        if state.down_until and len(self.states) > 1:
            log.info("%s: endpoint %s answers again", self.name, state.endpoint.public)
        state.down_until, state.answered_at = 0.0, time.monotonic()

    def _scrub(self, text: str) -> str:
        return scrub(text, self._secrets)


def server_message(response: httpx.Response) -> str:
    """The server's own words: `error.message` (OpenAI, Anthropic), `detail` (FastAPI), else the body."""
    try:
        payload = response.json()
    except ValueError:
        return _short(response.text) or response.reason_phrase
    if isinstance(payload, dict):
        error = payload.get("error") or payload.get("detail") or payload.get("message")
        if isinstance(error, dict):
            error = error.get("message") or error
        if error:
            return _short(str(error))
    return _short(response.text)


class _PublicURLs(logging.Filter):
    """httpx logs each request's URL at INFO: a secret query parameter must not reach a log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(public_url(str(a)) if isinstance(a, httpx.URL) else a for a in record.args)
        return True


logging.getLogger("httpx").addFilter(_PublicURLs())


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."
