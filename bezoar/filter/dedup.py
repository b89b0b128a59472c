"""Duplicate instructions: exact after normalisation, then near-duplicates by MinHash-LSH or embeddings.

Both steps build a similarity graph (who is a duplicate of whom) and then pick survivors by
"star" clustering in score order: the best-scored unassigned record keeps its place and takes its
unassigned neighbours as its duplicates. Unlike union-find, this never chains A~B~C into one cluster
when A and C are unalike, and the survivor of every cluster is its best-rated member.
"""
from __future__ import annotations

import logging
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from bezoar.filter import embedder
from bezoar.filter.heuristics import lower_words
from bezoar.prompts import word_list

log = logging.getLogger(__name__)

Graph = dict[int, set[int]]


@dataclass
class Duplicate:
    """Record `index` was dropped as a duplicate of record `kept` (similarity in [0, 1])."""

    index: int
    kept: int
    similarity: float


def exact_graph(texts: Sequence[str]) -> Graph:
    """Records whose normalised texts are identical are all linked."""
    groups: dict[str, list[int]] = defaultdict(list)
    for index, text in enumerate(texts):
        groups[lower_words(text)].append(index)
    graph: Graph = {}
    for members in groups.values():
        if len(members) > 1:
            for index in members:
                graph[index] = set(members) - {index}
    return graph


def shingles(text: str, max_n: int = 1) -> set[str]:
    """Content-word n-grams (n = 1..max_n) of the normalised text; stop words are dropped because in short
    instructions ("What is a polygon?" / "What is a hadron?") they would make unrelated questions look alike."""
    words = lower_words(text).split()
    content = [w for w in words if w not in _stopwords()] or words
    return {" ".join(content[i:i + n]) for n in range(1, max_n + 1) for i in range(len(content) - n + 1)}


def minhash_graph(texts: Sequence[str], threshold: float, num_perm: int = 128, max_n: int = 1,
                  seed: int = 1) -> tuple[Graph, dict[tuple[int, int], float]]:
    """Near-duplicate links: MinHash-LSH (datasketch) proposes candidates, IDF-weighted Jaccard confirms them.

    LSH makes this near-linear: each record is hashed once and compared only with the few records that
    share a band, instead of all n^2 pairs. The confirmation weighs each shingle by its inverse document
    frequency in this corpus (see `_idf`), so templated questions that differ in their one rare word ("What are the
    words of House Reed?" / "... House Tyrell?") stay apart while rewordings of one question join.
    It is exact on the shingle sets, so MinHash's estimation noise (about 0.04 at 128 permutations)
    never decides a pair. LSH runs at a lower threshold, since rare shared words lift the weighted score.
    """
    from datasketch import MinHash, MinHashLSH

    sets = [shingles(t, max_n) or {""} for t in texts]
    idf = _idf(sets)
    hashes = MinHash.bulk([[s.encode() for s in shingle_set] for shingle_set in sets], num_perm=num_perm, seed=seed)
    lsh = MinHashLSH(threshold=max(0.2, threshold - 0.25), num_perm=num_perm)
    with lsh.insertion_session() as session:
        for index, minhash in enumerate(hashes):
            session.insert(index, minhash, check_duplication=False)
    graph: Graph = defaultdict(set)
    similarity: dict[tuple[int, int], float] = {}
    for index, minhash in enumerate(hashes):
        for other in lsh.query(minhash):
            if other <= index:
                continue
            score = weighted_jaccard(sets[index], sets[other], idf)
            if score >= threshold:
                graph[index].add(other)
                graph[other].add(index)
                similarity[(index, other)] = round(score, 4)
    return dict(graph), similarity


def weighted_jaccard(a: set[str], b: set[str], idf: dict[str, float]) -> float:
    union = sum(idf[s] for s in a | b)
    return sum(idf[s] for s in a & b) / union if union else 1.0


def _idf(sets: Sequence[set[str]], prior_documents: int = 500) -> dict[str, float]:
    """Shingle weights 1 + s * idf, where s = N / (N + 500) shrinks towards plain Jaccard in small corpora:
    among a few dozen records the words a cluster of rewordings shares are "common" only because of that
    cluster, so their IDF says nothing; over thousands of records it does."""
    counts = Counter(s for shingle_set in sets for s in shingle_set)
    total = len(sets)
    shrink = total / (total + prior_documents)
    return {s: 1.0 + shrink * math.log((total + 1) / (count + 0.5)) for s, count in counts.items()}


@lru_cache(maxsize=1)
def _stopwords() -> frozenset[str]:

    return frozenset(word_list("stopwords_en.txt"))


def embedding_graph(texts: Sequence[str], model_dir: Path | None, threshold: float,
                    batch_size: int = 64) -> tuple[Graph, dict[tuple[int, int], float]]:
    """Near-duplicate links by cosine similarity of sentence embeddings (`model_dir`, or the shipped
    all-MiniLM-L6-v2 when None).

    Exact all-pairs cosine in blocks: with a few thousand instructions one matrix product per block
    is faster than building an ANN index, and exact.
    """
    import numpy as np

    vectors = embed(texts, model_dir, batch_size)
    graph: Graph = defaultdict(set)
    similarity: dict[tuple[int, int], float] = {}
    for start in range(0, len(texts), 1024):
        block = vectors[start:start + 1024] @ vectors.T
        rows, cols = np.nonzero(block >= threshold)
        for row, col in zip(rows.tolist(), cols.tolist()):
            index = start + row
            if col > index:
                graph[index].add(col)
                graph[col].add(index)
                similarity[(index, col)] = round(float(block[row, col]), 4)
    return dict(graph), similarity


def embed(texts: Sequence[str], model_dir: Path | None, batch_size: int = 64):
    """L2-normalised sentence embeddings (numpy float32), by the shipped embedder unless `model_dir` names one."""

    return embedder.encode(texts, embedder.model_dir(model_dir), batch_size)


def assign(graph: Graph, scores: Sequence[float], similarity: dict[tuple[int, int], float] | None = None) -> list[Duplicate]:
    """Star clustering in descending score order (ties: earlier record first); returns the dropped records."""
    order = sorted(graph, key=lambda i: (-scores[i], i))
    taken: set[int] = set()
    dropped: list[Duplicate] = []
    for keeper in order:
        if keeper in taken:
            continue
        taken.add(keeper)
        for other in sorted(graph[keeper]):
            if other not in taken:
                taken.add(other)
                pair = (min(keeper, other), max(keeper, other))
                dropped.append(Duplicate(other, keeper, (similarity or {}).get(pair, 1.0)))
    return dropped
