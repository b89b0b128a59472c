"""The project's exception types.

Every error a user can cause (a bad recipe, a malformed JSONL line, an unreachable server, a licence
that forbids commercial use) is a `BezoarError`: the CLI prints its message as one line and exits
with code 2. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


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


class FailureRateExceeded(BezoarError):
    """More items of a stage failed than `run.max_failure_rate` allows: a systematic fault, not bad luck."""


class LicenceError(BezoarError):
    """A seed or model is not clearly usable commercially while the recipe demands it."""


class BudgetExceeded(BezoarError):
    """A role's call or cost budget would be passed; the stage stops cleanly and can resume."""


class StageFailed(BezoarError):
    """A stage's process crashed or was killed; its own traceback (if any) is printed above."""


def located(path: object, line: int | None, message: str) -> str:
    """`FILE:LINE: message`, the one format every file-level error uses."""
    return f"{path}:{line}: {message}" if line is not None else f"{path}: {message}"
