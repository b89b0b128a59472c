"""The layers of the contamination check that catch what n-grams miss: filler words, synonyms, rewordings.

- retrieval: TF-IDF (scikit-learn) over the eval questions proposes each record's closest questions,
  so that no layer compares every record with every eval item;
- `fuzzy`: a character-level difflib ratio (Cosmopedia's measure) between a record's instruction and a
  short eval question (where n-grams cannot work: a 9-word question with two words inserted shares no
  8-gram with its copy);
- `embedding`: cosine of sentence embeddings (LMSYS's LLM decontaminator, arXiv 2311.04850), the top-k
  eval questions of each record, those at or above a threshold;
- `judge`: the judge model asked "same question?" about embedding candidates (LMSYS's second step).

Embedding every record is what costs: ~100 short texts/s for MiniLM on two CPU cores. So only records
whose best TF-IDF similarity to some eval question reaches `gate` are embedded (a reworded question keeps
most of its rare words; an unrelated record shares few). `gate: 0` embeds every record, as LMSYS did.
"""
from __future__ import annotations

import difflib
import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np

from bezoar.filter.judge import load_prompt, scoring_mode, scoring_model, truncate
from bezoar.filter.ngram_overlap import words
from bezoar.llm.next_token import same_question_scorer
from bezoar.llm.protocol import Sampling
from bezoar.prompts import word_list

log = logging.getLogger(__name__)


@dataclass
class Retriever:
    """TF-IDF rows of the eval questions; `rows` maps a question row to its eval item."""

    vectorizer: object
    matrix_t: object  # scipy CSR, terms x questions
    rows: np.ndarray

    @classmethod
    def fit(cls, questions: Sequence[str], rows: np.ndarray) -> "Retriever":
        from sklearn.feature_extraction.text import TfidfVectorizer

        # English stop words and terms in over 2% of questions ("following", "which") carry no topic. As a
        # count (at least 1): sklearn refuses a share that leaves under one document (an eval set of < 50).
        max_df = max(1, int(0.02 * len(questions)))
        vectorizer = TfidfVectorizer(stop_words="english", sublinear_tf=True, max_df=max_df, dtype=np.float32)
        matrix = vectorizer.fit_transform(questions)
        return cls(vectorizer, matrix.T.tocsr(), rows)

    def candidates(self, texts: Sequence[str], k: int, block: int = 2048) -> tuple[list[list[tuple[int, float]]], np.ndarray]:
        """Per text its best `k` (eval item, similarity) and its best similarity."""
        found: list[list[tuple[int, float]]] = []
        best = np.zeros(len(texts), dtype=np.float32)
        for start in range(0, len(texts), block):
            scores = (self.vectorizer.transform(texts[start:start + block]) @ self.matrix_t).tocsr()
            for row in range(scores.shape[0]):
                low, high = scores.indptr[row], scores.indptr[row + 1]
                data = scores.data[low:high]
                # argpartition, then a sort of the k best only: a record shares some term with ~1,500 questions.
                top = np.argpartition(-data, k - 1)[:k] if len(data) > k else np.arange(len(data))
                top = top[np.argsort(-data[top])]
                found.append(list(zip(self.rows[scores.indices[low:high][top]].tolist(), data[top].tolist())))
                best[start + row] = data[top[0]] if len(top) else 0.0
        return found, best


MIN_CONTAINED = 0.9
"""Share of the question's characters that must reappear, in order, in the text: what separates a copy
with words inserted (all of it is there) from a near-miss ("the value of 2+2" / "the value of x if x^2 = 4")."""


@dataclass(frozen=True)
class ShortQuestion:
    """An eval question as the fuzzy layer compares it: normalised, with its content words."""

    text: str
    content: frozenset[str]

    @classmethod
    def of(cls, question_words: list[str]) -> "ShortQuestion":
        return cls(" ".join(question_words), content_words(question_words) or frozenset(question_words))

    def content_share(self, text_words: set[str]) -> float:
        """Share of the question's content words (not stop words) found among `text_words`: a short question
        about another entity ("What does AWS stand for?" / "What does WIKI stand for?") differs in exactly these."""
        return len(self.content & text_words) / len(self.content) if self.content else 0.0


