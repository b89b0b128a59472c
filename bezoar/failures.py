"""Failed items: what could not be done after its retries is kept as data, never allowed to kill a stage.

A failed item is a call refused for that item alone (HTTP 400/413/422, a content filter, a reply still
unreadable after its retries). It is written to the stage's failures file with what it was, which
backend refused it and why, counted in the stage summary (hence the manifest, `bezoar status` and the
report), and the stage goes on. Only a systematic fault stops it: more than `max_rate` of the items
tried, judged once `min_tried` have been tried, so one bad item in a small run never stops it.

Each stage run rewrites its failures file from the start: a resumed run replays every item (finished
calls from the cache, recorded failures from the cache's failure table), so the file ends complete.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bezoar.errors import FailureRateExceeded
from bezoar.llm.protocol import Conversation
from bezoar.records import append_jsonl, write_jsonl

MIN_TRIED = 20
"""Items tried before the failure rate is judged (a 1-in-6 bad seed must not stop a small run)."""


@dataclass
class FailureLog:
    """One stage's (or one method's) failures file, and its failure-rate guard."""

    path: Path
    stage: str
    max_rate: float = 0.05
    min_tried: int = MIN_TRIED
    tried: int = 0
    failed: int = 0

    def start(self) -> "FailureLog":
        write_jsonl(self.path, [])
        return self

    def saw(self, items: int) -> None:
        """`items` more items were tried (failed or not)."""
        self.tried += items

    def record(self, item_id: str, error: str | None, backend: str, item_input: Conversation | str | dict,
               **details: Any) -> None:
        """Append one failed item: its id, input, the backend that refused it and the server's reason."""
        self.failed += 1
        append_jsonl(self.path, [{"stage": self.stage, "id": item_id, "input": item_input, "backend": backend,
                                  "error": error or "failed", **({"details": details} if details else {})}])

    def check(self) -> None:
        """Stop the stage if failures are systematic rather than one bad item."""
        if self.tried >= self.min_tried and self.failed > self.max_rate * self.tried:
            raise FailureRateExceeded(
                f"{self.stage}: {self.failed} of {self.tried} items failed (over run.max_failure_rate="
                f"{self.max_rate:g}); the failures and the servers' reasons are in {self.path}; fix the cause, "
                "then run the same command again (finished items are kept; --retry-failed asks the failed ones again)")

    def summary(self) -> dict:
        return {"failed_items": self.failed, "failures_file": str(self.path)}
