"""Contamination: a planted MT-Bench question (and harness items) are caught with the eval item they match;
real seed data is not flagged."""
from __future__ import annotations

import json

import pytest

from bezoar.errors import ConfigError, DataError
from bezoar.filter.config import FilterConfig
from bezoar.filter.contamination import build_index
from bezoar.filter.runner import Item, filter_items
from bezoar.records import ChatMessage, Record, RecordMeta


def record(instruction: str, response: str) -> Record:
    return Record(messages=[ChatMessage(role="user", content=instruction), ChatMessage(role="assistant", content=response)],
                  meta=RecordMeta(method="test")).with_id()


@pytest.fixture(scope="module")
def eval_index(data_dir):
    return build_index([data_dir / "eval"], n=13, min_item_words=8)


def test_planted_mt_bench_question_is_caught_with_its_item(data_dir, eval_index):
    question = json.loads((data_dir / "eval/mt_bench/question.jsonl").open().readline())
    # Reworded punctuation and case, wrapped in other text: normalisation must still find the 13-grams.
    planted = f"Hi! {question['turns'][0].upper().replace(',', ' ;')} Please keep it under 500 words."
    matches = eval_index.matches(planted)
    assert matches, "an MT-Bench question inside a training instruction went unnoticed"
    first = matches[0]
    assert first["source"] == "eval/mt_bench/question.jsonl"
    assert f"question_id={question['question_id']}" in first["item"]
    assert len(first["ngram"].split()) == 13 and first["ngram"] in question["turns"][0].lower().replace(",", "")


def test_harness_items_are_caught_too(data_dir, eval_index):
    gsm8k = json.loads((data_dir / "eval/harness/gsm8k/test.jsonl").open().readline())
    assert eval_index.matches(f"Solve this: {gsm8k['question']}")[0]["source"] == "eval/harness/gsm8k/test.jsonl"
    # A whole short eval item (< 13 words, >= 8) counts: an MMLU answer option copied into a response.
    row = (data_dir / "eval/harness/mmlu/test/anatomy_test.csv").open().readline()
    option = "paralysis of the facial muscles, loss of taste and lacrimation."
    assert option.split(",")[0] in row
    found = eval_index.matches(f"It causes {option}")
    assert any(m["source"].endswith("anatomy_test.csv") for m in found)


def test_real_seed_instructions_are_clean(data_dir, eval_index):
    rows = [json.loads(line) for line in (data_dir / "seeds/dolly15k_open_qa_subset.jsonl").open()][:500]
    flagged = [r["instruction"] for r in rows if eval_index.matches(r["instruction"] + "\n" + r["response"])]
    assert len(flagged) <= 2, flagged  # Dolly answers may quote a common sentence; never many


def test_stage_removes_and_lists_contaminated_records(data_dir):
    question = json.loads((data_dir / "eval/mt_bench/question.jsonl").open().readlines()[12])
    items = [Item(record(question["turns"][0], "Here is my answer."), "evol"),
             Item(record("Write a haiku about autumn leaves falling.", "Red leaves drift and fall."), "evol")]
    config = FilterConfig.model_validate({"heuristics": {"enabled": False}, "judge": {"enabled": False},
                                          "contamination": {"eval_paths": [str(data_dir / "eval/mt_bench/question.jsonl")]}})
    summary = filter_items(items, config, judge=None)
    assert [i.alive for i in items] == [False, True]
    assert items[0].reasons == ["contamination"]
    match = items[0].evidence["matches"][0]
    assert match["field"] == "instruction" and f"question_id={question['question_id']}" in match["item"]
    assert summary["contamination"]["contaminated"][0]["id"] == items[0].record.meta.id


def test_bad_eval_paths_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        build_index([tmp_path / "missing"])
    bad = tmp_path / "eval.jsonl"
    bad.write_text('{"question": "fine"}\n{"question": broken\n')
    with pytest.raises(DataError, match=r"eval.jsonl:2: not valid JSON"):
        build_index([bad])
