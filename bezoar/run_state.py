"""Run state that cannot be confused: one `bezoar run` per run directory, and a manifest that a crash
or a full disk cannot turn into a traceback.

    RUN_DIR/.lock              flock'ed by the running `bezoar run`, with its PID inside. The kernel
                               drops the lock when the process ends, even on SIGKILL, so a lock left
                               by a killed run is simply taken over.
    RUN_DIR/state/NAME.json    a copy of each stage's manifest entry, written beside every manifest
                               write: what a corrupt manifest is rebuilt from.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from pathlib import Path

from bezoar.errors import BezoarError, DataError

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
    if not isinstance(data, dict) or not isinstance(data.get("stages", {}), dict):
        raise ManifestCorrupt(f"{path}: not a bezoar manifest (expected an object with 'stages'); run the same "
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
        stages = rebuilt_stages(run_dir)
        log.warning("%s; moved to %s and %s", str(error).split(";")[0], aside.name,
                    f"rebuilt from {len(stages)} stage record(s) in {run_dir / STATE_DIR}" if stages
                    else "bookkeeping restarted (stage outputs on disk are resumed)")
        return {"stages": stages, "rebuilt_from": str(aside)}


def rebuilt_stages(run_dir: Path) -> dict[str, dict]:
    """Stage entries from RUN_DIR/state/*.json; unreadable ones are skipped (that stage just runs again)."""
    stages: dict[str, dict] = {}
    for path in sorted((run_dir / STATE_DIR).glob("*.json")):
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            log.warning("%s: unreadable stage record, ignored (that stage will run again)", path)
            continue
        if isinstance(entry, dict):
            if entry.get("status") == "running":
                entry["status"] = "interrupted"  # its process is gone with the old manifest's writer
            stages[path.stem] = entry
    return stages


def save_stage_record(run_dir: Path, name: str, entry: dict) -> None:
    from bezoar.records import write_json

    write_json(run_dir / STATE_DIR / f"{name}.json", entry)
