"""Orca explanation tuning (Mukherjee et al., arXiv 2306.02707) over FLAN tasks with gold targets.

Each candidate draws a FLAN sub-collection (weighted by `mix`), the next task of it (seeds are
shuffled once, then taken without replacement) and one of the system messages the paper allows for
that sub-collection; the teacher answers under that system message. Where the gold target is short
(a letter, a number, yes/no, a few words), the record says whether the teacher's final answer agrees.
"""
from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterator

from bezoar.errors import DataError
from bezoar.generate.config import OrcaConfig
from bezoar.generate.runner import Batching, Context, Failure, Outcome, Rejection, Wanted, response_problem
from bezoar.generate.seeds import Seed
from bezoar.prompts import scheme, template
from bezoar.records import ChatMessage, Record, RecordMeta

METHOD = "orca"
_MULTIPLE_CHOICE = re.compile(r"\bOptions?\s*:|^\s*\(?[A-H]\)\s|^\s*-\s*\(?[A-H]\)", re.IGNORECASE | re.MULTILINE)


def is_multiple_choice(inputs: str) -> bool:
    return bool(_MULTIPLE_CHOICE.search(inputs))


class Orca:
    method = METHOD

    def __init__(self, context: Context, seeds: list[Seed], config: OrcaConfig):
        self.context, self.config = context, config
        prompts = scheme("orca")
        self.messages: dict[int, str] = {int(k): (v or "").strip() for k, v in prompts["system_messages"].items()}
        self.allowed: dict[str, list[int]] = prompts["sub_collections"]
        groups: dict[str, list[Seed]] = {}
        for seed in seeds:
            groups.setdefault(seed.sub_collection, []).append(seed)
        mix: dict[str, float] = {name: weight for name, weight in config.mix.items()}  # looked up by any seed's name
        self.weights = {g: mix.get(g, 0.0) for g in sorted(groups) if mix.get(g, 0.0) > 0}
        if not self.weights:
            raise DataError(f"generate.orca: the seeds' sub-collections ({', '.join(sorted(groups))}) all have weight 0 "
                            f"in generate.orca.mix ({config.mix}); give them a weight (seed files outside FLAN's "
                            "cot_data/T0 files and without a task_source field count as 'other')")
        self.order = {g: list(groups[g]) for g in self.weights}
        for group, items in self.order.items():
            context.rng(METHOD, "order", group).shuffle(items)
        self.taken = {g: 0 for g in self.weights}

    def _draw(self, index: int) -> tuple[Seed, str, int] | None:
        """Candidate `index`: (seed, sub-collection, system message id), or None when the seeds are used up."""
        open_groups = [g for g in self.weights if self.taken[g] < len(self.order[g])]
        if not open_groups:
            return None
        rng = self.context.rng(METHOD, "draw", index)
        group = rng.choices(open_groups, weights=[self.weights[g] for g in open_groups])[0]
        seed = self.order[group][self.taken[group]]
        self.taken[group] += 1
        key = f"{group}_multiple_choice" if is_multiple_choice(seed.instruction) else group
        return seed, group, rng.choice(self.allowed.get(key) or self.allowed[group])

    def outcomes(self, wanted: Wanted) -> Iterator[list[Outcome]]:
        index, batching = 0, Batching(self.config.batch_size, prior=1.0)
        while True:
            size = batching.size(wanted())
            draws: list[tuple[Seed, str, int]] = []
            while len(draws) < size and (draw := self._draw(index)) is not None:
                draws.append(draw)
                index += 1
            if not draws:
                return
            found = self._answer(draws)
            batching.saw(len(draws), sum(isinstance(o, Record) for o in found))
            yield found

    def sample_conversations(self, count: int) -> list[list[dict]]:
        """The first `count` candidates' conversations, as the run sends them: what the plan measures."""
        draws = [d for d in (self._draw(i) for i in range(count)) if d is not None]
        return [self._conversation(seed, message) for seed, _, message in draws]

    def _conversation(self, seed: Seed, message_id: int) -> list[dict]:
        system = self.messages[message_id]
        task = template(METHOD, "task").render(inputs=seed.prompt)
        return ([{"role": "system", "content": system}] if system else []) + task

    def _answer(self, draws: list[tuple[Seed, str, int]]) -> list[Outcome]:
        conversations = [self._conversation(seed, message_id) for seed, _, message_id in draws]
        sampling = self.config.response_sampling.build(self.context.seed)
        replies = self.context.teacher.chat(conversations, sampling, self.context.progress)
        return [self._outcome(draw, conversation, reply) for draw, conversation, reply in zip(draws, conversations, replies)]

    def _outcome(self, draw: tuple[Seed, str, int], conversation: list[dict], reply) -> Outcome:
        seed, group, message_id = draw
        system = self.messages[message_id]
        details = {"system_message_id": message_id,
                   "system_message": f"orca.system.{message_id}#{hashlib.sha256(system.encode()).hexdigest()[:8]}",
                   "sub_collection": group, "task": seed.task, "category": seed.category,
                   "multiple_choice": is_multiple_choice(seed.instruction), "gold_target": seed.target,
                   **gold_check(seed.target, reply.text, self.config.gold_max_words)}
        if reply.failed:
            return Failure.of(METHOD, "response", [seed.id], reply, conversation, details)
        reason = response_problem(reply, seed.prompt)
        if reason:
            return Rejection(METHOD, reason, "response", [seed.id], reply.text, details)
        messages = [ChatMessage(**m) for m in conversation] + [ChatMessage(role="assistant", content=reply.text)]
        return Record(
            messages=messages,
            meta=RecordMeta(method=METHOD, seed_ids=[seed.id], teacher=self.context.teacher_spec,
                            template=template(METHOD, "task").id, finish_reason=reply.finish_reason, details=details,
                            sampling={**self.config.response_sampling.model_dump(), "seed": self.context.seed}),
            licence=self.context.lineage([seed])).with_id()


