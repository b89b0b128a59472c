"""Pairwise win rate of a checkpoint against a baseline, with a length-controlled rate.

Both models answer each prompt greedily. A prompt with verifiable constraints (a bezoar constraint
record) is decided by lm-eval's IFEval checkers: the answer meeting more constraints wins. Any other
prompt goes to the judge with FastChat's pair-v2 prompt in both orders (checkpoint as A, then as B);
it wins only when it wins both, loses only when it loses both, else it is a tie (FastChat's rule).

The length-controlled win rate follows AlpacaEval 2: a logistic model of the outcome on the
(tanh-squashed, standardised) difference in answer length; the rate is the model's prediction at
equal length, so a checkpoint cannot win by writing more.

    out_dir/answers.jsonl   per prompt: both answers, the decision and how it was made
    out_dir/summary.json    wins, ties, losses, win rate and LC win rate with 95% intervals
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from bezoar.errors import DataError
from bezoar.evaluate.config import MTBenchConfig
from bezoar.evaluate.ifeval import share_followed
from bezoar.evaluate.mt_bench import grade, judges_for, pair_prompt, read_choice
from bezoar.evaluate.mt_bench_files import Question, load_judge_prompts
from bezoar.intervals import bootstrap_mean
from bezoar.llm.cache import CachedModel
from bezoar.llm.local import decoding_of
from bezoar.llm.protocol import Sampling
from bezoar.records import read_jsonl, write_json, write_jsonl

log = logging.getLogger(__name__)

OUTCOME = {"win": 1.0, "tie": 0.5, "loss": 0.0}


@dataclass
class Prompt:
    id: str
    text: str
    instruction_id_list: list[str] = field(default_factory=list)
    kwargs: list[dict] = field(default_factory=list)


def load_prompts(path: Path, limit: int | None = None) -> list[Prompt]:
    """MT-Bench question.jsonl (first turns), IFEval rows, bezoar records (constraints kept), or
    JSONL with `prompt` / `instruction`."""

    prompts = []
    for number, row in enumerate(read_jsonl(path), 1):
        prompts.append(_prompt(row, path, number))
        if limit and len(prompts) >= limit:
            break
    if not prompts:
        raise DataError(f"{path}: no prompts")
    return prompts


def _prompt(row: dict, path: Path, number: int) -> Prompt:
    if "turns" in row:
        return Prompt(str(row.get("question_id", number)), row["turns"][0])
    if "messages" in row:
        details = row.get("meta", {}).get("details", {})
        text = next((m["content"] for m in row["messages"] if m["role"] == "user"), "")
        return Prompt(row.get("meta", {}).get("id") or str(number), text,
                      details.get("instruction_id_list") or [], details.get("kwargs") or [])
    text = row.get("prompt") or row.get("instruction")
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{path}:{number}: no prompt (expected turns, messages, prompt or instruction)")
    return Prompt(str(row.get("key", row.get("id", number))), text, row.get("instruction_id_list") or [],
                  row.get("kwargs") or [])


def answer(model: CachedModel, prompts: list[Prompt], max_new_tokens: int) -> list[str]:
    replies = model.chat([[{"role": "user", "content": p.text}] for p in prompts],
                         Sampling(temperature=0.0, max_new_tokens=max_new_tokens))
    return [r.text for r in replies]


def by_checkers(prompt: Prompt, ours: str, theirs: str) -> tuple[str, dict]:

    doc = {"key": prompt.id, "prompt": prompt.text, "instruction_id_list": prompt.instruction_id_list,
           "kwargs": prompt.kwargs}
    a, b = share_followed(doc, ours), share_followed(doc, theirs)
    return ("win" if a > b else "loss" if a < b else "tie"), {"by": "checkers", "score_ours": a, "score_theirs": b}


def by_judge(judge: CachedModel, prompts: list[Prompt], ours: list[str], theirs: list[str],
             judge_mode: str = "auto") -> list[tuple[str, dict]]:
    """FastChat pair-v2 in both orders; consistent wins/losses count, anything else is a tie."""

    if not prompts:
        return []
    templates = load_judge_prompts(None)
    config = MTBenchConfig(judge_mode=judge_mode, judge_retries=1, judge_max_new_tokens=256)
    _, comparer, _ = judges_for(judge, judge_mode)
    conversations = []
    for index, (prompt, a, b) in enumerate(zip(prompts, ours, theirs)):
        question = Question(question_id=index, category="winrate", turns=[prompt.text])
        conversations += [pair_prompt(question, [a], [b], 1, templates, None)[1],
                          pair_prompt(question, [b], [a], 1, templates, None)[1]]
    graded = grade(comparer, conversations, read_choice, config)
    decided = []
    for index in range(len(prompts)):
        first, second = graded[2 * index][0].value, graded[2 * index + 1][0].value
        ours_first = {"A": "win", "B": "loss"}.get(first, "tie")
        ours_second = {"B": "win", "A": "loss"}.get(second, "tie")
        outcome = ours_first if ours_first == ours_second else "tie"
        decided.append((outcome, {"by": "judge", "as_a": first, "as_b": second}))
    return decided


def length_controlled(outcomes: list[float], length_diffs: list[float]) -> float | None:
    """P(win) at equal length from a logistic fit of outcome on tanh(length difference / sd)
    (AlpacaEval 2's length control). Ties count half a win and half a loss. None when undefined."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(outcomes, dtype=float)
    if len(y) < 2 or y.min() == y.max():
        return None
    diffs = np.asarray(length_diffs, dtype=float)
    scale = diffs.std() or 1.0
    x = np.tanh(diffs / scale).reshape(-1, 1)
    features = np.vstack([x, x])
    labels = np.concatenate([np.ones_like(y), np.zeros_like(y)])
    weights = np.concatenate([y, 1 - y])  # a win is (1, weight 1), a tie half of each, a loss (0, weight 1)
    keep = weights > 0
    if len(set(labels[keep])) < 2:
        return None
    model = LogisticRegression(C=1e6).fit(features[keep], labels[keep], sample_weight=weights[keep])
    return float(1 / (1 + math.exp(-model.intercept_[0])))


def _lc_interval(outcomes: list[float], diffs: list[float], samples: int, seed: int) -> list[float] | None:
    import numpy as np

    rng = np.random.default_rng(seed)
    values = []
    for _ in range(samples):
        pick = rng.integers(0, len(outcomes), len(outcomes))
        value = length_controlled([outcomes[i] for i in pick], [diffs[i] for i in pick])
        if value is not None:
            values.append(value)
    if len(values) < samples // 2:
        return None
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def run_winrate(model: CachedModel, baseline: CachedModel, judge: CachedModel | None, prompts: list[Prompt],
                out_dir: Path, max_new_tokens: int = 256, judge_mode: str = "auto",
                bootstrap_samples: int = 200, seed: int = 0) -> dict:
    """Answer with both models, decide each prompt, write answers.jsonl and summary.json."""
    started = time.perf_counter()
    ours, theirs = answer(model, prompts, max_new_tokens), answer(baseline, prompts, max_new_tokens)
    decisions: list[tuple[str, dict] | None] = [None] * len(prompts)
    judged = [i for i, p in enumerate(prompts) if not p.instruction_id_list]
    for i, p in enumerate(prompts):
        if p.instruction_id_list:
            decisions[i] = by_checkers(p, ours[i], theirs[i])
    if judged and judge is None:
        raise DataError("win rate: prompts without constraints need a judge (--judge)")
    for i, decided in zip(judged, by_judge(judge, [prompts[i] for i in judged], [ours[i] for i in judged],
                                            [theirs[i] for i in judged], judge_mode) if judged else []):
        decisions[i] = decided
    lines = [{"id": p.id, "prompt": p.text, "ours": a, "theirs": b, "outcome": d[0], **d[1]}
             for p, a, b, d in zip(prompts, ours, theirs, decisions)]
    write_jsonl(Path(out_dir) / "answers.jsonl", lines)
    summary = summarise(lines, bootstrap_samples, seed)
    summary.update(model=model.identity, baseline=baseline.identity, judge=getattr(judge, "identity", None),
                   decoding=decoding_of(model.backend),
                   max_new_tokens=max_new_tokens, wall_s=round(time.perf_counter() - started, 1),
                   files={"answers": str(Path(out_dir) / "answers.jsonl")})
    write_json(Path(out_dir) / "summary.json", summary)
    return summary


def summarise(lines: list[dict], samples: int = 200, seed: int = 0) -> dict:
    outcomes = [OUTCOME[line["outcome"]] for line in lines]
    diffs = [len(line["ours"].split()) - len(line["theirs"].split()) for line in lines]
    counts = {k: sum(line["outcome"] == k for line in lines) for k in ("win", "tie", "loss")}
    return {"n": len(lines), "wins": counts["win"], "ties": counts["tie"], "losses": counts["loss"],
            "by": {k: sum(line["by"] == k for line in lines) for k in ("checkers", "judge")},
            "win_rate": sum(outcomes) / len(outcomes), "ci95": list(bootstrap_mean(outcomes, 1000, seed)),
            "lc_win_rate": length_controlled(outcomes, diffs), "lc_ci95": _lc_interval(outcomes, diffs, samples, seed),
            "mean_length_diff_words": sum(diffs) / len(diffs),
            "items": {line["id"]: OUTCOME[line["outcome"]] for line in lines}}
