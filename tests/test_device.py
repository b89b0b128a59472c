"""The CPU dtype verdict is measured, and a measurement no CPU could give is never trusted."""
from __future__ import annotations

import json

import torch

from bezoar.llm import device


def test_an_implausible_recorded_ratio_is_measured_again(tmp_path, monkeypatch):
    monkeypatch.setenv("BEZOAR_CACHE_DIR", str(tmp_path))
    key = f"{torch.__version__}:{torch.backends.cpu.get_cpu_capability()}:{device.cpu_threads()}"
    record = tmp_path / "device.json"
    record.write_text(json.dumps({"key": key, "bf16_over_fp32": 0.0098}))  # once written by a busy machine
    ratio = device._measured_bf16_slowdown()
    assert device.PLAUSIBLE[0] <= ratio <= device.PLAUSIBLE[1]
    assert json.loads(record.read_text())["bf16_over_fp32"] in (0.0098, ratio)  # replaced unless this one was noise
    assert ratio != 0.0098


def test_a_busy_machine_falls_back_to_fp32_without_recording(tmp_path, monkeypatch):
    monkeypatch.setenv("BEZOAR_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(device, "_bf16_over_fp32", lambda: 0.004)  # a fault we cannot cause on demand
    assert device._measured_bf16_slowdown() == 1.0
    assert not (tmp_path / "device.json").exists()


def test_auto_decodes_in_bf16_where_measured_faster_and_fp32_when_deterministic():
    fast, exact = device.plan_device("auto", exact=False), device.plan_device("auto", exact=True)
    faster = device._measured_bf16_slowdown() < 0.9  # this machine's own verdict (AVX512-BF16: ~0.25)
    assert fast.dtype == (torch.bfloat16 if faster else torch.float32)
    assert exact.dtype == torch.float32 and "deterministic" in exact.reason
    assert device.plan_device("bfloat16", exact=True).dtype == torch.float32  # the mode wins over a role's dtype


def test_the_mode_reaches_the_processes_started_after_it(monkeypatch):
    import subprocess
    import sys

    ask = [sys.executable, "-c", "from bezoar.llm.device import deterministic, decoding_mode; print(deterministic(), "
           "decoding_mode()['mode'])"]
    for on, shown in ((True, "True deterministic"), (False, "False fast")):
        monkeypatch.setenv(device.DETERMINISTIC_ENV, "")
        device.set_deterministic(on)
        assert device.deterministic() is on
        assert subprocess.run(ask, capture_output=True, text=True, timeout=120).stdout.strip() == shown


def test_the_deterministic_flag_decodes_in_fp32(tmp_path):
    """`bezoar chat --deterministic` answers from an fp32 model, the default from auto's dtype."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from bezoar.llm.weights import models_cache_dir

    (tmp_path / "models").symlink_to(models_cache_dir(), target_is_directory=True)
    env = {**os.environ, "BEZOAR_CACHE_DIR": str(tmp_path), device.DETERMINISTIC_ENV: "0"}
    bezoar = str(Path(sys.executable).parent / "bezoar")
    fast_dtype = device.plan_device("auto", exact=False).dtype_name

    def chat(*flags: str) -> str:
        done = subprocess.run([bezoar, "chat", "--json", "--max-new-tokens", "4", *flags, "Hi"], env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout)["model"]

    assert chat("--deterministic").endswith(":float32")
    assert chat().endswith(f":{fast_dtype}")
