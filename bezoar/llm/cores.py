"""The machine's cores, shared with the other bezoar processes computing on it.

torch gives every process one thread per core. Two bezoar processes computing at once (`bezoar serve`
beside `bezoar run`, two stages' children, a user's script beside a run) then run twice as many
OpenMP threads as there are cores; each parallel region waits for its slowest thread, which is often
descheduled, while the others spin. Measured on 2 cores: a greedy answering job took 143 s alone and
1,230 s beside the preferences stage.

So each bezoar process that computes says so in a small registry under the user cache (a file named
after its PID, holding the process's start time so that a recycled PID is not taken for it), and
while it computes it uses cores // (processes computing) threads, looked at again every few seconds:
alone it has every core, beside another half of them, and all again once the other is done. Changing
the thread count does not change the numbers: logits and LoRA gradients of the embedded model were
bit-identical at 1 and 2 threads in fp32 (tests/test_two_processes.py checks it), but bf16 training and
sampling sums are not: deterministic mode keeps a fixed thread count.

`BEZOAR_SHARE_CORES=0`, or OMP_NUM_THREADS set by the user, leaves the thread count alone.
"""
from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from bezoar.llm.cache import default_cache_path
from bezoar.llm.device import cpu_threads, deterministic

log = logging.getLogger(__name__)

RECHECK_S = 2.0
"""How often a computing process looks at the registry again (reading it costs ~0.1 ms)."""


def registry_dir() -> Path:
    return default_cache_path().parent / "cores"


def _started(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()[19]  # after "pid (comm) ", field 3 is index 0


class CoreShare:
    """This process's entry in the registry and the thread count that follows from it."""

    def __init__(self, directory: Path | None = None, cores: int | None = None):
        self.directory = directory
        self.cores = cores or cpu_threads()
        self.depth = 0
        self.threads = 0
        self.checked = 0.0
        self.lock = threading.Lock()
        atexit.register(self._leave)

    @property
    def entry(self) -> Path:
        return (self.directory or registry_dir()) / str(os.getpid())

    @contextmanager
    def computing(self):
        """Count this process among those computing while the block runs (nested blocks count once)."""
        self.busy(True)
        try:
            yield
        finally:
            self.busy(False)

    @property
    def enabled(self) -> bool:
        """Read when asked (not at import), so that a process may turn sharing off after importing bezoar.
        Off in deterministic mode: bf16 training sums depend on the thread count, so a resumed run keeps
        the one it started with."""
        return (os.environ.get("BEZOAR_SHARE_CORES", "1") != "0" and "OMP_NUM_THREADS" not in os.environ
                and not deterministic())

    def busy(self, on: bool) -> None:
        """Enter (on) or leave the registry; entering also takes this process's share of the cores at once."""
        if not self.enabled:
            return
        with self.lock:
            self.depth += 1 if on else -1
            if on and self.depth == 1:
                self._enter()
                self.checked = 0.0
            elif not on and self.depth == 0:
                self._leave()
        if on:
            self.rebalance()

    def rebalance(self) -> int:
        """Threads for this process now (cores // processes computing), set in torch when it changed.
        Reads the registry at most every RECHECK_S; cheap to call on every decoding step."""
        if not self.enabled or time.monotonic() - self.checked < RECHECK_S:
            return self.threads
        self.checked = time.monotonic()
        threads = max(1, self.cores // max(1, len(computing(self.directory or registry_dir()))))
        if threads != self.threads:
            import torch

            torch.set_num_threads(threads)
            if self.threads:
                log.info("cores: %d of %d threads (other bezoar processes are computing)", threads, self.cores)
            self.threads = threads
        return threads

    def _enter(self) -> None:
        # Written aside and renamed: a reader never sees the entry empty (and removes it as stale).
        entry = self.entry
        entry.parent.mkdir(parents=True, exist_ok=True)
        aside = entry.with_name(f".{entry.name}.tmp")
        aside.write_text(_started(os.getpid()) or "")
        os.replace(aside, entry)

    def _leave(self) -> None:
        self.depth = 0
        try:
            self.entry.unlink()
        except OSError:
            pass


def computing(directory: Path) -> list[int]:
    """PIDs of the live processes in the registry; entries of processes that are gone are removed."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    alive = []
    for name in names:
        if not name.isdigit():
            continue
        path = directory / name
        try:
            recorded = path.read_text()
        except OSError:
            continue  # just left
        started = _started(int(name))
        if started is not None and started == recorded:
            alive.append(int(name))
        else:  # SIGKILLed, or its PID went to another program: not ours any more
            path.unlink(missing_ok=True)
    return alive


SHARE = CoreShare()
"""The one entry of this process (imported by the decoder, the scorers and the trainer callback)."""
