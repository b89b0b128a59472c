"""Helpers shared by the benchmarks: data location, seed prompts, timing, the final JSON line."""
from __future__ import annotations

import gzip
import json
import os
import random
import resource
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("BEZOAR_DATA", REPO.parent / "shared" / "data")).resolve()
sys.path.insert(0, str(REPO / "tests"))  # the loopback server helpers live beside the tests


def mixed_prompts(count: int, seed: int = 0) -> list[list[dict]]:
    """Seed instructions of mixed length: short dolly questions, alpaca tasks with inputs, FLAN CoT items."""
    rng = random.Random(seed)
    dolly = [json.loads(l)["instruction"] for l in (DATA / "seeds/dolly15k_open_qa_subset.jsonl").open()]
    alpaca = [r["instruction"] + ("\n\n" + r["input"] if r["input"] else "")
              for r in json.loads((DATA / "seeds/alpaca_en_demo_llamafactory.json").read_text())]
    with gzip.open(DATA / "seeds/flan/cot_data/strategyqa_train.tsv.gz", "rt") as handle:
        flan = [line.split("\t")[0] for line in handle]
    pools = [dolly, alpaca, flan]
    texts = [rng.choice(pools[i % 3]) for i in range(count)]
    return [[{"role": "user", "content": t}] for t in texts]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def emit(figures: dict) -> None:
    """The last line a benchmark prints: one JSON object."""
    print(json.dumps(figures), flush=True)
