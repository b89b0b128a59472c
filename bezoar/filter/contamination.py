"""Evaluation-set contamination, in layers; every match carries its evidence (eval item, layer, score).

    exact_ngram     one shared 13-word run (GPT-3 / Llama), or a whole short eval string   ngram_overlap
    ngram_coverage  > 50% of an eval question's words covered by shared 8-grams (Tulu 3) ngram_overlap
    fuzzy           difflib ratio with a short eval question (Cosmopedia's measure)      paraphrase
    embedding       MiniLM cosine with one of the record's top-k eval questions (LMSYS)  paraphrase
    judge           the judge says "same question" about an embedding candidate (LMSYS)  paraphrase

The n-gram layers read instructions and responses; the others the instruction (every user turn), since
what they catch is a reworded question. `build_index` reads the eval files once per content: its
n-gram tables and question embeddings are cached under the user cache, keyed by the files' bytes, the
settings and the embedder's weights. `screen` checks a list of records against it in batches.
"""
from __future__ import annotations

import logging
import os
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from bezoar.filter import embedder, eval_sets
from bezoar.filter.config import ContaminationConfig
from bezoar.filter.eval_sets import EvalItem
from bezoar.filter.ngram_overlap import Batch, NgramTables, build_tables, coverage_matches, exact_matches, words
from bezoar.filter.paraphrase import FuzzyText, Retriever, ShortQuestion, ask_judge, names_a_topic, top_k_cosine
from bezoar.llm.cache import default_cache_path
from bezoar.records import Record

log = logging.getLogger(__name__)

INDEX_VERSION = 1  # part of the cache key: bump when what the index holds changes
BLOCK = 4096  # records per n-gram batch: bounds the flat arrays' memory
MATCHES_PER_LAYER = 5
MIN_QUESTION_WORDS = 4  # a one- or two-word eval string ("Inflation") is a label, not a question to copy
JUDGE_CANDIDATE_RATE = 0.08
"""Judge calls per record (embedding candidates in the grey zone, `judge_candidates` of a screening), measured
on 100k real instructions by benchmarks/bench_contamination.py (0.082 at gate 0.5): the plan's estimate."""
JUDGE_PROMPT_TOKENS = 235
"""Mean prompt tokens of a "same question?" call, measured there (SmolLM2 tokenizer: 143,508 over 616 calls)."""


@dataclass
class ContaminationIndex:
    """Everything the layers look up, built once per eval content."""

    items: list[EvalItem]
    tables: NgramTables
    question_rows: np.ndarray
    """Eval item index of each question row (items that have a prompt)."""
    question_vectors: np.ndarray | None
    embedder_dir: Path | None
    key: str
    cached: bool = False
    build_s: float = 0.0
    _retriever: Retriever | None = field(default=None, repr=False)
    _short: dict[int, dict[int, ShortQuestion]] = field(default_factory=dict, repr=False)
    _topics: np.ndarray | None = field(default=None, repr=False)

    @property
    def size(self) -> int:
        return int(len(self.tables.exact_hashes))

    @property
    def retriever(self) -> Retriever:
        if self._retriever is None:  # fitting takes under a second; not worth a cache entry
            self._retriever = Retriever.fit([self.items[i].question for i in self.question_rows], self.question_rows)
        return self._retriever

    def short_questions(self, max_words: int) -> dict[int, ShortQuestion]:
        """{eval item: its question} for questions of MIN_QUESTION_WORDS to `max_words` words (the fuzzy
        layer's), prepared once per index rather than once per record."""
        if max_words not in self._short:
            prepared = ((int(i), words(self.items[i].question)) for i in self.question_rows)
            self._short[max_words] = {i: ShortQuestion.of(w) for i, w in prepared
                                      if MIN_QUESTION_WORDS <= len(w) <= max_words}
        return self._short[max_words]

    @property
    def topic_rows(self) -> np.ndarray:
        """Per question row: whether the question only names a topic (`paraphrase.names_a_topic`)."""
        if self._topics is None:
            self._topics = np.array([names_a_topic(self.items[i].question) for i in self.question_rows], dtype=bool)
        return self._topics

    def matches(self, text: str, limit: int = 5) -> list[dict]:
        """Eval items sharing an exact n-gram with one `text` (first `limit`), each with the shared words."""
        found = exact_matches(self.tables, Batch.of([words(text)]))
        return [{**self.items[item].to_json(), "ngram": gram} for (_, item), gram in list(found.items())[:limit]]


