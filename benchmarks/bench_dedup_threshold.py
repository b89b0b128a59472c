"""The embedding threshold of semantic de-duplication, measured on pairs labelled by hand from our seed data.

How the pairs were made: every instruction of our seeds (Dolly open-QA subset, Alpaca demo, self-instruct
seed tasks; 4,865 unique) was embedded with the shipped all-MiniLM-L6-v2; of the pairs at cosine >= 0.6,
15 were drawn at random (seed 0) from each bin [0.6, 0.7), [0.7, 0.75), [0.75, 0.8), [0.8, 0.85),
[0.85, 0.9), [0.9, 0.95), [0.95, 1]: 105 pairs in benchmarks/dedup_pairs.jsonl. Each was labelled by
reading it: a duplicate when an answer to one answers the other (so keeping both adds nothing), otherwise
not (templated questions about another entity, year or season are not duplicates).

This script embeds the corpus again, counts every pair per bin, and estimates precision and recall of
each threshold with each bin's labelled share weighted by the bin's population (pairs below 0.6 count as
non-duplicates: none was labelled there). Prints the table; the last line is JSON with the best-F1 threshold.

    .venv/bin/python benchmarks/bench_dedup_threshold.py
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from common import DATA, emit, peak_rss_mb

BINS = [(0.6, 0.7), (0.7, 0.75), (0.75, 0.8), (0.8, 0.85), (0.85, 0.9), (0.9, 0.95), (0.95, 1.01)]
THRESHOLDS = [0.7, 0.75, 0.8, 0.85, 0.875, 0.9, 0.925, 0.95, 0.975]


def corpus() -> list[str]:
    seeds = DATA / "seeds"
    dolly = [json.loads(line)["instruction"] for line in (seeds / "dolly15k_open_qa_subset.jsonl").open()]
    alpaca = [r["instruction"] + (" " + r["input"] if r["input"] else "")
              for r in json.loads((seeds / "alpaca_en_demo_llamafactory.json").read_text())]
    self_instruct = [json.loads(line)["instruction"] for line in (seeds / "self_instruct_seed_tasks.jsonl").open()]
    return list(dict.fromkeys(dolly + alpaca + self_instruct))


def main() -> None:
    from bezoar.filter import embedder

    model = embedder.model_dir(None)
    texts = corpus()
    vectors = embedder.encode(texts, model)
    upper = (vectors @ vectors.T)[np.triu_indices(len(texts), 1)]
    population = [int(((upper >= lo) & (upper < hi)).sum()) for lo, hi in BINS]
    labelled = [json.loads(line) for line in Path(__file__).with_name("dedup_pairs.jsonl").open()]
    pair_vectors = embedder.encode([p["a"] for p in labelled] + [p["b"] for p in labelled], model)
    half = len(labelled)
    cosine = (pair_vectors[:half] * pair_vectors[half:]).sum(1)
    # Weight of a labelled pair: the pairs of its bin it stands for.
    bin_of = [next(b for b, (lo, hi) in enumerate(BINS) if lo <= c < hi or (b == len(BINS) - 1 and c >= lo)) for c in cosine]
    per_bin = np.bincount(bin_of, minlength=len(BINS))
    weight = np.array([population[b] / per_bin[b] for b in bin_of])
    duplicate = np.array([p["duplicate"] for p in labelled])
    rows = []
    for threshold in THRESHOLDS:
        flagged = cosine >= threshold
        true_pos = float((weight * (flagged & duplicate)).sum())
        precision = true_pos / max(float((weight * flagged).sum()), 1e-9)
        recall = true_pos / max(float((weight * duplicate).sum()), 1e-9)
        f1 = 2 * precision * recall / max(precision + recall, 1e-9)
        rows.append({"threshold": threshold, "precision": round(precision, 3), "recall": round(recall, 3), "f1": round(f1, 3),
                     "labelled_flagged": int(flagged.sum())})
        print(f"cosine >= {threshold:<6} precision {precision:.3f}  recall {recall:.3f}  F1 {f1:.3f}  "
              f"({int(flagged.sum())} labelled pairs flagged)")
    best = max(rows, key=lambda r: (r["f1"], r["threshold"]))
    print(f"best F1 at {best['threshold']}; {len(texts)} instructions, pairs per bin {population}, "
          f"{int(duplicate.sum())} of {half} labelled pairs are duplicates")
    emit({"best": best, "table": rows, "bins": [list(b) for b in BINS], "population": population,
          "labelled": half, "duplicates": int(duplicate.sum()), "instructions": len(texts),
          "peak_rss_mb": round(peak_rss_mb())})


if __name__ == "__main__":
    main()
