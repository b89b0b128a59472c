"""Which device, dtype and thread count to run on, chosen by measurement rather than by folklore.

On CPUs without native bf16 (AVX2-only machines) bf16 matmuls are emulated and ~7-10x slower than
fp32, while on AVX-512-BF16/AMX CPUs bf16 is ~2.5x faster. So on CPU we time one model-shaped
matmul in both dtypes once per machine (~0.3 s) and remember the verdict in the user cache.

Decoding has two modes, as vLLM has (fast by default, batch-invariant on request):
- fast (the default): bf16 wherever it is faster (measured on CPU; GPUs that have it). A row's text
  may then depend on what else is in its batch (measured: 7/24 dolly prompts matched one-by-one
  decoding in bf16), so a resumed run keeps every finished call from the call cache but may decode
  the calls that were in flight at the kill differently.
- deterministic (`run.deterministic: true`, `--deterministic`, or BEZOAR_DETERMINISTIC=1): fp32, in
  which a row's greedy text does not depend on its batch (24/24), so a resumed run is identical to
  one never killed.
The mode travels to child processes in the environment variable, which they inherit.
"""
from __future__ import annotations

import json
import logging
import os
import statistics
import time
from dataclasses import dataclass
from functools import lru_cache

from bezoar.llm.cache import default_cache_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DevicePlan:
    device: str
    dtype: object  # a torch.dtype; typed loosely so importing this module does not import torch
    threads: int
    reason: str

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def describe(self) -> str:
        return f"{self.device}, {self.dtype_name}, {self.threads} threads ({self.reason})"


def cpu_threads() -> int:
    """Cores this process may use (respects taskset/cgroup affinity)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


DETERMINISTIC_ENV = "BEZOAR_DETERMINISTIC"


def deterministic() -> bool:
    """Is this process decoding in deterministic mode (batch-invariant fp32)?"""
    return os.environ.get(DETERMINISTIC_ENV, "").strip().lower() not in ("", "0", "false", "no")


def set_deterministic(on: bool) -> None:
    """Switch this process, and the child processes it starts from now on, to deterministic (or fast)
    decoding. Models already loaded keep their dtype; call it before the first model loads."""
    os.environ[DETERMINISTIC_ENV] = "1" if on else "0"


def decoding_mode(dtype: str | None = None) -> dict[str, str]:
    """What an evaluation records about how its answers were decoded: this process's mode and the local
    model's dtype (`dtype`; None: what `auto` gives here). A comparison says which mode both sides used."""
    exact = deterministic()
    return {"mode": "deterministic" if exact else "fast",
            "dtype": dtype or plan_device("auto", exact=exact).dtype_name}


@lru_cache(maxsize=8)
def plan_device(dtype: str = "auto", exact: bool = False) -> DevicePlan:
    """`dtype` "auto" picks by measurement; `exact` (deterministic decoding) keeps fp32, the one dtype
    in which batched output equals one-by-one."""
    return _plan(os.environ.get("BEZOAR_DTYPE", dtype), exact)


def _plan(dtype: str, exact: bool) -> DevicePlan:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if exact and dtype != "float32":
        reason = "deterministic decoding: only fp32 keeps batched output identical to one-by-one"
        return DevicePlan(device, torch.float32, cpu_threads(), reason + ("" if dtype == "auto" else f" ({dtype} asked)"))
    if dtype != "auto":
        return DevicePlan(device, getattr(torch, dtype), cpu_threads(), "set by the user")
    if device == "cuda":
        best = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return DevicePlan("cuda", best, cpu_threads(), "CUDA")
    ratio = _measured_bf16_slowdown()
    capability = torch.backends.cpu.get_cpu_capability()
    measured = f"bf16 takes {ratio:.2f}x the time of fp32 on this {capability} CPU"
    if ratio >= 0.9:
        return DevicePlan("cpu", torch.float32, cpu_threads(), measured)
    return DevicePlan("cpu", torch.bfloat16, cpu_threads(), measured)


def _measured_bf16_slowdown() -> float:
    """bf16 time / fp32 time for a batched linear layer shaped like a small LM's MLP."""
    import torch

    record = default_cache_path().parent / "device.json"
    key = f"{torch.__version__}:{torch.backends.cpu.get_cpu_capability()}:{cpu_threads()}"
    try:
        saved = json.loads(record.read_text())
        if saved.get("key") == key and PLAUSIBLE[0] <= float(saved["bf16_over_fp32"]) <= PLAUSIBLE[1]:
            return float(saved["bf16_over_fp32"])
    except (OSError, ValueError, KeyError):
        pass
    ratio = _bf16_over_fp32()
    if not PLAUSIBLE[0] <= ratio <= PLAUSIBLE[1]:
        # A busy machine can pause one timing (0.01x was once recorded): trust fp32 and measure next time.
        log.warning("bf16/fp32 timing of %.3fx is implausible (machine busy?); using fp32 this time", ratio)
        return 1.0
    record.parent.mkdir(parents=True, exist_ok=True)
    tmp = record.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"key": key, "bf16_over_fp32": ratio}))
    os.replace(tmp, record)
    return ratio


PLAUSIBLE = (0.1, 30.0)
"""bf16/fp32 time ratios a CPU can really show (AMX ~0.2x at best, emulated bf16 ~10x at worst)."""


def _bf16_over_fp32(rounds: int = 5) -> float:
    """Median of interleaved rounds, so one preempted timing cannot decide the dtype for good."""

    import torch

    return statistics.median(_time_linear(torch.bfloat16) / _time_linear(torch.float32) for _ in range(rounds))


def _time_linear(dtype) -> float:
    import torch

    x = torch.randn(64, 576, dtype=dtype)
    w = torch.randn(1536, 576, dtype=dtype)
    torch.nn.functional.linear(x, w)  # warm-up
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(10):
            torch.nn.functional.linear(x, w)
        best = min(best, time.perf_counter() - start)
    return best
