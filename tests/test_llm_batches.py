"""`batch: true` against `bezoar serve`'s batch endpoints, through tests/fault_proxy.py with batch faults:
the same replies as online, resumable without submitting an item twice, expired batches resubmitted for
their missing items only, failed items as data, polls that get 5xx, limits split, and a batch created by
a run killed before it could record it found again."""
from __future__ import annotations

import sqlite3

import pytest

from bezoar.config_base import ModelConfig
from bezoar.errors import BatchPending
from bezoar.llm.batch_store import batches_in
from bezoar.llm.batches import NO_WAIT_ENV
from bezoar.llm.cache import CallCache
from bezoar.llm.protocol import Sampling
from bezoar.llm.specs import open_model
from rehearsal import model_server, start_proxy, stop_process

WORDS = ["red", "blue", "green", "gold"]
SAMPLING = Sampling(temperature=0.0, max_new_tokens=4)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    with model_server(tmp_path_factory.mktemp("serve") / "serve.log") as url:
        yield url


def _conversations(words=WORDS) -> list[list[dict]]:
    return [[{"role": "user", "content": f"Say the word {w}."}] for w in words]


def _config(provider: str, port: int, **settings) -> ModelConfig:
    url = f"http://127.0.0.1:{port}" + ("/v1" if provider == "openai" else "")
    return ModelConfig(spec=f"{provider}:smollm2@{url}", batch=True, batch_poll_s=0.2, max_retries=2,
                       retry_backoff_s=0.05, input_price_per_mtok=30.0, output_price_per_mtok=60.0, **settings)


def _items(*proxies) -> list[str]:
    """Every item hash every batch upload or create carried, over these proxies."""
    return [h for proxy in proxies for r in proxy.requests() for h in r.get("items", [])]


def _online(provider: str, port: int, cache: CallCache) -> list[str]:
    config = _config(provider, port).model_copy(update={"batch": False})
    return [r.text for r in open_model(config, "online", cache).chat(_conversations(), SAMPLING)]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_batch_replies_equal_online_and_a_stopped_run_resumes(provider, upstream, tmp_path, monkeypatch):
    proxy = start_proxy("a", upstream, tmp_path, batch_faults=("never-ends",))
    cache = CallCache(tmp_path / "calls.sqlite")
    try:
        monkeypatch.setenv(NO_WAIT_ENV, "1")  # bezoar run --no-wait
        with pytest.raises(BatchPending, match="run the same command again") as stopped:
            open_model(_config(provider, proxy.port), "judge", cache).chat(_conversations(), SAMPLING)
        assert [b.state for b in batches_in(cache.path)] == ["in_progress"]
        assert stopped.value.batch_ids == tuple(b.batch_id for b in batches_in(cache.path))
        monkeypatch.delenv(NO_WAIT_ENV)
        with pytest.raises(BatchPending):  # the batch never ends within this role's wait
            open_model(_config(provider, proxy.port, batch_wait_s=1.0), "judge", cache).chat(_conversations(), SAMPLING)
    finally:
        stop_process(proxy.process)
    again = start_proxy("b", upstream, tmp_path, port=proxy.port)  # the same URL, the batch now ends
    try:
        model = open_model(_config(provider, again.port), "judge", cache)
        replies = model.chat(_conversations(), SAMPLING)
        online = _online(provider, again.port, CallCache(tmp_path / "online.sqlite"))
    finally:
        stop_process(again.process)
    assert [r.text for r in replies] == online and all(not r.failed for r in replies)
    assert len(_items(proxy)) == len(WORDS) and _items(again) == []  # submitted once, collected by the re-run
    assert [b.state for b in batches_in(cache.path)] == ["done"]
    assert model.budget.input_per_mtok == 15.0  # priced at the batch rate
    assert open_model(_config(provider, again.port), "judge", cache).chat(_conversations(), SAMPLING)[0].cached


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_an_expired_batch_is_resubmitted_for_its_missing_items_only(provider, upstream, tmp_path):
    proxy = start_proxy("a", upstream, tmp_path, batch_faults=("expired",))
    cache = CallCache(tmp_path / "calls.sqlite")
    try:
        replies = open_model(_config(provider, proxy.port), "judge", cache).chat(_conversations(), SAMPLING)
    finally:
        stop_process(proxy.process)
    uploads = [r["items"] for r in proxy.requests() if r.get("items")]
    assert [len(u) for u in uploads] == [4, 2]  # the second batch holds the two items the first never ran
    assert set(uploads[1]) < set(uploads[0])
    assert all(not r.failed for r in replies)
    assert [b.state for b in batches_in(cache.path)] == ["expired", "done"]
    assert any(r["action"] == "expired" for r in proxy.requests())


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_failed_item_is_data_and_retry_failed_asks_it_alone(provider, upstream, tmp_path):
    proxy = start_proxy("a", upstream, tmp_path, batch_faults=("poll-500", "partial", "none"))
    cache = CallCache(tmp_path / "calls.sqlite")
    try:
        first = open_model(_config(provider, proxy.port), "judge", cache).chat(_conversations(WORDS[:2]), SAMPLING)
        second = open_model(_config(provider, proxy.port), "judge", cache).chat(_conversations(WORDS[2:]), SAMPLING)
        replay = open_model(_config(provider, proxy.port), "judge", cache).chat(_conversations(WORDS[2:]), SAMPLING)
        retried = open_model(_config(provider, proxy.port), "judge", CallCache(cache.path, retry_failures=True)).chat(
            _conversations(WORDS[2:]), SAMPLING)
    finally:
        stop_process(proxy.process)
    assert all(not r.failed for r in first)  # three polls answered HTTP 500, then the batch was read
    assert sum(r["action"] == "poll-500" for r in proxy.requests()) == 3
    assert [r.failed for r in second] == [True, False] and "injected item failure" in second[0].error
    assert replay[0].failed and replay[0].cached  # a failure is replayed from the cache, not asked again
    assert not retried[0].failed and retried[1].cached
    uploads = [r["items"] for r in proxy.requests() if r.get("items")]
    assert [len(u) for u in uploads] == [2, 2, 1] and uploads[2][0] == uploads[1][0]


