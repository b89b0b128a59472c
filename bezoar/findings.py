"""Problems found before anything is spent, each placed on the recipe line of its key.

`bezoar validate`, the start of `bezoar run` and every step's `check` add to one `Findings`; all of its
problems are raised together, one `FILE:LINE: key.path: what, the numbers, the fix` line each.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from bezoar.errors import ConfigError, DataError
from bezoar.hh_rlhf import Malformed, load_row, parse_row
from bezoar.records import open_data, read_jsonl
from bezoar.yaml_lines import parse_yaml


class Refused(ConfigError):
    """The recipe cannot run as it is; one line per problem."""


class Findings:
    """Problems found so far, each placed on the recipe line of its key."""

    def __init__(self, source: Path | None):
        self.source = source
        self.lines: dict[tuple, int] = {}
        self.text: list[str] = []
        if source is not None and Path(source).is_file():
            self.lines = parse_yaml(Path(source))[1]
            self.text = Path(source).read_text(encoding="utf-8").splitlines()
        self.problems: list[tuple[int, str]] = []

    def line(self, key: tuple) -> int:
        """The line of `key`, else of its nearest parent in the recipe (a default has no line of its own)."""
        return next((self.lines[key[:i]] for i in range(len(key), 0, -1) if key[:i] in self.lines), 1)

    def variable(self, key: tuple, whole: bool = False) -> str | None:
        """The `${VAR...}` the recipe reads this value from, if any: the knob a user turns. `whole`: only
        when the variable is the entire value (`"${HH_RLHF:-...}"`, not `"${BEZOAR_DATA:-...}/file"`)."""
        number = self.lines.get(key)
        if not number or not self.text:
            return None
        name = r"\$\{([A-Za-z_][A-Za-z0-9_]*)"
        pattern = r":\s*[\"']?" + name + r"[^}]*\}[\"']?\s*(?:#.*)?$" if whole else name
        found = re.search(pattern, self.text[number - 1])
        return found.group(1) if found else None

    def missing(self, key: tuple, what: str) -> None:
        """`what` does not exist: the fix names the variable the path is read from, when there is one."""
        variable = self.variable(key)
        self.add(key, f"{what} not found; " + (f"fix the path, or set {variable} (read in it) to where the data is"
                                               if variable else "fix the path"))

    def add(self, key: tuple, message: str) -> None:
        where = f"{self.source}:{self.line(key)}" if self.source else "(recipe)"
        self.problems.append((self.line(key), f"{where}: {'.'.join(map(str, key))}: {message}"))

    def raise_if_any(self) -> None:
        if self.problems:
            raise Refused("\n".join(text for _, text in sorted(self.problems)))


PREVIEW_ROWS = 20
"""Rows read from an input to prove it parses (whole files are read only where a count is needed)."""


def count_lines(path: Path) -> int:
    """Non-blank lines of a text file (gzip too), without parsing them: a row count for JSONL and TSV."""
    with open_data(path, binary=True) as handle:  # bytes: a row count needs no decoding
        return sum(1 for line in handle if line.strip())


def preview_jsonl(path: Path, key: tuple, add: Any, missing: Any, schema=None) -> None:
    """The first rows of a JSONL file parse (with `schema` when given); problems go to `add(key, text)`,
    a missing file to `missing(key, what)`."""
    if not Path(path).is_file():
        missing(key, str(path))
        return
    try:
        for _, _row in zip(range(PREVIEW_ROWS), read_jsonl(path, schema)):
            pass
    except DataError as error:
        add(key, str(error))


def preview_pairs(path: Path, key: tuple, add: Any, missing: Any) -> None:
    """The first row of a preference file parses: HH-RLHF transcripts or bezoar pairs."""
    if not Path(path).is_file():
        missing(key, str(path))
        return
    try:
        with open_data(Path(path)) as handle:
            rows = [line for _, line in zip(range(PREVIEW_ROWS), handle) if line.strip()]
    except UnicodeDecodeError as error:
        add(key, f"{path}: not UTF-8 text ({error.reason} at byte {error.start})")
        return
    try:
        row = load_row(rows[0]) if rows else None
        if row is not None and isinstance(row.get("chosen"), str):
            parse_row(row)
    except Malformed as error:
        add(key, f"{path}:1: {error}")
