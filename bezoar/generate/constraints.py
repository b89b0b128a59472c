"""Constraint prompts: a seed instruction plus 1-3 verifiable constraints (Tulu 3's verifiable rewards, IFEval).

The catalogue covers IFEval's 25 instruction types. Each entry draws its parameters at random and
words the constraint in its own sentences (never IFEval's prompts: the contamination check against
IFEval's file finds none). A record keeps the ids and parameters in lm-eval's shape
(`meta.details.instruction_id_list`, `meta.details.kwargs`), so lm-eval's checkers verify an answer
(`bezoar.evaluate.ifeval.follow`). No teacher is called: the wording is a program's.
"""
from __future__ import annotations

import logging
import random
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bezoar.errors import ConfigError
from bezoar.generate.seeds import load_seed_files
from bezoar.records import ChatMessage, Lineage, Record, RecordMeta, write_jsonl

log = logging.getLogger(__name__)

Kwargs = dict
Draw = Callable[[random.Random, str], Kwargs]
Word = Callable[[random.Random, Kwargs], str]

_COMMON = set("the a an and or but of to in on at for with from by is are was were be been it its this that these "
              "those what which who whom whose why how when where there their they them you your can could would "
              "should will does did do have has had not into about than then some any many much more most such "
              "also only very just over under between after before other".split())
_FALLBACK_WORDS = ("river", "lantern", "garden", "signal", "harbor", "pepper", "window", "ladder", "comet", "meadow")
_LANGUAGES = {"de": "German", "fr": "French", "es": "Spanish", "it": "Italian", "pt": "Portuguese", "pl": "Polish"}  # lm-eval knows these
_ENDINGS = ("Hope this helps.", "That is all for now.", "Thanks for reading.", "Let me know if you need more.")


def _content_words(text: str) -> list[str]:
    words = [w.lower() for w in re.findall(r"[A-Za-z]{5,}", text)]
    return list(dict.fromkeys(w for w in words if w not in _COMMON))


def _keywords(rng: random.Random, instruction: str, count: int) -> list[str]:
    pool = _content_words(instruction) or list(_FALLBACK_WORDS)
    if len(pool) < count:
        pool += [w for w in _FALLBACK_WORDS if w not in pool]
    return rng.sample(pool, count)


def _relation(rng: random.Random) -> str:
    return rng.choice(("at least", "less than"))


def _relation_text(relation: str, amount: int, unit: str) -> str:
    return f"{amount} or more {unit}" if relation == "at least" else f"fewer than {amount} {unit}"


@dataclass(frozen=True)
class Constraint:
    id: str
    """lm-eval's instruction id, e.g. `punctuation:no_comma`."""
    draw: Draw
    """Random parameters (lm-eval's kwargs) for one seed instruction."""
    word: Word
    """The constraint as a sentence a user would write."""
    group: str = ""
    """Constraints of one group contradict or crowd each other: at most one per prompt."""
    alone: bool = False
    """Shapes the whole answer (JSON, two answers, a fixed reply): never combined with another."""


def _c(id: str, draw: Draw, *wordings: Callable[[Kwargs], str], group: str = "", alone: bool = False) -> Constraint:
    return Constraint(id, draw, lambda rng, kw: rng.choice(wordings)(kw), group, alone)


_NONE: Draw = lambda rng, text: {}