# --- does the teacher's final answer agree with the gold target? -----------------------------------

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
# "So the answer is X." / "Answer: X" / "The correct answer is X", at the start of a sentence or line.
_EXPLICIT = re.compile(r"(?:^|[.!?]\s+|\n)\W*(?:so|thus|therefore|hence)?,?\s*(?:the\s+)?(?:final\s+|correct\s+)?answer"
                       r"\s*(?:is|:|would be|will be)\s*:?\s*(.+?)(?:\.\s|\.$|\n|$)", re.IGNORECASE)
_LETTER = re.compile(r"^\(?([A-Ha-h])\)?$")


def gold_check(target: str | None, response: str, max_words: int = 5) -> dict:
    """`gold_short`, `agrees_with_gold` (None when the target is long or absent) and `extracted_answer`."""
    if not target or len(target.split()) > max_words or len(target) > 60:
        return {"gold_short": False, "agrees_with_gold": None, "extracted_answer": None}
    answer = extract_answer(target, response)
    return {"gold_short": True, "agrees_with_gold": answer is not None and _same(answer, target),
            "extracted_answer": answer}


def extract_answer(target: str, response: str) -> str | None:
    """The teacher's final answer, read the way the gold target is written (letter, number, yes/no, text)."""
    explicit = _EXPLICIT.findall(response)
    last = explicit[-1].strip() if explicit else None
    letter = _LETTER.match(target.strip())
    if letter:
        pool = last or response
        found = re.findall(r"\(([A-H])\)|\b(?:option|choice)\s+([A-H])\b", pool, re.IGNORECASE)
        return next((a or b for a, b in reversed(found)), None) if found else None
    if _NUMBER.fullmatch(target.strip().lstrip("$")):
        numbers = _NUMBER.findall(last or response)
        return numbers[-1].replace(",", "") if numbers else None
    if target.strip().lower() in ("yes", "no"):
        found = re.findall(r"\b(yes|no)\b", last or response, re.IGNORECASE)
        return found[-1].lower() if found else None
    if last:
        return last
    return target if _norm(target) in _norm(response) else None


def _same(answer: str, target: str) -> bool:
    letter = _LETTER.match(target.strip())
    if letter:
        return answer.upper() == letter.group(1).upper()
    try:
        return math.isclose(float(answer.replace(",", "")), float(target.strip().lstrip("$").replace(",", "")))
    except ValueError:
        return _norm(target) in _norm(answer) or _norm(answer) == _norm(target)


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())
