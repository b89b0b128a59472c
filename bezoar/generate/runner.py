"""The loop every scheme shares: consume a scheme's candidate stream until `n` records, resumably.

A scheme is a deterministic stream of outcomes (records or rejections), in a fixed order that depends
only on the seeds, the settings and the random seed, never on batch sizes or on where a run stopped.
The runner appends accepted records in that order, so after a kill the same stream is replayed (its
calls are cache hits), records already on disk are recognised by id and skipped, and the file ends
with exactly the first `n` records of the stream: the same file an uninterrupted run writes.
"""
from __future__ import annotations

import json
import logging
import math
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tqdm.auto import tqdm

from bezoar.errors import BezoarError, DataError
from bezoar.failures import FailureLog
from bezoar.fingerprint import changed_keys, fingerprint
from bezoar.generate.elimination import heuristic_failure, only_stopwords
from bezoar.hashing import canonical_hash
from bezoar.records import Lineage, Record, append_jsonl, read_jsonl, repair_tail, write_json

log = logging.getLogger(__name__)


@dataclass
class Rejection:
    """A candidate that did not become a record, with the teacher's raw text and the reason."""

    method: str
    reason: str
    stage: str
    """Which step rejected it: instruction_list, instruction, evolution, equality, response."""
    seed_ids: list[str]
    raw: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return canonical_hash([self.method, self.reason, self.stage, self.seed_ids, self.raw, self.details])[:16]

    def to_json(self) -> dict:
        return {"id": self.id, "method": self.method, "reason": self.reason, "stage": self.stage,
                "seed_ids": self.seed_ids, "raw": self.raw, "details": self.details}


@dataclass
class Failure:
    """A candidate whose teacher call failed for this item alone (after the backend's retries).

    It holds its place in the stream (so the file ends with the records an unfailing run would have,
    minus this one), is written to `<method>.failed.jsonl`, and `bezoar run --retry-failed` asks again."""

    method: str
    stage: str
    seed_ids: list[str]
    error: str
    conversation: list[dict]
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, method: str, stage: str, seed_ids: list[str], reply: Any, conversation: list[dict],
           details: dict[str, Any] | None = None) -> "Failure":
        return cls(method, stage, seed_ids, reply.error or "failed", conversation, details or {})

    @property
    def id(self) -> str:
        return canonical_hash([self.method, self.stage, self.seed_ids, self.conversation])[:16]


Outcome = Record | Rejection | Failure
Wanted = Callable[[], int]


class Scheme(Protocol):
    method: str

    def outcomes(self, wanted: Wanted) -> Iterator[list[Outcome]]:
        """Outcome chunks in stream order; `wanted()` (records still missing) may size the chunks only."""
        ...


class GenerationIncomplete(BezoarError):
    """Too many rejections (or too few seeds) to reach `n`; the records made so far are kept."""


class Meter:
    """The progress bar: records (with rate and ETA), rejections, calls and cache hits."""

    def __init__(self, method: str, n: int, show: bool | None = None, listener: Callable[[int], None] | None = None):

        # disable=None: a bar on a terminal, nothing in logs and pipes.
        self.bar = tqdm(total=n, desc=method, unit="rec", disable=None if show is None else not show, dynamic_ncols=True)
        self.rejected = 0
        self.calls = 0
        self.listener = listener
        """Told the records done after each update (a pipeline step's progress)."""

    def hook(self, finished: int) -> None:
        """Wired into `CachedModel.chat(progress=...)`: counts finished calls as they arrive."""
        self.calls += finished
        self._postfix()

    def update(self, accepted: int, rejections: int) -> None:
        """`accepted` counts records of the stream found on disk or new, so a resumed run starts where it stopped."""
        self.rejected += rejections
        self.bar.update(accepted - self.bar.n)
        self._postfix()
        if self.listener is not None:
            self.listener(self.bar.n)

    def _postfix(self) -> None:
        self.bar.set_postfix(rejected=self.rejected, calls=self.calls, refresh=False)

    def close(self) -> None:
        self.bar.close()


