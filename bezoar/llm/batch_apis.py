"""The two providers' batch APIs, as the requests they take and the results they give back.

- OpenAI Batch: the requests are a JSONL file (`{"custom_id", "method": "POST", "url": "/v1/chat/completions",
  "body"}` per line) uploaded to `/files` (purpose `batch`), then `POST /batches`; `GET /batches/{id}` until
  its status is completed, failed, expired or cancelled; the answers are the JSONL of its output file (and of
  its error file: item errors, and `batch_expired` / `batch_cancelled` for items never run).
- Anthropic Message Batches: `POST /v1/messages/batches` with `{"requests": [{"custom_id", "params"}]}`;
  `GET /v1/messages/batches/{id}` until `processing_status` is `ended`; the answers are the JSONL at
  `/v1/messages/batches/{id}/results` (`succeeded`, `errored`, `canceled`, `expired` per item).

Each item's body is exactly what the online call would send (the role's dialect builds it), so a batch and
an online call are answered alike and share one cache key. httpx, as for online calls (`bezoar.llm.remote`),
so keys, URL credentials and secret scrubbing behave the same.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Iterator

import httpx

from bezoar.errors import RoleUnavailable
from bezoar.llm.endpoints import Endpoint, scrub
from bezoar.llm.protocol import Reply
from bezoar.llm.remote import (KEY_STATUS, MalformedReply, RemoteBackend, is_temporary, parse_retry_after,
                               server_message)

log = logging.getLogger(__name__)

AGAIN_ERROR_CODES = {"batch_expired", "batch_cancelled", "request_timeout"}
"""OpenAI error-file codes of items that were never answered: sent again in a new batch."""
AGAIN_ERROR_TYPES = {"api_error", "overloaded_error", "rate_limit_error", "timeout_error"}
"""Anthropic `errored` types that a later try may answer (as an online 5xx/429 is retried)."""


class Rejected(Exception):
    """The provider answered a batch request with a 4xx other than a refused key: not worth repeating."""

    def __init__(self, status: int, text: str):
        super().__init__(text)
        self.status = status


class Unreachable(Exception):
    """Transport errors, 5xx or 429 still there after the retries."""


@dataclass
class Polled:
    """A batch as the provider last described it."""

    status: str
    """The provider's word: OpenAI's status, or Anthropic's processing_status."""
    ended: bool
    succeeded: int = 0
    failed: int = 0
    payload: dict = field(default_factory=dict)


@dataclass
class Outcome:
    """One item's answer: a reply (possibly a failed one), or `again` (never answered: send it again)."""

    reply: Reply | None = None
    again: str | None = None


class BatchClient:
    """Requests to one endpoint with the role's credentials; 429, 5xx and transport errors retried with the
    role's backoff, a refused key is `RoleUnavailable`, another 4xx is `Rejected`."""

    def __init__(self, backend: RemoteBackend, endpoint: Endpoint):
        self.backend, self.endpoint = backend, endpoint
        self.http = httpx.Client(timeout=backend.policy.timeout_s)
        self.secrets = endpoint.secrets()
        self.sent_bytes = 0
        self.requests = 0

    def send(self, method: str, path: str, retries: int | None = None, **kwargs) -> httpx.Response:
        headers = {**self.backend.dialect.headers(self.endpoint.api_key), **kwargs.pop("headers", {})}
        kwargs["params"] = [*self.endpoint.params, *kwargs.pop("params", {}).items()]  # the URL's own query too
        auth = self.endpoint.auth if self.endpoint.auth and "Authorization" not in headers else None
        url = f"{self.endpoint.base}{path}"
        policy = self.backend.policy
        retries = policy.max_retries if retries is None else retries
        for attempt in range(retries + 1):
            problem, retry_after = self._attempt(method, url, headers, auth, kwargs)
            if isinstance(problem, httpx.Response):
                return problem
            if attempt < retries:
                wait = policy.delay(attempt, retry_after)
                log.debug("%s %s: %s; retry %d in %.2f s", method, path, problem, attempt + 1, wait)
                time.sleep(wait)
        raise Unreachable(f"{self.backend.name} at {self.endpoint.public}: {problem} (after {retries} retries)")

    def _attempt(self, method, url, headers, auth, kwargs) -> tuple[httpx.Response | str, float | None]:
        body = kwargs.get("content") or b""
        self.requests += 1
        self.sent_bytes += len(body) if isinstance(body, bytes) else 0
        try:
            response = self.http.request(method, url, headers=headers, auth=auth, **kwargs)
        except (httpx.TimeoutException, httpx.TransportError) as error:
            return self._scrub(f"{type(error).__name__}" + (f": {error}" if str(error) else "")), None
        status = response.status_code
        if 200 <= status < 300:
            return response, None
        text = self._scrub(f"HTTP {status}: {server_message(response)}")
        if status in KEY_STATUS:
            raise RoleUnavailable(f"{self.backend.name} at {self.endpoint.public}: the server refused the credentials "
                                  f"({text}); {self.endpoint.credential_hint()}, then run again")
        if is_temporary(status):
            return text, parse_retry_after(response.headers.get("retry-after"))
        raise Rejected(status, text)

    def _scrub(self, text: str) -> str:
        return scrub(text, self.secrets)

    def close(self) -> None:
        self.http.close()


