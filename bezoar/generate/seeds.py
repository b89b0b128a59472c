"""Seed readers: instruction and task files in the formats they are published in, with licences.

Recognised row shapes (first match wins), in JSONL (optionally .gz), a JSON array, or FLAN's TSV:
  dolly-15k        instruction, context, response, category
  self-instruct    id, name, instruction, instances[{input, output}]
  alpaca           instruction, input, output
  FLAN dumps       inputs, targets (+ task_source, task_name, template_type)
  T0/P3 sample     template, prompt, completion
  question/answer  question, answer
  chat records     messages (bezoar's own output, so generated data can seed another scheme)
  FLAN CoT .tsv    question <TAB> answer <TAB> rationale (no header; newlines written as "\\n")
A malformed row raises `FILE:LINE: what`, or with `skip_bad` is counted and skipped.
"""
from __future__ import annotations

import csv
import json
from collections.abc import Iterator
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bezoar.errors import DataError, located
from bezoar.licences import dataset_licence
from bezoar.records import open_data

if TYPE_CHECKING:
    from bezoar.generate.config import SeedFile

log = logging.getLogger(__name__)

SUB_COLLECTIONS = ("cot", "niv2", "t0", "flan2021")
"""FLAN 2022's sub-collections that Orca samples; anything else (Dialog, unlabelled files) is "other"."""


@dataclass(frozen=True)
class Seed:
    id: str
    """`<file stem>:<row id or line>`: stable across runs, recorded in every derived record."""
    instruction: str
    context: str = ""
    """Dolly's context / Alpaca's input / a self-instruct instance input ("" when none)."""
    target: str | None = None
    """A reference answer: Dolly's response, a FLAN gold target."""
    category: str | None = None
    task: str | None = None
    sub_collection: str = "other"
    dataset: str = ""
    licence: str = "unknown"
    source: str = ""

    @property
    def prompt(self) -> str:
        """What a user would send: the instruction followed by its context, as the authors joined them."""
        return f"{self.instruction}\n\n{self.context}" if self.context else self.instruction


@dataclass
class SeedSet:
    """Seeds from one or more files, plus what was skipped and which licences they carry."""

    seeds: list[Seed] = field(default_factory=list)
    bad_lines: list[str] = field(default_factory=list)
    licences: dict[str, tuple[str, str]] = field(default_factory=dict)
    """path → (data set name, licence id)."""

    def extend(self, other: "SeedSet") -> None:
        self.seeds += other.seeds
        self.bad_lines += other.bad_lines
        self.licences.update(other.licences)


