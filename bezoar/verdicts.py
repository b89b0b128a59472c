"""Reading what a judge said: a verdict, a 1-10 rating and a reason, from whatever shape it came in.

Judges answer in many shapes: a JSON object (possibly inside a code fence or prose), MT-Bench's
`[[8]]`, `Rating: 8`, `8/10`, or just "Accept" with a sentence. Small local judges follow formats
poorly, so every reader here is lenient about shape and strict about range: a rating outside 1-10
is no rating, and a verdict word under a negation ("I would not accept") is no verdict.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass

MIN_RATING, MAX_RATING = 1.0, 10.0

_NUMBER = r"(\d+(?:\.\d+)?)"
_OUT_OF = r"(?:\s*(?:/|out of)\s*(\d+))?"
# FastChat's MT-Bench readers: `[[8]]` first, then a single-bracket `[8]` as a fallback.
_DOUBLE_BRACKET = re.compile(rf"\[\[\s*{_NUMBER}\s*\]\]")
_SINGLE_BRACKET = re.compile(rf"(?<!\[)\[\s*{_NUMBER}\s*\](?!\])")
_LABELLED = re.compile(rf"\b(?:rating|score|grade|mark|rate(?:d)?(?:\s+(?:it|this|the response))?)\s*"
                       rf"(?:is|of|=|:|-|as|at)?\s*\**\s*{_NUMBER}{_OUT_OF}", re.IGNORECASE)
_OUT_OF_TEN = re.compile(rf"\b{_NUMBER}\s*(?:/|out of)\s*(10)\b", re.IGNORECASE)
_BARE = re.compile(rf"^\W*{_NUMBER}\W*$")

_ACCEPT = ("accept", "accepted", "acceptable", "approve", "approved", "keep", "pass", "yes")
_REJECT = ("reject", "rejected", "unacceptable", "decline", "declined", "discard", "drop", "fail", "no")
_VERDICT_LABEL = re.compile(r"\b(?:verdict|decision|status|judg(?:e)?ment)\s*[:=\-]\s*\**\s*\[*\s*([A-Za-z]+)",
                            re.IGNORECASE)
_NEGATION = re.compile(r"(?:\bnot|n't|\bnever|\bcannot|\bno longer)\s+(?:\w+\s+){0,2}$", re.IGNORECASE)
_REASON_LABEL = re.compile(r"\b(?:reason|explanation|rationale|justification)\s*[:=\-]\s*(.+)", re.IGNORECASE)

_CHOICE = re.compile(r"\[\[\s*([ABC])\s*\]\]")
_CHOICE_WORDS = {"tie": "tie", "c": "tie", "a": "A", "b": "B"}


@dataclass
class Judgment:
    """What one judge reply said. `fmt` names the shape it was read from (for the summary)."""

    verdict: str | None = None  # "accept" | "reject"
    rating: float | None = None
    reason: str | None = None
    fmt: str = "none"

    def to_json(self) -> dict:
        return asdict(self)


def parse_judgment(text: str) -> Judgment:
    """Everything that can be read from `text`; fields that cannot be read stay None."""
    found = _from_json(text)
    if found is not None and (found.rating is not None or found.verdict is not None):
        return found
    rating, fmt = parse_rating(text)
    reason = _reason_from_text(text)
    verdict = parse_verdict_word(text)
    if rating is None and verdict is not None:
        fmt = "verdict-word"
    return Judgment(verdict=verdict, rating=rating, reason=reason, fmt=fmt if rating is not None or verdict else "none")


def parse_rating(text: str) -> tuple[float | None, str]:
    """A 1-10 rating and the shape it came in ("brackets", "labelled", "out-of-10", "bare"), else (None, "none")."""
    for pattern, fmt in ((_DOUBLE_BRACKET, "brackets"), (_LABELLED, "labelled"), (_OUT_OF_TEN, "out-of-10"),
                         (_SINGLE_BRACKET, "brackets"), (_BARE, "bare")):
        match = pattern.search(text)
        if match:
            scale = match.group(2) if pattern.groups > 1 else None
            value = _in_range(match.group(1), scale)
            return (value, fmt) if value is not None else (None, "none")
    return None, "none"


def parse_bracket_rating(text: str) -> float | None:
    """MT-Bench's own rule (FastChat llm_judge): `[[N]]`, else `[N]`; -1 there is None here."""
    match = _DOUBLE_BRACKET.search(text) or _SINGLE_BRACKET.search(text)
    return _in_range(match.group(1)) if match else None


