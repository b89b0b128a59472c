"""Prompts that teach: the embedded student samples k answers per constraint prompt, lm-eval's checkers
score them, and only prompts whose scores spread are kept, with shares per constraint type."""
from __future__ import annotations

import json
import random

import pytest

DOLLY = "seeds/dolly15k_open_qa_subset.jsonl"


def _records(data_dir, n: int, types: list[str] | None = None):
    from bezoar.generate.constraints import make_records
    from bezoar.generate.seeds import read_seeds

    return make_records(read_seeds(data_dir / DOLLY).seeds, n, random.Random(5), types, 1, 2)


def test_verdicts_follow_the_spread_of_scores():
    from bezoar.preferences.teaching import verdict

    met, missed = [True], [False]
    assert verdict([missed, missed], "spread", 0.0) == "all_fail"
    assert verdict([met, met], "spread", 0.0) == "all_pass"
    assert verdict([met, missed], "spread", 0.0) == "kept"
    assert verdict([[True, False], [False, True]], "spread", 0.0) == "no_spread"  # 0.5 each: no advantage
    assert verdict([[True, False], [False, True]], "pass_rate", 0.0) == "no_spread"  # none fully met
    assert verdict([[True, True], [True, False]], "spread", 0.5) == "kept"  # 1.0 vs 0.5: the margin reached
    assert verdict([[True, True], [True, False]], "spread", 0.75) == "no_spread"  # under it
    assert verdict([[True, True], [True, False]], "pass_rate", 0.5) == "kept"
    assert verdict([[], []], "spread", 0.0) == "unscored"


def test_split_keeps_a_seeded_dev_share_apart(data_dir):
    from bezoar.preferences.teaching import split_prompts

    records = _records(data_dir, 20)
    train, dev = split_prompts(records, 0.25, seed=1)
    assert len(dev) == 5 and len(train) == 15
    assert {r.meta.id for r in train} | {r.meta.id for r in dev} == {r.meta.id for r in records}
    assert [r.meta.id for r in split_prompts(records, 0.25, seed=1)[1]] == [r.meta.id for r in dev]


def test_type_shares_count_prompts_and_pass_rates(data_dir):
    from bezoar.preferences.teaching import type_shares
    from bezoar.records import Record, RecordMeta

    def record(*ids):
        return Record(messages=[], meta=RecordMeta(method="t", details={"instruction_id_list": list(ids)}))

    shares = type_shares([record("a", "b"), record("a")], [[[True, False], [True, True]], [[False], [False]]])
    assert shares == {"a": {"prompts": 2, "share": 2 / 3, "pass_rate": 0.5},
                      "b": {"prompts": 1, "share": 1 / 3, "pass_rate": 0.5}}


@pytest.mark.slow
def test_selection_keeps_prompts_whose_samples_differ(data_dir, local_model, tmp_path):
    from bezoar.evaluate.ifeval import share_followed
    from bezoar.generate.constraints import checker_doc
    from bezoar.llm.protocol import Sampling
    from bezoar.preferences.config import SelectionConfig
    from bezoar.preferences.teaching import select_teaching_prompts
    from bezoar.records import Record, read_jsonl

    records = _records(data_dir, 6, ["punctuation:no_comma", "change_case:english_lowercase", "startend:quotation"])
    summary = select_teaching_prompts(local_model, records, SelectionConfig(k=3, max_new_tokens=16), 0, tmp_path)
    assert sum(summary["reasons"].values()) == summary["candidates"] == 6
    assert local_model.usage.calls == 6 * 3
    kept = list(read_jsonl(tmp_path / "kept.jsonl", Record))
    dropped = [json.loads(line) for line in (tmp_path / "dropped.jsonl").open()]
    assert len(kept) == summary["kept"] == summary["reasons"].get("kept", 0) and len(kept) + len(dropped) == 6
    answers = local_model.chat_n([[{"role": "user", "content": r.instruction}] for r in records],
                                 Sampling(temperature=1.0, max_new_tokens=16, seed=0, n=3))
    assert local_model.usage.calls == 18  # the same samples again, from the call cache
    by_id = {r.meta.id: (i, r) for i, r in enumerate(records)}
    for record in kept:
        index, original = by_id[record.meta.id]
        scores = [share_followed(checker_doc(original, index), a.text) for a in answers[index]]
        assert record.meta.details["teaching"]["scores"] == scores and max(scores) > min(scores)
    for row in dropped:
        assert row["reason"] in ("all_fail", "all_pass", "no_spread")
    written = json.loads((tmp_path / "summary.json").read_text())
    assert set(written["types_before"]) == {t for r in records for t in r.meta.details["instruction_id_list"]}
    assert set(written["types_after"]) <= set(written["types_before"])
    assert sum(t["prompts"] for t in written["types_before"].values()) == sum(
        len(r.meta.details["instruction_id_list"]) for r in records)