class OpenAIBatches:
    provider = "openai"
    max_requests = 50_000
    max_bytes = 200 * 1024 * 1024
    route = "/v1/chat/completions"

    def __init__(self, backend: RemoteBackend):
        self.backend = backend

    def line(self, custom_id: str, body: dict) -> bytes:
        return json.dumps({"custom_id": custom_id, "method": "POST", "url": self.route, "body": body},
                          ensure_ascii=False).encode() + b"\n"

    def upload(self, client: BatchClient, local_id: str, lines: list[bytes]) -> str | None:
        content = b"".join(lines)
        client.sent_bytes += len(content)
        response = client.send("POST", "/files", data={"purpose": "batch"},
                               files={"file": (f"bezoar-{local_id}.jsonl", content, "application/jsonl")})
        return response.json()["id"]

    def create(self, client: BatchClient, local_id: str, lines: list[bytes], file_id: str | None) -> str:
        body = {"input_file_id": file_id, "endpoint": self.route, "completion_window": "24h",
                "metadata": {"bezoar_batch": local_id}}
        return client.send("POST", "/batches", retries=0, json=body).json()["id"]

    def find(self, client: BatchClient, local_id: str, file_id: str | None, items: int, since: float,
             known: set[str]) -> str | None:
        """The batch a killed run created but did not record: same input file, or our id in its metadata."""
        for batch in client.send("GET", "/batches", params={"limit": 100}).json().get("data", []):
            if batch.get("id") in known:
                continue
            if (file_id and batch.get("input_file_id") == file_id) or (batch.get("metadata") or {}).get("bezoar_batch") == local_id:
                return batch["id"]
        return None

    def poll(self, client: BatchClient, remote_id: str) -> Polled:
        payload = client.send("GET", f"/batches/{remote_id}").json()
        counts = payload.get("request_counts") or {}
        status = payload["status"]
        return Polled(status, status in ("completed", "failed", "expired", "cancelled"),
                      int(counts.get("completed") or 0), int(counts.get("failed") or 0), payload)

    def results(self, client: BatchClient, polled: Polled) -> Iterator[tuple[str, Outcome]]:
        if polled.status == "failed":  # the whole batch was refused (validation): every item fails with its words
            reasons = "; ".join(e.get("message") or e.get("code") or "" for e in (polled.payload.get("errors") or {}).get("data") or [])
            yield "*", Outcome(Reply.failure(f"batch failed: {reasons or 'no reason given'}"))
            return
        for field_name in ("output_file_id", "error_file_id"):
            file_id = polled.payload.get(field_name)
            if not file_id:
                continue
            text = client.send("GET", f"/files/{file_id}/content").text
            for number, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    yield self._outcome(json.loads(line))

    def _outcome(self, row: dict) -> tuple[str, Outcome]:
        custom_id, response, error = row["custom_id"], row.get("response"), row.get("error") or {}
        status = int((response or {}).get("status_code") or 0)
        if response and 200 <= status < 300:
            return custom_id, parsed(self.backend, response.get("body"))
        if error.get("code") in AGAIN_ERROR_CODES or (status and is_temporary(status)):
            return custom_id, Outcome(again=error.get("code") or f"HTTP {status}")
        if response:
            message = ((response.get("body") or {}).get("error") or {}).get("message") or "no message"
            return custom_id, Outcome(Reply.failure(f"HTTP {status}: {message} (in a batch)"))
        return custom_id, Outcome(Reply.failure(f"{error.get('code') or 'error'}: {error.get('message') or 'no message'} (in a batch)"))


