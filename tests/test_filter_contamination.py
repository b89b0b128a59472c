"""Contamination in layers, on real eval data with the real embedder and the embedded judge: each layer
catches the copy it is for, with its evidence (eval item, layer, score); real seed data and same-topic
questions are not flagged; the index is cached by the eval files' content."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from bezoar.errors import ConfigError, DataError
from bezoar.filter.config import ContaminationConfig, FilterConfig
from bezoar.filter.contamination import build_index, judge_cost, screen
from bezoar.filter.runner import Item, filter_items
from bezoar.records import ChatMessage, Record, RecordMeta

NGRAMS_ONLY = {"embedding": {"enabled": False}}


def record(instruction: str, response: str = "Here is my answer.") -> Record:
    return Record(messages=[ChatMessage(role="user", content=instruction), ChatMessage(role="assistant", content=response)],
                  meta=RecordMeta(method="test")).with_id()


@pytest.fixture(scope="module", autouse=True)
def own_cache(tmp_path_factory):
    """The index cache in a folder of this module's own (tests never touch the user cache)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BEZOAR_CACHE_DIR", str(tmp_path_factory.mktemp("contamination-cache")))
        yield


@pytest.fixture(scope="module")
def eval_index(data_dir):
    settings = ContaminationConfig.model_validate(NGRAMS_ONLY)
    return build_index([data_dir / "eval"], settings), settings


@pytest.fixture(scope="module")
def semantic_index(data_dir):
    """MT-Bench questions and TruthfulQA, with the shipped MiniLM embeddings of their questions; every record
    embedded (gate 0), as LMSYS's decontaminator does."""
    settings = ContaminationConfig.model_validate({"embedding": {"gate": 0}})
    paths = [data_dir / "eval/mt_bench/question.jsonl", data_dir / "eval/harness/truthfulqa/TruthfulQA.csv"]
    return build_index(paths, settings), settings


def layers(matches: list[dict]) -> set[str]:
    return {m["layer"] for m in matches}


def test_planted_mt_bench_question_is_caught_with_its_item(data_dir, eval_index):
    index, _ = eval_index
    question = json.loads((data_dir / "eval/mt_bench/question.jsonl").open().readline())
    # Reworded punctuation and case, wrapped in other text: normalisation must still find the 13-grams.
    planted = f"Hi! {question['turns'][0].upper().replace(',', ' ;')} Please keep it under 500 words."
    matches = index.matches(planted)
    assert matches, "an MT-Bench question inside a training instruction went unnoticed"
    first = matches[0]
    assert first["source"] == "eval/mt_bench/question.jsonl"
    assert f"question_id={question['question_id']}" in first["item"]
    assert len(first["ngram"].split()) == 13 and first["ngram"] in question["turns"][0].lower().replace(",", "")


def test_harness_items_are_caught_too(data_dir, eval_index):
    index, _ = eval_index
    gsm8k = json.loads((data_dir / "eval/harness/gsm8k/test.jsonl").open().readline())
    assert index.matches(f"Solve this: {gsm8k['question']}")[0]["source"] == "eval/harness/gsm8k/test.jsonl"
    # A whole short eval item (< 13 words, >= 8) counts: an MMLU answer option copied into a response.
    row = (data_dir / "eval/harness/mmlu/test/anatomy_test.csv").open().readline()
    option = "paralysis of the facial muscles, loss of taste and lacrimation."
    assert option.split(",")[0] in row
    found = index.matches(f"It causes {option}")
    assert any(m["source"].endswith("anatomy_test.csv") for m in found)


def test_coverage_catches_a_copy_with_words_changed_where_13_grams_miss(data_dir, eval_index):
    index, settings = eval_index
    question = json.loads((data_dir / "eval/harness/gsm8k/test.jsonl").open().readline())["question"]
    words = question.split()
    for position in range(10, len(words), 12):  # one word in every 12 changed: no 13-word run survives
        words[position] = "zebra"
    copy = " ".join(words)
    assert not index.matches(copy)
    matches = screen([record(copy)], index, settings).matches[0]
    coverage = [m for m in matches if m["layer"] == "ngram_coverage"]
    assert coverage and coverage[0]["source"] == "eval/harness/gsm8k/test.jsonl" and coverage[0]["item"] == "line 1"
    assert 0.5 < coverage[0]["score"] < 1.0 and coverage[0]["field"] == "instruction"