def test_batches_are_split_over_the_limit(upstream, tmp_path):
    proxy = start_proxy("a", upstream, tmp_path)
    cache = CallCache(tmp_path / "calls.sqlite")
    words = WORDS + ["pink"]
    try:
        model = open_model(_config("openai", proxy.port, batch_max_requests=2), "judge", cache)
        replies = model.chat(_conversations(words) + _conversations(words[:1]), SAMPLING)  # one item twice
    finally:
        stop_process(proxy.process)
    assert [len(r["items"]) for r in proxy.requests() if r.get("items")] == [2, 2, 1]
    assert len(replies) == 6 and replies[0].text == replies[5].text and all(not r.failed for r in replies)
    assert model.usage.calls == 6


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_batch_created_but_never_recorded_is_found_not_sent_again(provider, upstream, tmp_path, monkeypatch):
    """A run killed between the provider's create and our record of its id: the record says `preparing`."""
    proxy = start_proxy("a", upstream, tmp_path)
    cache = CallCache(tmp_path / "calls.sqlite")
    try:
        monkeypatch.setenv(NO_WAIT_ENV, "1")
        try:
            open_model(_config(provider, proxy.port), "judge", cache).chat(_conversations(), SAMPLING)
        except BatchPending:
            pass
        monkeypatch.delenv(NO_WAIT_ENV)
        with sqlite3.connect(cache.path) as conn:  # the kill, as it would have left the record
            conn.execute("UPDATE batches SET remote_id = NULL, state = 'preparing', status = NULL")
            conn.execute("DELETE FROM calls")
        replies = open_model(_config(provider, proxy.port), "judge", cache).chat(_conversations(), SAMPLING)
    finally:
        stop_process(proxy.process)
    assert all(not r.failed for r in replies)
    assert len(_items(proxy)) == len(WORDS)  # the four items went out once
    assert [b.state for b in batches_in(cache.path)] == ["done"]