def parse_verdict_word(text: str) -> str | None:
    """"accept"/"reject" from a labelled verdict ("Verdict: Accept"), else from a lone, unnegated verdict word."""
    labelled = _VERDICT_LABEL.search(text)
    if labelled:
        word = _verdict_of(labelled.group(1))
        if word:
            return word
    kinds = set()
    for match in re.finditer(r"[A-Za-z']+", text):
        word = _verdict_of(match.group(0), loose=False)
        if word and not _NEGATION.search(text[:match.start()]):
            kinds.add(word)
        elif word:
            kinds.add("accept" if word == "reject" else "reject")  # "not acceptable" reads as a rejection
    return kinds.pop() if len(kinds) == 1 else None


def parse_choice(text: str) -> str | None:
    """A pairwise verdict: "A", "B" or "tie", from `[[A]]`/`[[B]]`/`[[C]]` or a labelled answer."""
    match = _CHOICE.search(text)
    if match:
        return _CHOICE_WORDS[match.group(1).lower()]
    labelled = re.search(r"\b(?:verdict|answer|better(?: response)?|winner)\s*(?:is|:)?\s*\**\s*"
                         r"(?:response|assistant)?\s*\(?\b(A|B|tie)\b", text, re.IGNORECASE)
    if labelled:
        return _CHOICE_WORDS[labelled.group(1).lower()]
    bare = re.fullmatch(r"\W*(A|B|tie)\W*", text.strip(), re.IGNORECASE)
    return _CHOICE_WORDS[bare.group(1).lower()] if bare else None


def _verdict_of(word: str, loose: bool = True) -> str | None:
    word = word.lower()
    # Outside a "Verdict:" label, "yes/no/pass/keep/drop/fail" are too common in prose to count.
    accept = _ACCEPT if loose else _ACCEPT[:5]
    reject = _REJECT if loose else _REJECT[:5]
    return "accept" if word in accept else "reject" if word in reject else None


def _in_range(number: str, out_of: str | None = None) -> float | None:
    """The number as a 1-10 rating; "4/5" or "4 out of 5" is rescaled to 8."""
    value = float(number)
    if out_of and float(out_of) not in (0.0, 10.0):
        value = round(value * 10.0 / float(out_of), 2) if value <= float(out_of) else -1.0
    return value if MIN_RATING <= value <= MAX_RATING else None


def _reason_from_text(text: str) -> str | None:
    match = _REASON_LABEL.search(text)
    if match:
        return match.group(1).strip()[:500] or None
    cleaned = _DOUBLE_BRACKET.sub("", text).strip()
    return cleaned[:500] or None


def _from_json(text: str) -> Judgment | None:
    """The first JSON object in `text` (fenced or in prose) that carries a verdict or a rating."""
    for candidate in _json_objects(text):
        fields = {str(k).lower(): v for k, v in candidate.items()}
        rating = _json_rating(_first(fields, "rating", "score", "grade"))
        raw_verdict = _first(fields, "verdict", "decision", "status", "judgment", "judgement")
        verdict = _verdict_of(str(raw_verdict)) if raw_verdict is not None else None
        if isinstance(raw_verdict, bool):
            verdict = "accept" if raw_verdict else "reject"
        reason = _first(fields, "reason", "explanation", "rationale", "justification")
        if rating is not None or verdict is not None:
            return Judgment(verdict=verdict, rating=rating, reason=str(reason)[:500] if reason else None, fmt="json")
    return None


def _json_objects(text: str):
    """Parse every balanced `{...}` span; json.JSONDecoder.raw_decode finds where each one ends."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            yield value


def _first(fields: dict, *names: str):
    return next((fields[n] for n in names if fields.get(n) not in (None, "")), None)


def _json_rating(value) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return _in_range(str(value))
    rating, _ = parse_rating(str(value))
    return rating
