"""Training data on disk → tokenized `datasets.Dataset`s with a seeded validation split.

SFT data is JSONL of `Record`s (what the filter stage writes) or any lines with a chat `messages`
list; a row that is not usable (bad JSON, no assistant reply, nothing left to learn after
truncation) is counted and reported as "FILE:LINE: reason", never fatal unless nothing is left.
"""
from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

from bezoar.errors import DataError, located
from bezoar.records import ChatMessage, PreferencePair, open_data
from bezoar.train.encoding import IGNORE, encode_pair, encode_sft

log = logging.getLogger(__name__)

PromptCompletion = tuple[list[dict], list[dict]]  # (prompt messages, completion messages)


@dataclass
class Prepared:
    """Tokenized train/validation rows and what happened to the input on the way."""

    train: list[dict]
    validation: list[dict]
    bad: list[str] = field(default_factory=list)
    truncated: int = 0
    prompt_mismatch: int = 0

    @property
    def tokens(self) -> int:
        return sum(len(row["input_ids"]) if "input_ids" in row else row.get("length", 0) for row in self.train)

    def summary(self) -> dict:
        return {"train_examples": len(self.train), "validation_examples": len(self.validation),
                "train_tokens": self.tokens, "malformed": len(self.bad), "malformed_first": self.bad[:5],
                "truncated": self.truncated, "prompt_boundary_mismatch": self.prompt_mismatch}


def read_conversations(path: Path) -> tuple[list[PromptCompletion], list[str]]:
    """(prompt, completion) pairs from a Record/messages JSONL file, and the reasons for bad lines."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file (run the step that writes it, or give another path)")
    found, bad = [], []
    with open_data(path) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                found.append(_conversation(json.loads(line)))
            except (json.JSONDecodeError, ValueError, TypeError, KeyError) as error:
                bad.append(located(path, number, _reason(error)))
    return found, bad


def _conversation(row: dict) -> PromptCompletion:
    messages = [ChatMessage.model_validate(m).model_dump() for m in row["messages"]]
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError("the conversation does not end with an assistant message")
    if not messages[-1]["content"].strip():
        raise ValueError("the assistant reply is empty")
    if not any(m["role"] == "user" for m in messages[:-1]):
        raise ValueError("no user message before the reply")
    return messages[:-1], messages[-1:]


def _reason(error: Exception) -> str:
    if isinstance(error, json.JSONDecodeError):
        return f"not valid JSON ({error.msg})"
    if isinstance(error, KeyError):
        return f"missing key {error}"
    return str(error).splitlines()[0]


def pair_conversations(pairs: list[PreferencePair]) -> list[PromptCompletion]:
    """HH-RLHF pairs → SFT on the chosen reply (the paper's SFT-on-HH-RLHF step)."""
    return [([m.model_dump() for m in p.prompt], [m.model_dump() for m in p.chosen]) for p in pairs]


def split(rows: list, fraction: float, seed: int, cap: int | None) -> tuple[list, list]:
    """Seeded shuffle, then the first `fraction` (at most `cap`) rows are validation."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    size = int(round(len(rows) * fraction)) if len(rows) > 1 else 0
    size = min(size, cap) if cap else size
    held = set(order[:size])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def prepare_sft(tokenizer, conversations: list[PromptCompletion], max_length: int, loss: str,
                fraction: float, seed: int, cap: int | None = None) -> Prepared:
    """Tokenize, drop rows without loss tokens, split off validation."""
    rows, truncated, mismatch, bad = [], 0, 0, []
    for index, (prompt, completion) in enumerate(conversations):
        encoded = encode_sft(tokenizer, prompt, completion, max_length, loss)
        truncated += encoded.truncated
        mismatch += not encoded.prompt_matches
        if all(label == IGNORE for label in encoded.labels):
            bad.append(f"example {index}: the prompt alone fills max_length={max_length}; nothing to learn")
            continue
        rows.append({"input_ids": encoded.input_ids, "labels": encoded.labels})
    train, validation = split(rows, fraction, seed, cap)
    return Prepared(train, validation, bad, truncated, mismatch)


def prepare_pairs(tokenizer, pairs: list[PreferencePair], max_length: int, fraction: float, seed: int,
                  cap: int | None = None) -> Prepared:
    """Tokenize preference pairs for DPO (early turns dropped to fit), split off validation."""
    rows, bad = [], []
    for pair in pairs:
        encoded = encode_pair(tokenizer, pair, max_length)
        if encoded is None:
            bad.append(f"{pair.meta.get('id', '?')}: the last Human turn alone fills max_length={max_length}")
            continue
        encoded["length"] = len(encoded["prompt_ids"]) + len(encoded["chosen_ids"]) + len(encoded["rejected_ids"])
        rows.append(encoded)
    train, validation = split(rows, fraction, seed, cap)
    return Prepared(train, validation, bad)


def to_dataset(rows: list[dict]):
    from datasets import Dataset

    return Dataset.from_list(rows) if rows else None
