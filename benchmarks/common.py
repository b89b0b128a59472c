"""Helpers shared by the benchmarks: data location, seed prompts, timing, the final JSON line."""
from __future__ import annotations

import csv
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


def instruction_pool(count: int, seed: int = 0) -> list[str]:
    """Real instructions: HH-RLHF first human turns, Dolly, Alpaca, self-instruct, FLAN CoT and T0 prompts."""
    texts: list[str] = []
    with gzip.open(DATA / "preferences/hh-rlhf/harmless-base/test.jsonl.gz", "rt") as handle:
        for line in handle:
            first = json.loads(line)["chosen"].split("\n\nHuman:", 1)[-1].split("\n\nAssistant:", 1)[0]
            texts.append(first.strip())
    texts += [json.loads(line)["instruction"] for line in (DATA / "seeds/dolly15k_open_qa_subset.jsonl").open()]
    texts += [r["instruction"] + (" " + r["input"] if r["input"] else "")
              for r in json.loads((DATA / "seeds/alpaca_en_demo_llamafactory.json").read_text())]
    texts += [json.loads(line)["instruction"] for line in (DATA / "seeds/self_instruct_seed_tasks.jsonl").open()]
    for path in sorted((DATA / "seeds/flan/cot_data").glob("*.tsv.gz")):
        with gzip.open(path, "rt") as handle:
            texts += [row[0] for row in csv.reader(handle, delimiter="\t") if row]
    with gzip.open(DATA / "seeds/flan/t0_p3_sample_25_per_template.jsonl.gz", "rt") as handle:
        texts += [json.loads(line)["prompt"] for line in handle]
    random.Random(seed).shuffle(texts)
    if len(texts) < count:
        raise SystemExit(f"only {len(texts)} instructions available, {count} asked")
    return texts[:count]
