"""Contamination check, layered, against today's 13-gram rule, on plants built from the shipped eval sets.

Plants: eval questions (MT-Bench first turns, IFEval, ARC, GSM8K, MMLU, TruthfulQA, HellaSwag contexts)
copied verbatim, with a prefix and suffix, with case and punctuation changed, with a filler word every
4 words, with synonyms swapped, reworded by the teacher (the embedded SmolLM2-135M unless --teacher),
reworded by hand, translated by hand (benchmarks/contamination_plants.jsonl). Controls: for each planted
eval question, the most similar real instruction of our seed data (Dolly, Alpaca, self-instruct, FLAN,
HH-RLHF) below a TF-IDF similarity of 0.6: same topic, another question; they must not match.

Prints recall per kind and the false-positive rate on controls for (a) the 13-gram rule alone, (b) all
layers without the judge, (c) with the judge confirming embedding candidates; then records/s over
--records records (the plants, the controls and real instructions) against all shipped eval sets,
without the judge, beside the 13-gram rule alone.

    .venv/bin/python benchmarks/bench_contamination.py [--per-source 15] [--records 100000] [--reworded 40]
"""
from __future__ import annotations

import argparse
import random
import time
from collections import defaultdict
from pathlib import Path

from common import DATA, emit, instruction_pool, peak_rss_mb
from plants import MECHANICAL, by_hand, reworded_by_teacher

EVAL_PATHS = [DATA / "eval/mt_bench/question.jsonl", DATA / "eval/ifeval", DATA / "eval/harness"]
GROUPS = ("mt_bench", "ifeval", "arc_challenge", "gsm8k", "mmlu", "truthfulqa", "hellaswag")


def record(instruction: str, response: str = "Here is my answer."):
    from bezoar.records import ChatMessage, Record, RecordMeta

    return Record(messages=[ChatMessage(role="user", content=instruction), ChatMessage(role="assistant", content=response)],
                  meta=RecordMeta(method="bench"))


def base_items(index, per_source: int, rng: random.Random) -> list[int]:
    """`per_source` eval items with a question of 6+ words from each group."""
    chosen = []
    for group in GROUPS:
        pool = [i for i in index.question_rows.tolist() if group in index.items[i].source.replace("question.jsonl", "mt_bench")
                and len(index.items[i].question.split()) >= 6]
        chosen += rng.sample(pool, min(per_source, len(pool)))
    return chosen


