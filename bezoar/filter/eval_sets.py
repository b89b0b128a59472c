"""Evaluation sets as items: every file under the configured paths, read into (where, text segments, question).

An item is one eval instance: a JSONL line, a JSON array element, a CSV row, a text line, or a
HellaSwag block (its shipped text file holds six lines per item: context, label, four endings).
Its `segments` are all of its strings (question, options, answers: the n-gram rule checks them all);
its `question` is the prompt a model is asked (what a reworded copy in training data would reword:
the fuzzy and embedding layers compare against it), found by key: the first of `QUESTION_KEYS`, a CSV's
"Question" column (else its first), a text line; None when the item has no prompt (an answer file).
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from bezoar.errors import ConfigError, DataError
from bezoar.hashing import canonical_hash, file_sha256
from bezoar.records import open_data

READABLE = (".jsonl", ".json", ".csv", ".tsv", ".txt")
QUESTION_KEYS = ("question", "prompt", "instruction", "turns", "ctx", "goal", "sentence", "text")
"""Keys (any case) whose value is an item's prompt, in order of preference; a list (MT-Bench's turns)
gives its first element: the follow-up turns ("Rewrite your previous response ...") are generic."""
ID_KEYS = ("question_id", "id", "idx", "index", "task_id", "key")


@dataclass(frozen=True)
class EvalItem:
    """One evaluation item: its file label, its place in the file (and id when it has one), its texts."""

    source: str
    where: str
    segments: tuple[str, ...]
    question: str | None

    @property
    def preview(self) -> str:
        return " | ".join(s.strip() for s in self.segments if s.strip())[:200]

    def to_json(self) -> dict:
        return {"source": self.source, "item": self.where, "text": self.preview}


def eval_files(paths: list[Path]) -> list[tuple[Path, str]]:
    """Readable files under `paths`, each with a short label (its path from the named folder's parent)."""
    found = []
    for path in map(Path, paths):
        if not path.exists():
            raise ConfigError(f"filter.contamination.eval_paths: {path} does not exist")
        if path.is_dir():
            found += [(p, str(p.relative_to(path.parent))) for p in sorted(path.rglob("*"))
                      if p.is_file() and file_kind(p) in READABLE]
        elif file_kind(path) in READABLE:
            found.append((path, path.name))
        else:
            raise ConfigError(f"filter.contamination.eval_paths: {path} is not one of {', '.join(READABLE)} "
                              "(optionally .gz or .bz2)")
    return found


def content_key(paths: list[Path], settings: dict) -> str:
    """sha256 over every eval file's bytes (not names or times) and the settings an index depends on:
    the cache key of an index, so a changed eval file, or a changed setting, builds a new one."""
    digests = sorted(file_sha256(path) for path, _ in eval_files(paths))
    return canonical_hash({"files": digests, "settings": settings})


def read_items(paths: list[Path]) -> list[EvalItem]:
    """Every item of every eval file, in file order."""
    items = []
    for path, label in eval_files(paths):
        for where, segments, question in _file_items(path):
            if any(s.strip() for s in segments):
                items.append(EvalItem(label, where, tuple(segments), question))
    return items


def file_kind(path: Path) -> str:
    suffixes = path.suffixes
    if suffixes and suffixes[-1] in (".gz", ".bz2"):
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _file_items(path: Path) -> Iterator[tuple[str, list[str], str | None]]:
    kind = file_kind(path)
    with open_data(path, newline="") as handle:  # csv reads quoted line breaks itself
        if kind == ".jsonl":
            for number, line in enumerate(handle, 1):
                if line.strip():
                    yield _json_item(_json_line(path, number, line), f"line {number}")
        elif kind == ".json":
            data = json.load(handle)
            for number, row in enumerate(data if isinstance(data, list) else [data]):
                yield _json_item(row, f"element {number}")
        elif kind in (".csv", ".tsv"):
            yield from _csv_items(csv.reader(handle, delimiter="\t" if kind == ".tsv" else ","))
        elif path.name.startswith("hellaswag"):
            yield from _hellaswag_items(handle)
        else:
            for number, line in enumerate(handle, 1):
                yield f"line {number}", [line], line.strip() or None


def _json_line(path: Path, number: int, line: str):
    try:
        return json.loads(line)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}:{number}: not valid JSON ({error.msg} at column {error.colno})") from None


def _json_item(row, fallback: str) -> tuple[str, list[str], str | None]:
    return _item_id(row, fallback), list(_strings(row)), _question(row)


def _question(row) -> str | None:
    if not isinstance(row, dict):
        return row if isinstance(row, str) else None
    keys = {k.lower(): v for k, v in row.items()}
    for key in QUESTION_KEYS:
        value = keys.get(key)
        if isinstance(value, list) and value and isinstance(value[0], str):
            value = value[0]
        if isinstance(value, str) and value.strip():
            return value
    return None


def _csv_items(rows) -> Iterator[tuple[str, list[str], str | None]]:
    column = 0
    for number, row in enumerate(rows, 1):
        if number == 1 and any(cell.strip().lower() == "question" for cell in row):
            column = [cell.strip().lower() for cell in row].index("question")  # a header row, not an item
            continue
        yield f"row {number}", row, (row[column] if len(row) > column and row[column].strip() else None)


def _hellaswag_items(handle) -> Iterator[tuple[str, list[str], str | None]]:
    """Six lines per item as shipped: context, gold label, four endings."""
    lines = [line.rstrip("\n") for line in handle]
    for start in range(0, len(lines) - 5, 6):
        context = lines[start]
        yield f"item {start // 6} (line {start + 1})", [context, *lines[start + 2:start + 6]], context


def _item_id(row, fallback: str) -> str:
    if isinstance(row, dict):
        for key in ID_KEYS:
            if key in row and isinstance(row[key], (str, int)):
                return f"{fallback} ({key}={row[key]})"
    return fallback


def _strings(value) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
