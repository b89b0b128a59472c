"""The recipe's static type holds where it is built and handed on: mypy (pydantic plugin) runs clean on
the config modules, the pipeline, the step protocol, the handoff and the launcher."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_mypy_is_clean_on_the_recipe_and_the_pipeline(tmp_path):
    modules = sorted(str(p.relative_to(REPO)) for p in (REPO / "bezoar").glob("config*.py"))
    modules += ["bezoar/pipeline.py", "bezoar/processes.py", "bezoar/handoff.py", "bezoar/roles.py",
                "bezoar/steps/base.py", "bezoar/steps/__init__.py"]
    checked = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path), *modules], cwd=REPO,
                             capture_output=True, text=True, timeout=600)
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-2000:]
    assert f"no issues found in {len(modules)} source files" in checked.stdout
