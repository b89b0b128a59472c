"""A persistent, multi-process call cache, and the per-role usage counters built on it.

Every backend call goes through `CachedModel`: a re-run makes no repeated call, a killed run loses
only the calls in flight (each reply is committed as soon as it arrives), and several processes can
share one cache file (SQLite in WAL mode serialises writers; readers never block).
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from bezoar.errors import BudgetExceeded
from bezoar.hashing import canonical_hash
from bezoar.llm.protocol import Backend, Conversation, Reply, Sampling

SCHEMA = "CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, reply TEXT NOT NULL, created REAL NOT NULL)"
# Failed items apart from replies: a failure is never served as a success, but a resumed run replays it
# (no call) instead of asking again; `retry_failures` (bezoar run --retry-failed) asks again.
FAILURES = "CREATE TABLE IF NOT EXISTS failures (key TEXT PRIMARY KEY, error TEXT NOT NULL, created REAL NOT NULL)"


def default_cache_path() -> Path:
    """`$BEZOAR_CACHE_DIR/calls.sqlite`, else the XDG cache directory."""
    root = os.environ.get("BEZOAR_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bezoar"
    return Path(root) / "calls.sqlite"


def call_key(identity: str, sampling: Sampling, messages: Conversation, sample_index: int) -> str:
    """Allow-listed fields only: adding a field to the key is a deliberate choice."""
    return canonical_hash({"model": identity, "sampling": sampling.cache_fields(),
                           "messages": messages, "sample": sample_index})


def key_chunks(keys: list[str], size: int = 500):
    """(chunk, "?,?,...") per at most `size` keys: SQLite limits the bound parameters of one statement."""
    for start in range(0, len(keys), size):
        chunk = keys[start:start + size]
        yield chunk, ",".join("?" * len(chunk))


def _wal_mode(conn: sqlite3.Connection, patience_s: float = 120) -> None:
    """Switch to WAL. SQLite answers this pragma 'database is locked' at once, without waiting out the
    busy timeout, while another process is switching the same new file (seen with two writers on a
    loaded machine), so it is retried here."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class CallCache:
    """SQLite key → reply store, and key → error for failed items. One connection per thread; every
    write commits at once. With `retry_failures`, recorded failures are not replayed but asked again."""

    def __init__(self, path: Path | str, retry_failures: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.retry_failures = retry_failures
        self._local = threading.local()
        self._connect().execute(SCHEMA)
        self._connect().execute(FAILURES)

    def _connect(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=120, isolation_level=None, check_same_thread=False)
            _wal_mode(conn)
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (autocommit), for tables kept beside the calls (`bezoar.llm.batch_store`)."""
        return self._connect()

    def get_many(self, keys: list[str]) -> dict[str, Reply]:
        found: dict[str, Reply] = {}
        conn = self._connect()
        for chunk, marks in key_chunks(keys):
            for key, text in conn.execute(f"SELECT key, reply FROM calls WHERE key IN ({marks})", chunk):
                found[key] = Reply(**json.loads(text), cached=True)
        return found

    def put(self, key: str, reply: Reply) -> None:
        """A reply, or (`reply.failed`) the failure of its item, replacing what the key held."""
        conn = self._connect()
        if reply.failed:
            conn.execute("INSERT OR REPLACE INTO failures VALUES (?, ?, ?)", (key, reply.error or "failed", time.time()))
            return
        conn.execute("INSERT OR REPLACE INTO calls VALUES (?, ?, ?)",
                     (key, json.dumps(reply.to_json(), ensure_ascii=False), time.time()))
        conn.execute("DELETE FROM failures WHERE key = ?", (key,))

    def failures_among(self, keys: list[str]) -> dict[str, Reply]:
        """Recorded failures of these keys, as failed replies (none when retrying failures)."""
        if self.retry_failures:
            return {}
        found: dict[str, Reply] = {}
        for chunk, marks in key_chunks(keys):
            for key, error in self._connect().execute(f"SELECT key, error FROM failures WHERE key IN ({marks})", chunk):
                found[key] = Reply(text="", finish_reason="error", cached=True, error=error)
        return found

    def __len__(self) -> int:
        return self._connect().execute("SELECT COUNT(*) FROM calls").fetchone()[0]


@dataclass
class Usage:
    """What one role cost: backend calls, cache hits, tokens and wall time spent in calls."""

    calls: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    wall_s: float = 0.0

    def to_json(self) -> dict:
        return {"calls": self.calls, "cache_hits": self.cache_hits, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "wall_s": round(self.wall_s, 3)}

    def minus(self, earlier: "Usage") -> "Usage":
        return Usage(*(getattr(self, k) - getattr(earlier, k) for k in
                       ("calls", "cache_hits", "prompt_tokens", "completion_tokens", "wall_s")))

    def copy(self) -> "Usage":
        return Usage(**{k: getattr(self, k) for k in ("calls", "cache_hits", "prompt_tokens", "completion_tokens", "wall_s")})


@dataclass
class Budget:
    """Per-role limits; `None` means unlimited. Prices are USD per million tokens."""

    max_calls: int | None = None
    max_cost: float | None = None
    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0

    def cost(self, usage: Usage) -> float:
        return (usage.prompt_tokens * self.input_per_mtok + usage.completion_tokens * self.output_per_mtok) / 1e6


ProgressHook = Callable[[int], None]


@dataclass
class CachedModel:
    """A backend bound to a role, a cache, usage counters and a budget. What every stage calls."""

    backend: Backend
    cache: CallCache
    role: str = "model"
    usage: Usage = field(default_factory=Usage)
    budget: Budget = field(default_factory=Budget)

    @property
    def identity(self) -> str:
        return self.backend.identity

    @property
    def batched(self) -> bool:
        """Calls go out as provider batches (`batch: true`): one call with every item beats many small ones."""
        return bool(getattr(self.backend, "batched", False))

    def chat(self, conversations: list[Conversation], sampling: Sampling = Sampling(),
             progress: ProgressHook | None = None) -> list[Reply]:
        """One reply per conversation (sampling.n is ignored)."""
        return [replies[0] for replies in self.chat_n(conversations, sampling.with_(n=1), progress)]

    def chat_n(self, conversations: list[Conversation], sampling: Sampling,
               progress: ProgressHook | None = None) -> list[list[Reply]]:
        """`sampling.n` replies per conversation; cached ones are returned without a call."""
        n = max(1, sampling.n)
        keys = [[call_key(self.identity, sampling, conv, i) for i in range(n)] for conv in conversations]
        flat = [k for ks in keys for k in ks]
        found = self.cache.get_many(flat)
        found.update(self.cache.failures_among([k for k in flat if k not in found]))
        results: list[list[Reply] | None] = [None] * len(conversations)
        missing: list[int] = []
        for index, ks in enumerate(keys):
            if all(k in found for k in ks):
                results[index] = [found[k] for k in ks]
            else:
                missing.append(index)
        self.usage.cache_hits += sum(len(ks) for i, ks in enumerate(keys) if results[i] is not None)
        if progress and len(conversations) > len(missing):
            progress(len(conversations) - len(missing))
        if missing:
            self._check_budget(len(missing) * n)
            self._call(conversations, keys, missing, sampling, results, progress)
        return results  # type: ignore[return-value]

    def _call(self, conversations, keys, missing, sampling, results, progress) -> None:
        started = time.perf_counter()
        lock = threading.Lock()

        def on_reply(position: int, replies: list[Reply]) -> None:
            index = missing[position]
            with lock:
                for key, reply in zip(keys[index], replies):
                    self.cache.put(key, reply)  # a failure goes to its own table, never served as a reply
                    self.usage.calls += 1
                    self.usage.prompt_tokens += reply.prompt_tokens
                    self.usage.completion_tokens += reply.completion_tokens
                results[index] = replies
                if progress:
                    progress(1)

        try:
            self.backend.generate([conversations[i] for i in missing], sampling, on_reply=on_reply)
        finally:
            self.usage.wall_s += time.perf_counter() - started

    def _check_budget(self, new_calls: int) -> None:
        limit = self.budget.max_calls
        if limit is not None and self.usage.calls + new_calls > limit:
            raise BudgetExceeded(f"budget: role '{self.role}' would make {self.usage.calls + new_calls} calls, "
                                 f"over max_calls={limit}; raise it in the recipe's budgets and run again to resume")
        if self.budget.max_cost is not None and self.budget.cost(self.usage) >= self.budget.max_cost:
            raise BudgetExceeded(f"budget: role '{self.role}' has spent ${self.budget.cost(self.usage):.2f}, "
                                 f"at max_cost=${self.budget.max_cost:.2f}; raise it and run again to resume")