def cache_dir() -> Path:

    return default_cache_path().parent / "contamination"


INDEX_S_PER_ITEM = 0.009
"""Seconds to index one eval item (n-grams and its question's embedding) when the index is not cached:
1,399 items in 12.4 s (recipes/tiny.yaml's MT-Bench, ARC and IFEval on a 2-core AVX-512 machine)."""


def _index_key(paths: list[Path], settings: ContaminationConfig, model: Path | None) -> str:
    return eval_sets.content_key(paths, {"v": INDEX_VERSION, "ngram": settings.ngram, "min_item_words": settings.min_item_words,
                                         "coverage_n": settings.coverage.n,
                                         "max_tokens": settings.embedding.max_tokens,
                                         "embedder": embedder.identity(model) if model else None})


def index_build_s(settings: ContaminationConfig) -> float:
    """Expected seconds to build the index of `settings.eval_paths` (0 when it is cached): the plan's figure."""
    if not (settings.enabled and settings.eval_paths):
        return 0.0
    model = embedder.model_dir(settings.embedding.model) if settings.embedding.enabled else None
    if settings.cache and (cache_dir() / f"{_index_key(settings.eval_paths, settings, model)[:32]}.npz").exists():
        return 0.0
    return len(eval_sets.read_items(settings.eval_paths)) * INDEX_S_PER_ITEM


def build_index(paths: list[Path], settings: ContaminationConfig | None = None) -> ContaminationIndex:
    """Read every eval file under `paths` and index it (or load the index cached for this content)."""
    settings = settings or ContaminationConfig()
    started = time.perf_counter()
    items = eval_sets.read_items(paths)
    model = embedder.model_dir(settings.embedding.model) if settings.embedding.enabled else None
    key = _index_key(paths, settings, model)
    rows = np.array([i for i, item in enumerate(items) if item.question], dtype=np.int64)
    path = cache_dir() / f"{key[:32]}.npz"
    if settings.cache and path.exists():
        with np.load(path) as stored:
            arrays = dict(stored)
        vectors = arrays.pop("question_vectors", None)
        tables = NgramTables.from_arrays(settings.ngram, settings.coverage.n, arrays)
        index = ContaminationIndex(items, tables, rows, vectors, model, key, cached=True)
    else:
        tables = build_tables(items, settings.ngram, settings.min_item_words, settings.coverage.n)
        vectors = (embedder.encode([items[i].question for i in rows], model, settings.embedding.batch_size,
                                   settings.embedding.max_tokens) if model else None)
        index = ContaminationIndex(items, tables, rows, vectors, model, key)
        if settings.cache:
            _save(path, tables, vectors)
    index.build_s = round(time.perf_counter() - started, 2)
    log.info("contamination index: %d eval items, %d n-grams, %s in %.1f s", len(items), index.size,
             "from the cache" if index.cached else "built", index.build_s)
    return index


def _save(path: Path, tables: NgramTables, vectors: np.ndarray | None) -> None:
    """Atomically: a half-written cache entry would be read as a broken index by the next process."""

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.npz")
    arrays = tables.arrays() | ({"question_vectors": vectors} if vectors is not None else {})
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def record_texts(record: Record) -> tuple[str, str]:
    """(every user turn, every assistant turn) of a record."""
    def joined(role: str) -> str:
        return "\n".join(m.content for m in record.messages if m.role == role)
    return joined("user"), joined("assistant")


@dataclass
class Screening:
    """Per record its matches (possibly none), and what the check did."""

    matches: list[list[dict]]
    summary: dict


