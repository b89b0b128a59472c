"""Each stage of `bezoar run` runs in a child process of its own.

Why: in one long-lived process the stages' memory stacked up. Freeing the models (gc + malloc_trim)
still left ~0.7 GB per trained stage (torch's and the allocator's caches, autograd buffers), so the
tiny recipe peaked at 4.6 GB while its largest stage alone needs 3.7 GB. A process that ends gives
all of it back. The child shares the run's call cache (SQLite WAL is multi-process safe), starts its
usage counters where the run's are (so budgets count across stages) and sends back the stage's
summary, what each role spent and its own peak RSS. `LazyModels` lives here, on the child's side:
it opens the roles a stage asks for, on first use.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import platform
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bezoar import errors
from bezoar.config import Recipe
from bezoar.config_base import ModelConfig
from bezoar.llm.cache import CachedModel, CallCache, Usage


@dataclass
class StageOutcome:
    """What a stage's process sends back to the run."""

    summary: dict | None = None
    usage: dict[str, dict] = field(default_factory=dict)
    """Per role: what this stage spent (calls, hits, tokens, wall time, cost, model identity)."""
    totals: dict[str, Usage] = field(default_factory=dict)
    """Per role: the run's usage so far, this stage included (budgets count from here)."""
    peak_rss_mb: int = 0
    error: BaseException | tuple[str, str] | None = None
    """A BezoarError (or Ctrl-C) as the stage raised it; a crash as (exception class name, message)."""

    def raise_error(self, stage: str) -> None:
        if self.error is None:
            return
        if isinstance(self.error, BaseException):
            raise self.error
        name, message = self.error
        raise errors.StageFailed(f"stage {stage} failed: {name}: {message} (its traceback is printed above)")


class LazyModels(Mapping[str, CachedModel]):
    """Role → CachedModel, opened on first use (a run that never judges never needs the judge's key).

    `carried` is the run's usage so far per role: counters start there, so budgets span stages."""

    def __init__(self, recipe: Recipe, cache: CallCache, carried: dict[str, Usage] | None = None):
        self.recipe, self.cache = recipe, cache
        self.opened: dict[str, CachedModel] = {}
        self.carried = carried or {}

    def __getitem__(self, role: str) -> CachedModel:
        if role not in ("teacher", "judge", "student"):
            raise KeyError(role)
        return self.open_extra(role, getattr(self.recipe.models, role))

    def open_extra(self, role: str, config: ModelConfig) -> CachedModel:
        """A role outside `models:` (e.g. eval.mt_bench.judge), counted in usage and budgets like the rest."""
        from bezoar.llm.specs import open_model

        if role not in self.opened:
            model = open_model(config, role=role, cache=self.cache)
            model.usage = self.carried.get(role, Usage()).copy()
            self.opened[role] = model
        return self.opened[role]

    def spent(self) -> dict[str, dict]:
        """Per role: what was spent since `carried`, with its cost and the model's identity."""
        usage = {}
        for role, model in self.opened.items():
            spent = model.usage.minus(self.carried.get(role, Usage()))
            if spent.calls or spent.cache_hits:
                usage[role] = {**spent.to_json(), "cost_usd": round(model.budget.cost(spent), 4),
                               "model": model.identity}
        return usage

    def totals(self) -> dict[str, Usage]:
        return {**self.carried, **{role: model.usage.copy() for role, model in self.opened.items()}}

    def __iter__(self) -> Iterator[str]:
        return iter(("teacher", "judge", "student"))

    def __len__(self) -> int:
        return 3


def run_stage_process(function: str, recipe: Recipe, run_dir: Path, cache_path: Path,
                      totals: dict[str, Usage], retry_failures: bool = False) -> StageOutcome:
    """Run `module:function` on the recipe in a spawned child; wait for it and return its outcome."""
    context = multiprocessing.get_context("spawn")  # fork would copy the parent's threads and locks
    receiver, sender = context.Pipe(duplex=False)
    # The child needs the URL credentials the recipe's specs may carry (every other dump strips them).
    recipe_data = (recipe.model_dump(mode="json", context={"credentials": True}), recipe.source_path)
    child = context.Process(target=_child_main, name=f"bezoar-{function}", daemon=False,
                            args=(function, recipe_data, str(run_dir), str(cache_path), totals,
                                  logging.getLogger().level, os.getpid(), sender, retry_failures))
    child.start()
    sender.close()  # so that recv() sees EOF if the child dies without answering
    try:
        outcome = receiver.recv()
    except EOFError:
        child.join()
        raise errors.StageFailed(f"the process running {function} ended without a result "
                                 f"(exit code {child.exitcode}; a negative code is the signal that killed it, "
                                 "-9 often means out of memory); run again to resume") from None
    finally:
        if child.is_alive():
            child.join(timeout=30)
        if child.is_alive():
            child.terminate()
            child.join()
    return outcome


def _child_main(function: str, recipe_data: tuple[dict, Path | None], run_dir: str, cache_path: str,
                totals: dict[str, Usage], log_level: int, parent_pid: int, sender,
                retry_failures: bool = False) -> None:
    _die_with_parent(parent_pid)
    from bezoar.logs import configure_logging

    configure_logging(log_level)
    outcome = StageOutcome()
    models = None
    try:
        from importlib import import_module

        data, source = recipe_data
        recipe = Recipe.model_validate({**data, "source_path": source})
        models = LazyModels(recipe, CallCache(cache_path, retry_failures=retry_failures), totals)
        module, _, name = function.partition(":")
        outcome.summary = getattr(import_module(module), name)(recipe, Path(run_dir), models)
    except (errors.BezoarError, KeyboardInterrupt) as error:
        outcome.error = _portable(error)
    except BaseException as error:  # noqa: BLE001 - a crash is reported to the parent too
        if full := errors.disk_full(error, run_dir):  # a full disk is the environment: one line, no traceback
            outcome.error = full
        else:
            traceback.print_exc()
            outcome.error = (type(error).__name__, str(error))
    if models is not None:
        outcome.usage, outcome.totals = models.spent(), models.totals()
    outcome.peak_rss_mb = peak_rss_mb()
    sender.send(outcome)
    sender.close()


def _portable(error: BaseException) -> BaseException:
    """The error itself when it survives the pipe (any BezoarError subclass keeps its type), else its message."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001 - an exception whose constructor takes other arguments
        return errors.BezoarError(str(error))


def _die_with_parent(parent_pid: int) -> None:
    """If the run's process is killed (SIGKILL included) its stage must not go on writing alone."""
    if platform.system() != "Linux":
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def peak_rss_mb() -> int:
    """This process's RSS high-water mark (Linux reports KiB, macOS bytes)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if platform.system() == "Darwin" else 1024))
