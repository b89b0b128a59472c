"""De-duplication on real Dolly instructions with planted rewordings: duplicates go, distinct records stay,
and the best-rated member of a cluster is the one kept."""
from __future__ import annotations

import json

import numpy as np

from bezoar.filter import dedup
from bezoar.filter.config import FilterConfig
from bezoar.filter.runner import Item, filter_items
from bezoar.records import ChatMessage, Record, RecordMeta

# Rewordings a teacher model typically produces of real Dolly questions (rows 0, 10, 20, 60, 70, 110).
PARAPHRASES = {
    0: "Why are camels able to survive for so long without water?",
    10: "Who played the role of Billy the Kid in the film The Left Handed Gun?",
    20: "Which film won the Oscar for best film in 1943?",
    60: "Which famous classical composer was deaf?",
    70: "What was the first novel Angie Thomas published?",
    110: "Which Dutch actress played the character Xenia Onatopp in GoldenEye, the James Bond movie?",
}
OFF = {"heuristics": {"enabled": False}, "contamination": {"enabled": False}, "judge": {"enabled": False}}


def record(instruction: str, response: str = "An answer.", rating: float | None = None) -> Record:
    meta = RecordMeta(method="test", judge={"rating": rating} if rating is not None else None)
    return Record(messages=[ChatMessage(role="user", content=instruction), ChatMessage(role="assistant", content=response)],
                  meta=meta).with_id()


def dolly(data_dir, count: int = 120) -> list[dict]:
    return [json.loads(line) for line in (data_dir / "seeds/dolly15k_open_qa_subset.jsonl").open()][:count]


def test_planted_paraphrases_go_and_distinct_records_stay(data_dir):
    rows = dolly(data_dir)
    items = [Item(record(r["instruction"], r["response"]), "dolly") for r in rows]
    items += [Item(record(text, rows[i]["response"]), "planted") for i, text in PARAPHRASES.items()]
    summary = filter_items(items, FilterConfig.model_validate(OFF), judge=None)
    originals, planted = items[:len(rows)], items[len(rows):]
    # Every planted rewording was caught: either it or its original is gone, as a near-duplicate of the other.
    for (index, _), copy in zip(PARAPHRASES.items(), planted):
        pair = (originals[index], copy)
        gone = [i for i in pair if not i.alive]
        assert len(gone) == 1 and gone[0].reasons == ["near_duplicate"], (copy.record.instruction, gone)
        assert gone[0].evidence["duplicate_of"] in {i.record.meta.id for i in pair}
    # ...and no distinct real instruction was touched.
    untouched = [i for n, i in enumerate(originals) if n not in PARAPHRASES]
    assert all(i.alive for i in untouched)
    assert summary["reasons"] == {"near_duplicate": len(PARAPHRASES)}


def test_templated_questions_about_different_things_are_not_duplicates():
    texts = ["What are the words of House Reed?", "What are the words of House Tyrell?",
             "What is the capital of France?", "What is the capital of Spain?",
             "Name five NFL teams.", "Name five NBA teams."]
    graph, _ = dedup.minhash_graph(texts, threshold=0.7)
    assert graph == {}


def test_exact_duplicates_after_normalisation_keep_the_best_rated():
    items = [Item(record("What is a haiku?", rating=4), "a"), Item(record("what is a HAIKU", rating=9), "a"),
             Item(record("What is a  haiku ?!", rating=6), "b"), Item(record("What is a sonnet?"), "b")]
    filter_items(items, FilterConfig.model_validate(OFF), judge=None)
    assert [i.alive for i in items] == [False, True, False, True]
    assert {i.reasons[0] for i in items if not i.alive} == {"exact_duplicate"}
    assert items[0].evidence["duplicate_of"] == items[1].record.meta.id


def test_near_duplicate_cluster_keeps_the_best_rated_and_never_chains():
    texts = ["What are the health benefits of drinking green tea?", "What are the health benefits of green tea?",
             "What are the health benefits of green tea for adults?"]
    graph, similarity = dedup.minhash_graph(texts + ["How do I brew green tea properly?"], threshold=0.7)
    assert 3 not in graph and all(0.7 <= s <= 1 for s in similarity.values())
    dropped = dedup.assign(graph, scores=[5.0, 8.0, 6.0])
    assert {d.index for d in dropped} == {0, 2} and {d.kept for d in dropped} == {1}
    # A ~ B and B ~ C but A !~ C: star clustering around the best never drops A for C's sake.
    chain = {0: {1}, 1: {0, 2}, 2: {1}}
    assert {d.index for d in dedup.assign(chain, scores=[9.0, 1.0, 8.0])} == {1}


def test_keep_first_ignores_ratings():
    items = [Item(record("What is the tallest mountain on Earth?", rating=2), "a"),
             Item(record("What's the tallest mountain on earth?", rating=9), "a")]
    config = FilterConfig.model_validate({**OFF, "dedup": {"keep": "first", "exact": False}})
    filter_items(items, config, judge=None)
    assert [i.alive for i in items] == [True, False]


def test_embedding_method_uses_the_shipped_embedder_at_the_measured_threshold():
    """Pairs from benchmarks/dedup_pairs.jsonl (labelled by hand): the duplicates join at the default
    threshold, templated questions about another house stay apart."""
    from bezoar.filter.config import DedupConfig

    texts = ["What are the differences between a ukulele and guitar?", "What is the difference between a guitar and a ukulele?",
             "What's the capital of Brazil?", "What is the capital of Brazil?",
             "In the series A Song of Ice and Fire, who is the founder of House Towers?",
             "In the series A Song of Ice and Fire, who is the founder of House Blackfyre?"]
    vectors = dedup.embed(texts, None)
    assert vectors.shape == (6, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    graph, similarity = dedup.embedding_graph(texts, None, DedupConfig().embedding_threshold)
    assert graph == {0: {1}, 1: {0}, 2: {3}, 3: {2}}
    assert similarity[(0, 1)] > 0.95 and similarity[(2, 3)] > 0.95
    items = [Item(record(t), "a") for t in texts]
    filter_items(items, FilterConfig.model_validate({**OFF, "dedup": {"method": "embedding", "exact": False}}), judge=None)
    assert [i.alive for i in items] == [True, False, True, False, True, True]
    assert items[1].evidence["method"] == "embedding" and items[1].evidence["similarity"] > 0.95
