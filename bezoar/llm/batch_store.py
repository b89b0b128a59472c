"""Provider batches on record, in the run's call cache (SQLite), written before anything is sent.

A batch is recorded with its items (call-cache keys) while it is still `preparing`, before its file is
uploaded or it is created; the provider's ids are added as they come. So a killed run, a closed laptop or
a re-run finds every item that is already in a batch and polls that batch instead of submitting the item
again. `batches_in(path)` is what `bezoar status` shows.

States: preparing (recorded, not yet created at the provider) -> submitted (created; polled) -> done
(ended and its results collected into the cache). The provider's own word (completed, expired, cancelled,
failed, ended) is kept in `status`.
"""
from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from bezoar.llm.cache import CallCache, key_chunks

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS batches (
        local_id TEXT PRIMARY KEY, provider TEXT NOT NULL, endpoint TEXT NOT NULL, identity TEXT NOT NULL,
        remote_id TEXT, input_file_id TEXT, state TEXT NOT NULL, status TEXT, items INTEGER NOT NULL,
        succeeded INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0, missing INTEGER NOT NULL DEFAULT 0,
        bytes INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL, updated REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS batch_items (
        local_id TEXT NOT NULL, custom_id TEXT NOT NULL, key TEXT NOT NULL, attempt INTEGER NOT NULL,
        PRIMARY KEY (local_id, custom_id))""",
    "CREATE INDEX IF NOT EXISTS batch_items_key ON batch_items (key)",
)
LIVE = ("preparing", "submitted")


@dataclass
class BatchRecord:
    """One provider batch as recorded (see the module docstring for `state`)."""

    local_id: str
    provider: str
    endpoint: str
    identity: str
    items: int
    state: str = "preparing"
    remote_id: str | None = None
    input_file_id: str | None = None
    status: str | None = None
    succeeded: int = 0
    failed: int = 0
    missing: int = 0
    bytes: int = 0
    created: float = 0.0
    updated: float = 0.0


@dataclass
class BatchState:
    """What `bezoar status` shows of one batch."""

    batch_id: str
    """The provider's id (our local id while it is not created yet)."""
    model: str
    state: str
    """submitted, in_progress, done, failed, expired or cancelled."""
    items: int
    succeeded: int
    failed: int
    age_s: float

    def to_json(self) -> dict:
        return {"batch_id": self.batch_id, "model": self.model, "state": self.state, "items": self.items,
                "succeeded": self.succeeded, "failed": self.failed, "age_s": round(self.age_s, 1)}


class BatchStore:
    """The `batches` and `batch_items` tables beside the call cache's own, on its connections."""

    def __init__(self, cache: CallCache):
        self.cache = cache
        for statement in SCHEMA:
            self._conn().execute(statement)

    def _conn(self) -> sqlite3.Connection:
        return self.cache.connection()

    def record(self, batch: BatchRecord, items: list[tuple[str, str, int]]) -> None:
        """A new batch and its (custom_id, key, attempt) items, in one transaction, before anything is sent."""
        now = time.time()
        batch.created = batch.updated = now
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("INSERT INTO batches (local_id, provider, endpoint, identity, state, items, bytes, created, updated)"
                         " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (batch.local_id, batch.provider, batch.endpoint,
                                                                 batch.identity, batch.state, batch.items, batch.bytes, now, now))
            conn.executemany("INSERT INTO batch_items VALUES (?, ?, ?, ?)",
                             [(batch.local_id, custom_id, key, attempt) for custom_id, key, attempt in items])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def update(self, local_id: str, **fields) -> None:
        names = ", ".join(f"{name} = ?" for name in fields)
        self._conn().execute(f"UPDATE batches SET {names}, updated = ? WHERE local_id = ?",
                             (*fields.values(), time.time(), local_id))

    def live_for(self, keys: list[str]) -> dict[str, str]:
        """{key: local id} of these keys that sit in a batch not yet done."""
        found: dict[str, str] = {}
        conn = self._conn()
        for chunk, marks in key_chunks(keys):
            rows = conn.execute(f"SELECT i.key, i.local_id FROM batch_items i JOIN batches b ON b.local_id = i.local_id "
                                f"WHERE b.state IN ('preparing', 'submitted') AND i.key IN ({marks})", chunk)
            found.update(dict(rows))
        return found

    def attempts(self, keys: list[str]) -> dict[str, int]:
        """{key: how many batches it was sent in} (expired or cancelled ones are sent again)."""
        found: dict[str, int] = {}
        conn = self._conn()
        for chunk, marks in key_chunks(keys):
            found.update(conn.execute(f"SELECT key, MAX(attempt) FROM batch_items WHERE key IN ({marks}) GROUP BY key", chunk))
        return found

    def get(self, local_id: str) -> BatchRecord:
        cursor = self._conn().execute("SELECT * FROM batches WHERE local_id = ?", (local_id,))
        row = cursor.fetchone()
        return BatchRecord(**dict(zip([c[0] for c in cursor.description], row)))

    def items(self, local_id: str) -> dict[str, tuple[str, int]]:
        """{custom_id: (key, attempt)} of one batch."""
        rows = self._conn().execute("SELECT custom_id, key, attempt FROM batch_items WHERE local_id = ?", (local_id,))
        return {custom_id: (key, attempt) for custom_id, key, attempt in rows}

    def known_remote_ids(self, provider: str) -> set[str]:
        rows = self._conn().execute("SELECT remote_id FROM batches WHERE provider = ? AND remote_id IS NOT NULL", (provider,))
        return {remote_id for (remote_id,) in rows}


def batches_in(cache_path: Path | str) -> list[BatchState]:
    """Every provider batch a run's call cache has on record, oldest first (empty when it has none).
    Read-only: safe while a run is polling."""
    path = Path(cache_path)
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'batches'").fetchone():
            return []
        rows = conn.execute("SELECT local_id, remote_id, identity, state, status, items, succeeded, failed, created "
                            "FROM batches ORDER BY created").fetchall()
    finally:
        conn.close()
    now = time.time()
    return [BatchState(remote or local, identity, shown_state(state, status), items, succeeded, failed, now - created)
            for local, remote, identity, state, status, items, succeeded, failed, created in rows]


def shown_state(state: str, status: str | None) -> str:
    """Our state and the provider's word, as one of: submitted, in_progress, done, failed, expired, cancelled."""
    if state == "preparing":
        return "submitted"
    if state == "submitted":
        return "in_progress" if status in ("in_progress", "finalizing", "cancelling", "canceling") else "submitted"
    return {"expired": "expired", "cancelled": "cancelled", "failed": "failed"}.get(status or "", "done")


def batch_summary(states: list[BatchState]) -> str:
    """One line for `bezoar status`: `3 provider batches: 2 done, 1 in_progress; 120 of 160 items answered;
    oldest running 2.1 h` (empty without batches)."""
    if not states:
        return ""
    counts: dict[str, int] = {}
    for state in states:
        counts[state.state] = counts.get(state.state, 0) + 1
    running = [s.age_s for s in states if s.state in ("submitted", "in_progress")]
    text = (f"{len(states)} provider batch{'es' if len(states) > 1 else ''}: "
            + ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
            + f"; {sum(s.succeeded + s.failed for s in states):,} of {sum(s.items for s in states):,} items answered")
    return text + (f"; oldest running {max(running) / 3600:.1f} h" if running else "")