CATALOGUE: dict[str, Constraint] = {c.id: c for c in (
    _c("keywords:existence", lambda r, t: {"keywords": _keywords(r, t, 2)},
       lambda k: f"Make sure the words \"{k['keywords'][0]}\" and \"{k['keywords'][1]}\" both show up somewhere in what you write.",
       lambda k: f"Work the terms {k['keywords'][0]} and {k['keywords'][1]} into your reply."),
    _c("keywords:frequency", lambda r, t: {"keyword": _keywords(r, t, 1)[0], "frequency": r.randint(2, 4),
                                           "relation": _relation(r)},
       lambda k: f"Use the word \"{k['keyword']}\" {_relation_text(k['relation'], k['frequency'], 'times')}.",
       lambda k: f"Count your uses of \"{k['keyword']}\": it should appear {_relation_text(k['relation'], k['frequency'], 'times')}."),
    _c("keywords:forbidden_words", lambda r, t: {"forbidden_words": _keywords(r, t, 2)},
       lambda k: f"Avoid the words {k['forbidden_words'][0]} and {k['forbidden_words'][1]} entirely.",
       lambda k: f"Never write \"{k['forbidden_words'][0]}\" or \"{k['forbidden_words'][1]}\" in the reply."),
    _c("keywords:letter_frequency", lambda r, t: {"letter": r.choice("aeiorstln"), "let_frequency": r.randint(3, 12),
                                                  "let_relation": _relation(r)},
       lambda k: f"The letter '{k['letter']}' must occur {_relation_text(k['let_relation'], k['let_frequency'], 'times')} in your text.",
       lambda k: f"Keep an eye on the letter {k['letter']}: {_relation_text(k['let_relation'], k['let_frequency'], 'occurrences')}, please."),
    _c("language:response_language", lambda r, t: {"language": r.choice(sorted(_LANGUAGES))},
       lambda k: f"Reply only in {_LANGUAGES[k['language']]}, with no English at all.",
       lambda k: f"Write the whole answer in {_LANGUAGES[k['language']]}.", alone=True),
    _c("length_constraints:number_sentences", lambda r, t: {"num_sentences": r.randint(2, 8), "relation": _relation(r)},
       lambda k: f"Keep it to {_relation_text(k['relation'], k['num_sentences'], 'sentences')}.",
       lambda k: f"Your answer needs {_relation_text(k['relation'], k['num_sentences'], 'sentences')}.", group="length"),
    _c("length_constraints:number_paragraphs", lambda r, t: {"num_paragraphs": r.randint(2, 4)},
       lambda k: f"Split the answer into exactly {k['num_paragraphs']} paragraphs, putting a line with *** between neighbouring paragraphs.",
       lambda k: f"Give {k['num_paragraphs']} paragraphs, no more and no fewer, divided by the marker ***.", group="layout"),
    _c("length_constraints:number_words", lambda r, t: {"num_words": r.choice((20, 30, 40, 50, 80, 120)),
                                                        "relation": _relation(r)},
       lambda k: f"Use {_relation_text(k['relation'], k['num_words'], 'words')}.",
       lambda k: f"Length: {_relation_text(k['relation'], k['num_words'], 'words')} in total.", group="length"),
    _c("length_constraints:nth_paragraph_first_word",
       lambda r, t: (lambda n: {"num_paragraphs": n, "nth_paragraph": r.randint(1, n),
                                "first_word": _keywords(r, t, 1)[0]})(r.randint(2, 3)),
       lambda k: f"Write {k['num_paragraphs']} paragraphs separated by two line breaks; paragraph number {k['nth_paragraph']} has to open with the word \"{k['first_word']}\".",
       group="layout"),
    _c("detectable_content:number_placeholders", lambda r, t: {"num_placeholders": r.randint(1, 3)},
       lambda k: f"Leave at least {k['num_placeholders']} blanks for the reader to fill in, each written in square brackets such as [city].",
       lambda k: f"Include {k['num_placeholders']} or more fill-in fields in square brackets, like [name]."),
    _c("detectable_content:postscript", lambda r, t: {"postscript_marker": r.choice(("P.S.", "P.P.S"))},
       lambda k: f"Close with an extra note that begins with {k['postscript_marker']}",
       lambda k: f"After the main answer, add a short afterthought introduced by \"{k['postscript_marker']}\".", group="ending"),
    _c("detectable_format:number_bullet_lists", lambda r, t: {"num_bullets": r.randint(2, 5)},
       lambda k: f"Format the answer as a list of exactly {k['num_bullets']} items, each line starting with \"* \".",
       lambda k: f"Present {k['num_bullets']} points as markdown bullets (\"* item\"), and no other bullets.", group="layout"),
    _c("detectable_format:constrained_response", _NONE,
       lambda k: "Reply with nothing but one of these sentences: \"My answer is yes.\", \"My answer is no.\" or \"My answer is maybe.\"",
       alone=True),
    _c("detectable_format:number_highlighted_sections", lambda r, t: {"num_highlights": r.randint(1, 3)},
       lambda k: f"Emphasise at least {k['num_highlights']} parts by wrapping them in single asterisks, like *this part*.",
       lambda k: f"Mark {k['num_highlights']} or more phrases in markdown italics with asterisks (*a phrase*)."),
    _c("detectable_format:multiple_sections",
       lambda r, t: {"section_spliter": r.choice(("Section", "Part")), "num_sections": r.randint(2, 4)},
       lambda k: f"Organise the reply into {k['num_sections']} parts, each headed \"{k['section_spliter']} 1\", \"{k['section_spliter']} 2\" and so on.",
       group="layout"),
    _c("detectable_format:json_format", _NONE,
       lambda k: "Give the whole reply as valid JSON; you may put it in a ```json code block.",
       lambda k: "Output must be a single JSON object and nothing else.", alone=True),
    _c("detectable_format:title", _NONE,
       lambda k: "Start with a title inside double angle brackets, for example <<a short title>>.",
       lambda k: "Put a heading in double angular brackets, like <<heading>>, somewhere in the reply."),
    _c("combination:two_responses", _NONE,
       lambda k: "Write two different answers, separated by a line holding only six asterisks (******).",
       alone=True),
    _c("combination:repeat_prompt", lambda r, t: {"prompt_to_repeat": t},
       lambda k: "First copy my request above word for word (leave out this sentence), then answer it.",
       alone=True),
    _c("startend:end_checker", lambda r, t: {"end_phrase": r.choice(_ENDINGS)},
       lambda k: f"The very last words of your reply must be \"{k['end_phrase']}\" with nothing after them.",
       lambda k: f"Sign off with exactly this sentence: {k['end_phrase']}", group="ending"),
    _c("change_case:capital_word_frequency", lambda r, t: {"capital_frequency": r.randint(2, 6),
                                                           "capital_relation": _relation(r)},
       lambda k: f"Write {_relation_text(k['capital_relation'], k['capital_frequency'], 'words')} fully in capital letters (LIKE THIS).",
       group="case"),
    _c("change_case:english_capital", _NONE,
       lambda k: "Answer in English using only capital letters.",
       lambda k: "Type everything in upper case, in English.", group="case"),
    _c("change_case:english_lowercase", _NONE,
       lambda k: "Answer in English using only lowercase letters; no capitals anywhere.",
       lambda k: "Type everything in lower case, in English.", group="case"),
    _c("punctuation:no_comma", _NONE,
       lambda k: "Do not use a single comma.",
       lambda k: "Commas are not allowed anywhere in the reply."),
    _c("startend:quotation", _NONE,
       lambda k: "Put your entire reply between double quotes.",
       lambda k: "Enclose everything you write in one pair of \"double quotation marks\".", group="ending"),
)}


