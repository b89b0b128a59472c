"""Evaluation-set contamination: word n-gram overlap between training records and eval items.

The convention of the GPT-3 and Llama reports: text is lower-cased, punctuation dropped, and a record
is contaminated when it shares one 13-word sequence with an eval item. Eval items shorter than 13
words (many MMLU options, short questions) are matched whole when they have at least
`min_item_words` words, as GPT-3 did with its shorter n for short benchmarks.

The index holds only 64-bit hashes of n-grams, sorted in a numpy array (about 16 bytes per n-gram
with the owner array), so MT-Bench plus all the harness data (~2M n-grams) fit in tens of MB, and a
lookup is one `searchsorted` per record.
"""
from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from bezoar.errors import ConfigError, DataError
from bezoar.filter.heuristics import lower_words
from bezoar.records import open_data

log = logging.getLogger(__name__)

READABLE = (".jsonl", ".json", ".csv", ".tsv", ".txt")


@dataclass(frozen=True)
class EvalItem:
    """One evaluation item: its file, its place in it (line or row, and its id when it has one), a preview."""

    source: str
    where: str
    preview: str

    def to_json(self) -> dict:
        return {"source": self.source, "item": self.where, "text": self.preview}


@dataclass
class EvalIndex:
    """Sorted n-gram hashes of every eval item, with the item each hash came from."""

    n: int
    hashes: object  # numpy uint64, sorted
    owners: object  # numpy int32, item index per hash
    items: list[EvalItem]
    short_lengths: frozenset[int] = field(default_factory=frozenset)

    @property
    def size(self) -> int:
        return int(len(self.hashes))

    def matches(self, text: str, limit: int = 5) -> list[dict]:
        """Eval items sharing an n-gram with `text` (first `limit`), each with the shared words."""
        import numpy as np

        grams = list(_grams(lower_words(text).split(), self.n, self.short_lengths))
        if not grams or not self.size:
            return []
        keys = np.fromiter((_hash(g) for g in grams), dtype=np.uint64, count=len(grams))
        where = np.searchsorted(self.hashes, keys)
        where[where >= self.size] = 0
        hit = self.hashes[where] == keys
        found: dict[int, str] = {}
        for gram_index in np.flatnonzero(hit):
            start = where[gram_index]
            # Several items may share an n-gram: walk the run of equal hashes.
            while start < self.size and self.hashes[start] == keys[gram_index]:
                found.setdefault(int(self.owners[start]), grams[gram_index])
                start += 1
            if len(found) >= limit:
                break
        return [{**self.items[i].to_json(), "ngram": gram} for i, gram in list(found.items())[:limit]]


def build_index(paths: list[Path], n: int = 13, min_item_words: int = 8) -> EvalIndex:
    """Read every eval file under `paths` and index its n-grams."""
    import numpy as np

    items: list[EvalItem] = []
    keys: list[int] = []
    owners: list[int] = []
    short: set[int] = set()
    for path, label in _files(paths):
        for where, segments in _read_items(path):
            words_per_segment = [lower_words(s).split() for s in segments]
            grams = set()
            for words in words_per_segment:
                if len(words) >= n:
                    grams.update(_ngrams(words, n))
                elif len(words) >= min_item_words:
                    grams.add(" ".join(words))
                    short.add(len(words))
            if not grams:
                continue
            preview = " | ".join(s.strip() for s in segments if s.strip())[:200]
            items.append(EvalItem(label, where, preview))
            keys.extend(_hash(g) for g in grams)
            owners.extend([len(items) - 1] * len(grams))
    order = np.argsort(np.array(keys, dtype=np.uint64), kind="stable")
    hashes = np.array(keys, dtype=np.uint64)[order]
    index = EvalIndex(n, hashes, np.array(owners, dtype=np.int32)[order], items, frozenset(short))
    log.info("contamination index: %d eval items, %d n-grams", len(items), index.size)
    return index


def _ngrams(words: list[str], n: int) -> Iterator[str]:
    return (" ".join(words[i:i + n]) for i in range(len(words) - n + 1))


def _grams(words: list[str], n: int, short_lengths: frozenset[int]) -> Iterator[str]:
    """A record's n-grams, plus its k-grams for each length k of a whole short eval item."""
    yield from _ngrams(words, n)
    for k in short_lengths:
        yield from _ngrams(words, k)


def _hash(text: str) -> int:
    # Python's str hash is salted per process, which is fine: the index never leaves the process,
    # and it is ~10x faster than a cryptographic digest over millions of n-grams.
    return hash(text) & 0xFFFFFFFFFFFFFFFF


def _files(paths: list[Path]) -> list[tuple[Path, str]]:
    """Readable files under `paths`, each with a short label (its path from the named folder's parent)."""
    found = []
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"filter.contamination.eval_paths: {path} does not exist")
        if path.is_dir():
            found += [(p, str(p.relative_to(path.parent))) for p in sorted(path.rglob("*"))
                      if p.is_file() and _kind(p) in READABLE]
        elif _kind(path) in READABLE:
            found.append((path, path.name))
        else:
            raise ConfigError(f"filter.contamination.eval_paths: {path} is not one of {', '.join(READABLE)} "
                              "(optionally .gz or .bz2)")
    return found


def _kind(path: Path) -> str:
    suffixes = path.suffixes
    if suffixes and suffixes[-1] in (".gz", ".bz2"):
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""



def _read_items(path: Path) -> Iterator[tuple[str, list[str]]]:
    """(where, text segments) per item: a JSONL line, a JSON array element, a CSV row, a text line."""
    kind = _kind(path)
    with open_data(path, newline="") as handle:  # csv reads quoted line breaks itself
        if kind == ".jsonl":
            for number, line in enumerate(handle, 1):
                if line.strip():
                    row = _json_line(path, number, line)
                    yield _item_id(row, f"line {number}"), list(_strings(row))
        elif kind == ".json":
            data = json.load(handle)
            for number, row in enumerate(data if isinstance(data, list) else [data]):
                yield _item_id(row, f"element {number}"), list(_strings(row))
        elif kind in (".csv", ".tsv"):
            for number, row in enumerate(csv.reader(handle, delimiter="\t" if kind == ".tsv" else ","), 1):
                yield f"row {number}", row
        else:
            for number, line in enumerate(handle, 1):
                yield f"line {number}", [line]


def _json_line(path: Path, number: int, line: str):
    try:
        return json.loads(line)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}:{number}: not valid JSON ({error.msg} at column {error.colno})") from None


def _item_id(row, fallback: str) -> str:
    if isinstance(row, dict):
        for key in ("question_id", "id", "idx", "index", "task_id"):
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
