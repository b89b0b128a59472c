"""Judge calibration: does the judge agree with human preferences, and is it swayed by position?

On held-out HH-RLHF pairs the judge picks the better of two replies, asked twice with the replies in
both orders (Zheng et al. 2023, "Judging LLM-as-a-judge", §3.4). We report, each with a Wilson 95%
interval:
- agreement: share of the 2n judgments that pick the human-chosen reply (a tie or an error is not
  agreement), and the same among decisive judgments only (chance = 0.5);
- position bias: share of pairs, judged decisively in both orders, where the judge picked the same
  position both times (so its choice followed the order, not the content);
- tie rate and error rate: shares of the 2n judgments.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from bezoar.filter.judge import load_prompt, scoring_mode, scoring_model, truncate
from bezoar.hh_rlhf import read_hh_pairs
from bezoar.intervals import wilson
from bezoar.llm.cache import CachedModel
from bezoar.llm.next_token import pair_scorer
from bezoar.llm.protocol import Sampling
from bezoar.records import PreferencePair
from bezoar.verdicts import parse_choice

log = logging.getLogger(__name__)

@dataclass
class Rate:
    """k of n, with a Wilson score 95% interval."""

    k: int
    n: int
    value: float | None
    low: float | None
    high: float | None

    def __str__(self) -> str:
        if self.value is None:
            return f"n/a (0 of {self.n})"
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}] ({self.k}/{self.n})"


def rate(k: int, n: int) -> Rate:
    """k of n with its Wilson interval (sound for small n and extreme rates), to four decimals."""
    if n == 0:
        return Rate(k, n, None, None, None)
    low, high = wilson(k, n)
    return Rate(k, n, round(k / n, 4), round(low, 4), round(high, 4))


def judge_check(model: CachedModel, pairs_path: Path | str, n: int = 100, scoring: str = "auto",
                max_chars: int = 3000, max_new_tokens: int = 64,
                progress: Callable[[int], None] | None = None) -> dict:
    """Agreement, position-bias and tie rates of `model` on the last `n` pairs of an HH-RLHF file."""

    pairs, bad = read_hh_pairs(pairs_path, skip_bad=True)
    chosen_pairs = pairs[-n:]  # the end of the file: the slice training never uses (see hh_rlhf.split_slices)
    mode = scoring_mode(model, scoring)
    caller = scoring_model(model, mode, pair_scorer)
    prompt = load_prompt("judge_pairwise")
    conversations = []
    for pair in chosen_pairs:
        history = _truncate_left(_transcript(pair), max_chars)
        chosen, rejected = (truncate(pair.chosen[-1].content, max_chars), truncate(pair.rejected[-1].content, max_chars))
        conversations.append(prompt.render(conversation=history, response_a=chosen, response_b=rejected))
        conversations.append(prompt.render(conversation=history, response_a=rejected, response_b=chosen))
    replies = caller.chat(conversations, Sampling(temperature=0.0, max_new_tokens=max_new_tokens), progress=progress)
    picks = [parse_choice(r.text) if not r.failed else None for r in replies]
    figures = summarise(picks)
    figures.update(judge=caller.identity, scoring=mode, prompt=prompt.id, pairs_file=str(pairs_path),
                   pairs=len(chosen_pairs), skipped_malformed_rows=len(bad),
                   examples=[{"pair": p.meta.get("id"), "chosen_first": picks[2 * i], "chosen_second": picks[2 * i + 1],
                              "raw_first": replies[2 * i].text[:300]} for i, p in enumerate(chosen_pairs[:5])])
    return figures


def summarise(picks: list[str | None]) -> dict:
    """Figures from picks in (chosen-as-A, chosen-as-B) order per pair: "A", "B", "tie" or None (unreadable)."""
    total = len(picks)
    agree = sum(1 for i, p in enumerate(picks) if p == ("A" if i % 2 == 0 else "B"))
    decisive = sum(1 for p in picks if p in ("A", "B"))
    both = [(picks[i], picks[i + 1]) for i in range(0, total - 1, 2) if {picks[i], picks[i + 1]} <= {"A", "B"}]
    same_position = sum(1 for a, b in both if a == b)
    first = sum(1 for p in picks if p == "A")
    figures = {
        "agreement": asdict(rate(agree, total)),
        "agreement_decisive": asdict(rate(agree, decisive)),
        "position_bias": asdict(rate(same_position, len(both))),
        "tie_rate": asdict(rate(sum(1 for p in picks if p == "tie"), total)),
        "error_rate": asdict(rate(sum(1 for p in picks if p is None), total)),
        "prefers_first": asdict(rate(first, decisive)),
        "consistent_agreement": asdict(rate(sum(1 for a, b in both if (a, b) == ("A", "B")), total // 2)),
        "judgments": total,
    }
    figures["near_chance"] = near_chance(figures)
    return figures


def near_chance(figures: dict, min_agreement: float = 0.6) -> bool:
    """True when agreement among decisive picks is below `min_agreement` or its interval reaches 0.5."""
    rate = figures["agreement_decisive"]
    return rate["value"] is None or rate["low"] <= 0.5 or rate["value"] < min_agreement


def _transcript(pair: PreferencePair) -> str:
    names = {"user": "User", "assistant": "Assistant", "system": "System"}
    return "\n\n".join(f"{names[m.role]}: {m.content}" for m in pair.prompt)


def _truncate_left(text: str, limit: int) -> str:
    """Keep the end of a long conversation: the last turns decide what a good next reply is."""
    return text if len(text) <= limit else "[...] " + text[-limit:]