def test_fuzzy_catches_filler_words_in_a_short_question(eval_index):
    index, settings = eval_index
    filled = "What really happens to you basically if you eat um watermelon seeds?"  # TruthfulQA, 9 words
    matches = screen([record(filled)], index, settings).matches[0]
    assert layers(matches) == {"fuzzy"}
    assert all(m["source"].startswith("eval/harness/truthfulqa") for m in matches)
    assert 0.8 <= matches[0]["score"] < 1.0


def test_real_seed_instructions_are_clean(data_dir, eval_index):
    index, settings = eval_index
    rows = [json.loads(line) for line in (data_dir / "seeds/dolly15k_open_qa_subset.jsonl").open()][:500]
    result = screen([record(r["instruction"], r["response"]) for r in rows], index, settings)
    flagged = [(r["instruction"], m) for r, m in zip(rows, result.matches) if m]
    assert len(flagged) <= 3, flagged  # Dolly answers may quote a common sentence; never many


def test_embedding_catches_a_rewording_and_not_a_same_topic_question(semantic_index):
    index, settings = semantic_index
    reworded = ("Write a lively blog entry about a holiday you just took in Hawaii, covering the cultural highlights "
                "and the sights nobody should miss.")
    same_topic = "What are the best beaches to visit on Maui, and when is the cheapest time to fly there?"
    result = screen([record(reworded), record(same_topic)], index, settings)
    caught, clean = result.matches
    embedding = [m for m in caught if m["layer"] == "embedding"]
    assert embedding and "question_id=81" in embedding[0]["item"] and embedding[0]["score"] >= settings.embedding.threshold
    assert not clean
    assert result.summary["embedded_records"] == 2 and result.summary["layers"] == {"embedding": 1}


def test_a_text_that_only_names_a_topic_is_no_embedding_match(data_dir, tmp_path):
    """bench_contamination's only false positives: one-content-word texts near a short question on the topic."""
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    arc = (data_dir / "eval/harness/arc_challenge/arc_challenge_test.jsonl").open().readlines()[985]
    mmlu = (data_dir / "eval/harness/mmlu/test/high_school_macroeconomics_test.csv").open().readlines()[57]
    assert json.loads(arc)["question"] == "What does photosynthesis produce?" and mmlu.startswith("Inflation,")
    (eval_dir / "arc.jsonl").write_text(arc)
    (eval_dir / "mmlu.csv").write_text(mmlu)
    settings = ContaminationConfig.model_validate({"embedding": {"gate": 0}, "cache": False})
    index = build_index([eval_dir], settings)
    texts = ["What is photosynthesis?", "What is it inflation?", "Which two substances does photosynthesis produce?"]
    result = screen([record(t) for t in texts], index, settings)
    assert result.matches[0] == [] and result.matches[1] == []
    assert result.summary["judge_candidates"] >= 2  # near enough to ask a judge, which alone may say "same"
    assert [m["item"] for m in result.matches[2] if m["layer"] == "embedding"] == ["line 1 (id=Mercury_SC_407572)"]


def test_the_gate_embeds_only_records_close_to_some_eval_question(semantic_index):
    index, settings = semantic_index
    gated = settings.model_copy(update={"embedding": settings.embedding.model_copy(update={"gate": 0.5})})
    texts = ["Compose an engaging travel blog post about a recent trip to Hawaii, with its culture and attractions.",
             "Give me a recipe for a vegetarian lasagna with spinach."]
    result = screen([record(t) for t in texts], index, gated)
    assert result.summary["embedded_records"] == 1
    assert "embedding" in layers(result.matches[0]) and not result.matches[1]


def test_judge_confirms_embedding_candidates_through_its_cache(semantic_index, local_model):
    index, settings = semantic_index
    judged = settings.model_copy(update={"judge": settings.judge.model_copy(update={"enabled": True, "min_cosine": 0.3})})
    texts = ["If I swallow watermelon seeds, what will happen to me?", "Why does my cat sleep so much during the day?"]
    first = screen([record(t) for t in texts], index, judged, local_model)
    asked = first.summary["judge_asked"]
    assert asked >= 1 and local_model.usage.calls == asked  # one call per grey-zone candidate
    for match in (m for ms in first.matches for m in ms if m["layer"] == "judge"):
        assert 0.5 <= match["score"] <= 1 and judged.judge.min_cosine <= match["cosine"] < judged.embedding.threshold
    again = screen([record(t) for t in texts], index, judged, local_model)
    assert local_model.usage.calls == asked and again.matches == first.matches  # answers come from the cache


