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