def read_seeds(path: Path | str, licence: str | None = None, skip_bad: bool = False,
               limit: int | None = None) -> SeedSet:
    """All seeds of one file (the first `limit` rows when given)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such seed file")
    dataset, licence_id = dataset_licence(str(path), licence)
    sub_collection = _sub_collection_from_path(path)
    result = SeedSet(licences={str(path): (dataset, licence_id)})
    stem = path.name.split(".")[0]
    for line, row in _rows(path):
        try:
            if isinstance(row, Exception):
                raise row
            seed = _seed(row, stem, line)
        except (ValueError, TypeError) as error:
            message = located(path, line, str(error))
            if not skip_bad:
                raise DataError(message) from None
            result.bad_lines.append(message)
            continue
        result.seeds.append(_complete(seed, dataset, licence_id, str(path), sub_collection))
        if limit is not None and len(result.seeds) >= limit:
            break
    if not result.seeds:
        raise DataError(f"{path}: no usable seed rows")
    return result


def _complete(seed: dict, dataset: str, licence: str, source: str, sub_collection: str) -> Seed:
    seed.setdefault("sub_collection", sub_collection)
    return Seed(**seed, dataset=dataset, licence=licence, source=source)


def _sub_collection_from_path(path: Path) -> str:
    text = str(path).lower()
    if "cot_data" in text or path.name.lower().startswith("cot"):
        return "cot"
    if "t0" in path.name.lower() or "p3" in path.name.lower():
        return "t0"
    if "niv2" in text or "natural_instructions" in text:
        return "niv2"
    return "other"


def load_seed_files(seeds: list[SeedFile], skip_bad: bool) -> SeedSet:
    """The seeds of every file a recipe lists (`generate.*.seeds`), with the bad rows logged."""
    found = SeedSet()
    for seed in seeds:
        found.extend(read_seeds(seed.path, seed.licence, skip_bad, seed.limit))
    for message in found.bad_lines[:5]:
        log.warning("skipped %s", message)
    if found.bad_lines:
        log.warning("skipped %d malformed seed rows in all", len(found.bad_lines))
    return found


# --- file formats ----------------------------------------------------------------------------------

def _rows(path: Path) -> Iterator[tuple[int, dict | Exception]]:
    """(line number, row) pairs; a row that cannot be decoded comes back as its exception."""
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    kind = suffixes[-1] if suffixes else ""
    try:
        with open_data(path) as handle:
            if kind == ".tsv":
                yield from _tsv_rows(handle)
            elif kind == ".json":
                yield from _json_array_rows(handle.read())
            else:
                yield from _jsonl_rows(handle)
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read ({error})") from None


def _jsonl_rows(handle) -> Iterator[tuple[int, dict | Exception]]:
    for number, line in enumerate(handle, 1):
        if line.strip():
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as error:
                yield number, ValueError(f"not valid JSON ({error.msg} at column {error.colno})")


def _json_array_rows(text: str) -> Iterator[tuple[int, dict | Exception]]:
    """Items of a top-level JSON array with the line each starts on (json.load would lose them)."""
    decoder, index = json.JSONDecoder(), _skip_space(text, 0)
    if not text.startswith("[", index):
        yield text.count("\n", 0, index) + 1, ValueError("expected a JSON array of objects (or use JSONL)")
        return
    index = _skip_space(text, index + 1)
    while index < len(text) and text[index] != "]":
        line = text.count("\n", 0, index) + 1
        try:
            item, index = decoder.raw_decode(text, index)
        except json.JSONDecodeError as error:
            yield error.lineno, ValueError(f"not valid JSON ({error.msg} at column {error.colno})")
            return
        yield line, item
        index = _skip_space(text, index)
        if text.startswith(",", index):
            index = _skip_space(text, index + 1)


def _skip_space(text: str, index: int) -> int:
    while index < len(text) and text[index].isspace():
        index += 1
    return index


def _tsv_rows(handle) -> Iterator[tuple[int, dict | Exception]]:
    """FLAN CoT: question, answer, rationale; fields escape newlines as a literal backslash-n."""
    reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
    for number, cells in enumerate(reader, 1):
        if not any(c.strip() for c in cells):
            continue
        if len(cells) < 2:
            yield number, ValueError(f"expected at least 2 tab-separated columns (inputs, target), got {len(cells)}")
            continue
        inputs, target = (c.replace("\\n", "\n").strip() for c in cells[:2])
        yield number, {"inputs": inputs, "targets": target}


# --- row shapes ------------------------------------------------------------------------------------

def _seed(row: object, stem: str, line: int) -> dict:
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    for shape in (_chat, _instruction, _flan, _prompt_completion, _question_answer):
        found = shape(row)
        if found is not None:
            own_id = row.get("id")
            found["id"] = f"{stem}:{own_id}" if isinstance(own_id, (str, int)) and own_id != "" else f"{stem}:{line}"
            if not found["instruction"].strip():
                raise ValueError("the instruction is empty")
            return found
    raise ValueError("no instruction field: expected instruction, inputs+targets, prompt+completion, "
                     f"question+answer or messages (found {', '.join(sorted(row)) or 'no keys'})")


def _text(row: dict, key: str) -> str:
    value = row.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"field '{key}' must be a string, got {type(value).__name__}")
    return value.strip()


def _chat(row: dict) -> dict | None:
    messages = row.get("messages")
    if not isinstance(messages, list):
        return None
    turns = {m.get("role"): m.get("content", "") for m in reversed(messages) if isinstance(m, dict)}
    return {"instruction": str(turns.get("user", "")), "target": turns.get("assistant")}


def _instruction(row: dict) -> dict | None:
    if "instruction" not in row:
        return None
    instances = row.get("instances") if isinstance(row.get("instances"), list) else []
    first = instances[0] if instances and isinstance(instances[0], dict) else {}
    context = _text(row, "context") or _text(row, "input") or _text(first, "input")
    target = _text(row, "response") or _text(row, "output") or _text(first, "output") or None
    category = _text(row, "category") or _text(row, "name") or None
    return {"instruction": _text(row, "instruction"), "context": context, "target": target, "category": category}


def _flan(row: dict) -> dict | None:
    if "inputs" not in row or "targets" not in row:
        return None
    source = _text(row, "task_source").lower().replace("_", "").replace(" ", "")
    found = {"instruction": _text(row, "inputs"), "target": _text(row, "targets"),
             "task": _text(row, "task_name") or None}
    if source:
        found["sub_collection"] = source if source in SUB_COLLECTIONS else "other"
    return found


def _prompt_completion(row: dict) -> dict | None:
    if "prompt" not in row or "completion" not in row:
        return None
    target = _text(row, "completion").removesuffix("<|endoftext|>").strip()
    return {"instruction": _text(row, "prompt"), "target": target, "task": _text(row, "template") or None}


def _question_answer(row: dict) -> dict | None:
    if "question" not in row:
        return None
    return {"instruction": _text(row, "question"), "target": _text(row, "answer") or None}
