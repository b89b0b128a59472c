"""A run's bookkeeping, in one place: its manifest, the lock that keeps it to one `bezoar run`, the
records a torn manifest is rebuilt from, and the progress of the step running.

    RUN_DIR/manifest.json          per step: status, times, fingerprint, inputs, config, result, usage
                                   by role, peak RSS; plus the plan, versions and the recipe. Rewritten
                                   atomically at every change; a step is done once it says so.
    RUN_DIR/.lock                  flock'ed by the running `bezoar run`, with its PID inside. The kernel
                                   drops the lock when the process ends, even on SIGKILL, so a lock left
                                   by a killed run is simply taken over.
    RUN_DIR/state/NAME.json        a copy of each step's manifest entry, written beside every manifest
                                   write: what a corrupt manifest is rebuilt from.
    RUN_DIR/state/NAME.progress    work done / planned of the step running (what `bezoar status` shows).
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from pathlib import Path

from bezoar.errors import BezoarError, DataError
from bezoar.records import write_json

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
STATE_DIR = "state"


class RunLocked(BezoarError):
    """Another `bezoar run` is working in this run directory."""


class ManifestCorrupt(DataError):
    """manifest.json cannot be read as a manifest (truncated, not JSON, wrong shape)."""


class RunLock:
    """An exclusive, non-blocking flock on RUN_DIR/.lock, held until `release()` or the process ends."""

    def __init__(self, run_dir: Path):
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / LOCK_NAME
        # O_CLOEXEC (Python's default): a stage's child process never inherits, hence never keeps, the lock.
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            self._fd = None
            raise RunLocked(f"{run_dir}: another bezoar run (PID {holder}) is using this run directory; "
                            f"wait for it to finish, or stop it (kill {holder}) and run again to resume") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def read_manifest(path: Path) -> dict:
    """The manifest's data; a truncated or foreign file raises `ManifestCorrupt` in one line."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ManifestCorrupt(f"{path}: corrupt ({_why(error)}); run the same `bezoar run` command to rebuild it "
                              "from the stage records (the damaged file is kept beside it)") from None
    if not isinstance(data, dict) or not isinstance(data.get("steps", {}), dict):
        raise ManifestCorrupt(f"{path}: not a bezoar manifest (expected an object with 'steps'); run the same "
                              "`bezoar run` command to rebuild it (the damaged file is kept beside it)")
    return data


def _why(error: Exception) -> str:
    if isinstance(error, json.JSONDecodeError):
        return f"not valid JSON: {error.msg} at line {error.lineno} column {error.colno}; truncated by a crash?"
    return f"not UTF-8 text: {error}"


def load_manifest(run_dir: Path) -> dict:
    """The run's manifest, or, if it is corrupt, one rebuilt from RUN_DIR/state (the bad file moved aside)."""
    path = run_dir / "manifest.json"
    if not path.exists():
        return {}
    try:
        return read_manifest(path)
    except ManifestCorrupt as error:
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        os.replace(path, aside)
        steps = rebuilt_steps(run_dir)
        log.warning("%s; moved to %s and %s", str(error).split(";")[0], aside.name,
                    f"rebuilt from {len(steps)} step record(s) in {run_dir / STATE_DIR}" if steps
                    else "bookkeeping restarted (step outputs on disk are resumed)")
        return {"steps": steps, "rebuilt_from": str(aside)}


def rebuilt_steps(run_dir: Path) -> dict[str, dict]:
    """Step entries from RUN_DIR/state/*.json; unreadable ones are skipped (that step just runs again)."""
    steps: dict[str, dict] = {}
    for path in sorted((run_dir / STATE_DIR).glob("*.json")):
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            log.warning("%s: unreadable step record, ignored (that step will run again)", path)
            continue
        if isinstance(entry, dict):
            if entry.get("status") == "running":
                entry["status"] = "interrupted"  # its process is gone with the old manifest's writer
            steps[path.stem] = entry
    return steps


class Manifest:
    """RUN_DIR/manifest.json, rewritten atomically at every change (a corrupt one is moved aside and rebuilt)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "manifest.json"
        self.data: dict = load_manifest(Path(run_dir))
        self.data.setdefault("steps", {})

    def step(self, name: str) -> dict:
        return self.data["steps"].get(name, {})

    def update(self, name: str, **fields) -> None:
        self.data["steps"].setdefault(name, {}).update(fields)
        self.save()
        write_json(self.path.parent / STATE_DIR / f"{name}.json", self.data["steps"][name])  # what a rebuild reads

    def save(self) -> None:
        write_json(self.path, self.data)


class ProgressFile:
    """Where a running step's `Progress` goes: RUN_DIR/state/NAME.progress (JSON: done, total, unit),
    rewritten when it changes. Steps report whole items (records, prompts, checkpoints), so this is a small
    atomic write per item, negligible beside the item's model calls."""

    def __init__(self, run_dir: Path, name: str):
        self.path = Path(run_dir) / STATE_DIR / f"{name}.progress"
        self.last: dict = {}

    def __call__(self, progress: dict) -> None:
        if progress != self.last:
            self.last = dict(progress)
            write_json(self.path, progress)


def read_progress(run_dir: Path, name: str) -> dict:
    try:
        return json.loads((Path(run_dir) / STATE_DIR / f"{name}.progress").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
