"""`bezoar stats`: what a set of generated records contains, as one JSON-able dict.

Counts by method, evolution, system message and category; instruction and response lengths;
how many instructions are unique; distinct-1/2 (unique n-grams over all n-grams of the instructions,
Li et al. 2016) as a diversity measure; commercial-use verdicts; Orca's agreement with gold answers;
and the rejection reasons recorded beside each file.
"""
from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from bezoar.generate.runner import OutputFiles, lower_alnum
from bezoar.records import Record, read_jsonl


def file_stats(paths: Iterable[Path | str]) -> dict:
    """Statistics over all records in `paths` (validated as records), plus their rejections."""
    paths = [Path(p) for p in paths]
    records: list[Record] = []
    rejections: Counter = Counter()
    for path in paths:
        records += read_jsonl(path, Record)
        rejected = OutputFiles(Path(path)).rejected
        if rejected.exists():
            rejections.update(row.get("reason", "?") for row in read_jsonl(rejected))
    found = record_stats(records)
    found["files"] = [str(p) for p in paths]
    found["rejections"] = dict(rejections.most_common())
    return found


def record_stats(records: list[Record]) -> dict:
    instructions = [r.instruction for r in records]
    details = [r.meta.details for r in records]
    return {
        "records": len(records),
        "by_method": _count(r.meta.method for r in records),
        "by_evolution": _count(f"{d['strategy']}:{d.get('operation') or '-'}" for d in details if "strategy" in d),
        "by_epoch": _count(str(d["epoch"]) for d in details if "epoch" in d),
        "by_system_message": _count(str(d["system_message_id"]) for d in details if "system_message_id" in d),
        "by_sub_collection": _count(d["sub_collection"] for d in details if "sub_collection" in d),
        "by_mode": _count(d["mode"] for d in details if "mode" in d),
        "by_category": _count(d.get("category") or "-" for d in details),
        "finish_reason": _count(r.meta.finish_reason or "-" for r in records),
        "commercial_use": _count(r.licence.commercial_use.value for r in records),
        "instruction_words": distribution(len(t.split()) for t in instructions),
        "response_words": distribution(len(r.response.split()) for r in records),
        "unique_instruction_fraction": _ratio(len({lower_alnum(t) for t in instructions}), len(instructions)),
        "distinct_1": distinct_n(instructions, 1),
        "distinct_2": distinct_n(instructions, 2),
        "gold_agreement": _gold(details),
    }


def distinct_n(texts: list[str], n: int) -> float:
    grams = [tuple(words[i:i + n]) for words in (re.findall(r"\w+", t.lower()) for t in texts)
             for i in range(len(words) - n + 1)]
    return _ratio(len(set(grams)), len(grams))


def distribution(values: Iterable[int]) -> dict:
    found = sorted(values)
    if not found:
        return {"count": 0}
    quantiles = statistics.quantiles(found, n=10, method="inclusive") if len(found) > 1 else [found[0]] * 9
    return {"count": len(found), "min": found[0], "p10": round(quantiles[0], 1), "median": statistics.median(found),
            "mean": round(statistics.fmean(found), 1), "p90": round(quantiles[8], 1), "max": found[-1]}


def _gold(details: list[dict]) -> dict:
    checked = [d["agrees_with_gold"] for d in details if d.get("gold_short")]
    agree = sum(1 for c in checked if c)
    return {"checked": len(checked), "agree": agree, "rate": _ratio(agree, len(checked))}


def _count(values: Iterable[str]) -> dict[str, int]:
    return dict(Counter(values).most_common())


def _ratio(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0