def draw_constraints(rng: random.Random, instruction: str, allowed: list[str], count: int) -> list[tuple[str, Kwargs]]:
    """`count` compatible constraints (ids and kwargs) for one instruction; one `alone` constraint
    replaces the rest."""
    order = rng.sample(allowed, len(allowed))
    chosen: list[Constraint] = []
    for name in order:
        constraint = CATALOGUE[name]
        if constraint.alone:
            if not chosen:
                return [(name, constraint.draw(rng, instruction))]
            continue
        if constraint.group and any(c.group == constraint.group for c in chosen):
            continue
        chosen.append(constraint)
        if len(chosen) == count:
            break
    return [(c.id, c.draw(rng, instruction)) for c in chosen]


def constraint_prompt(rng: random.Random, instruction: str, constraints: list[tuple[str, Kwargs]]) -> str:
    """The instruction, a blank line, then each constraint's sentence."""
    lines = [CATALOGUE[name].word(rng, kwargs) for name, kwargs in constraints]
    return instruction.rstrip() + "\n\n" + " ".join(lines)


def make_records(seeds: list, n: int, rng: random.Random, allowed: list[str] | None = None,
                 min_constraints: int = 1, max_constraints: int = 3) -> list[Record]:
    """`n` constraint prompts (user turn only) over the seeds in a shuffled, repeating order."""
    allowed = allowed or list(CATALOGUE)
    unknown = [a for a in allowed if a not in CATALOGUE]
    if unknown:
        raise ConfigError(f"generate.constraints.types: unknown {unknown}; known: {sorted(CATALOGUE)}")
    usable = [s for s in seeds if s.instruction.strip() and not s.context.strip()]  # context would bury the constraints
    if not usable:
        raise ConfigError("generate.constraints.seeds: no seed instruction without a context")
    records: list[Record] = []
    order: list = []
    while len(records) < n:
        if not order:
            order = rng.sample(usable, len(usable))
        seed = order.pop()
        instruction = _clean(seed.instruction)
        constraints = draw_constraints(rng, instruction, allowed, rng.randint(min_constraints, max_constraints))
        prompt = constraint_prompt(rng, instruction, constraints)
        meta = RecordMeta(method="constraints", seed_ids=[seed.id], details={
            "instruction": instruction, "instruction_id_list": [c for c, _ in constraints],
            "kwargs": [kwargs for _, kwargs in constraints], "catalogue": "bezoar-1"})
        lineage = Lineage.of([(seed.dataset or seed.source, "seed", seed.licence)])
        records.append(Record(messages=[ChatMessage(role="user", content=prompt)], meta=meta, licence=lineage).with_id())
    return records


def _clean(instruction: str) -> str:
    text = " ".join(instruction.split())
    return text if text[-1:] in string.punctuation else text + "?" if text.lower().startswith(
        ("what", "who", "why", "how", "when", "where", "which", "is ", "are ", "can ", "do ", "does ")) else text + "."


def checker_doc(record: Record, key: int | str = 0) -> dict:
    """The record as an IFEval row (what lm-eval's checkers read)."""
    details = record.meta.details
    return {"key": key, "prompt": record.instruction, "instruction_id_list": details["instruction_id_list"],
            "kwargs": details["kwargs"]}


def generate_constraints(config, out: Path | str, seed: int = 0) -> dict:
    """The `constraints` method: read the seeds, write `config.n` constraint prompts to `out`."""

    if not config.seeds:
        raise ConfigError("generate.constraints.seeds: no seed files given (use --seeds PATH or the recipe)")
    seeds = load_seed_files(config.seeds, config.skip_bad_lines)
    records = make_records(seeds.seeds, config.n, random.Random(seed), config.types,
                           config.min_constraints, config.max_constraints)
    write_jsonl(out, records)
    counts: dict[str, int] = {}
    for record in records:
        for name in record.meta.details["instruction_id_list"]:
            counts[name] = counts.get(name, 0) + 1
    return {"method": "constraints", "output": str(out), "records": len(records), "failed_items": 0,
            "types": dict(sorted(counts.items())), "seed_rows": len(seeds.seeds)}
