"""The one rule for "skip if unchanged": a fingerprint of everything that decides a piece of work's result,
recorded with the result; the same fingerprint found there later means the work is done.

The pipeline records each step's in the manifest; a training run in its summary.json; an evaluation in
its summary.json; a generated file in its state file (where a changed basis also says what changed). The
basis is an explicit dict, so adding a field to it is a deliberate choice to invalidate earlier results.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bezoar.hashing import canonical_hash
from bezoar.records import write_json


def fingerprint(basis: Any) -> str:
    """sha256 over the basis's canonical JSON (pydantic models by their JSON dump)."""
    return canonical_hash(_plain(basis))


def _plain(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def recorded(path: Path, print_: str) -> dict | None:
    """The JSON result at `path` if it was recorded with fingerprint `print_`, else None."""
    try:
        found = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) and found.get("fingerprint") == print_ else None


def record(path: Path, print_: str, result: dict) -> dict:
    """Write `result` with its fingerprint to `path` (atomically, last: it marks the work done)."""
    result = {**result, "fingerprint": print_}
    write_json(path, result)
    return result


def changed_keys(earlier: dict, basis: dict) -> list[str]:
    """The top-level keys of two bases that differ: what a refused resume names."""
    return sorted(k for k in set(earlier) | set(basis) if earlier.get(k) != basis.get(k))