def screen(records: Sequence[Record], index: ContaminationIndex, settings: ContaminationConfig,
           judge=None) -> Screening:
    """Every layer the settings enable, over `records`; the judge layer only when `judge` is given."""
    texts = [record_texts(r) for r in records]
    found: list[dict[tuple[str, int], dict]] = [{} for _ in records]
    timings: dict[str, float] = {}

    def timed(name: str, action) -> None:
        started = time.perf_counter()
        action()
        timings[name] = round(time.perf_counter() - started, 3)

    timed("ngram", lambda: _ngram_layers(texts, index, settings, found))
    instructions = [t[0] for t in texts]
    extra: dict = {}
    if settings.fuzzy.enabled or settings.embedding.enabled:
        retrieved: dict = {}
        timed("retrieval", lambda: retrieved.update(zip(("candidates", "best"), index.retriever.candidates(instructions, settings.top_k))))
        if settings.fuzzy.enabled:
            timed("fuzzy", lambda: _fuzzy_layer(instructions, retrieved["candidates"], index, settings, found))
        if settings.embedding.enabled and index.question_vectors is not None:
            timed("embedding", lambda: extra.update(_embedding_layers(instructions, retrieved["best"], index, settings,
                                                                      judge, found)))
    matches = [sorted(f.values(), key=lambda m: (LAYERS.index(m["layer"]), -m["score"])) for f in found]
    return Screening(matches, _summary(matches, index, settings, timings, extra))


LAYERS = ("exact_ngram", "ngram_coverage", "fuzzy", "embedding", "judge")


def _add(found: dict, item: EvalItem, item_index: int, layer: str, score: float, field_name: str, **evidence) -> None:
    """Keep a record's strongest evidence per (layer, eval item), at most MATCHES_PER_LAYER per layer."""
    key = (layer, item_index)
    if key in found:
        return
    if sum(k[0] == layer for k in found) >= MATCHES_PER_LAYER:
        return
    found[key] = {**item.to_json(), "layer": layer, "score": round(float(score), 4), "field": field_name, **evidence}


