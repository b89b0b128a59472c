"""95% intervals for evaluation scores: percentile bootstrap for means, Wilson for proportions.

Every metric in the comparison table carries an interval, so a delta between checkpoints can be
read against the noise of an 80-question benchmark. Resampling is seeded (a `numpy` Generator
built from the given seed), so the same scores always give the same interval.
"""
from __future__ import annotations

import math
from typing import Sequence

Z95 = 1.959963984540054


def wilson(successes: int, total: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion (well-behaved at 0, 1 and small n, unlike p ± z·se)."""
    if total <= 0:
        return (math.nan, math.nan)
    p = successes / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact bounds where rounding would blur them
    high = 1.0 if successes == total else min(1.0, centre + half)
    return (low, high)


def bootstrap_mean(values: Sequence[float], samples: int = 1000, seed: int = 0,
                   level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean, resampling items with replacement."""
    import numpy as np

    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return (math.nan, math.nan)
    if data.size == 1 or samples <= 0:
        return (float(data.mean()), float(data.mean()))
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(samples, data.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return (float(low), float(high))


def paired_bootstrap_delta(new: dict, old: dict, samples: int = 1000, seed: int = 0) -> dict | None:
    """Mean of (new - old) over the items both scored, with a bootstrap 95% interval.

    Pairing by item (question, document, preference pair) removes the between-item variance that
    dominates an unpaired comparison, so the delta's interval is much tighter than the two
    intervals side by side suggest.
    """
    shared = sorted(set(new) & set(old), key=str)
    if not shared:
        return None
    differences = [float(new[key]) - float(old[key]) for key in shared]
    low, high = bootstrap_mean(differences, samples, seed)
    return {"delta": sum(differences) / len(differences), "ci95": [low, high], "n": len(shared)}


def normal_interval(value: float, stderr: float | None) -> tuple[float, float] | None:
    """value ± 1.96·stderr (how lm-eval's reported standard errors become intervals)."""
    if stderr is None or not isinstance(stderr, (int, float)) or math.isnan(stderr):
        return None
    return (value - Z95 * stderr, value + Z95 * stderr)
