"""Cheap rules that reject an (instruction, response) pair before any judge call.

Every rule returns all the reasons it finds (a record can be both truncated and repetitive), and each
rule is switched by its own field of `HeuristicsConfig`. Reasons are short, stable strings: they are
the keys the summary counts by.
"""
from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache

from bezoar.filter.config import HeuristicsConfig
from bezoar.generate.elimination import heuristic_failure
from bezoar.records import Record

# Openings of refusals (checked on the first ~200 characters: a refusal says so up front).
_REFUSAL = re.compile(
    r"\b(?:i(?:'m| am) (?:sorry|afraid),? (?:but )?(?:i |as an )|i (?:can(?:no|')t|cannot|am unable to|"
    r"won't|will not|am not able to) (?:help|assist|provide|answer|do that|comply|fulfil|fulfill|create|write|"
    r"generate|support)|i(?:'m| am) (?:not able|unable) to (?:help|assist|provide|answer|comply)|"
    r"(?:this|that|your) request (?:is|goes) against|i must (?:decline|refuse))", re.IGNORECASE)
# Self-descriptions that leak the teacher's persona into training data.
_BOILERPLATE = re.compile(
    r"\bas an? (?:ai|artificial intelligence)(?: language)?(?: model| assistant)?\b|"
    r"\bi(?:'m| am) (?:just |only )?an? (?:ai|artificial intelligence|language model|large language model)\b|"
    r"\bmy (?:training data|knowledge cutoff)\b", re.IGNORECASE)
_CHAR_RUN = re.compile(r"(.{1,12}?)\1{9,}", re.DOTALL)  # a short unit repeated ten or more times
_CODE_BLOCK = re.compile(r"```.*?(?:```|$)", re.DOTALL)
_WORDS = re.compile(r"\w+")


def check(record: Record, config: HeuristicsConfig) -> list[str]:
    """Every reason this record fails (empty list: it passes)."""
    if not config.enabled:
        return []
    instruction, response = record.instruction.strip(), record.response.strip()
    if config.empty and (not instruction or not response):
        return ["empty_instruction" if not instruction else "empty_response"]
    reasons: list[str] = []
    if config.length:
        reasons += _length(instruction, response, config)
    if config.refusal and _REFUSAL.search(response[:200]):
        reasons.append("refusal")
    if config.boilerplate and _BOILERPLATE.search(response):
        reasons.append("ai_boilerplate")
    if config.truncated and record.meta.finish_reason == "length":
        reasons.append("truncated")
    if config.repetition and is_degenerate(response, config.max_repeated_ngram_fraction):
        reasons.append("repetition")
    if config.copied_instruction and copies_instruction(instruction, response):
        reasons.append("copied_instruction")
    if config.language:
        # The response is judged together with its instruction, so a list of foreign names ("Château de
        # Chambord, ...") or a requested translation passes, while a French answer to an English question fails.
        reasons += [f"language_{where}:{lang}" for where, lang in
                    (("instruction", _off_language(instruction, config)),
                     ("response", len(response) >= config.min_language_chars and
                      _off_language(f"{instruction}\n{response}", config)))
                    if lang]
    if config.evol_elimination:

        failure = heuristic_failure(instruction, response)
        if failure:
            reasons.append(f"evol:{failure}")
    return reasons


def _length(instruction: str, response: str, config: HeuristicsConfig) -> list[str]:
    found = []
    words_in, words_out = len(instruction.split()), len(response.split())
    if words_in < config.min_instruction_words:
        found.append("instruction_too_short")
    if words_in > config.max_instruction_words:
        found.append("instruction_too_long")
    if words_out < config.min_response_words:
        found.append("response_too_short")
    if words_out > config.max_response_words:
        found.append("response_too_long")
    return found


def is_degenerate(text: str, max_fraction: float, n: int = 3, min_words: int = 12) -> bool:
    """Looping text: the share of repeated word n-grams (Gopher's duplicate n-gram rule) or a char run."""
    if _CHAR_RUN.search(text):
        return True
    words = [w.lower() for w in _WORDS.findall(text)]
    if len(words) < min_words:
        return False
    grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    repeated = sum(count - 1 for count in grams.values())
    return repeated / max(1, sum(grams.values())) > max_fraction


def lower_words(text: str) -> str:
    """Lower case, the `\\w+` words (underscores kept inside them) joined by one space: the form every
    filter comparison uses. `bezoar.generate.runner.lower_alnum` differs: it splits at underscores."""
    return " ".join(_WORDS.findall(text.lower()))


def copies_instruction(instruction: str, response: str, min_words: int = 5) -> bool:
    """The response is the instruction, or opens by repeating a (>= 5-word) instruction and adds little."""
    inst, resp = lower_words(instruction), lower_words(response)
    if not inst or not resp:
        return False
    if resp == inst:
        return True
    if len(inst.split()) < min_words or inst not in resp:
        return False
    return len(resp.split()) < 2 * len(inst.split())  # mostly the instruction again


def _off_language(text: str, config: HeuristicsConfig) -> str | None:
    """The detected language when the text is confidently (P < 0.01) in none of `config.languages`, else None."""
    prose = _CODE_BLOCK.sub(" ", text).strip()
    if len(prose) < config.min_language_chars:
        return None
    ranked = _identifier().rank(prose)
    allowed = sum(p for lang, p in ranked if lang in config.languages)
    # Only a confident "not ours": lists of names ("January, March, ...") get a low but real P(en).
    return ranked[0][0] if allowed < 0.01 else None


@lru_cache(maxsize=1)
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
