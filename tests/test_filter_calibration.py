"""Judge calibration: Wilson intervals, the figures from picks in both orders, and a real judge-check of the
embedded model on held-out HH-RLHF pairs, run alone and as the filter stage's first step."""
from __future__ import annotations

import json
import logging

import pytest

from bezoar.filter.calibration import judge_check, rate, summarise
from bezoar.filter.config import FilterConfig
from bezoar.filter.runner import run
from bezoar.llm.cache import CachedModel, CallCache
from bezoar.records import ChatMessage, Record, RecordMeta, write_jsonl


@pytest.mark.parametrize("k, n, low, high", [
    (5, 10, 0.2366, 0.7634),   # textbook values for the Wilson score interval
    (0, 10, 0.0, 0.2775),
    (10, 10, 0.7225, 1.0),
    (81, 100, 0.7222, 0.8749),
])
def test_wilson_interval(k, n, low, high):
    found = rate(k, n)
    assert found.value == round(k / n, 4) and found.low == pytest.approx(low, abs=1e-4)
    assert found.high == pytest.approx(high, abs=1e-4)


def test_wilson_without_data_is_not_a_number():
    assert rate(0, 0).value is None


def test_figures_from_picks_in_both_orders():
    # Per pair: (pick with the human-chosen reply shown as A, pick with it shown as B).
    picks = ["A", "B",     # agrees both times
             "A", "A",     # always the first position: position bias
             "B", "B",     # always the second position: position bias
             "tie", "B",   # a tie, then agrees
             None, "A"]    # unreadable, then disagrees
    figures = summarise(picks)
    assert figures["judgments"] == 10
    assert (figures["agreement"]["k"], figures["agreement"]["n"]) == (5, 10)  # judgments 0, 1, 2, 5 and 7
    assert (figures["agreement_decisive"]["k"], figures["agreement_decisive"]["n"]) == (5, 8)
    assert (figures["position_bias"]["k"], figures["position_bias"]["n"]) == (2, 3)
    assert figures["tie_rate"]["k"] == 1 and figures["error_rate"]["k"] == 1
    assert figures["consistent_agreement"]["k"] == 1 and figures["near_chance"] is True


def test_a_judge_that_always_agrees_is_not_near_chance():
    figures = summarise(["A", "B"] * 40)
    assert figures["agreement"]["value"] == 1.0 and figures["position_bias"]["value"] == 0.0
    assert figures["near_chance"] is False


def test_embedded_model_judge_check_on_real_pairs(embedded, data_dir, tmp_path):
    pairs = data_dir / "preferences/hh-rlhf/harmless-base/test.jsonl.gz"
    model = CachedModel(embedded, CallCache(tmp_path / "calls.sqlite"), role="judge")
    figures = judge_check(model, pairs, n=3, max_chars=600)
    assert figures["pairs"] == 3 and figures["judgments"] == 6 and figures["scoring"] == "logprobs"
    assert model.usage.calls == 6  # each pair asked in both orders
    counted = figures["agreement_decisive"]["n"] + figures["tie_rate"]["k"] + figures["error_rate"]["k"]
    assert counted == 6 and figures["error_rate"]["k"] == 0  # next-token scoring always yields a choice
    assert figures["examples"][0]["pair"].startswith("test.jsonl.gz:")
    assert figures["examples"][0]["raw_first"].startswith("Verdict: [[")
    # Three pairs cannot show better-than-chance agreement: the interval must reach 0.5.
    assert figures["near_chance"] is True


def test_filter_stage_runs_the_check_first_and_warns(embedded, data_dir, tmp_path, caplog):
    rows = [json.loads(line) for line in (data_dir / "seeds/dolly15k_open_qa_subset.jsonl").open()][300:302]
    source = tmp_path / "generated.jsonl"
    write_jsonl(source, [Record(messages=[ChatMessage(role="user", content=r["instruction"]),
                                          ChatMessage(role="assistant", content=r["response"])],
                                meta=RecordMeta(method="lamini")) for r in rows])
    pairs = data_dir / "preferences/hh-rlhf/harmless-base/test.jsonl.gz"
    config = FilterConfig.model_validate({"judge_check": {"enabled": True, "pairs": str(pairs), "n": 2},
                                          "contamination": {"enabled": False}})
    model = CachedModel(embedded, CallCache(tmp_path / "calls.sqlite"), role="judge")
    with caplog.at_level(logging.WARNING, logger="bezoar.filter.runner"):
        summary = run([source], tmp_path / "out", config, model)
    assert summary["judge_check"]["pairs"] == 2 and summary["judge_check"]["near_chance"] is True
    assert "near chance" in caplog.text
    assert summary["judge"]["judged"] == 2
