"""The command line, run as a user runs it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BEZOAR = str(Path(sys.executable).parent / "bezoar")


def test_chat_answers_offline_with_the_embedded_model(tmp_path):
    env = {**os.environ, "BEZOAR_CACHE_DIR": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    command = [BEZOAR, "chat", "--json", "--max-new-tokens", "48", "What is direct preference optimization?"]
    first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stderr
    reply = json.loads(first.stdout)
    assert len(reply["text"]) > 40 and reply["completion_tokens"] > 0 and reply["cached"] is False
    second = json.loads(subprocess.run(command, capture_output=True, text=True, env=env, timeout=600).stdout)
    assert second["text"] == reply["text"] and second["cached"] is True


def test_bad_model_path_is_one_line(tmp_path):
    result = subprocess.run([BEZOAR, "chat", "--model", f"local:{tmp_path}/missing", "hi"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 2
    assert result.stderr.strip() == f"{tmp_path}/missing: no such model directory or .gguf file"


def test_help_imports_no_heavy_library():
    result = subprocess.run([BEZOAR, "--help"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "chat" in result.stdout
    probe = "import sys, bezoar.cli; print(sorted(m for m in ('torch', 'transformers', 'trl', 'lm_eval') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=600)
    assert loaded.stdout.strip() == "[]", loaded.stdout + loaded.stderr


def test_batches_still_running_exit_75_with_one_line():
    """A stage stopped by `BatchPending` (provider batches submitted, not done) is no failure: exit 75."""
    script = ("import sys\nfrom bezoar import cli\nfrom bezoar.errors import BatchPending\n"
              "def pending():\n    raise BatchPending('judge: 1 provider batch(es) still running (batch_1); "
              "run the same command again to collect them', ('batch_1',))\n"
              "cli.app.command('pending')(pending)\nsys.argv = ['bezoar', 'pending']\ncli.main()\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 75, result.stderr
    assert result.stderr.strip() == "judge: 1 provider batch(es) still running (batch_1); run the same command again to collect them"