def _ngram_layers(texts, index: ContaminationIndex, settings: ContaminationConfig, found) -> None:
    fields = ("instruction", "response")
    for start in range(0, len(texts), BLOCK):
        flat = [words(t) for pair in texts[start:start + BLOCK] for t in pair]
        batch = Batch.of(flat)
        for (text, item), gram in exact_matches(index.tables, batch).items():
            _add(found[start + text // 2], index.items[item], item, "exact_ngram", 1.0, fields[text % 2], ngram=gram)
        if settings.coverage.enabled:
            for (text, item), share in coverage_matches(index.tables, batch, settings.coverage.threshold).items():
                _add(found[start + text // 2], index.items[item], item, "ngram_coverage", share, fields[text % 2])


def _fuzzy_layer(instructions, candidates, index: ContaminationIndex, settings: ContaminationConfig, found) -> None:
    layer = settings.fuzzy
    short = index.short_questions(layer.max_words)
    for record, pairs in enumerate(candidates):
        questions = [(item_index, short[item_index]) for item_index, _ in pairs if item_index in short]
        if not questions:
            continue
        record_words = words(instructions[record])
        present = set(record_words)
        questions = [(i, q) for i, q in questions if q.content_share(present) >= layer.min_content_share]
        if not questions:
            continue
        text = FuzzyText(record_words)
        for item_index, question in questions:
            ratio = text.ratio(question.text)
            if ratio >= layer.threshold:
                _add(found[record], index.items[item_index], item_index, "fuzzy", ratio, "instruction")


def _embedding_layers(instructions, best, index: ContaminationIndex, settings: ContaminationConfig, judge, found) -> dict:
    layer, ask = settings.embedding, settings.judge
    gated = np.flatnonzero(best >= layer.gate) if layer.gate > 0 else np.arange(len(instructions))
    # Identical instructions (one prompt with several responses, a multi-turn record's first turn) are
    # embedded and ranked once.
    unique: dict[str, int] = {}
    slots = [unique.setdefault(instructions[i], len(unique)) for i in gated]
    vectors = embedder.encode(list(unique), index.embedder_dir, layer.batch_size, layer.max_tokens)
    # Neighbours down to the judge's floor are looked at even without a judge: their count is the plan's
    # estimate of what the judge layer would cost on this data.
    nearest = top_k_cosine(vectors, index.question_vectors, layer.top_k, min(layer.threshold, ask.min_cosine))
    use_judge = ask.enabled and judge is not None
    to_judge: list[tuple[int, int, float]] = []
    grey = 0
    topic_texts = [names_a_topic(text) for text in unique]
    for record, slot in zip(gated.tolist(), slots):
        for row, cosine in nearest[slot]:
            item_index = int(index.question_rows[row])
            topic_only = topic_texts[slot] or bool(index.topic_rows[row])
            needs_judge = ask.confirm == "all" or cosine < layer.threshold or topic_only
            grey += needs_judge
            if use_judge and needs_judge:
                to_judge.append((record, item_index, cosine))
            elif cosine >= layer.threshold and not topic_only:
                _add(found[record], index.items[item_index], item_index, "embedding", cosine, "instruction")
    summary = {"embedded_records": int(len(gated)), "embedded_texts": len(unique), "judge_candidates": grey,
               "judge_asked": len(to_judge)}
    if to_judge:
        usage_before = judge.usage.copy()
        answers = ask_judge([(index.items[i].question, instructions[r]) for r, i, _ in to_judge], judge, ask.scoring,
                            ask.prompt, ask.max_chars)
        for (record, item_index, cosine), answer in zip(to_judge, answers):
            if answer.same:
                _add(found[record], index.items[item_index], item_index, "judge",
                     answer.p_yes if answer.p_yes is not None else 1.0, "instruction", cosine=round(cosine, 4))
        summary.update(judge_said_same=sum(bool(a.same) for a in answers),
                       judge_unreadable=sum(a.same is None for a in answers),
                       judge_usage=judge.usage.minus(usage_before).to_json())
    return summary


def _summary(matches: list[list[dict]], index: ContaminationIndex, settings: ContaminationConfig,
             timings: dict, extra: dict) -> dict:
    """Counts per layer, and per eval set the share of its items some record matched (Tulu 3 drops a
    training set that overlaps more than 2% of an eval set; here it is reported, records are dropped)."""
    per_set = Counter(item.source for item in index.items)
    matched_items: dict[str, set[str]] = defaultdict(set)
    for record_matches in matches:
        for m in record_matches:
            matched_items[m["source"]].add(m["item"])
    overlap = {s: {"items": n, "matched": len(matched_items[s]), "share": round(len(matched_items[s]) / n, 4),
                   "over_2_percent": len(matched_items[s]) / n > 0.02} for s, n in per_set.items() if matched_items[s]}
    layers = Counter(layer for record_matches in matches for layer in {m["layer"] for m in record_matches})
    return {"checked": True, "records": len(matches), "contaminated_records": sum(bool(m) for m in matches),
            "layers": dict(layers), "eval_items": len(index.items), "eval_sets": dict(per_set), "ngrams": index.size,
            "ngram": settings.ngram, "overlap_by_eval_set": overlap,
            "index": {"key": index.key[:16], "cached": index.cached, "build_s": index.build_s},
            "timings_s": timings, **extra}


def judge_cost(records: int, settings: ContaminationConfig, judged: bool = True) -> tuple[int, int, int]:
    """(calls, prompt tokens, completion tokens) the judge layer is expected to cost for `records` records:
    the plan's line. Local judges answer by next-token probabilities (no completion tokens); a generated
    answer ("Same question: [[yes]]") is about 8 tokens."""
    if not (settings.enabled and settings.judge.enabled and settings.embedding.enabled and settings.eval_paths and judged):
        return 0, 0, 0
    share = JUDGE_CANDIDATE_RATE * (settings.embedding.top_k if settings.judge.confirm == "all" else 1)
    calls = int(np.ceil(records * min(float(settings.embedding.top_k), share)))
    completion = 0 if settings.judge.scoring == "logprobs" else 8
    return calls, calls * JUDGE_PROMPT_TOKENS, calls * completion


def problems(settings: ContaminationConfig) -> list[str]:
    """What preflight should refuse before any call: an embedder that cannot load, eval files that are missing
    or unreadable (each message names the recipe key)."""
    found = []
    if not (settings.enabled and settings.eval_paths):
        return found
    if settings.embedding.enabled:
        try:
            embedder.model_dir(settings.embedding.model)
        except Exception as error:  # ConfigError: not installed / not a model directory
            found.append(f"filter.contamination.embedding.model: {error}")
    try:
        eval_sets.eval_files(settings.eval_paths)
    except Exception as error:
        found.append(str(error))
    return found
