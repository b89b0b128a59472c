"""Every child process bezoar starts, started one way: a step in a process of its own, or a training
step's ranks under the real `accelerate launch`.

Both run `python -m bezoar.processes CALL.json`. The call file names a function (`module:function`)
and its JSON keyword arguments; each process writes its outcome (rank 0: the return value; any rank:
the BezoarError it raised; every rank: its peak RSS) to `rank-N.pickle` beside the call file, which the
parent reads back. One process:

    python -m bezoar.processes CALL.json

N processes (DDP; FSDP or DeepSpeed from an accelerate config file):

    python -m accelerate.commands.launch --num_processes N [--config_file F] -m bezoar.processes CALL.json

Why a process per step: in one long-lived process the steps' memory stacked up (freeing models still
left ~0.7 GB per trained step in torch's and the allocator's caches); a process that ends gives all of
it back. Why accelerate only around a training step: the whole CLI under `accelerate launch` would start
N copies of the pipeline racing on the manifest. The children run in the caller's process group, so
killing the group ends every one of them; if only the caller dies, they follow it (PR_SET_PDEATHSIG).
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import pickle
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import traceback
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any

from bezoar.errors import BezoarError, StageFailed, disk_full
from bezoar.logs import configure_logging

log = logging.getLogger(__name__)

LAUNCHED = "BEZOAR_LAUNCHED"
"""Set for the ranks of an `accelerate launch`: "already inside the launch, train here"."""


@dataclass
class Outcome:
    """What a call's processes sent back."""

    result: Any = None
    peak_rss_mb: list[int] = field(default_factory=list)
    """Per process, in rank order."""

    @property
    def peak_rss_mb_total(self) -> int:
        return sum(self.peak_rss_mb)


def run_call(function: str, kwargs: dict, workdir: Path, num_processes: int = 1,
             config_file: Path | None = None) -> Outcome:
    """Run `function(**kwargs)` in a child process (or in `num_processes` ranks under accelerate, or with
    an accelerate `config_file`); wait, and return rank 0's value. A BezoarError raised there is raised
    here as it was; a crash or a kill is a StageFailed naming the exit code. `workdir`: where the call
    writes (the directory named when its disk fills)."""
    # Outside the run: a child that fills the run's disk must still be able to send back its outcome.
    scratch = Path(tempfile.mkdtemp(prefix="bezoar-call-"))
    call_file = scratch / "call.json"
    call_file.write_text(json.dumps({"function": function, "kwargs": kwargs, "workdir": str(workdir),
                                     "log_level": logging.getLogger().getEffectiveLevel()}))
    launch = num_processes > 1 or config_file is not None
    command = accelerate_command(num_processes, config_file, call_file) if launch else \
        [sys.executable, "-m", "bezoar.processes", str(call_file)]
    if launch:
        log.info("starting %d training processes: %s", num_processes, " ".join(command[1:]))
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **({LAUNCHED: "1"} if launch else {})}
    parent = os.getpid()
    try:
        code = subprocess.run(command, env=env, preexec_fn=lambda: die_with_parent(parent), check=False).returncode
        outcomes = [pickle.loads(p.read_bytes()) for p in sorted(scratch.glob("rank-*.pickle"))]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for outcome in outcomes:
        _raise(outcome.get("error"), function)
    main = next((o for o in outcomes if o["rank"] == 0 and "result" in o), None)
    if code != 0 or main is None:
        raise StageFailed(f"the process running {function} ended with exit code {code} and no result (a negative "
                          "code is the signal that killed it, -9 often means out of memory; a traceback, if any, is "
                          "printed above); run again to resume")
    return Outcome(main["result"], [o["peak_rss_mb"] for o in sorted(outcomes, key=lambda o: o["rank"])])


def _raise(error: BaseException | tuple[str, str] | None, function: str) -> None:
    if error is None:
        return
    if isinstance(error, BaseException):
        raise error
    name, message = error
    raise StageFailed(f"{function} failed: {name}: {message} (its traceback is printed above)")


def accelerate_command(num_processes: int, config_file: Path | None, call_file: Path) -> list[str]:
    """The launcher's command line. Without a config file: torchrun-style DDP (`--multi_gpu` is
    accelerate's name for it; on a CPU-only machine it becomes MULTI_CPU with gloo)."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes),
               "--num_machines", "1", "--main_process_port", str(_free_port()), "--dynamo_backend", "no"]
    if config_file is not None:
        if not Path(config_file).is_file():
            raise BezoarError(f"launch.config_file: {config_file} not found "
                              "(see recipes/accelerate/ for FSDP and DeepSpeed configs)")
        command += ["--config_file", str(config_file)]
    elif num_processes > 1:
        command += ["--multi_gpu", "--mixed_precision", "no"]
    return command + ["-m", "bezoar.processes", str(call_file)]


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


def peak_rss_mb() -> int:
    """This process's RSS high-water mark (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if platform.system() == "Darwin" else 1024))


def rss_mb() -> int | None:
    """This process's resident memory now (Linux: statm's second field), None where unknown."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20
    except (OSError, ValueError):
        return None


def die_with_parent(parent_pid: int | None = None) -> None:
    """If the parent is killed (SIGKILL included), this process must not go on writing alone."""
    if platform.system() != "Linux":
        return

    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if parent_pid is not None and os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _portable(error: BaseException) -> BaseException:
    """The error itself when it survives pickling (any BezoarError subclass keeps its type), else its message."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001 - an exception whose constructor takes other arguments
        return BezoarError(str(error))


def main(call_file: str) -> int:
    """Entry point of every child (`python -m bezoar.processes CALL.json`)."""


    die_with_parent()
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
    except BaseException as error:  # noqa: BLE001 - a crash is reported to the parent too
        if full := disk_full(error, Path(call["workdir"])):  # the environment: one line, no traceback
            outcome["error"] = full
        else:
            traceback.print_exc()
            outcome["error"] = (type(error).__name__, str(error))
        code = 1
    outcome["peak_rss_mb"] = peak_rss_mb()
    target = Path(call_file).parent / f"rank-{rank()}.pickle"
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps(outcome))
    os.replace(tmp, target)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
