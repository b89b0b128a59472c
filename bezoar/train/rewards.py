"""Verifiable rewards for GRPO: programs, not a reward model, say how good a completion is.

The main reward is open-instruct's `IFEvalVerifier`: the share of the prompt's constraints that
lm-eval's IFEval checkers find met (`bezoar.evaluate.ifeval.share_followed`, the scorer of the
preferences stage too), in [0, 1]. Two optional shaping terms, off unless `GRPORewards` gives them a
weight: a penalty for a completion cut off without end-of-sequence, and DAPO's soft overlong penalty.

Each function has TRL's reward signature: keyword arguments `prompts`, `completions`,
`completion_ids` and every dataset column, one value per completion; its `__name__` names the
metric TRL logs (`rewards/<name>/mean`).
"""
from __future__ import annotations

import json
from typing import Callable

from bezoar.evaluate.ifeval import share_followed
from bezoar.records import Record
from bezoar.train.config import GRPORewards

RewardFunction = Callable[..., list[float]]


def prompt_row(record: Record) -> dict:
    """A constraint prompt as a GRPO dataset row: the conversation and what its checkers need.
    The checkers' keyword arguments travel as JSON text: their keys differ between constraint types,
    and Arrow would merge them into one struct column padded with nulls."""
    details = record.meta.details
    ids = list(details.get("instruction_id_list") or [])
    return {"prompt": [{"role": "user", "content": record.instruction}], "prompt_id": record.meta.id or "",
            "instruction_id_list": ids, "constraint_kwargs": json.dumps(list(details.get("kwargs") or [{}] * len(ids)))}


def constraint_share(prompts: list, completions: list, instruction_id_list: list[list[str]],
                     constraint_kwargs: list[str], **_) -> list[float | None]:
    """Per completion: the share of its prompt's constraints met (strict), or None for a prompt
    without constraints (TRL leaves an all-None completion out of the group baseline)."""

    rewards: list[float | None] = []
    for prompt, completion, ids, kwargs in zip(prompts, completions, instruction_id_list, constraint_kwargs):
        if not ids:
            rewards.append(None)
            continue
        doc = {"key": 0, "prompt": _text(prompt), "instruction_id_list": list(ids), "kwargs": json.loads(kwargs)}
        rewards.append(share_followed(doc, _text(completion)))
    return rewards


def _text(turns) -> str:
    """The last message's text of a conversation, or the text itself (a plain-text prompt/completion)."""
    return turns if isinstance(turns, str) else turns[-1]["content"]


def missing_eos(eos_ids: list[int], weight: float) -> RewardFunction:
    """-weight for a completion that does not end with an end-of-sequence token (cut at the cap)."""
    def eos_missing(completion_ids: list[list[int]], **_) -> list[float]:
        return [0.0 if ids and ids[-1] in eos_ids else -weight for ids in completion_ids]
    return eos_missing


def overlong(max_completion_length: int, buffer: int, weight: float) -> RewardFunction:
    """DAPO's soft overlong punishment: 0 up to `max - buffer` tokens, then linearly down to -weight."""
    free = max(0, max_completion_length - buffer)

    def overlong_answer(completion_ids: list[list[int]], **_) -> list[float]:
        return [-weight * min(1.0, max(0, len(ids) - free) / buffer) for ids in completion_ids]
    return overlong_answer


def reward_functions(settings: GRPORewards, max_completion_length: int, eos_ids: list[int]) -> list[RewardFunction]:
    """The constraint share, plus the shaping terms that have a weight (TRL sums them, weight 1 each)."""
    functions: list[RewardFunction] = [constraint_share]
    if settings.eos_penalty:
        functions.append(missing_eos(eos_ids, settings.eos_penalty))
    if settings.overlong_penalty:
        functions.append(overlong(max_completion_length, settings.overlong_buffer, settings.overlong_penalty))
    return functions
