"""The project's exception types.

Every error a user can cause (a bad recipe, a malformed JSONL line, an unreachable server, a licence
that forbids commercial use) is a `BezoarError`: the CLI prints its message as one line and exits
with code 2. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import errno


class BezoarError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class ConfigError(BezoarError):
    """A recipe or option is invalid. Messages read `FILE:LINE: key.path: what is wrong`."""


class DataError(BezoarError):
    """A data file is missing or malformed. Messages read `FILE:LINE: what is wrong`."""


class BackendError(BezoarError):
    """A model backend failed after its retries, or cannot be loaded."""


class RoleUnavailable(BackendError):
    """A failure that concerns every item of a role, not one: a refused key (401/403), no endpoint
    reachable after the retry budget, rate limits that never lift. The stage stops at once (exit 2);
    the same command resumes once the cause is fixed."""


class BatchPending(BackendError):
    """Provider batches (OpenAI Batch, Anthropic Message Batches) were submitted and are not done yet
    (`batch_wait_s` passed, or `bezoar run --no-wait`). Nothing is lost: the batch ids and their items are
    in the run's call cache, and the same command collects them later without submitting an item twice.
    The CLI exits with `EXIT_CODE` (sysexits' EX_TEMPFAIL: "try again later"), not 2."""

    EXIT_CODE = 75

    def __init__(self, message: str, batch_ids: tuple[str, ...] = ()):
        super().__init__(message)
        self.batch_ids = tuple(batch_ids)

    def __reduce__(self):  # keeps its type and ids across the pipe from a stage process
        return type(self), (str(self), self.batch_ids)


class FailureRateExceeded(BezoarError):
    """More items of a stage failed than `run.max_failure_rate` allows: a systematic fault, not bad luck."""


class LicenceError(BezoarError):
    """A seed or model is not clearly usable commercially while the recipe demands it."""


class BudgetExceeded(BezoarError):
    """A role's call or cost budget would be passed; the stage stops cleanly and can resume."""


class StageFailed(BezoarError):
    """A stage's process crashed or was killed; its own traceback (if any) is printed above."""


class DiskFull(BezoarError):
    """A write failed for want of space (a full disk, a quota, a file-size limit). What was written before
    is intact (atomic JSON writes, JSONL torn lines repaired on resume): free space and run again."""


FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
FULL_TEXTS = ("no space left on device", "database or disk is full", "disk quota exceeded", "file too large",
              "storagefull", "file write failed", "unexpected pos")
"""How libraries that drop the errno say it: SQLite, safetensors (Rust's "os error 28"), torch.save (its
zip writer checks the position after each write: a short write is "unexpected pos N vs M")."""


def disk_full(error: BaseException, where: object = None) -> DiskFull | None:
    """The `DiskFull` that `error` (or an error it was raised from or during) amounts to, else None.

    The path is the one the failing write named, else `where` (the directory being written)."""
    chain: list[BaseException] = []
    seen: BaseException | None = error
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    if found := next((e for e in chain if isinstance(e, DiskFull)), None):
        return found  # the first full write, not a bookkeeping write that failed after it
    full = [e for e in chain if (isinstance(e, OSError) and e.errno in FULL_ERRNOS)
            or any(text in str(e).lower() for text in FULL_TEXTS)]
    if not full:
        return None
    path = next((e.filename for e in full if isinstance(e, OSError) and e.filename), None) or where or "."
    first = full[0]
    said = first.strerror if isinstance(first, OSError) and first.strerror else \
        (str(first).splitlines() or [type(first).__name__])[0][:160]
    detail = "" if said.lower().startswith("no space left") else f" ({said})"
    return DiskFull(f"{path}: no space left on device{detail}; free some space and run the same command "
                    "again to resume (what was written so far is kept)")


def located(path: object, line: int | None, message: str) -> str:
    """`FILE:LINE: message`, the one format every file-level error uses."""
    return f"{path}:{line}: {message}" if line is not None else f"{path}: {message}"
