"""Training metrics on disk (metrics.jsonl and TensorBoard event files) and checkpoint discovery.

transformers writes a checkpoint directory file by file, so a SIGKILL during a save leaves a
`checkpoint-N` without its `trainer_state.json` (written last). Resuming from that would fail or,
worse, load a half-written optimizer; `last_complete_checkpoint` skips and removes such leftovers.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from bezoar.llm.cores import SHARE
from bezoar.records import append_jsonl, read_jsonl, repair_tail, write_jsonl

log = logging.getLogger(__name__)


class MetricsLog(TrainerCallback):
    """Appends every log event (train loss, eval loss, DPO rewards, ...) as one JSON line."""

    def __init__(self, path: Path, stage: str):
        self.path, self.stage = Path(path), stage
        self.start, self.cpu_start = time.perf_counter(), time.process_time()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        # cpu_s (this process, all threads) next to wall_s shows how much a shared machine slowed the run.
        row = {"stage": self.stage, "step": state.global_step, "epoch": round(state.epoch or 0.0, 4),
               "wall_s": round(time.perf_counter() - self.start, 2),
               "cpu_s": round(time.process_time() - self.cpu_start, 2), **logs}
        append_jsonl(self.path, [row])


class StepProgress(TrainerCallback):
    """Optimizer steps done out of planned, handed to the running step's progress (`bezoar status` shows
    it): a training step otherwise says nothing between its start and its end."""

    UNIT = "optimizer steps"

    def __init__(self, report: Callable[..., None]):
        self.report = report

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.report(state.global_step, state.max_steps, self.UNIT)

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.report(state.global_step, state.max_steps, self.UNIT)


class CPUBudget(TrainerCallback):
    """Stop training (after a checkpoint) at the step end nearest to `seconds` of this process's CPU
    time since the callback was made: arms of an experiment compared at the same CPU budget on a
    shared machine, where wall time says more about the neighbours than about the method. Nearest:
    it stops once the CPU left is under half of what the last step took."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.start = self.last = time.process_time()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.process_time()
        step, self.last = now - self.last, now
        if now - self.start + step / 2 >= self.seconds:
            log.info("CPU budget of %.0f s reached at step %d (%.0f s used): stopping", self.seconds,
                     state.global_step, now - self.start)
            control.should_training_stop = control.should_save = True
        return control


class SharedCores(TrainerCallback):
    """While training, this process counts among the bezoar processes computing (bezoar.llm.cores): its
    thread count follows theirs, looked at again before each step."""

    def on_train_begin(self, args, state, control, **kwargs):
        SHARE.busy(True)

    def on_step_begin(self, args, state, control, **kwargs):
        SHARE.rebalance()

    def on_train_end(self, args, state, control, **kwargs):
        SHARE.busy(False)


class QuietProgress(ProgressCallback):
    """transformers' tqdm bars, minus the dict it prints on every log event: one logging line instead."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in logs.items()
                              if k in ("loss", "eval_loss", "learning_rate", "rewards/accuracies", "eval_rewards/accuracies"))
            if shown:
                log.info("step %d: %s", state.global_step, shown)


def quiet(trainer) -> None:
    """Swap the trainer's printing callbacks for `QuietProgress` (the library never prints)."""
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(QuietProgress())


def trim_metrics(path: Path, step: int) -> None:
    """After a resume from `step`, drop log lines written after that checkpoint (they will be redone)."""
    path = Path(path)
    if not path.exists():
        return
    repair_tail(path)
    rows = [row for row in read_jsonl(path, skip_bad=True) if row.get("step", 0) <= step]
    write_jsonl(path, rows)


def tensorboard_callback(directory: Path):
    """transformers' TensorBoard callback writing to `directory` (not a time-stamped folder)."""
    from transformers.integrations import TensorBoardCallback

    callback = TensorBoardCallback()
    callback.logging_dir = str(directory)  # also used when it reopens the writer after training (held-out eval)
    return callback


def last_complete_checkpoint(out_dir: Path, remove_incomplete: bool = True) -> Path | None:
    """The newest `checkpoint-N` whose trainer_state.json parses; incomplete newer ones are removed
    (by the main process only, when several ranks look at once)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return None
    found = sorted((p for p in out_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    for checkpoint in found:
        try:
            json.loads((checkpoint / "trainer_state.json").read_text())
            return checkpoint
        except (OSError, ValueError):
            if remove_incomplete:
                log.warning("removing incomplete checkpoint %s (the run was killed while saving it)", checkpoint)
                shutil.rmtree(checkpoint, ignore_errors=True)
    return None


def best_metrics(log_history: list[dict]) -> dict:
    """First and best eval loss and last train loss from a Trainer's log history."""
    evals = [row for row in log_history if "eval_loss" in row]
    trains = [row for row in log_history if "loss" in row]
    summary: dict = {}
    if evals:
        summary["first_eval_loss"] = evals[0]["eval_loss"]
        best = min(evals, key=lambda row: row["eval_loss"])
        summary.update(best_eval_loss=best["eval_loss"], best_step=best.get("step"))
    if trains:
        summary.update(first_train_loss=trains[0]["loss"], last_train_loss=trains[-1]["loss"])
    return summary
