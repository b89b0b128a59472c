"""Heuristic filters: each rule catches its case, stays quiet on real seed data, and can be switched off."""
from __future__ import annotations

import json

import pytest

from bezoar.filter.config import HeuristicsConfig
from bezoar.filter.heuristics import check, copies_instruction, is_degenerate
from bezoar.records import ChatMessage, Record, RecordMeta


def record(instruction: str, response: str, finish_reason: str | None = "stop") -> Record:
    return Record(messages=[ChatMessage(role="user", content=instruction), ChatMessage(role="assistant", content=response)],
                  meta=RecordMeta(method="test", finish_reason=finish_reason))


GOOD = ("Explain why the sky looks blue during the day.",
        "Sunlight contains every colour. Air molecules scatter short blue wavelengths far more than red ones "
        "(Rayleigh scattering), so blue light reaches our eyes from every direction of the sky.")


@pytest.mark.parametrize("instruction, response, finish, reason", [
    ("", "Some answer here.", "stop", "empty_instruction"),
    (GOOD[0], "   ", "stop", "empty_response"),
    ("Hi", GOOD[1], "stop", "instruction_too_short"),
    (GOOD[0], "I'm sorry, but I can't help with that request.", "stop", "refusal"),
    (GOOD[0], "I cannot provide information about that topic, as it may be harmful to others in some way.", "stop", "refusal"),
    (GOOD[0], "As an AI language model, I do not have eyes, but the sky is blue because of Rayleigh scattering.",
     "stop", "ai_boilerplate"),
    (GOOD[0], GOOD[1], "length", "truncated"),
    (GOOD[0], "The sky is blue because " + "the sky is blue because " * 12, "stop", "repetition"),
    (GOOD[0], "ha" * 40, "stop", "repetition"),
    (GOOD[0], "Explain why the sky looks blue during the day.", "stop", "copied_instruction"),
    (GOOD[0], "Le ciel est bleu parce que la lumière du soleil est diffusée par les molécules de l'air.",
     "stop", "language_response:fr"),
    ("Rewrite the #Given Prompt# so it asks about the ocean instead.", "Why is the ocean blue?", "stop",
     "evol:leaked_template"),
    (GOOD[0], "Sorry, I do not know.", "stop", "evol:sorry_short"),
])
def test_each_rule_names_its_reason(instruction, response, finish, reason):
    assert reason in check(record(instruction, response, finish), HeuristicsConfig())


def test_all_reasons_are_reported_together():
    reasons = check(record(GOOD[0], "As an AI language model, " + "I repeat myself " * 15, "length"), HeuristicsConfig())
    assert {"ai_boilerplate", "truncated", "repetition"} <= set(reasons)


def test_each_rule_can_be_switched_off():
    bad = record(GOOD[0], "I'm sorry, but I can't help with that request.", "length")
    assert {"refusal", "truncated"} <= set(check(bad, HeuristicsConfig()))
    assert "refusal" not in check(bad, HeuristicsConfig(refusal=False))
    assert "truncated" not in check(bad, HeuristicsConfig(truncated=False))
    assert check(bad, HeuristicsConfig(enabled=False)) == []


def test_real_seed_answers_mostly_pass(data_dir):
    rows = [json.loads(line) for line in (data_dir / "seeds/dolly15k_open_qa_subset.jsonl").open()][:400]
    rejected = {row["instruction"]: check(record(row["instruction"], row["response"]), HeuristicsConfig())
                for row in rows}
    failing = {k: v for k, v in rejected.items() if v}
    # Human-written Dolly answers are good data: the rules must leave almost all of them alone.
    assert len(failing) <= len(rows) * 0.03, failing


def test_degenerate_text_and_copies():
    assert not is_degenerate(GOOD[1], 0.5)
    assert is_degenerate("one two three " * 10, 0.5)
    assert copies_instruction("Name three rivers in Europe please.", "Name three rivers in Europe please")
    assert not copies_instruction("Name three rivers in Europe.", "The Danube, the Rhine and the Seine.")
