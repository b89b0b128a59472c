"""The two n-gram layers of the contamination check, over lower-cased words without punctuation.

- `exact`: a text shares one `n`-word sequence (13, the GPT-3 / Llama convention) with any string of
  an eval item; an eval string shorter than `n` words but of at least `min_item_words` is matched whole,
  as GPT-3 did with a shorter n for short benchmarks.
- `coverage` (Tulu 3, arXiv 2411.15124 §3.2): more than `threshold` of an eval question's words are
  covered by `n`-grams (8) it shares with one text, so a copy with a few words changed still counts.

Every n-gram is a 64-bit polynomial hash of stable per-word hashes (blake2b, so a table written to the
cache means the same in the next process), computed for a whole batch of texts in a few numpy passes;
the eval side is sorted once and each batch is one `searchsorted`. About 16 bytes per eval n-gram.
A batch's n-grams are first tested against a bitmap of the table's hashes (`MembershipBits`): almost none
of a clean text's n-grams are in an eval set, and a random `searchsorted` probe into millions of hashes
costs a cache miss per binary-search step, where the bitmap costs one.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import numpy as np

from bezoar.filter.eval_sets import EvalItem

MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # odd, so the rolling hash mixes every word's bits
_WORDS = re.compile(r"\w+")
_word_hashes: dict[str, int] = {}


def words(text: str) -> list[str]:
    """The words n-grams are made of (the form `heuristics.lower_words` gives)."""
    return _WORDS.findall(text.lower())


def word_ids(tokens: Sequence[str]) -> np.ndarray:
    if len(_word_hashes) > 4_000_000:  # a bound on memory over a very long run; the values never change
        _word_hashes.clear()
    for token in set(tokens).difference(_word_hashes):  # set operations run in C; only unseen words loop here
        _word_hashes[token] = int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "little")
    return np.array(list(map(_word_hashes.get, tokens)), dtype=np.uint64)


@dataclass
class Batch:
    """Many texts' words laid end to end: `ids` per word, `text` (which text) and `position` per word."""

    tokens: list[list[str]]
    ids: np.ndarray
    text: np.ndarray
    position: np.ndarray

    @classmethod
    def of(cls, token_lists: list[list[str]]) -> "Batch":
        lengths = np.array([len(t) for t in token_lists], dtype=np.int64)
        flat = [w for tokens in token_lists for w in tokens]
        text = np.repeat(np.arange(len(token_lists)), lengths)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(lengths) else np.zeros(0, np.int64)
        position = np.arange(len(flat)) - np.repeat(starts, lengths)
        return cls(token_lists, word_ids(flat), text, position)

    def grams(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(hash, start index into the flat arrays) of every n-gram lying inside one text."""
        return self.grams_of([n])[n]

    def grams_of(self, sizes: Sequence[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """`grams` for several n at once: the hash of an (n+1)-gram extends the n-gram's by one word, so
        the longest n costs one pass per word of it, not one per word of every n."""
        found: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        wanted = set(sizes)
        hashes = np.zeros(len(self.ids), dtype=np.uint64)
        for n in range(1, max(wanted, default=0) + 1):
            count = len(self.ids) - n + 1
            if count <= 0:
                found.update({m: (np.zeros(0, np.uint64), np.zeros(0, np.int64)) for m in wanted if m >= n})
                break
            hashes = hashes[:count] * MULTIPLIER + self.ids[n - 1:n - 1 + count]
            if n in wanted:
                inside = np.flatnonzero(self.text[:count] == self.text[n - 1:n - 1 + count])
                found[n] = hashes[inside], inside
        return found


class MembershipBits:
    """A bitmap over the top `BITS` bits of a sorted hash table: a key whose bit is clear is not in the
    table (1.7M eval 13-grams set ~1.3% of 2**27 bits, so ~99% of absent keys stop here). 16 MB."""

    BITS = 27

    def __init__(self, table: np.ndarray):
        self.bits = np.zeros(1 << (self.BITS - 3), dtype=np.uint8)
        slots = self._slots(table)
        np.bitwise_or.at(self.bits, slots >> 3, np.left_shift(1, slots & 7).astype(np.uint8))

    def _slots(self, keys: np.ndarray) -> np.ndarray:
        return (keys >> np.uint64(64 - self.BITS)).astype(np.int64)

    def maybe(self, keys: np.ndarray) -> np.ndarray:
        """Indexes of the keys that may be in the table."""
        slots = self._slots(keys)
        return np.flatnonzero((self.bits[slots >> 3] >> (slots & 7).astype(np.uint8)) & 1)


def _lookup(table: np.ndarray, keys: np.ndarray, bits: MembershipBits) -> tuple[np.ndarray, np.ndarray]:
    """(key index, table index) of every equal pair: a key may match a run of equal table hashes."""
    candidates = bits.maybe(keys)
    probe = keys[candidates]
    left, right = np.searchsorted(table, probe, "left"), np.searchsorted(table, probe, "right")
    counts = right - left
    key_index = np.repeat(candidates, counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return key_index, np.repeat(left, counts) + offsets


@dataclass
class NgramTables:
    """The eval side of both layers, as sorted arrays (saved to and loaded from the index cache)."""

    exact_n: int
    exact_hashes: np.ndarray
    exact_owner: np.ndarray
    short_lengths: np.ndarray
    coverage_n: int
    coverage_hashes: np.ndarray
    coverage_owner: np.ndarray
    coverage_position: np.ndarray
    question_words: np.ndarray

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: v for k, v in vars(self).items() if isinstance(v, np.ndarray)}

    @cached_property
    def exact_bits(self) -> MembershipBits:
        return MembershipBits(self.exact_hashes)

    @cached_property
    def coverage_bits(self) -> MembershipBits:
        return MembershipBits(self.coverage_hashes)

    @classmethod
    def from_arrays(cls, exact_n: int, coverage_n: int, arrays) -> "NgramTables":
        return cls(exact_n=exact_n, coverage_n=coverage_n, **{k: arrays[k] for k in arrays})


def build_tables(items: list[EvalItem], exact_n: int, min_item_words: int, coverage_n: int) -> NgramTables:
    segments = [(i, words(s)) for i, item in enumerate(items) for s in item.segments]
    long_ones = [(i, w) for i, w in segments if len(w) >= exact_n]
    short_ones = [(i, w) for i, w in segments if min_item_words <= len(w) < exact_n]
    batch = Batch.of([w for _, w in long_ones])
    hashes, starts = batch.grams(exact_n)
    owners = np.array([i for i, _ in long_ones], dtype=np.int32)[batch.text[starts]] if len(starts) else np.zeros(0, np.int32)
    whole = [Batch.of([w]).grams(len(w))[0][0] for _, w in short_ones]
    exact_hashes = np.concatenate([hashes, np.array(whole, dtype=np.uint64)])
    exact_owner = np.concatenate([owners, np.array([i for i, _ in short_ones], dtype=np.int32)])
    order = np.argsort(exact_hashes, kind="stable")
    questions = [words(item.question or "") for item in items]
    qbatch = Batch.of(questions)
    qhashes, qstarts = qbatch.grams(coverage_n)
    qorder = np.argsort(qhashes, kind="stable")
    return NgramTables(exact_n, exact_hashes[order], exact_owner[order],
                       np.array(sorted({len(w) for _, w in short_ones}), dtype=np.int64),
                       coverage_n, qhashes[qorder], qbatch.text[qstarts][qorder].astype(np.int32),
                       qbatch.position[qstarts][qorder].astype(np.int32),
                       np.array([len(q) for q in questions], dtype=np.int32))


def exact_matches(tables: NgramTables, batch: Batch) -> dict[tuple[int, int], str]:
    """{(text, eval item): the first shared n-gram} for every text of `batch`."""
    found: dict[tuple[int, int], str] = {}
    for n, (hashes, starts) in batch.grams_of([tables.exact_n, *tables.short_lengths.tolist()]).items():
        keys, rows = _lookup(tables.exact_hashes, hashes, tables.exact_bits)
        for key, row in zip(keys.tolist(), rows.tolist()):
            start = starts[key]
            text, position = int(batch.text[start]), int(batch.position[start])
            found.setdefault((text, int(tables.exact_owner[row])), " ".join(batch.tokens[text][position:position + n]))
    return found


def coverage_matches(tables: NgramTables, batch: Batch, threshold: float) -> dict[tuple[int, int], float]:
    """{(text, eval item): share of the item's question words covered} where it is above `threshold`."""
    n = tables.coverage_n
    hashes, starts = batch.grams(n)
    keys, rows = _lookup(tables.coverage_hashes, hashes, tables.coverage_bits)
    if not len(rows):
        return {}
    text = batch.text[starts[keys]].astype(np.int64)
    item = tables.coverage_owner[rows].astype(np.int64)
    position = tables.coverage_position[rows].astype(np.int64)
    pair = np.unique(np.stack([text, item, position], axis=1), axis=0)  # sorted by text, item, position
    same_next = np.zeros(len(pair), dtype=bool)
    same_next[:-1] = (pair[1:, 0] == pair[:-1, 0]) & (pair[1:, 1] == pair[:-1, 1])
    gap = np.full(len(pair), n)
    gap[:-1] = np.where(same_next[:-1], np.minimum(pair[1:, 2] - pair[:-1, 2], n), n)
    groups, first = np.unique(pair[:, :2], axis=0, return_index=True)
    covered = np.add.reduceat(gap, first)
    share = covered / np.maximum(tables.question_words[groups[:, 1]], 1)
    return {(int(t), int(i)): round(float(s), 4) for (t, i), s in zip(groups, share) if s > threshold}
