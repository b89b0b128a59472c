"""Elimination rules 2-4 on real data, the equality verdict parser, and the judge's check with the real model."""
from __future__ import annotations

import json

from bezoar.generate.elimination import equal_prompts, heuristic_failure, parse_equality, tokens


def _dolly(data_dir, count):
    with open(data_dir / "seeds/dolly15k_open_qa_subset.jsonl", encoding="utf-8") as handle:
        return [json.loads(next(handle)) for _ in range(count)]


def test_real_human_answers_mostly_pass_and_every_reason_is_a_known_code(data_dir):
    rows = _dolly(data_dir, 400)
    reasons = [heuristic_failure(r["instruction"], r["response"]) for r in rows]
    assert set(reasons) <= {None, "sorry_short", "only_stopwords", "leaked_template"}
    assert reasons.count(None) >= 390  # human-written Dolly answers are real answers


def test_sorry_rule_counts_tokens_like_nltk():
    short = "I'm sorry, but I cannot answer that question."
    assert tokens(short) == ["I'm", "sorry", ",", "but", "I", "cannot", "answer", "that", "question", "."]
    assert heuristic_failure("Explain X.", short) == "sorry_short"
    long_apology = "Sorry for the wait. " + " ".join(["The answer has many well explained parts."] * 12)
    assert len(tokens(long_apology)) >= 80 and heuristic_failure("Explain X.", long_apology) is None


def test_stopword_only_and_empty_replies_fail(data_dir):
    assert heuristic_failure("What is it?", "It is what it is, and that's that.") == "only_stopwords"
    assert heuristic_failure("What is it?", "...!?") == "only_stopwords"
    assert heuristic_failure("What is it?", "") == "only_stopwords"
    assert heuristic_failure("What is it?", "It is a camel.") is None


def test_leaked_markers_fail_case_insensitively():
    for leaked in ("#Rewritten Prompt#: Name a river.", "Here is the rewritten prompt: name a river",
                   "#Created Prompt#", "Using the GIVEN PROMPT, list rivers."):
        assert heuristic_failure(leaked, "The Nile is a long river in Africa.") == "leaked_template"


def test_equality_answers_are_parsed_robustly():
    assert parse_equality("EQUAL") is True
    assert parse_equality("Not Equal.") is False
    assert parse_equality("The two prompts are not equal because the second adds a constraint.") is False
    assert parse_equality("Equal - both ask for the same thing, nothing different.") is True
    assert parse_equality("They are different.") is False
    assert parse_equality("They are not different at all.") is True
    assert parse_equality("Yes.") is True and parse_equality("No, the second is harder.") is False
    assert parse_equality("Here is a poem about rivers.") is None


def test_equal_prompts_with_the_real_model_gives_one_cached_verdict_per_pair(local_model):
    pairs = [("Name three fruits.", "Name three fruits."),
             ("Name three fruits.", "Name three tropical fruits grown in Brazil and describe how each tastes.")]
    first = equal_prompts(local_model, pairs, max_attempts=2, max_new_tokens=12)
    assert len(first) == 2 and all(v in (True, False, None) for v in first)
    calls = local_model.usage.calls
    assert 2 <= calls <= 4  # one greedy attempt each, a sampled retry only for unparseable answers
    again = equal_prompts(local_model, pairs, max_attempts=2, max_new_tokens=12)
    assert again == first and local_model.usage.calls == calls and local_model.usage.cache_hits >= 2
