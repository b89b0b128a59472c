"""`batch: true`: a remote role's calls as provider batches (OpenAI Batch, Anthropic Message Batches), at
half the price, transparent to the stage: `chat(conversations, sampling)` still returns one reply per item.

What one `generate` call does (see `BatchRun`):
1. Items already in a batch on record (a killed or stopped run's) are not sent again: that batch is polled.
2. The other items are split over the provider's limits, each batch recorded with its items in the run's
   call cache (`bezoar.llm.batch_store`) *before* its file is uploaded or it is created; then submitted.
   A batch recorded but never confirmed created (killed in between, or a create that timed out) is looked
   for at the provider before anything is sent again (`find`).
3. Every batch is polled with growing pauses (`batch_poll_s`, x1.5 per poll, at most 10 min); a 5xx, 429 or
   dropped connection while polling is retried, never fatal.
4. An ended batch's answers are matched back by `custom_id`: replies and failed items (failures as data,
   as online); items never answered (expired or cancelled batch, a provider-side 5xx) go into a new batch,
   up to the role's `max_retries` times, then fail.
5. If batches are still running after `batch_wait_s` (0: `bezoar run --no-wait`), `BatchPending` stops the
   stage (exit 75): the next run collects them.
"""
from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass

from bezoar.errors import BatchPending, RoleUnavailable
from bezoar.llm.batch_apis import BatchAPI, BatchClient, Outcome, Rejected, Unreachable, batch_api
from bezoar.llm.batch_store import BatchRecord, BatchStore
from bezoar.llm.cache import CallCache, call_key
from bezoar.llm.protocol import Conversation, OnReply, Reply, Sampling
from bezoar.llm.remote import RemoteBackend

log = logging.getLogger(__name__)

POLL_GROWTH = 1.5
POLL_CAP_S = 600.0
NO_WAIT_ENV = "BEZOAR_BATCH_NO_WAIT"
"""Set to 1 (by `bezoar run --no-wait`): every batch role submits, polls once and stops with `BatchPending`."""


@dataclass(frozen=True)
class BatchSettings:
    poll_s: float = 30.0
    wait_s: float | None = None
    """None: wait until every batch ends."""
    max_requests: int | None = None

    @classmethod
    def from_config(cls, config) -> "BatchSettings":
        """From a `ModelConfig`; `BEZOAR_BATCH_NO_WAIT=1` makes the wait 0."""
        no_wait = os.environ.get(NO_WAIT_ENV, "") not in ("", "0")
        return cls(config.batch_poll_s, 0.0 if no_wait else config.batch_wait_s, config.batch_max_requests)


class BatchBackend:
    """A remote backend whose `generate` goes through provider batches (the Backend protocol)."""

    batched = True

    def __init__(self, inner: RemoteBackend, cache: CallCache, settings: BatchSettings):
        self.inner, self.cache, self.settings = inner, cache, settings
        self.identity = inner.identity
        self.api: BatchAPI = batch_api(inner)
        self.store = BatchStore(cache)
        self.endpoint = inner.endpoints[0]  # a batch lives in one account: the role's first URL
        self.sent = {"requests": 0, "bytes": 0, "batches": 0}
        """What this backend sent: HTTP requests, request-body bytes, batches created (for benchmarks)."""

    def generate(self, conversations: list[Conversation], sampling: Sampling,
                 on_reply: OnReply | None = None) -> list[list[Reply]]:
        client = BatchClient(self.inner, self.endpoint)
        try:
            return BatchRun(self, client, conversations, sampling, on_reply).run()
        finally:
            self.sent["requests"] += client.requests
            self.sent["bytes"] += client.sent_bytes
            client.close()


