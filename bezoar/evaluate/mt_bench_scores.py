"""MT-Bench score tables from judgment lines: per category, per turn and overall, each with a
bootstrap 95% interval over items, and the judge's spread when it graded more than once.

An item is one (question, turn). With K judge repeats its score is the median of its readable
ratings (robust to one wild grade); an item with none is an error and is left out of the mean, as
FastChat's `show_result.py` drops score -1.
"""
from __future__ import annotations

import statistics
from collections import defaultdict

from bezoar.intervals import bootstrap_mean


def single_table(lines: list[dict], samples: int = 1000, seed: int = 0) -> dict:
    """Score rows from single-answer judgment lines (FastChat's `*_single.jsonl`)."""
    ratings: dict[tuple, list[float]] = defaultdict(list)
    by_repeat: dict[tuple, dict[int, float]] = defaultdict(dict)
    category: dict[tuple, str] = {}
    for line in lines:
        key = (line["question_id"], line["turn"])
        category[key] = line.get("category", "?")
        if line["score"] != -1:
            ratings[key].append(float(line["score"]))
            by_repeat[key][line.get("repeat", 0)] = float(line["score"])
    items = {key: statistics.median(ratings[key]) for key in category if ratings[key]}
    repeats = 1 + max((line.get("repeat", 0) for line in lines), default=0)
    rows = [_row(name, keys, items, by_repeat, repeats, samples, seed) for name, keys in _groups(category).items()]
    return {"rows": rows, "overall": rows[-1], "repeats": repeats,
            "errors": sum(1 for key in category if key not in items),
            "items": {f"{q}:{t}": score for (q, t), score in items.items()}}


def pairwise_table(lines: list[dict], samples: int = 1000, seed: int = 0) -> dict:
    """Win rates of model_1 from pair judgment lines; an item is a win (1), loss (0) or tie (0.5).

    As in FastChat's show_result: a game whose two orders disagree is a tie, and a game with an
    unreadable verdict in either order is dropped.
    """
    outcomes: dict[tuple, list[float]] = defaultdict(list)
    category: dict[tuple, str] = {}
    for line in lines:
        key = (line["question_id"], line["turn"])
        category[key] = line.get("category", "?")
        value = _outcome(line)
        if value is not None:
            outcomes[key].append(value)
    items = {key: statistics.median(outcomes[key]) for key in category if outcomes[key]}
    rows = [_row(name, keys, items, {}, 1, samples, seed) for name, keys in _groups(category).items()]
    values = list(items.values())
    counts = {"win": sum(v > 0.5 for v in values), "loss": sum(v < 0.5 for v in values),
              "tie": sum(v == 0.5 for v in values)}
    win_rate = counts["win"] / len(values) if values else None
    return {"rows": rows, "overall": rows[-1], **counts, "win_rate": win_rate,
            "win_rate_adjusted": rows[-1]["score"], "errors": sum(1 for key in category if key not in items),
            "model_1": lines[0]["model_1"] if lines else None,
            "items": {f"{q}:{t}": value for (q, t), value in items.items()}}


def _outcome(line: dict) -> float | None:
    g1, g2 = line["g1_winner"], line["g2_winner"]
    if "error" in (g1, g2):
        return None
    if g1 == g2 == "model_1":
        return 1.0
    if g1 == g2 == "model_2":
        return 0.0
    return 0.5


def _groups(category: dict[tuple, str]) -> dict[str, list[tuple]]:
    """Categories in first-seen order, then each turn, then overall (the last row)."""
    groups: dict[str, list[tuple]] = defaultdict(list)
    for key, name in category.items():
        groups[name].append(key)
    for key in category:
        groups[f"turn {key[1]}"].append(key)
    groups["overall"] = list(category)
    return groups


def _row(name: str, keys: list[tuple], items: dict, by_repeat: dict, repeats: int, samples: int, seed: int) -> dict:
    values = [items[key] for key in keys if key in items]
    low, high = bootstrap_mean(values, samples, seed)
    row = {"name": name, "score": statistics.fmean(values) if values else None,
           "ci95": [low, high] if values else None, "n": len(values), "errors": len(keys) - len(values)}
    if repeats > 1:
        row["spread"] = _spread(keys, by_repeat, repeats)
    return row


def _spread(keys: list[tuple], by_repeat: dict, repeats: int) -> dict:
    """How much the judge disagrees with itself: per-item range, and the per-repeat means."""
    ranges = [max(by_repeat[k].values()) - min(by_repeat[k].values()) for k in keys if len(by_repeat.get(k, {})) > 1]
    means = []
    for r in range(repeats):
        scores = [by_repeat[k][r] for k in keys if r in by_repeat.get(k, {})]
        if scores:
            means.append(statistics.fmean(scores))
    return {"mean_item_range": statistics.fmean(ranges) if ranges else 0.0, "repeat_means": means,
            "repeat_sd": statistics.stdev(means) if len(means) > 1 else 0.0}
