"""The call cache: no repeated calls, safe concurrent writers, per-role usage."""
from __future__ import annotations

import multiprocessing
import sqlite3

from bezoar.llm.cache import CachedModel, CallCache, call_key
from bezoar.llm.protocol import Reply, Sampling


class CountingBackend:
    """Wraps the real backend and counts the conversations it is asked to answer."""

    def __init__(self, inner):
        self.inner, self.identity, self.asked = inner, inner.identity, 0

    def generate(self, conversations, sampling, on_reply=None):
        self.asked += len(conversations)
        return self.inner.generate(conversations, sampling, on_reply)


PROMPTS = [[{"role": "user", "content": f"Give one fact about the number {i}."}] for i in range(6)]


def test_repeated_batch_makes_no_backend_call(embedded, cache):
    backend = CountingBackend(embedded)
    model = CachedModel(backend, cache, role="teacher")
    first = model.chat(PROMPTS, Sampling(max_new_tokens=16))
    assert backend.asked == 6 and model.usage.calls == 6 and model.usage.cache_hits == 0
    again = CachedModel(backend, CallCache(cache.path), role="teacher")  # a new process would do this
    second = again.chat(PROMPTS, Sampling(max_new_tokens=16))
    assert backend.asked == 6, "a repeated batch reached the backend"
    assert [r.text for r in second] == [r.text for r in first] and all(r.cached for r in second)
    assert again.usage.cache_hits == 6 and again.usage.calls == 0
    assert model.usage.prompt_tokens > 0 and model.usage.completion_tokens > 0


def test_partial_hits_call_only_the_misses(embedded, cache):
    backend = CountingBackend(embedded)
    model = CachedModel(backend, cache)
    model.chat(PROMPTS[:2], Sampling(max_new_tokens=8))
    model.chat(PROMPTS[:4], Sampling(max_new_tokens=8))
    assert backend.asked == 4
    model.chat(PROMPTS[:4], Sampling(max_new_tokens=9))  # other sampling: other keys
    assert backend.asked == 8


def test_samples_are_cached_apart(embedded, cache):
    model = CachedModel(embedded, cache)
    sampling = Sampling(max_new_tokens=12, temperature=1.0, n=3)
    first = model.chat_n(PROMPTS[:1], sampling)[0]
    assert len({r.text for r in first}) == 3
    assert [r.text for r in model.chat_n(PROMPTS[:1], sampling)[0]] == [r.text for r in first]
    assert model.usage.cache_hits == 3


def _writer(path: str, worker: int, count: int) -> None:
    cache = CallCache(path)
    for i in range(count):
        key = call_key("m", Sampling(), [{"role": "user", "content": f"{worker}-{i}"}], 0)
        cache.put(key, Reply(text=f"reply {worker}-{i}", completion_tokens=i))


def test_two_processes_write_one_cache_at_once(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    CallCache(path)
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_writer, args=(path, w, 300)) for w in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    cache = CallCache(path)
    assert len(cache) == 600
    keys = [call_key("m", Sampling(), [{"role": "user", "content": f"{w}-{i}"}], 0) for w in range(2) for i in range(300)]
    found = cache.get_many(keys)
    assert all(found[k].text == f"reply {k2}" for k, k2 in zip(keys, (f"{w}-{i}" for w in range(2) for i in range(300))))
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_budget_stops_before_the_call(embedded, cache):
    import pytest

    from bezoar.errors import BudgetExceeded
    from bezoar.llm.cache import Budget

    backend = CountingBackend(embedded)
    model = CachedModel(backend, cache, role="judge", budget=Budget(max_calls=3))
    with pytest.raises(BudgetExceeded, match="role 'judge'.*max_calls=3"):
        model.chat(PROMPTS[:4], Sampling(max_new_tokens=4))
    assert backend.asked == 0


def test_open_model_keeps_the_cache_it_is_given_even_when_empty(tmp_path):
    """Regression: an empty CallCache has len 0, and `cache or default` once sent a run's calls
    to the user cache instead of the run's own."""
    from bezoar.config import ModelConfig
    from bezoar.llm.specs import open_model

    given = CallCache(tmp_path / "run.sqlite")
    assert len(given) == 0
    model = open_model(ModelConfig(spec="local"), role="teacher", cache=given)
    assert model.cache is given
    model.chat([PROMPTS[0]], Sampling(max_new_tokens=4))
    assert len(CallCache(tmp_path / "run.sqlite")) == 1


def test_switching_to_wal_waits_out_a_lock_sqlite_reports_at_once(tmp_path):
    """SQLite can answer `PRAGMA journal_mode=WAL` 'database is locked' without its busy timeout while
    another process switches the same new file (seen once in tests/test_two_processes.py on a loaded
    machine); that race cannot be timed from a test, so a connection replays it."""
    from bezoar.llm.cache import _wal_mode

    class Racing:
        def __init__(self, refusals: int, error: str = "database is locked"):
            self.refusals, self.error, self.calls = refusals, error, 0

        def execute(self, sql: str):
            self.calls += 1
            if self.calls <= self.refusals:
                raise sqlite3.OperationalError(self.error)

    racing = Racing(refusals=3)
    _wal_mode(racing)  # type: ignore[arg-type]
    assert racing.calls == 4
    other = Racing(refusals=1, error="disk I/O error")
    try:
        _wal_mode(other)  # type: ignore[arg-type]
    except sqlite3.OperationalError as error:
        assert "disk I/O" in str(error) and other.calls == 1
    else:
        raise AssertionError("an error other than a lock is not retried")