class AnthropicBatches:
    provider = "anthropic"
    max_requests = 100_000
    max_bytes = 256 * 1024 * 1024
    path = "/v1/messages/batches"

    def __init__(self, backend: RemoteBackend):
        self.backend = backend

    def line(self, custom_id: str, body: dict) -> bytes:
        return json.dumps({"custom_id": custom_id, "params": body}, ensure_ascii=False).encode()

    def upload(self, client: BatchClient, local_id: str, lines: list[bytes]) -> str | None:
        return None  # the requests go in the create call's body

    def create(self, client: BatchClient, local_id: str, lines: list[bytes], file_id: str | None) -> str:
        content = b'{"requests": [' + b",".join(lines) + b"]}"
        return client.send("POST", self.path, retries=0, content=content,
                           headers={"content-type": "application/json"}).json()["id"]

    def find(self, client: BatchClient, local_id: str, file_id: str | None, items: int, since: float,
             known: set[str]) -> str | None:
        """Message Batches carry no metadata: a batch of ours that was never recorded is recognised by its
        size and creation time (created after we recorded it, less 5 minutes of clock skew, and not on record)."""
        found = []
        for batch in client.send("GET", self.path, params={"limit": 100}).json().get("data", []):
            created = _timestamp(batch.get("created_at"))
            if batch.get("id") in known or created is None or created < since - 300:
                continue
            if sum(int(v or 0) for v in (batch.get("request_counts") or {}).values()) == items:
                # ours was created just after we recorded it: prefer those, nearest first (another run's
                # batch of the same size may sit inside the clock-skew allowance before it)
                found.append((created < since, abs(created - since), batch["id"]))
        return min(found)[2] if found else None

    def poll(self, client: BatchClient, remote_id: str) -> Polled:
        payload = client.send("GET", f"{self.path}/{remote_id}").json()
        counts = payload.get("request_counts") or {}
        ended = payload["processing_status"] == "ended"
        failed = sum(int(counts.get(k) or 0) for k in ("errored", "canceled", "expired"))
        status = payload["processing_status"]
        if ended and (counts.get("expired") or counts.get("canceled")):  # as OpenAI words an ended batch
            status = "expired" if counts.get("expired") else "cancelled"
        return Polled(status, ended, int(counts.get("succeeded") or 0), failed, payload)

    def results(self, client: BatchClient, polled: Polled) -> Iterator[tuple[str, Outcome]]:
        # Our endpoint's own route, not `results_url`: the key goes to the endpoint it belongs to, and a
        # proxy in front of the API stays in the path.
        text = client.send("GET", f"{self.path}/{polled.payload['id']}/results").text
        for line in text.splitlines():
            if line.strip():
                row = json.loads(line)
                yield row["custom_id"], self._outcome(row["result"])

    def _outcome(self, result: dict) -> Outcome:
        kind = result.get("type")
        if kind == "succeeded":
            return parsed(self.backend, result.get("message"))
        if kind in ("canceled", "expired"):
            return Outcome(again=kind)
        error = ((result.get("error") or {}).get("error")) or {}
        if error.get("type") in AGAIN_ERROR_TYPES:
            return Outcome(again=error["type"])
        return Outcome(Reply.failure(f"{error.get('type') or 'error'}: {error.get('message') or 'no message'} (in a batch)"))


def parsed(backend: RemoteBackend, body) -> Outcome:
    """An item's answer read as the online call's would be; a body we cannot read fails the item."""
    try:
        return Outcome(backend.dialect.parse(body))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, MalformedReply) as error:
        return Outcome(Reply.failure(f"malformed reply in a batch ({type(error).__name__}: {error})"))


def _timestamp(value) -> float | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


BatchAPI = OpenAIBatches | AnthropicBatches


def batch_api(backend: RemoteBackend) -> BatchAPI:
    return AnthropicBatches(backend) if backend.name.startswith("anthropic:") else OpenAIBatches(backend)
