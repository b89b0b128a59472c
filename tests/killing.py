"""Kill a training process after its step-N checkpoint: the helper behind the resume tests
(SFT, QLoRA, GRPO), the check that a resumed run ended with the uninterrupted run's adapter, and a
`bezoar run` to kill (the recipe tests)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def kill_after_checkpoint(script: str, argv: list[str], out: Path, step: int, timeout_s: float = 600) -> None:
    """Run `python -c script *argv` with this checkout on PYTHONPATH, SIGKILL it as soon as
    `out/checkpoint-<step>` is complete (its trainer_state.json, written last, exists), and check it
    had not finished."""
    process = subprocess.Popen([sys.executable, "-c", script, *argv], env={**os.environ, "PYTHONPATH": str(REPO)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout_s
    while not (out / f"checkpoint-{step}" / "trainer_state.json").exists():
        assert process.poll() is None, "the training process ended before the checkpoint"
        assert time.time() < deadline, f"no checkpoint-{step} after {timeout_s} s"
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    assert not (out / "summary.json").exists()


def assert_same_adapter(resumed: Path, uninterrupted: Path, tolerance: float = 1e-4) -> None:
    """Both adapters have the same tensors, equal within `tolerance`."""
    from safetensors.torch import load_file

    found, expected = (load_file(Path(d) / "adapter_model.safetensors") for d in (resumed, uninterrupted))
    assert found.keys() == expected.keys()
    for name, tensor in expected.items():
        assert (found[name].float() - tensor.float()).abs().max() < tolerance, name


def start_run(recipe: Path, tmp_path: Path, data_dir: Path) -> tuple[subprocess.Popen, dict]:
    """`bezoar run RECIPE` in a session of its own (os.killpg ends it and its step processes), with the
    test's data and cache; returns the process and the environment to start it again with."""
    env = {**os.environ, "BEZOAR_DATA": str(data_dir), "BEZOAR_CACHE_DIR": str(tmp_path / "cache"),
           "HF_HUB_OFFLINE": "1"}
    bezoar = str(Path(sys.executable).parent / "bezoar")
    return subprocess.Popen([bezoar, "run", str(recipe)], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), env


def step_states(run_dir: Path) -> dict:
    """The manifest's steps, or {} while it is not written yet (or is being replaced)."""
    try:
        return json.loads((Path(run_dir) / "manifest.json").read_text()).get("steps", {})
    except (OSError, ValueError):
        return {}