@dataclass
class Batching:
    """How many work items to send next: enough for the records still missing, at the yield seen so far.

    Only the grouping of calls depends on it, never which records come out (the stream's order is
    fixed and local sampling is seeded per row), so it may adapt freely. Over-asking wastes calls at
    the end of a run; under-asking costs an extra, smaller round.
    """

    cap: int
    prior: float = 1.0
    """Expected records per work item before any result is seen."""
    tried: int = 0
    produced: int = 0

    def size(self, wanted: int) -> int:
        rate = (self.produced + self.prior) / (self.tried + 1)  # smoothed towards the prior
        return max(1, min(self.cap, math.ceil(wanted / max(rate, 0.05))))

    def saw(self, items: int, produced: int) -> None:
        self.tried += items
        self.produced += produced


def lower_alnum(text: str) -> str:
    """Lower case, letters and digits only (any run of punctuation, space or `_` is one space): the form in
    which two generated instructions count as the same. `bezoar.filter.heuristics.lower_words` keeps `_`."""
    return re.sub(r"[\W_]+", " ", text.lower()).strip()


@dataclass
class OutputFiles:
    records: Path

    @property
    def rejected(self) -> Path:
        return self.records.with_name(self.records.name.removesuffix(".jsonl") + ".rejected.jsonl")

    @property
    def state(self) -> Path:
        return self.records.with_name(self.records.name.removesuffix(".jsonl") + ".generate.json")

    @property
    def failed(self) -> Path:
        return self.records.with_name(self.records.name.removesuffix(".jsonl") + ".failed.jsonl")


@dataclass
class _Progress:
    """Where the replayed stream stands, and what the files already hold."""

    n: int
    done: set[str]
    done_instructions: set[str]
    known_rejections: set[str]
    accepted: int = 0
    failed: int = 0
    attempts: int = 0
    new_records: int = 0
    seen: set[str] = field(default_factory=set)
    reasons: Counter = field(default_factory=Counter)

    @property
    def filled(self) -> int:
        """Slots of the `n` taken: records, and failed items that keep their place."""
        return self.accepted + self.failed

    def take(self, chunk: list[Outcome]) -> tuple[list[Record], list[dict], list[Failure], int]:
        """New records, new rejections and failures to write from one chunk, and how many rejections it held."""
        records, rejections, failures, rejected = [], [], [], 0
        for outcome in chunk:
            if self.filled >= self.n:
                break
            self.attempts += 1
            if isinstance(outcome, Failure):
                self.failed += 1
                failures.append(outcome)
                continue
            if isinstance(outcome, Record):
                key = lower_alnum(outcome.instruction)
                if key not in self.seen:
                    self.seen.add(key)
                    self.accepted += 1
                    if outcome.meta.id not in self.done and key not in self.done_instructions:
                        records.append(outcome)
                    continue
                outcome = _duplicate(outcome)
            rejected += 1
            self.reasons[outcome.reason] += 1
            if outcome.id not in self.known_rejections:
                self.known_rejections.add(outcome.id)
                rejections.append(outcome.to_json())
        self.new_records += len(records)
        return records, rejections, failures, rejected


def generate_to_file(scheme: Scheme, out: Path, n: int, basis: dict, max_attempts: int, meter: Meter,
                     usage: Callable[[], dict] = dict, extra: dict | None = None, restart: bool = False,
                     max_failure_rate: float = 0.05, backend: str = "") -> dict:
    """Run `scheme` until `out` holds `n` records (or failed items in their places); returns the summary
    (also written beside `out`). `backend` names the teacher in the failures file."""
    files = OutputFiles(Path(out))
    _check_basis(files, basis, restart)
    state = _Progress(n, *_existing(files))
    failures = FailureLog(files.failed, f"generate {scheme.method}", max_failure_rate).start()
    on_disk = len(state.done)
    started = time.perf_counter()
    try:
        if n > 0:
            _consume(scheme, files, state, meter, max_attempts, failures, backend)
    finally:
        meter.close()
    if on_disk > n:
        log.warning("%s already holds %d records, more than n=%d; they are left as they are", files.records, on_disk, n)
    summary = {"method": scheme.method, "records": state.accepted, "new_records": state.new_records,
               "attempts": state.attempts, "rejected": dict(state.reasons.most_common()), **failures.summary(),
               "output": str(files.records), "rejections_file": str(files.rejected),
               "wall_s": round(time.perf_counter() - started, 2), "usage": usage(), **(extra or {})}
    write_json(files.state, {"basis": basis, "fingerprint": fingerprint(basis), "n": n, "summary": summary})
    return summary


