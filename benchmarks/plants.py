"""Planted contamination for bench_contamination.py: eval questions copied into training records with the
edits a real copy goes through, and clean same-topic controls that must not match.

Mechanical kinds are made here with a seeded RNG; `reworded` asks the teacher; `reworded_by_hand` and
`translated` are ours (contamination_plants.jsonl: written by hand for this benchmark, since the embedded
135M teacher cannot translate).
"""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

PREFIXES = ["Please answer the following question.", "Here is a task for you:", "Question:",
            "I was asked this in class and I'm stuck.", "Solve this and explain your reasoning."]
SUFFIXES = ["Explain your answer step by step.", "Keep it short.", "Thanks in advance!",
            "Answer in one paragraph.", "Show your work."]
FILLERS = ["really", "basically", "actually", "just", "um", "like", "so", "quite"]
SYNONYMS = {
    "write": "compose", "compose": "write", "describe": "explain", "explain": "describe", "create": "make",
    "make": "create", "find": "determine", "determine": "find", "calculate": "compute", "compute": "calculate",
    "show": "demonstrate", "give": "provide", "provide": "give", "use": "employ", "help": "assist",
    "big": "large", "large": "big", "small": "little", "little": "small", "quick": "fast", "fast": "quick",
    "buy": "purchase", "buys": "purchases", "start": "begin", "begins": "starts", "end": "finish",
    "each": "every", "every": "each", "total": "overall", "most": "greatest", "likely": "probable",
    "important": "significant", "different": "distinct", "several": "multiple", "many": "numerous",
    "people": "individuals", "person": "individual", "answer": "response", "question": "query",
    "story": "tale", "job": "task", "happy": "glad", "sad": "unhappy", "begin": "start", "car": "automobile",
    "house": "home", "home": "house", "child": "kid", "children": "kids", "money": "cash", "shop": "store",
    "store": "shop", "day": "daily period", "week": "seven-day period", "students": "pupils", "student": "pupil",
    "idea": "notion", "ideas": "notions", "example": "instance", "examples": "instances", "method": "approach",
    "increase": "rise", "decrease": "drop", "change": "alteration", "effect": "consequence", "result": "outcome",
    "results": "outcomes", "problem": "issue", "problems": "issues", "reason": "cause", "reasons": "causes",
    "discuss": "talk about", "identify": "recognise", "list": "enumerate", "build": "construct", "order": "sequence",
    "shows": "demonstrates", "uses": "employs", "needs": "requires", "need": "require", "wants": "wishes",
    "want": "wish", "happens": "occurs", "happen": "occur", "observe": "notice", "observes": "notices",
    "test": "check", "tests": "checks", "study": "examine", "typically": "usually", "usually": "typically",
}


def verbatim(question: str, rng: random.Random) -> str:
    return question


def prefix_suffix(question: str, rng: random.Random) -> str:
    return f"{rng.choice(PREFIXES)} {question} {rng.choice(SUFFIXES)}"


def case_punct(question: str, rng: random.Random) -> str:
    text = re.sub(r"[,.;:!?\"']", lambda m: rng.choice(["", " ", ";", " -"]), question)
    return rng.choice([str.upper, str.lower, str.title])(text)


def filler(question: str, rng: random.Random, every: int = 4) -> str:
    words = question.split()
    out = []
    for index, word in enumerate(words):
        out.append(word)
        if index % every == every - 1:
            out.append(rng.choice(FILLERS))
    return " ".join(out)


def synonyms(question: str, rng: random.Random, share: float = 0.5) -> str:
    """Swap up to `share` of the words that have a synonym in the table (at least one)."""
    words = question.split()
    swappable = [i for i, w in enumerate(words) if w.lower().strip(",.?!") in SYNONYMS]
    chosen = rng.sample(swappable, max(1, int(len(swappable) * share))) if swappable else []
    for i in chosen:
        core = words[i].lower().strip(",.?!")
        tail = words[i][len(words[i].rstrip(",.?!")):]
        words[i] = SYNONYMS[core] + tail
    return " ".join(words)


MECHANICAL = {"verbatim": verbatim, "prefix_suffix": prefix_suffix, "case_punct": case_punct,
              "filler": filler, "synonyms": synonyms}

REWORD_PROMPT = ("Rewrite the following question in your own words. Keep its meaning, its facts and its numbers. "
                 "Reply with the rewritten question only.\n\n{question}")


def reworded_by_teacher(questions: list[str], teacher) -> list[str]:
    """The teacher's rewording of each question ("" when it gave nothing usable)."""
    from bezoar.llm.protocol import Sampling

    conversations = [[{"role": "user", "content": REWORD_PROMPT.format(question=q)}] for q in questions]
    replies = teacher.chat(conversations, Sampling(temperature=0.0, max_new_tokens=128))
    return [r.text.strip() if not r.failed else "" for r in replies]


def by_hand(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open() if line.strip()]