class FuzzyText:
    """One normalised text, compared with many questions: difflib indexes the text once (its b2j table),
    not once per question."""

    def __init__(self, text_words: list[str], max_chars: int = 3000):
        self.text = " ".join(text_words)[:max_chars]
        self.matcher = difflib.SequenceMatcher(None, "", self.text, autojunk=False)

    def ratio(self, question: str) -> float:
        """difflib's ratio of the normalised question and the part of the text it aligns with (matching runs of
        3+ characters, from the first to the last): a copy inside a longer prompt scores as the copy itself,
        filler words inserted lower it by their share, scattered chance matches in a long text span too far
        to count. 0 unless MIN_CONTAINED of the question is matched."""
        if not question or not self.text:
            return 0.0
        self.matcher.set_seq1(question)
        blocks = [block for block in self.matcher.get_matching_blocks() if block.size >= 3]
        matched = sum(block.size for block in blocks)
        if matched < MIN_CONTAINED * len(question):
            return 0.0
        span = blocks[-1].b + blocks[-1].size - blocks[0].b
        return 2 * matched / (len(question) + span)


def content_words(tokens: Sequence[str]) -> frozenset[str]:
    """The words of `tokens` that are not stop words."""
    stop = stopwords()
    return frozenset(w for w in tokens if w not in stop)


MIN_CONTENT_WORDS = 2
"""An embedding match needs this many content words on both sides. A text with one ("What is
photosynthesis?", MMLU's one-word item "Inflation") names a topic, not a question, and MiniLM puts it
near every short question on that topic: such pairs scored cosine 0.90 in bench_contamination, above
the match threshold, and were its only false positives. They go to the judge when there is one."""


def names_a_topic(text: str) -> bool:
    """True when `text` has fewer than MIN_CONTENT_WORDS content words."""
    return len(content_words(words(text))) < MIN_CONTENT_WORDS


@lru_cache(maxsize=1)
def stopwords() -> frozenset[str]:

    return frozenset(word_list("stopwords_en.txt"))


def top_k_cosine(vectors: np.ndarray, questions: np.ndarray, k: int, floor: float,
                 block: int = 1024) -> list[list[tuple[int, float]]]:
    """Per row of `vectors`, the (question row, cosine) of its `k` nearest questions at or above `floor`.
    The floor is applied first: few pairs reach it, so only those are ranked (not every row's 30k cosines)."""
    found: list[list[tuple[int, float]]] = []
    for start in range(0, len(vectors), block):
        cosine = vectors[start:start + block] @ questions.T
        rows, columns = np.nonzero(cosine >= floor)
        values = cosine[rows, columns]
        order = np.lexsort((-values, rows))  # by row, nearest first
        rows, columns, values = rows[order], columns[order].tolist(), values[order].tolist()
        bounds = np.searchsorted(rows, np.arange(len(cosine) + 1)).tolist()
        found += [list(zip(columns[a:b], values[a:b]))[:k] for a, b in zip(bounds, bounds[1:])]
    return found


@dataclass
class SameQuestion:
    """The judge's answer on one (eval question, record) pair."""

    same: bool | None
    p_yes: float | None
    raw: str


def ask_judge(pairs: Sequence[tuple[str, str]], judge, scoring: str, prompt_name: str, max_chars: int,
              chunk_size: int = 64) -> list[SameQuestion]:
    """"Same question?" for each (eval question, training text), through the judge's cache; a local (or
    OpenAI-compatible, `scoring: logprobs`) judge is read by next-token probabilities of yes / no."""

    mode = scoring_mode(judge, scoring)
    caller = scoring_model(judge, mode, same_question_scorer)
    prompt = load_prompt(prompt_name)
    conversations = [prompt.render(eval=truncate(q, max_chars), record=truncate(t, max_chars)) for q, t in pairs]
    sampling = Sampling(temperature=0.0, max_new_tokens=16)
    replies = []
    for start in range(0, len(conversations), chunk_size):
        replies += caller.chat(conversations[start:start + chunk_size], sampling)
    return [_read_same(reply) for reply in replies]


def _read_same(reply) -> SameQuestion:
    if reply.failed:
        return SameQuestion(None, None, reply.text or str(reply.error))
    text = reply.text
    head, _, evidence = text.partition("\n")
    p_yes = None
    if evidence.strip().startswith("{"):
        try:
            p_yes = float(json.loads(evidence)["probabilities"]["yes"])
        except (ValueError, KeyError, TypeError):
            p_yes = None
    lowered = head.lower()
    if p_yes is not None:
        return SameQuestion(p_yes >= 0.5, round(p_yes, 4), text)
    if "[[yes]]" in lowered or lowered.strip().startswith("yes"):
        return SameQuestion(True, None, text)
    if "[[no]]" in lowered or lowered.strip().startswith("no"):
        return SameQuestion(False, None, text)
    return SameQuestion(None, None, text)
