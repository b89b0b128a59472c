"""Elimination evolving: when an evolved instruction (or its answer) is thrown away.

WizardLM (arXiv 2304.12244, §3.3) and the OpenBezoar authors' port drop an evolution when
  1. it brings no information gain over its parent: a judge model says the two prompts are equal
     (`equal_prompts`);
  2. the answer says "sorry" and is short (< 80 tokens): the instruction was too hard;
  3. the answer is only punctuation and stop words;
  4. the evolved instruction leaks the evolving prompt's markers ("#Rewritten Prompt#", ...).
Rules 2-4 are `heuristic_failure`; the filter stage reuses it on any (instruction, response).
"""
from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from difflib import SequenceMatcher

from bezoar.llm.cache import CachedModel
from bezoar.llm.protocol import Sampling
from bezoar.prompts import template, word_list

log = logging.getLogger(__name__)

SORRY_MAX_TOKENS = 80
"""Rule 2: a reply with "sorry" counts as a refusal below this many tokens (the authors' NLTK count)."""

LEAK_MARKERS = ("#given prompt#", "#created prompt#", "#rewritten prompt#", "#the given prompt#",
                "given prompt", "created prompt", "rewritten prompt")

# Approximates NLTK's word_tokenize without its punkt download: words (with inner ' or -) and
# each punctuation mark as its own token, so token counts match the authors' within a few percent.
_TOKEN = re.compile(r"\w+(?:['’-]\w+)*|[^\w\s]")
_WORD = re.compile(r"\w")


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


def heuristic_failure(instruction: str, response: str) -> str | None:
    """Why this pair is eliminated by rules 2-4 ("sorry_short", "only_stopwords", "leaked_template"), or None.

    An empty response counts as "only_stopwords": it contains nothing but (no) stop words.
    """
    if leaked_template(instruction):
        return "leaked_template"
    if "sorry" in response.lower() and len(tokens(response)) < SORRY_MAX_TOKENS:
        return "sorry_short"
    if only_stopwords(response):
        return "only_stopwords"
    return None


def leaked_template(instruction: str) -> bool:
    """Rule 4: the evolved instruction still carries the evolving prompt's markers."""
    lowered = instruction.lower()
    return any(marker in lowered for marker in LEAK_MARKERS)


def only_stopwords(text: str) -> bool:
    """Rule 3: nothing but punctuation and stop words (true of an empty text).

    A contraction of stop words ("that's", "it'll") counts as stop words, as its parts would.
    """
    stop = _stopwords()

    def empty(token: str) -> bool:
        token = token.lower().replace("’", "'")
        return not _WORD.search(token) or token in stop or all(part in stop for part in token.split("'"))

    return all(empty(t) for t in tokens(text))


def _stopwords() -> frozenset[str]:
    global _STOP
    if _STOP is None:
        _STOP = frozenset(word_list("stopwords_en.txt"))
    return _STOP


_STOP: frozenset[str] | None = None


# --- rule 1: the judge's equality check ----------------------------------------------------------

_NOT_EQUAL = re.compile(r"\bnot\s+(?:be\s+)?(?:equal|the\s+same|identical|equivalent)\b|\bunequal\b|"
                        r"\bdiffer(?:ent|s)?\b|\bnon-?equal\b")
_EQUAL = re.compile(r"\bnot\s+different\b|\bequal\b|\bthe\s+same\b|\bidentical\b|\bequivalent\b")
_YES_NO = re.compile(r"^\W*(yes|no)\b")


def parse_equality(text: str) -> bool | None:
    """True for "equal", False for "not equal", None when the answer says neither.

    Small judges rarely answer with the bare label, so the earliest verdict phrase anywhere in the
    reply wins ("Not equal. They are not the same" -> False; "EQUAL - both ask..." -> True), and a
    reply opening with yes/no answers the question "are they equal?".
    """
    lowered = text.lower()
    negative, positive = _NOT_EQUAL.search(lowered), _EQUAL.search(lowered)
    if negative and (not positive or negative.start() <= positive.start()):
        return False
    if positive:
        return True
    yes_no = _YES_NO.match(lowered)
    return None if yes_no is None else yes_no.group(1) == "yes"


def _drop_echo(reply: str, prompt: str) -> str:
    """The reply without lines that merely repeat a line of the prompt (fuzzily: >= 80 % alike).

    Small judges often recite the criteria ("1. They asked for the same depth...") instead of
    answering; read literally, that recital says "the same" and would count as a verdict.
    """

    def norm(line: str) -> str:
        return " ".join(re.sub(r"^\W*\d*[.)]?\s*", "", line.lower()).split())

    prompt_lines = [norm(line) for line in prompt.splitlines() if line.strip()]
    kept = [line for line in reply.splitlines()
            if not any(SequenceMatcher(None, norm(line), p).ratio() >= 0.8 for p in prompt_lines)]
    return "\n".join(kept)


def equal_prompts(judge: CachedModel, pairs: Sequence[tuple[str, str]], max_attempts: int = 3,
                  max_new_tokens: int = 24, seed: int = 0) -> list[bool | None]:
    """The judge's verdict per (original, evolved) pair: equal, not equal, or None if never parseable.

    The first attempt is greedy; unparseable answers are asked again with sampling (a new seed per
    attempt, so the cache holds each attempt), as the authors retried theirs.
    """
    prompt = template("evol_instruct", "equality")
    conversations = [prompt.render(first=a, second=b) for a, b in pairs]
    verdicts: list[bool | None] = [None] * len(pairs)
    pending = list(range(len(pairs)))
    for attempt in range(max_attempts):
        if not pending:
            break
        sampling = Sampling(temperature=0.0 if attempt == 0 else 0.7, top_p=0.95,
                            max_new_tokens=max_new_tokens, seed=seed + attempt)
        replies = judge.chat([conversations[i] for i in pending], sampling)
        for index, reply in zip(pending, replies):
            answer = _drop_echo(reply.text, conversations[index][-1]["content"])
            verdicts[index] = parse_equality(answer) if not reply.failed else None
        pending = [i for i in pending if verdicts[i] is None]
    if pending:
        log.debug("equality check: %d of %d answers unparseable after %d attempts", len(pending), len(pairs), max_attempts)
    return verdicts