def make_plants(index, chosen: list[int], rng: random.Random, teacher, reworded: int) -> list[tuple[str, int, str]]:
    """(kind, eval item, text) for every plant."""
    plants = [(kind, i, edit(index.items[i].question, rng)) for kind, edit in MECHANICAL.items() for i in chosen]
    if teacher is not None and reworded:
        picked = chosen[:: max(1, len(chosen) // reworded)][:reworded]
        texts = reworded_by_teacher([index.items[i].question for i in picked], teacher)
        plants += [("reworded", i, t) for i, t in zip(picked, texts) if t]
    by_question = {index.items[i].question[:200]: i for i in index.question_rows.tolist()}
    for row in by_hand(Path(__file__).with_name("contamination_plants.jsonl")):
        item = next((i for q, i in by_question.items() if q.startswith(row["question"])), None)
        if item is None:
            raise SystemExit(f"contamination_plants.jsonl: no eval question starts with {row['question']!r}")
        plants.append((row["kind"], item, row["text"]))
    return plants


def make_controls(index, chosen: list[int], pool: list[str]) -> list[tuple[int, str]]:
    """Per planted question the closest real instruction below TF-IDF 0.6 (same topic, not a copy)."""
    from bezoar.filter.paraphrase import Retriever
    import numpy as np

    questions = [index.items[i].question for i in chosen]
    retriever = Retriever.fit(pool, np.arange(len(pool)))
    candidates, _ = retriever.candidates(questions, k=20)
    controls = []
    for item, found in zip(chosen, candidates):
        pick = next((row for row, score in found if 0.15 <= score < 0.6), None)
        if pick is not None:
            controls.append((item, pool[pick]))
    return controls


def evaluate(index, settings, plants, controls, judge=None) -> dict:
    from bezoar.filter.contamination import screen

    texts = [p[2] for p in plants] + [c[1] for c in controls]
    result = screen([record(t) for t in texts], index, settings, judge)
    hits: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for (kind, item, _), matches in zip(plants, result.matches):
        hits[kind][1] += 1
        # Recall counts a plant caught by a match on its own eval item.
        hits[kind][0] += any(m["item"] == index.items[item].where and m["source"] == index.items[item].source for m in matches)
    flagged = [(controls[n][1], matches[0]) for n, matches in enumerate(result.matches[len(plants):]) if matches]
    return {"recall": {k: round(c / t, 3) for k, (c, t) in hits.items()}, "plants": {k: t for k, (_, t) in hits.items()},
            "false_positive_rate": round(len(flagged) / max(1, len(controls)), 4), "controls": len(controls),
            "flagged_controls": [{"control": c[:160], "layer": m["layer"], "score": m["score"], "eval": m["text"][:160]}
                                 for c, m in flagged],
            "matches": result.matches,
            "summary": {k: result.summary[k] for k in ("layers", "timings_s") if k in result.summary}
            | {k: result.summary.get(k) for k in ("embedded_records", "judge_asked", "judge_said_same", "judge_usage")}}


GATES = (0.0, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5)


def gate_table(index, plants, controls, matches: list[list[dict]], pool: list[str]) -> list[dict]:
    """Recall per kind, false positives and the share of real instructions embedded at each gate, from one
    run at gate 0: a plant caught by its embedding match counts only if its TF-IDF best reaches the gate."""
    texts = [p[2] for p in plants] + [c[1] for c in controls]
    _, best = index.retriever.candidates(texts, 1)
    _, pool_best = index.retriever.candidates(pool, 1)
    rows = []
    for gate in GATES:
        hits: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for n, (kind, item, _) in enumerate(plants):
            own = {m["layer"] for m in matches[n] if m["item"] == index.items[item].where and m["source"] == index.items[item].source}
            hits[kind][0] += bool(own - {"embedding", "judge"}) or (bool(own & {"embedding", "judge"}) and best[n] >= gate)
            hits[kind][1] += 1
        flagged = sum(bool({m["layer"] for m in matches[len(plants) + n]} - {"embedding", "judge"})
                      or (bool(matches[len(plants) + n]) and best[len(plants) + n] >= gate) for n in range(len(controls)))
        rows.append({"gate": gate, "embedded_share": round(float((pool_best >= gate).mean()), 4),
                     "recall": {k: round(c / t, 3) for k, (c, t) in hits.items()},
                     "false_positive_rate": round(flagged / max(1, len(controls)), 4)})
    return rows


def speed(index, settings, records) -> dict:
    from bezoar.filter.contamination import screen

    started = time.perf_counter()
    result = screen(records, index, settings)
    elapsed = time.perf_counter() - started
    return {"records": len(records), "seconds": round(elapsed, 1), "per_second": round(len(records) / elapsed),
            "contaminated": result.summary["contaminated_records"], "embedded": result.summary.get("embedded_records"),
            "embedded_texts": result.summary.get("embedded_texts"),
            "judge_calls_per_record": round(result.summary.get("judge_candidates", 0) / len(records), 4),
            "layers": result.summary["layers"], "timings_s": result.summary["timings_s"]}


def speed_records(plants, controls, pool: list[str], count: int) -> list:
    """Plants, controls, then real instructions (each pool instruction about twice, with another real text
    as its response) up to `count`."""
    texts = [p[2] for p in plants] + [c[1] for c in controls]
    records = [record(t) for t in texts]
    n = len(pool)
    records += [record(pool[i % n], pool[(i * 7 + 3) % n]) for i in range(count - len(records))]
    return records


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-source", type=int, default=15)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--reworded", type=int, default=40)
    parser.add_argument("--teacher", default="local", help="model spec that rewords plants and judges ('none': skip)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from bezoar.filter.config import ContaminationConfig
    from bezoar.filter.contamination import build_index

    rng = random.Random(args.seed)
    settings = ContaminationConfig(eval_paths=EVAL_PATHS)
    started = time.perf_counter()
    index = build_index(EVAL_PATHS, settings)
    print(f"index: {len(index.items)} eval items, {len(index.question_rows)} questions, "
          f"{'from the cache' if index.cached else 'built'} in {time.perf_counter() - started:.1f} s", flush=True)
    if True:  # the teacher's and judge's replies are kept in a call cache of the benchmark's own: a re-run is cheap
        from bezoar.llm.cache import default_cache_path

        model = open_model(args.teacher, default_cache_path().parent)
        chosen = base_items(index, args.per_source, rng)
        plants = make_plants(index, chosen, rng, model, args.reworded)
        pool = instruction_pool(47_000, seed=args.seed)
        controls = make_controls(index, chosen, pool)
        print(f"{len(plants)} plants of {len(chosen)} eval questions, {len(controls)} same-topic controls", flush=True)
        every = settings.model_copy(update={"embedding": settings.embedding.model_copy(update={"gate": 0.0})})
        configs = {"ngram13_only": exact_only(settings), "layers": settings, "layers_gate0": every}
        results = {name: evaluate(index, s, plants, controls) for name, s in configs.items()}
        if model is not None:  # the judge on every record's candidates (gate 0), as LMSYS's decontaminator
            judged = every.model_copy(update={"judge": settings.judge.model_copy(update={"enabled": True})})
            results["layers_gate0_judge"] = evaluate(index, judged, plants, controls, model)
    for name, result in results.items():
        print(f"{name:13} recall " + " ".join(f"{k} {v:.2f}" for k, v in result["recall"].items())
              + f" | false positives {result['false_positive_rate']:.3f} of {result['controls']}", flush=True)
    gates = {name: gate_table(index, plants, controls, results[name]["matches"], pool)
             for name in ("layers_gate0", "layers_gate0_judge") if name in results}
    for name, rows in gates.items():
        for row in rows:
            print(f"{name} at gate {row['gate']}: embeds {row['embedded_share']:.1%} of real instructions; recall "
                  + " ".join(f"{k} {v:.2f}" for k, v in row["recall"].items()) + f" | false positives {row['false_positive_rate']:.3f}")
    for name in ("layers", "layers_gate0"):  # the judge's own false positives are its model's, not the layers'
        for flagged in results[name]["flagged_controls"]:
            print(f"  {name} flagged control ({flagged['layer']} {flagged['score']}): {flagged['control']!r} ~ {flagged['eval']!r}")
    records = speed_records(plants, controls, pool, args.records)
    fast = speed(index, exact_only(settings), records)
    print(f"speed, 13-gram rule alone: {fast['per_second']} records/s ({fast['records']} in {fast['seconds']} s)", flush=True)
    layered = speed(index, settings, records)
    print(f"speed, all layers without the judge: {layered['per_second']} records/s ({layered['records']} in "
          f"{layered['seconds']} s; {layered['embedded']} embedded, {layered['embedded_texts']} distinct texts; "
          f"{layered['timings_s']}); "
          f"{fast['per_second'] / layered['per_second']:.1f}x the 13-gram rule's time per record", flush=True)
    emit({"recall": {n: r["recall"] for n, r in results.items()}, "by_gate": gates,
          "false_positive_rate": {n: r["false_positive_rate"] for n, r in results.items()},
          "judge": results.get("layers_gate0_judge", {}).get("summary"),
          "plants": results["layers"]["plants"], "controls": len(controls), "teacher": args.teacher,
          "speed_layers": layered, "speed_ngram13": fast, "eval_items": len(index.items),
          "index_cached": index.cached, "peak_rss_mb": round(peak_rss_mb())})


def exact_only(settings):
    off = {"enabled": False}
    return settings.model_copy(update={"coverage": settings.coverage.model_copy(update=off),
                                       "fuzzy": settings.fuzzy.model_copy(update=off),
                                       "embedding": settings.embedding.model_copy(update=off)})


def open_model(spec: str, tmp: Path):
    """The teacher/judge behind a call cache, or None."""
    if spec == "none":
        return None
    from bezoar.config_base import ModelConfig
    from bezoar.llm.cache import CallCache
    from bezoar.llm.specs import open_model as open_spec

    return open_spec(ModelConfig(spec=spec), role="judge", cache=CallCache(tmp / "bench_contamination.sqlite"))


if __name__ == "__main__":
    main()