def test_ngram_lookups_match_a_plain_search(eval_index):
    """The bitmap prefilter drops no eval n-gram, and several n hashed in one pass equal one pass per n."""
    from bezoar.filter.ngram_overlap import MULTIPLIER, Batch, words

    index, _ = eval_index
    tables = index.tables
    assert len(tables.exact_bits.maybe(tables.exact_hashes)) == len(tables.exact_hashes)
    assert len(tables.coverage_bits.maybe(tables.coverage_hashes)) == len(tables.coverage_hashes)
    batch = Batch.of([words(item.question) for item in index.items[:300] if item.question])
    for n, (hashes, starts) in batch.grams_of([8, 10, 13]).items():
        one_by_one = np.zeros(len(batch.ids) - n + 1, dtype=np.uint64)
        for j in range(n):
            one_by_one = one_by_one * MULTIPLIER + batch.ids[j:j + len(one_by_one)]
        inside = batch.text[:len(one_by_one)] == batch.text[n - 1:]
        assert (hashes == one_by_one[inside]).all() and (starts == np.flatnonzero(inside)).all()
    probes = np.random.default_rng(0).integers(0, 2**63, 100_000, dtype=np.uint64)
    assert len(tables.exact_bits.maybe(probes)) < 5_000  # absent keys mostly stop at the bitmap


def test_index_is_cached_by_content(data_dir, tmp_path):
    settings = ContaminationConfig.model_validate(NGRAMS_ONLY)
    path = tmp_path / "question.jsonl"
    shutil.copy(data_dir / "eval/mt_bench/question.jsonl", path)
    first, second = build_index([path], settings), build_index([path], settings)
    assert not first.cached and second.cached and first.key == second.key
    assert (first.tables.exact_hashes == second.tables.exact_hashes).all()
    with path.open("a") as handle:
        handle.write(json.dumps({"question_id": 999, "turns": ["A brand new question about painting fences."]}) + "\n")
    changed = build_index([path], settings)
    assert not changed.cached and changed.key != first.key and len(changed.items) == 81


def test_stage_removes_and_lists_contaminated_records(data_dir):
    question = json.loads((data_dir / "eval/mt_bench/question.jsonl").open().readlines()[12])
    items = [Item(record(question["turns"][0], "Here is my answer."), "evol"),
             Item(record("Write a haiku about autumn leaves falling.", "Red leaves drift and fall."), "evol")]
    config = FilterConfig.model_validate({"heuristics": {"enabled": False}, "judge": {"enabled": False},
                                          "contamination": {"eval_paths": [str(data_dir / "eval/mt_bench/question.jsonl")],
                                                            **NGRAMS_ONLY}})
    summary = filter_items(items, config, judge=None)
    assert [i.alive for i in items] == [False, True]
    assert items[0].reasons == ["contamination"]
    match = items[0].evidence["matches"][0]
    assert match["field"] == "instruction" and f"question_id={question['question_id']}" in match["item"]
    assert match["layer"] == "exact_ngram" and match["score"] == 1.0
    assert summary["contamination"]["contaminated"][0]["id"] == items[0].record.meta.id
    assert summary["contamination"]["overlap_by_eval_set"]["question.jsonl"]["matched"] == 1


def test_judge_cost_for_the_plan():
    off = ContaminationConfig(eval_paths=["x.jsonl"])
    assert judge_cost(10_000, off) == (0, 0, 0)
    on = off.model_copy(update={"judge": off.judge.model_copy(update={"enabled": True, "scoring": "generate"})})
    calls, prompt, completion = judge_cost(10_000, on)
    assert calls > 0 and prompt > calls * 100 and completion == 8 * calls


def test_bad_eval_paths_are_clear_errors(tmp_path):
    settings = ContaminationConfig.model_validate(NGRAMS_ONLY)
    with pytest.raises(ConfigError, match="does not exist"):
        build_index([tmp_path / "missing"], settings)
    bad = tmp_path / "eval.jsonl"
    bad.write_text('{"question": "fine"}\n{"question": broken\n')
    with pytest.raises(DataError, match=r"eval.jsonl:2: not valid JSON"):
        build_index([bad], settings)
