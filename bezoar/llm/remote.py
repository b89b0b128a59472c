"""Remote backends' shared machinery: bounded concurrency, load spreading and patient retries.

A dialect (OpenAI chat-completions, Anthropic messages) says how to build a request and read a
reply; this module decides when and where to send it. Retries cover 429, 5xx, timeouts, connection
errors and malformed bodies, with exponential backoff, full jitter and the server's Retry-After.
Other 4xx errors (bad request, bad key) are not retried: they will not get better.
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

from bezoar.errors import BackendError
from bezoar.llm.protocol import Conversation, OnReply, Reply, Sampling

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504, 529}
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0


class MalformedReply(Exception):
    """The server answered 200 with a body we cannot read: worth a retry."""


class Dialect(Protocol):
    def url(self, base: str) -> str: ...
    def headers(self) -> dict[str, str]: ...
    def body(self, conversation: Conversation, sampling: Sampling, sample_index: int) -> dict: ...
    def parse(self, payload: dict) -> Reply: ...


@dataclass
class RetryPolicy:
    max_retries: int = 6
    timeout_s: float = 120.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        backoff = random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** attempt))  # full jitter
        return max(backoff, min(retry_after, 120.0)) if retry_after is not None else backoff


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After is either seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


class RemoteBackend:
    """Sends each (conversation, sample) as one request; `concurrency` in flight across all URLs."""

    def __init__(self, name: str, dialect: Dialect, urls: tuple[str, ...], concurrency: int,
                 policy: RetryPolicy):
        self.name, self.dialect, self.urls = name, dialect, urls
        self.concurrency, self.policy = concurrency, policy
        self._next_url = 0

    def generate(self, conversations: list[Conversation], sampling: Sampling,
                 on_reply: OnReply | None = None) -> list[list[Reply]]:
        coroutine = self._generate(conversations, sampling, on_reply)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coroutine)
        # Called from inside an event loop (a notebook, a server): run ours in a thread.
        result: list = []
        worker = threading.Thread(target=lambda: result.append(asyncio.run(coroutine)))
        worker.start()
        worker.join()
        return result[0]

    async def _generate(self, conversations, sampling, on_reply) -> list[list[Reply]]:
        n = max(1, sampling.n)
        gate = asyncio.Semaphore(self.concurrency)
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        async with httpx.AsyncClient(timeout=self.policy.timeout_s, limits=limits) as client:
            async def answer(index: int) -> list[Reply]:
                replies = [await self._request(client, gate, conversations[index], sampling, s) for s in range(n)]
                if on_reply:
                    on_reply(index, replies)
                return replies

            tasks = [asyncio.ensure_future(answer(i)) for i in range(len(conversations))]
            try:
                return list(await asyncio.gather(*tasks))
            except BaseException:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise

    def _pick_url(self) -> str:
        url = self.urls[self._next_url % len(self.urls)]
        self._next_url += 1
        return url

    async def _request(self, client, gate, conversation, sampling, sample_index) -> Reply:
        body = self.dialect.body(conversation, sampling, sample_index)
        last_error = "no attempt made"
        for attempt in range(self.policy.max_retries + 1):
            url = self._pick_url()  # a retry goes to the next server, if there are several
            retry_after = None
            async with gate:
                try:
                    response = await client.post(self.dialect.url(url), json=body, headers=self.dialect.headers())
                    if response.status_code == 200:
                        return self.dialect.parse(response.json())
                    last_error = f"HTTP {response.status_code}: {_short(response.text)}"
                    if response.status_code not in RETRY_STATUS:
                        raise BackendError(f"{self.name}: {url} refused the request ({last_error})")
                    retry_after = parse_retry_after(response.headers.get("retry-after"))
                except (httpx.TimeoutException, httpx.TransportError) as error:
                    last_error = f"{type(error).__name__} at {url}"
                except (ValueError, KeyError, IndexError, TypeError, MalformedReply) as error:
                    last_error = f"malformed reply from {url} ({type(error).__name__}: {_short(str(error))})"
            if attempt < self.policy.max_retries:
                wait = self.policy.delay(attempt, retry_after)
                log.debug("%s: %s; retry %d in %.2f s", self.name, last_error, attempt + 1, wait)
                await asyncio.sleep(wait)
        raise BackendError(f"{self.name}: gave up after {self.policy.max_retries} retries; last error: {last_error}")


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."
