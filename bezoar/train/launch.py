"""Several training processes, started by bezoar itself under the real `accelerate launch`.

Running the whole CLI under `accelerate launch` would start N copies of the pipeline, racing on the
manifest and every output. Instead the one main process (`bezoar run`'s stage child, or `bezoar sft`
/ `bezoar dpo`) starts only the training call under the launcher:

    python -m accelerate.commands.launch --num_processes N [--config_file F] --main_process_port P \\
        -m bezoar.train.launch CALL.json

Every rank runs the same call (`module:function` with JSON keyword arguments); TRL and the HF
Trainer split the batches (DDP, or FSDP/DeepSpeed from the config file) and only rank 0 writes
checkpoints, metrics and the summary. Each rank leaves a small result file (rank 0: the call's
return value; all: peak RSS), which the main process reads back. On a machine without GPUs,
torchrun's processes talk through gloo and each gets cores / N threads.

The launcher runs in the caller's process group, so killing the group (Ctrl-C, SIGKILL of a test)
ends every rank; if only the caller dies, the launcher and the ranks follow it (PR_SET_PDEATHSIG).
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import platform
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from bezoar.config import Recipe
from bezoar.errors import BezoarError, StageFailed
from bezoar.train.config import LaunchSettings

log = logging.getLogger(__name__)

LAUNCHED = "BEZOAR_LAUNCHED"  # set for the ranks: "already inside the launch, train here"


def launched() -> bool:
    """True inside a process that `accelerate launch` started for bezoar."""
    return os.environ.get(LAUNCHED) == "1"


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def local_world_size() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0 (or no launch at all): the one process that writes run files."""
    return rank() == 0


def wants_launch(settings: LaunchSettings) -> bool:
    return settings.wanted and not launched()


def accelerate_command(settings: LaunchSettings, call_file: Path) -> list[str]:
    """The launcher's command line. Without a config file: torchrun-style DDP (`--multi_gpu` is
    accelerate's name for it; on a CPU-only machine it becomes MULTI_CPU with gloo)."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(settings.num_processes),
               "--num_machines", "1", "--main_process_port", str(_free_port()), "--dynamo_backend", "no"]
    if settings.config_file is not None:
        if not Path(settings.config_file).is_file():
            raise BezoarError(f"launch.config_file: {settings.config_file} not found "
                              "(see recipes/accelerate/ for FSDP and DeepSpeed configs)")
        command += ["--config_file", str(settings.config_file)]
    elif settings.num_processes > 1:
        command += ["--multi_gpu", "--mixed_precision", "no"]
    return command + ["-m", "bezoar.train.launch", str(call_file)]


def launch_call(function: str, kwargs: dict, settings: LaunchSettings, workdir: Path) -> dict:
    """Run `function(**kwargs)` on every rank; returns {"result": rank 0's value, "processes": N,
    "peak_rss_mb": per-rank list, "peak_rss_mb_total": sum}."""
    scratch = Path(workdir) / f".launch-{uuid.uuid4().hex[:8]}"
    scratch.mkdir(parents=True)
    call_file = scratch / "call.json"
    call_file.write_text(json.dumps({"function": function, "kwargs": kwargs, "results": str(scratch),
                                     "log_level": logging.getLogger().getEffectiveLevel()}))
    command = accelerate_command(settings, call_file)
    log.info("starting %d training processes: %s", settings.num_processes, " ".join(command[1:]))
    env = {**os.environ, LAUNCHED: "1", "TOKENIZERS_PARALLELISM": "false"}
    try:
        code = subprocess.run(command, env=env, preexec_fn=_die_with_parent, check=False).returncode
        outcomes = [pickle.loads(p.read_bytes()) for p in sorted(scratch.glob("rank-*.pickle"))]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for outcome in outcomes:
        if isinstance(outcome.get("error"), BaseException):
            raise outcome["error"]
    main = next((o for o in outcomes if o["rank"] == 0 and "result" in o), None)
    if code != 0 or main is None:
        raise StageFailed(f"accelerate launch of {function} ended with exit code {code} and no result from rank 0 "
                          "(a rank's traceback is printed above; -9 often means out of memory); run again to resume")
    peaks = [o["peak_rss_mb"] for o in sorted(outcomes, key=lambda o: o["rank"])]
    return {"result": main["result"], "processes": settings.num_processes, "peak_rss_mb": peaks,
            "peak_rss_mb_total": sum(peaks)}


def launch_stage(function: str, recipe: Recipe, run_dir: Path, settings: LaunchSettings) -> dict:
    """A `bezoar run` training stage under `accelerate launch`; its summary gains a `launch` entry."""
    data = {"function": function, "recipe": recipe.model_dump(mode="json"), "run_dir": str(run_dir)}
    found = launch_call("bezoar.train.launch:run_stage_here", data, settings, Path(run_dir))
    return {**found["result"], "launch": {k: v for k, v in found.items() if k != "result"}}


def run_stage_here(function: str, recipe: dict, run_dir: str) -> dict:
    """On each rank: rebuild the recipe and call the stage function (which now trains in place)."""
    from importlib import import_module

    module, _, name = function.partition(":")
    return getattr(import_module(module), name)(Recipe.model_validate(recipe), Path(run_dir), None)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _die_with_parent() -> None:
    """In the launcher (and, via `main`, in each rank): SIGKILL when the parent dies."""
    if platform.system() != "Linux":
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _peak_rss_mb() -> int:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if platform.system() == "Darwin" else 1024))


def _portable(error: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001 - an exception whose constructor takes other arguments
        return BezoarError(str(error))


def main(call_file: str) -> int:
    """Entry point of each rank (`python -m bezoar.train.launch CALL.json`)."""
    from importlib import import_module

    from bezoar.logs import configure_logging

    _die_with_parent()
    call = json.loads(Path(call_file).read_text())
    configure_logging(call["log_level"] if is_main_process() else logging.WARNING)  # one copy of each line
    outcome: dict[str, Any] = {"rank": rank()}
    code = 0
    try:
        module, _, name = call["function"].partition(":")
        result = getattr(import_module(module), name)(**call["kwargs"])
        if is_main_process():
            outcome["result"] = result
    except (BezoarError, KeyboardInterrupt) as error:
        outcome["error"], code = _portable(error), 2
    outcome["peak_rss_mb"] = _peak_rss_mb()
    target = Path(call["results"]) / f"rank-{rank()}.pickle"
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps(outcome))
    os.replace(tmp, target)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