def _consume(scheme: Scheme, files: OutputFiles, state: _Progress, meter: Meter, max_attempts: int,
             failures: FailureLog, backend: str) -> None:
    """Pull chunks until n records; each chunk's new records, rejections and failures are appended at once."""
    for chunk in scheme.outcomes(lambda: state.n - state.filled):
        attempts = state.attempts
        records, rejections, failed, rejected = state.take(chunk)
        append_jsonl(files.records, records)
        append_jsonl(files.rejected, rejections)
        for failure in failed:
            failures.record(failure.id, failure.error, backend, failure.conversation, method=failure.method,
                            step=failure.stage, seed_ids=failure.seed_ids, **failure.details)
        failures.saw(state.attempts - attempts)
        meter.update(state.filled, rejected)
        failures.check()
        if state.filled >= state.n:
            return
        if state.attempts >= max_attempts:
            raise GenerationIncomplete(_incomplete(scheme.method, files, state, "the attempt limit was reached"))
    raise GenerationIncomplete(_incomplete(scheme.method, files, state, "the seeds ran out"))


def _duplicate(record: Record) -> Rejection:
    return Rejection(record.meta.method, "duplicate_instruction", "instruction", record.meta.seed_ids,
                     record.instruction, {"record_id": record.meta.id})


def _existing(files: OutputFiles) -> tuple[set[str], set[str], set[str]]:
    """Ids and instructions already written, and rejection ids already recorded (after a kill)."""
    for path in (files.records, files.rejected):
        dropped = repair_tail(path)
        if dropped:
            log.info("%s: dropped a torn last line (%d bytes) left by an interrupted run", path, dropped)
    done, instructions = set(), set()
    if files.records.exists():
        for record in read_jsonl(files.records, Record):
            done.add(record.meta.id)
            instructions.add(lower_alnum(record.instruction))
    rejected = {row["id"] for row in read_jsonl(files.rejected)} if files.rejected.exists() else set()
    return done, instructions, rejected


def _check_basis(files: OutputFiles, basis: dict, restart: bool) -> None:
    """Refuse to extend a file made with other settings (its fingerprint's basis): it would mix two different
    streams. With `restart` (the pipeline, whose run directory is its own) the old outputs are replaced instead.
    """
    if files.state.exists():
        earlier = json.loads(files.state.read_text(encoding="utf-8")).get("basis", {})
        changed = changed_keys(earlier, basis)
        if changed and restart:
            log.warning("%s: settings changed (%s); generating it again", files.records, ", ".join(changed))
            for path in (files.records, files.rejected, files.state, files.failed):
                path.unlink(missing_ok=True)
        elif changed:
            raise DataError(f"{files.records}: was generated with different settings ({', '.join(changed)} changed); "
                            "write to another --out, or delete it and its .generate.json to start over")
    elif files.records.exists() and files.records.stat().st_size > 0:
        raise DataError(f"{files.records}: exists but has no {files.state.name} beside it, so bezoar cannot tell "
                        "how it was made; write to another --out or move it away")
    write_json(files.state, {"basis": basis, "fingerprint": fingerprint(basis)})


def _incomplete(method: str, files: OutputFiles, state: _Progress, why: str) -> str:
    top = ", ".join(f"{reason} {count}" for reason, count in state.reasons.most_common(4)) or "none"
    return (f"generate {method}: {why} after {state.attempts} candidates with {state.accepted} of {state.n} records "
            f"(kept in {files.records}; rejections: {top}; details in {files.rejected}). Use a stronger teacher, "
            "more seeds, or raise max_attempts_per_record; running again resumes")


@dataclass
class Context:
    """What every scheme needs: the teacher, who it is, the random seed and the progress hook."""

    teacher: Any  # a CachedModel
    teacher_spec: str
    teacher_licence: str
    seed: int = 0
    progress: Callable[[int], None] | None = None

    def rng(self, *parts: object) -> random.Random:
        """A generator for one decision point: the same parts give the same draws in every run."""
        return random.Random(canonical_hash([self.seed, *parts]))

    def lineage(self, seeds: list) -> Lineage:
        return Lineage.of([(s.dataset, "seed", s.licence) for s in seeds]
                          + [(self.teacher_spec, "teacher", self.teacher_licence)])


def response_problem(reply: Any, instruction: str, full_rules: bool = False) -> str | None:
    """Why a (successful) teacher reply cannot be a response: no content, or (Evol-Instruct) rules 2-4."""

    if full_rules:
        return heuristic_failure(instruction, reply.text)
    return "only_stopwords" if only_stopwords(reply.text) else None