class BatchRun:
    """One `generate` call: its items, the batches that hold them, and the replies as they come."""

    def __init__(self, backend: BatchBackend, client: BatchClient, conversations: list[Conversation],
                 sampling: Sampling, on_reply: OnReply | None):
        self.backend, self.client, self.api, self.store = backend, client, backend.api, backend.store
        self.sampling, self.on_reply = sampling, on_reply
        self.n = max(1, sampling.n)
        self.conversations = conversations
        self.replies: list[list[Reply | None]] = [[None] * self.n for _ in conversations]
        self.where: dict[str, list[tuple[int, int]]] = {}
        """{cache key: the (conversation, sample) positions it answers} (identical items are sent once)."""
        for index, conversation in enumerate(conversations):
            for sample in range(self.n):
                key = call_key(backend.identity, sampling, conversation, sample)
                self.where.setdefault(key, []).append((index, sample))
        self.watching: set[str] = set()

    def run(self) -> list[list[Reply]]:
        live = self.store.live_for(list(self.where))
        self.watching |= set(live.values())
        attempts = self.store.attempts([k for k in self.where if k not in live])
        self.submit([k for k in self.where if k not in live], attempts)
        self.wait()
        return self.replies  # type: ignore[return-value]

    # -- submitting -------------------------------------------------------------------------------

    def submit(self, keys: list[str], attempts: dict[str, int]) -> None:
        """New batches for these items (split over the provider's limits), each recorded before it is sent."""
        too_often = [k for k in keys if attempts.get(k, 0) > self.backend.inner.policy.max_retries]
        for key in too_often:
            self.deliver(key, Reply.failure(f"never answered in {attempts[key]} batches (expired or cancelled)"))
        keys = [k for k in keys if k not in too_often]
        for chunk in self.split(keys):
            local_id = f"bzb_{uuid.uuid4().hex[:20]}"
            lines = [self.api.line(key, self.body(key)) for key in chunk]
            record = BatchRecord(local_id, self.api.provider, self.backend.endpoint.public, self.backend.identity,
                                 len(chunk), bytes=sum(len(l) for l in lines))
            self.store.record(record, [(key, key, attempts.get(key, 0) + 1) for key in chunk])
            self.send(record, lines)

    def split(self, keys: list[str]) -> list[list[str]]:
        most = min(self.backend.settings.max_requests or self.api.max_requests, self.api.max_requests)
        chunks: list[list[str]] = [[]]
        size = 0
        for key in keys:
            length = len(self.api.line(key, self.body(key)))
            if chunks[-1] and (len(chunks[-1]) >= most or size + length > self.api.max_bytes * 0.95):
                chunks.append([])
                size = 0
            chunks[-1].append(key)
            size += length
        return [c for c in chunks if c]

    def body(self, key: str) -> dict:
        index, sample = self.where[key][0]
        return self.backend.inner.dialect.body(self.conversations[index], self.sampling, sample)

    def send(self, record: BatchRecord, lines: list[bytes]) -> None:
        """Upload (OpenAI) and create, recording each id as it comes; a create that may have reached the
        provider is looked for there before it is sent again."""
        try:
            file_id = record.input_file_id or self.api.upload(self.client, record.local_id, lines)
            if file_id:
                self.store.update(record.local_id, input_file_id=file_id)
            remote_id: str | None = None
            for attempt in range(self.backend.inner.policy.max_retries + 1):
                try:
                    remote_id = self.api.create(self.client, record.local_id, lines, file_id)
                    break
                except Unreachable:
                    remote_id = self.adopt(record.local_id)
                    if remote_id:
                        break
                    time.sleep(self.backend.inner.policy.delay(attempt, None))
            else:
                raise RoleUnavailable(f"{self.backend.inner.name} at {self.backend.endpoint.public}: no batch could be "
                                      f"created after {self.backend.inner.policy.max_retries} retries; run again to resume")
        except Unreachable as error:
            raise RoleUnavailable(f"{error}; the batch is on record and is sent when you run again") from None
        except Rejected as error:  # the provider refused the batch itself: its items fail, as data
            self.store.update(record.local_id, state="done", status="failed", failed=record.items)
            for key, _attempt in self.store.items(record.local_id).values():
                self.deliver(key, Reply.failure(f"the provider refused the batch: {error}"))
            return
        self.store.update(record.local_id, remote_id=remote_id, state="submitted", status="submitted")
        self.backend.sent["batches"] += 1
        self.watching.add(record.local_id)
        log.info("%s: batch %s submitted (%d items)", self.backend.identity, remote_id, record.items)

    def adopt(self, local_id: str) -> str | None:
        """The provider's id of a batch we recorded but never saw created, if the provider has it."""
        record = self.store.get(local_id)
        try:
            return self.api.find(self.client, local_id, record.input_file_id, record.items, record.created,
                                 self.store.known_remote_ids(record.provider))
        except (Unreachable, Rejected) as error:
            log.debug("looking for batch %s: %s", local_id, error)
            return None

    def resume(self, record: BatchRecord) -> None:
        """A batch recorded by a run that stopped before the provider confirmed it: adopt it if the provider
        has it; otherwise nothing was sent, and its items asked now go into a new batch."""
        remote_id = self.adopt(record.local_id)
        if remote_id:
            self.store.update(record.local_id, remote_id=remote_id, state="submitted", status="submitted")
            log.info("%s: found batch %s that a stopped run had created", self.backend.identity, remote_id)
            return
        self.store.update(record.local_id, state="done", status="never_sent")
        self.watching.discard(record.local_id)
        items = [key for key, _ in self.store.items(record.local_id).values() if key in self.where]
        self.submit(items, self.store.attempts(items))

    # -- polling and collecting -------------------------------------------------------------------

    def wait(self) -> None:
        started = time.monotonic()
        pause = self.backend.settings.poll_s
        wait_s = self.backend.settings.wait_s
        while True:
            for local_id in sorted(self.watching):
                self.check(local_id)
            if not self.watching:
                return
            waited = time.monotonic() - started
            if wait_s is not None and waited + min(pause, POLL_CAP_S) > wait_s:
                raise self.pending(waited)
            time.sleep(pause)
            pause = min(pause * POLL_GROWTH, POLL_CAP_S)

    def check(self, local_id: str) -> None:
        record = self.store.get(local_id)
        if record.state == "preparing":
            self.resume(record)
            return
        if record.state != "submitted" or record.remote_id is None:
            self.watching.discard(local_id)
            return
        try:
            polled = self.api.poll(self.client, record.remote_id)
        except Unreachable as error:  # a 5xx or a dropped connection while polling: next round asks again
            log.warning("%s: polling batch %s: %s; polling again later", self.backend.identity, record.remote_id, error)
            return
        except Rejected as error:
            if error.status != 404:
                raise
            log.warning("%s: batch %s is unknown to the server (%s); its items are sent again",
                        self.backend.identity, record.remote_id, error)
            self.store.update(local_id, state="done", status="lost")
            self.watching.discard(local_id)
            items = [key for key, _ in self.store.items(local_id).values() if key in self.where]
            self.submit(items, self.store.attempts(items))
            return
        self.store.update(local_id, status=polled.status, succeeded=polled.succeeded, failed=polled.failed)
        if polled.ended:
            self.collect(record, polled)

    def collect(self, record: BatchRecord, polled) -> None:
        items = self.store.items(record.local_id)
        answered: dict[str, Outcome] = {}
        try:
            for custom_id, outcome in self.api.results(self.client, polled):
                if custom_id == "*":  # the whole batch failed
                    answered = {c: outcome for c in items}
                    break
                if custom_id in items:
                    answered[custom_id] = outcome
        except Unreachable as error:
            log.warning("%s: results of batch %s: %s; asking again later", self.backend.identity, record.remote_id, error)
            return
        except Rejected as error:  # its files are gone (OpenAI keeps them 30 days): its items go out again
            log.warning("%s: results of batch %s: %s; its items are sent again", self.backend.identity,
                        record.remote_id, error)
            answered = {}
        again = [items[c][0] for c in items if c not in answered or answered[c].again]
        for custom_id, outcome in answered.items():
            if outcome.reply is not None:
                self.deliver(items[custom_id][0], outcome.reply)
        failed = sum(1 for o in answered.values() if o.reply is not None and o.reply.failed)
        succeeded = sum(1 for o in answered.values() if o.reply is not None) - failed
        self.store.update(record.local_id, state="done", succeeded=succeeded, failed=failed, missing=len(again))
        self.watching.discard(record.local_id)
        wanted = [key for key in again if key in self.where]
        log.info("%s: batch %s %s: %d answered, %d of them failed, %d sent again", self.backend.identity,
                 record.remote_id, polled.status, succeeded + failed, failed, len(wanted))
        if wanted:
            self.submit(wanted, self.store.attempts(wanted))

    def deliver(self, key: str, reply: Reply) -> None:
        """A reply for every position this key answers; a conversation whose samples are all in goes to
        `on_reply` at once (the cache commits it). A key no longer asked is committed to the cache directly."""
        positions = self.where.get(key)
        if positions is None:
            self.backend.cache.put(key, reply)
            return
        for index, sample in positions:
            if self.replies[index][sample] is not None:
                continue
            self.replies[index][sample] = reply
            if self.on_reply and all(r is not None for r in self.replies[index]):
                self.on_reply(index, self.replies[index])  # type: ignore[arg-type]

    def pending(self, waited: float) -> BatchPending:
        ids = [self.store.get(i).remote_id or i for i in sorted(self.watching)]
        done = sum(1 for row in self.replies for r in row if r is not None)
        total = sum(len(row) for row in self.replies)
        return BatchPending(f"{self.backend.identity}: {len(ids)} provider batch(es) still running after {waited:.0f} s "
                            f"({', '.join(ids)}; {done} of {total} items answered so far); run the same command again "
                            "to collect them (no item is submitted twice)", tuple(ids))
