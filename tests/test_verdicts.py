"""Reading judge replies: a table of real-looking replies (GPT-4 style, MT-Bench style, and what the
embedded SmolLM2 actually writes) and what must be read from each."""
from __future__ import annotations

import pytest

from bezoar.verdicts import parse_bracket_rating, parse_choice, parse_judgment

# (reply, verdict, rating, format)
REPLIES = [
    ('{"verdict": "Accept", "rating": 8, "reason": "Clear, correct and complete."}', "accept", 8.0, "json"),
    ('Here is my evaluation:\n```json\n{\n  "rating": "7/10",\n  "verdict": "reject",\n  "reason": "Too vague."\n}\n```',
     "reject", 7.0, "json"),
    ('{"score": 9.5, "decision": "approved", "explanation": "Excellent depth."}', "accept", 9.5, "json"),
    ('{"rating": 6, "verdict": true}', "accept", 6.0, "json"),
    ("Rating: [[8]]\nVerdict: Accept\nReason: The answer is accurate and well organised.", "accept", 8.0, "brackets"),
    ("The response is relevant but misses the second part of the question. Rating: [[4]]", None, 4.0, "brackets"),
    ("Rating: 3\nVerdict: Reject\nReason: The response is off-topic.", "reject", 3.0, "labelled"),
    ("**Rating:** 7\n**Verdict:** Accept", "accept", 7.0, "labelled"),
    ("I would rate this response 9 out of 10.", None, 9.0, "out-of-10"),
    ("Score: 4/5 - a solid answer.", None, 8.0, "labelled"),
    ("The assistant gives a correct but terse answer. 6/10", None, 6.0, "out-of-10"),
    ("[[2]]", None, 2.0, "brackets"),
    ("7", None, 7.0, "bare"),
    ("Accept", "accept", None, "verdict-word"),
    ("Verdict: Reject. The response contains a factual error.", "reject", None, "verdict-word"),
    ("I would not accept this response because it is incomplete.", "reject", None, "verdict-word"),
    ("The response is not acceptable.", "reject", None, "verdict-word"),
    # What SmolLM2-135M really answers (seen in this repo's runs): no usable rating or verdict.
    ("The camel's ability to survive for long without water is a remarkable trait.", None, None, "none"),
    ("The answer is: 7", None, None, "none"),
    ('The response is:\n{"rating": 7, "verdict": "accept", "reason": "one short sentence"}', "accept", 7.0, "json"),
    # Out of range is no rating at all, never clipped into range.
    ("Rating: 85", None, None, "none"),
    ("Rating: 0", None, None, "none"),
    ("", None, None, "none"),
]


@pytest.mark.parametrize("reply, verdict, rating, fmt", REPLIES)
def test_reply_table(reply, verdict, rating, fmt):
    judgment = parse_judgment(reply)
    assert (judgment.verdict, judgment.rating, judgment.fmt) == (verdict, rating, fmt)


def test_reason_is_read_when_labelled():
    assert parse_judgment("Rating: [[5]]\nVerdict: Reject\nReason: It ignores the word limit.").reason == \
        "It ignores the word limit."


@pytest.mark.parametrize("reply, rating", [
    ("The response is excellent. Rating: [[9]]", 9.0),
    ("Rating: [9]", 9.0),
    ("[[7.5]]", 7.5),
    ("Rating: 8", None),  # MT-Bench's rule reads brackets only
    ("[[11]]", None),
])
def test_mt_bench_bracket_rule(reply, rating):
    assert parse_bracket_rating(reply) == rating


@pytest.mark.parametrize("reply, choice", [
    ("After comparing both, my verdict is [[A]]", "A"),
    ("Verdict: [[B]]", "B"),
    ("Both are equally good. [[C]]", "tie"),
    ("Response B is better. Verdict: B", "B"),
    ("The better response is A.", "A"),
    ("A", "A"),
    ("Tie", "tie"),
    ("The first response talks about safety.", None),
])
def test_pairwise_choice(reply, choice):
    assert parse_choice(reply) == choice
