"""LaMini-LM generation (Wu et al., arXiv 2304.14402): new instructions, then the teacher's answers.

Each prompt shows k seed instructions drawn from one seed file (example-guided) and, for a
configurable share of prompts, a few topics from a broad list (topic-guided), and asks for a list
of new instructions. The list is parsed; empties, chatter and near-copies of seeds or of earlier
instructions are rejected with their reason; each survivor is answered by the teacher.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bezoar.errors import DataError
from bezoar.generate.config import LaMiniConfig
from bezoar.generate.instruction_list import NearCopies, parse_instruction_list
from bezoar.generate.runner import Batching, Context, Failure, Outcome, Rejection, Wanted, response_problem
from bezoar.generate.seeds import Seed
from bezoar.prompts import Template, template, word_list
from bezoar.records import ChatMessage, Record, RecordMeta, open_data

METHOD = "lamini"
# Replies about the task rather than tasks: "Here are ...", "I will help you ...", "Sure, ...".
_CHATTER = re.compile(r"^(?:answer|output|response|note|here (?:is|are)|sure|certainly|i am|i'm|i will|i can|"
                      r"let me|as an ai)\b", re.IGNORECASE)


@dataclass
class Prompt:
    """One request for a list of instructions."""

    index: int
    mode: str
    examples: list[Seed]
    topics: list[str]
    template: Template
    conversation: list[dict]


@dataclass
class Candidate:
    """A parsed instruction waiting for its response."""

    prompt: Prompt
    position: int
    instruction: str


Item = Candidate | Rejection | Failure
"""A listed instruction: still to answer (Candidate), or already an outcome."""


def load_topics(path: Path | None) -> list[str]:
    if path is None:
        return list(word_list("topics.txt"))
    if not Path(path).is_file():
        raise DataError(f"{path}: no such topics file")
    with open_data(Path(path)) as handle:
        topics = [line.strip() for line in handle if line.strip() and not line.startswith("#")]
    if not topics:
        raise DataError(f"{path}: the topics file is empty")
    return topics


class LaMini:
    method = METHOD

    def __init__(self, context: Context, seeds: list[Seed], config: LaMiniConfig):
        self.context, self.config = context, config
        self.by_source = by_source(seeds)
        self.topics = load_topics(config.topics_file)
        self.near = NearCopies(config.max_seed_similarity)
        for seed in seeds:
            self.near.add(seed.id, seed.instruction)
        self.prompt_batching = Batching(config.batch_size, prior=2.0)  # instructions per prompt
        self.answer_batching = Batching(config.batch_size, prior=1.0)  # records per instruction

    def plan(self, index: int) -> Prompt:
        """Prompt `index` of the stream: which mode, examples and topics (drawn from its own RNG)."""
        return draw_prompt(index, self.context.rng(METHOD, "prompt", index), self.config, self.by_source, self.topics)

    def outcomes(self, wanted: Wanted) -> Iterator[list[Outcome]]:
        index = 0
        while True:
            count = self.prompt_batching.size(wanted())
            prompts = [self.plan(i) for i in range(index, index + count)]
            index += count
            sampling = self.config.instruction_sampling.build(self.context.seed)
            replies = self.context.teacher.chat([p.conversation for p in prompts], sampling, self.context.progress)
            items: list[Item] = []
            for prompt, reply in zip(prompts, replies):
                items += self._candidates(prompt, reply)
            self.prompt_batching.saw(len(prompts), sum(isinstance(i, Candidate) for i in items))
            yield from self._answer(items, wanted)

    def _candidates(self, prompt: Prompt, reply) -> list[Item]:
        seed_ids = [s.id for s in prompt.examples]
        details = {"prompt_index": prompt.index, "mode": prompt.mode}
        if reply.failed:
            return [Failure.of(METHOD, "instruction_list", seed_ids, reply, prompt.conversation, details)]
        parsed = parse_instruction_list(reply.text)
        if reply.finish_reason == "length" and parsed:
            parsed = parsed[:-1]  # the last item of a cut-off reply is probably cut too
        if not parsed:
            return [Rejection(METHOD, "unparseable_list", "instruction_list", seed_ids, reply.text, details)]
        found: list[Item] = []
        for position, text in enumerate(parsed):
            reason = self._problem(text)
            if reason:
                found.append(Rejection(METHOD, reason, "instruction", seed_ids, text, {**details, "position": position}))
            else:
                self.near.add(f"generated:{prompt.index}:{position}", text)
                found.append(Candidate(prompt, position, text))
        return found

    def _problem(self, text: str) -> str | None:
        count = len(text.split())
        if count < self.config.min_words:
            return "too_short"
        if count > self.config.max_words:
            return "too_long"
        if _CHATTER.match(text) or text.endswith(":"):
            return "not_an_instruction"
        copied = self.near.match(text)
        if copied is not None:
            return "near_copy_of_generated" if copied.startswith("generated:") else "near_copy_of_seed"
        return None

    def _answer(self, items: list[Item], wanted: Wanted) -> Iterator[list[Outcome]]:
        """Answer candidates in stream order, a slice at a time sized to what is still missing."""
        start = 0
        while start < len(items):
            room = self.answer_batching.size(wanted())
            end, taken = start, 0
            while end < len(items) and (taken < room or not isinstance(items[end], Candidate)):
                taken += isinstance(items[end], Candidate)
                end += 1
            chunk, start = items[start:end], end
            found = self._respond(chunk)
            self.answer_batching.saw(taken, sum(isinstance(o, Record) for o in found))
            yield found

    def _respond(self, chunk: list[Item]) -> list[Outcome]:
        candidates = [c for c in chunk if isinstance(c, Candidate)]
        sampling = self.config.response_sampling.build(self.context.seed)
        answer_template = template(METHOD, "response")
        conversations = [answer_template.render(instruction=c.instruction) for c in candidates]
        replies = iter(self.context.teacher.chat(conversations, sampling, self.context.progress))
        asked = iter(conversations)
        return [self._record(item, next(replies), next(asked), answer_template) if isinstance(item, Candidate)
                else item for item in chunk]

    def _record(self, candidate: Candidate, reply, conversation: list[dict], answer_template: Template) -> Outcome:
        prompt = candidate.prompt
        seed_ids = [s.id for s in prompt.examples]
        details = {"mode": prompt.mode, "topics": prompt.topics, "prompt_index": prompt.index,
                   "position": candidate.position, "response_template": answer_template.id}
        if reply.failed:
            return Failure.of(METHOD, "response", seed_ids, reply, conversation, details)
        reason = response_problem(reply, candidate.instruction)
        if reason:
            return Rejection(METHOD, reason, "response", seed_ids, reply.text, {**details, "instruction": candidate.instruction})
        return Record(
            messages=[ChatMessage(role="user", content=candidate.instruction),
                      ChatMessage(role="assistant", content=reply.text)],
            meta=RecordMeta(method=METHOD, seed_ids=seed_ids, teacher=self.context.teacher_spec,
                            template=prompt.template.id, finish_reason=reply.finish_reason, details=details,
                            sampling={"instruction": self.config.instruction_sampling.model_dump(),
                                      "response": self.config.response_sampling.model_dump(),
                                      "seed": self.context.seed}),
            licence=self.context.lineage(prompt.examples)).with_id()


def draw_prompt(index: int, rng, config: LaMiniConfig, by_source: dict[str, list[Seed]], topics: list[str]) -> Prompt:
    """An instruction-writing prompt: its mode, examples from one seed source (as LaMini-LM) and topics."""
    mode = "topic_guided" if rng.random() < config.topic_guided_fraction else "example_guided"
    pool = by_source[rng.choice(sorted(by_source))]
    examples = rng.sample(pool, min(config.examples_per_prompt, len(pool)))
    chosen_topics = rng.sample(topics, min(config.topics_per_prompt, len(topics))) if mode == "topic_guided" else []
    listed = "\n".join(f"{i}. {one_line(seed.instruction)}" for i, seed in enumerate(examples, 1))
    chosen = template(METHOD, mode)
    conversation = chosen.render(examples=listed, count=str(config.instructions_per_prompt),
                                 topics=", ".join(chosen_topics))
    return Prompt(index, mode, examples, chosen_topics, chosen, conversation)


def by_source(seeds: list[Seed]) -> dict[str, list[Seed]]:
    grouped: dict[str, list[Seed]] = {}
    for seed in seeds:
        grouped.setdefault(seed.source, []).append(seed)
    return grouped


def one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit].rsplit(" ", 1)[0] + " ..."
