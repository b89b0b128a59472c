"""On-policy pairs: the embedded student samples k answers, lm-eval's checkers (or the judge) score
them, chosen/rejected follow the scores and the margin; dpo.data mixes the sources."""
from __future__ import annotations

import json
import random

import pytest

from bezoar.errors import DataError

DOLLY = "seeds/dolly15k_open_qa_subset.jsonl"


def _prompts(data_dir, n: int):
    from bezoar.generate.constraints import make_records
    from bezoar.generate.seeds import read_seeds
    from bezoar.records import ChatMessage, Record, RecordMeta

    seeds = read_seeds(data_dir / DOLLY).seeds
    records = make_records(seeds, n, random.Random(1), ["punctuation:no_comma", "change_case:english_lowercase",
                                                        "startend:quotation", "detectable_format:title"], 1, 2)
    plain = Record(messages=[ChatMessage(role="user", content=seeds[0].instruction)],
                   meta=RecordMeta(method="dolly", seed_ids=[seeds[0].id])).with_id()
    return records + [plain]


@pytest.mark.slow
def test_pairs_from_the_student_follow_the_checkers(data_dir, local_model):
    from bezoar.evaluate.ifeval import share_followed
    from bezoar.llm.cache import CachedModel
    from bezoar.preferences.config import PreferencesConfig
    from bezoar.preferences.stage import make_pairs

    records = _prompts(data_dir, 4)
    judge = CachedModel(local_model.backend, local_model.cache, role="judge")
    config = PreferencesConfig(k=2, temperature=1.0, max_new_tokens=16, margin=0.5)
    summary = make_pairs(local_model, judge, records, config, "local", seed=0)
    counts = {k: summary[k] for k in ("pairs", "ties", "all_fail", "unscored")}
    assert sum(counts.values()) == summary["prompts"] == 5
    assert local_model.usage.calls == 5 * 2 and judge.usage.calls == 2  # one call per sample; the plain prompt judged
    for pair in summary["pairs_data"]:
        meta = pair.meta
        assert meta["chosen_score"] - meta["rejected_score"] >= 0.5 and meta["sampling"]["k"] == 2
        assert [m.role for m in pair.prompt + pair.chosen + pair.rejected] == ["user", "assistant", "assistant"]
        assert {s.kind for s in pair.licence.sources} == {"seed", "base"}
        if meta["instruction_id_list"]:
            doc = {"key": 0, "prompt": pair.prompt[0].content, "instruction_id_list": meta["instruction_id_list"],
                   "kwargs": meta["kwargs"]}
            assert share_followed(doc, pair.chosen[0].content) == meta["chosen_score"]
            assert share_followed(doc, pair.rejected[0].content) == meta["rejected_score"]
        else:
            assert meta["scorer"].startswith("judge")
    again = make_pairs(local_model, judge, records, config, "local", seed=0)
    assert local_model.usage.calls == 10 and judge.usage.calls == 2  # resumable: every sample comes from the call cache
    assert [p.model_dump() for p in again["pairs_data"]] == [p.model_dump() for p in summary["pairs_data"]]


def test_margin_ties_and_all_fail_are_counted_and_dropped():
    from bezoar.llm.protocol import Reply
    from bezoar.preferences.config import PreferencesConfig
    from bezoar.preferences.stage import build_pairs
    from bezoar.records import ChatMessage, Record, RecordMeta

    records = [Record(messages=[ChatMessage(role="user", content=f"q{i}")], meta=RecordMeta(method="t")).with_id()
               for i in range(4)]
    answers = [[Reply("long best answer"), Reply("best"), Reply("bad")]] + [[Reply("a"), Reply("b"), Reply("c")]] * 3
    scores = [[1.0, 1.0, 0.0], [0.5, 0.5, 0.4], [0.0, 0.0, 0.0], [None, 0.3, None]]
    pairs, dropped, counts = build_pairs(records, answers, scores, PreferencesConfig(margin=0.25), "local", {})
    assert counts == {"prompts": 4, "pairs": 1, "ties": 1, "all_fail": 1, "unscored": 1}
    assert pairs[0].chosen[0].content == "best" and pairs[0].rejected[0].content == "bad"  # shortest of the best
    assert [d["reason"] for d in dropped] == ["ties", "all_fail", "unscored"]


def test_dpo_data_mix_takes_pairs_in_the_weights_proportion(tmp_path):
    from bezoar.config import Recipe
    from bezoar.records import ChatMessage, PreferencePair, write_jsonl
    from bezoar.steps.base import StepContext
    from bezoar.steps.dpo import dpo_pairs
    from bezoar.train.config import DPOData

    def pair(tag: str) -> PreferencePair:
        return PreferencePair(prompt=[ChatMessage(role="user", content=tag)],
                              chosen=[ChatMessage(role="assistant", content="y")],
                              rejected=[ChatMessage(role="assistant", content="n")])

    generated = tmp_path / "pairs.jsonl"
    write_jsonl(generated, [pair(f"g{i}") for i in range(10)])
    hh = [pair(f"h{i}") for i in range(50)]
    recipe = Recipe.model_validate({"steps": [{"type": "preferences"}, {"type": "dpo"}]})
    context = StepContext(recipe, tmp_path / "run", "dpo")  # a run where the preferences step has not run
    mixed, counts = dpo_pairs(DPOData(source="mix", generated=generated, weights={"hh_rlhf": 1, "generated": 2}),
                              hh, context, 0)
    assert counts == {"generated_pairs": 10, "hh_pairs": 5} and len(mixed) == 15
    assert {p.prompt[0].content for p in mixed} == {f"g{i}" for i in range(10)} | {f"h{i}" for i in range(5)}
    only, counts = dpo_pairs(DPOData(source="generated", generated=generated), hh, context, 0)
    assert len(only) == 10 and counts == {"generated_pairs": 10}
    assert dpo_pairs(DPOData(), hh, context, 0)[0] is hh
    with pytest.raises(DataError, match="the step 'preferences' has not handed on 'pairs'.*--from preferences$"):
        dpo_pairs(DPOData(source="generated"), hh, context, 0)  # no pairs file named, and no step recorded one
    assert json.loads(generated.read_text().splitlines()[0])["prompt"][0]["content"] == "g0"
