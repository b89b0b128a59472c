"""MT-Bench's files in FastChat's llm_judge formats: questions, reference answers, judge prompts,
model answers and judgments.

Keeping FastChat's exact field names means FastChat's own scripts (`show_result.py`) read what
bezoar writes, and bezoar reads FastChat's published answer files (e.g. for pairwise grading
against GPT-4o). Extra fields bezoar adds (finish reasons, retries, repeats) are ignored by FastChat.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bezoar.errors import DataError, located
from bezoar.hashing import canonical_hash
from bezoar.prompts import read_text
from bezoar.records import open_data, read_jsonl

# FastChat llm_judge/common.py: the categories graded against a reference answer, and the
# answering temperature per category (anything else gets FastChat's default, 0.7).
NEED_REF_CATS = ("math", "reasoning", "coding")
TEMPERATURE_CONFIG = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0,
                      "coding": 0.0, "reasoning": 0.0, "stem": 0.1, "humanities": 0.1}
DEFAULT_TEMPERATURE = 0.7


class Question(BaseModel):
    """One line of question.jsonl."""

    model_config = ConfigDict(extra="allow")
    question_id: int
    category: str
    turns: list[str] = Field(min_length=1)
    reference: list[str] | None = None

    @field_validator("turns")
    @classmethod
    def _non_empty(cls, turns: list[str]) -> list[str]:
        if any(not t.strip() for t in turns):
            raise ValueError("every turn must be a non-empty string")
        return turns

    @property
    def temperature(self) -> float:
        return TEMPERATURE_CONFIG.get(self.category, DEFAULT_TEMPERATURE)

    @property
    def needs_reference(self) -> bool:
        return self.category in NEED_REF_CATS


class Choice(BaseModel):
    model_config = ConfigDict(extra="allow")
    index: int = 0
    turns: list[str]


class Answer(BaseModel):
    """One line of model_answer/<model_id>.jsonl (FastChat's answer format)."""

    model_config = ConfigDict(extra="allow")
    question_id: int
    answer_id: str = ""
    model_id: str = ""
    choices: list[Choice] = Field(min_length=1)
    tstamp: float = 0.0

    @property
    def turns(self) -> list[str]:
        return self.choices[0].turns


def load_questions(path: Path, limit: int | None = None, per_category: int | None = None) -> list[Question]:
    """Questions in file order (the first `per_category` of each category, then the first `limit`);
    a malformed line or a repeated id is `FILE:LINE: ...`."""
    questions: list[Question] = []
    seen: dict[int, int] = {}
    for number, question in _numbered(path, Question):
        if question.question_id in seen:
            raise DataError(located(path, number, f"question_id {question.question_id} repeats line "
                                                  f"{seen[question.question_id]}"))
        seen[question.question_id] = number
        questions.append(question)
    if not questions:
        raise DataError(f"{path}: no questions")
    if per_category:
        taken: dict[str, int] = {}
        kept = []
        for question in questions:
            if taken.get(question.category, 0) < per_category:
                taken[question.category] = taken.get(question.category, 0) + 1
                kept.append(question)
        questions = kept
    return questions[:limit] if limit else questions


def load_answers(path: Path) -> dict[int, Answer]:
    """An answer file by question id (the last line wins, as in FastChat's loader)."""
    return {answer.question_id: answer for _, answer in _numbered(path, Answer)}


def load_judge_prompts(path: Path | None = None) -> dict[str, dict]:
    """FastChat's judge prompts by name; the packaged copy unless a file is given."""
    if path is None:

        rows = json.loads(read_text("mt_bench_judge_prompts.json"))["prompts"]
    else:
        rows = [row for _, row in _numbered(path, None)]
    prompts = {row["name"]: row for row in rows if isinstance(row, dict) and "name" in row}
    needed = {"single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn",
              "pair-v2", "pair-math-v1", "pair-v2-multi-turn", "pair-math-v1-multi-turn"}
    missing = needed - set(prompts)
    if missing:
        raise DataError(f"{path or 'packaged judge prompts'}: missing judge prompts {sorted(missing)}")
    return prompts


def _numbered(path: Path, schema: type[BaseModel] | None):
    """(line number, parsed line) pairs; errors name FILE:LINE (read_jsonl numbers lines the same way)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    with open_data(path) as handle:
        lines = [n for n, text in enumerate(handle, 1) if text.strip()]
    return zip(lines, read_jsonl(path, schema))


def answer_record(question: Question, model_id: str, turns: list[str], extra: dict[str, Any]) -> dict:
    """FastChat's answer line. The answer_id is derived from the content (FastChat draws a random
    shortuuid), so a resumed run gives every answer the same id as before."""

    answer_id = canonical_hash([model_id, question.question_id, turns])[:22]
    return {"question_id": question.question_id, "answer_id": answer_id, "model_id": model_id,
            "choices": [{"index": 0, "turns": turns}], "tstamp": extra.pop("tstamp", 0.0), **extra}


def safe_name(text: str) -> str:
    """A model or judge name usable as a file name (FastChat names files after them)."""
    keep = "".join(c if c.isalnum() or c in "-_." else "-" for c in text.strip())
    return keep.strip("-.") or "model"


def spec_label(spec: str) -> str:
    """A short name for a model spec: its model name, or the directory's name for local paths."""
    kind, _, rest = spec.partition(":")
    if kind == "local":
        return Path(rest).name if rest else "SmolLM2-135M-Instruct"
    if kind in ("openai", "anthropic"):
        return rest.partition("@")[0] or kind
    return Path(spec).name or spec
