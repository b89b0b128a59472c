"""Batch pricing, the `batch` settings of a role, `BatchPending` across a process pipe, and the batch
records `bezoar status` reads (no model: these are the pieces around bezoar.llm.batches)."""
from __future__ import annotations

import pickle

import pytest
from pydantic import ValidationError

from bezoar.config_base import ModelConfig
from bezoar.errors import BatchPending
from bezoar.llm.batch_prices import role_cost, role_prices
from bezoar.llm.batch_store import BatchRecord, BatchStore, batch_summary, batches_in, shown_state
from bezoar.llm.cache import CallCache

GPT4 = {"spec": "openai:gpt-4", "input_price_per_mtok": 30.0, "output_price_per_mtok": 60.0}


def test_a_batch_role_pays_the_batch_rate_and_the_plan_shows_both():
    online, batch = ModelConfig(**GPT4), ModelConfig(**GPT4, batch=True)
    assert role_prices(online).input_per_mtok == 30.0 and role_prices(batch).output_per_mtok == 30.0
    cost = role_cost(batch, prompt_tokens=6_433_106, completion_tokens=716_448)  # the paper's filter judge
    assert round(cost.online_usd, 2) == 235.98 and round(cost.usd, 2) == 117.99
    assert cost.text() == "$117.99 (batch; online $235.98)"
    assert role_cost(online, 6_433_106, 716_448).text() == "$235.98 (batch would be $117.99)"
    assert role_cost(ModelConfig(**GPT4, batch=True, batch_price_factor=0.25), 1_000_000, 0).usd == 7.5
    assert role_cost(ModelConfig(spec="local"), 10, 10).text() == "-"


def test_batch_settings_are_checked():
    with pytest.raises(ValidationError, match="batch: true needs an openai: or anthropic: spec"):
        ModelConfig(spec="local", batch=True)
    with pytest.raises(ValidationError, match="batch_price_factor"):
        ModelConfig(**GPT4, batch=True, batch_price_factor=0)
    assert ModelConfig(**GPT4, batch=True, batch_wait_s=0).batch_wait_s == 0  # submit and stop


def test_batch_pending_keeps_its_type_and_ids_across_a_pipe():
    error = pickle.loads(pickle.dumps(BatchPending("judge: 1 batch still running", ("batch_abc",))))
    assert isinstance(error, BatchPending) and error.batch_ids == ("batch_abc",)
    assert str(error) == "judge: 1 batch still running" and BatchPending.EXIT_CODE == 75


def test_batch_records_as_status_shows_them(tmp_path):
    assert batches_in(tmp_path / "none.sqlite") == []
    cache = CallCache(tmp_path / "calls.sqlite")
    assert batches_in(cache.path) == []  # a cache without batches
    store = BatchStore(cache)
    store.record(BatchRecord("bzb_1", "openai", "https://api.openai.com/v1", "openai:gpt-4@x", 2),
                 [("k1", "k1", 1), ("k2", "k2", 1)])
    assert [(b.batch_id, b.state, b.items) for b in batches_in(cache.path)] == [("bzb_1", "submitted", 2)]
    assert store.live_for(["k1", "k3"]) == {"k1": "bzb_1"}
    store.update("bzb_1", remote_id="batch_9", state="submitted", status="in_progress")
    assert batches_in(cache.path)[0].to_json()["batch_id"] == "batch_9"
    store.update("bzb_1", state="done", status="expired", succeeded=1, missing=1)
    shown = batches_in(cache.path)[0]
    assert (shown.state, shown.succeeded) == ("expired", 1) and store.live_for(["k1"]) == {}
    assert batch_summary([shown]) == "1 provider batch: 1 expired; 1 of 2 items answered" and batch_summary([]) == ""
    assert store.attempts(["k1", "k9"]) == {"k1": 1}
    assert [shown_state(*s) for s in (("submitted", "validating"), ("submitted", "finalizing"), ("done", "completed"),
                                      ("done", "failed"), ("done", "cancelled"))] == \
        ["submitted", "in_progress", "done", "failed", "cancelled"]
