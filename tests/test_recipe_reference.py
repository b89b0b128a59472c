"""The recipe reference: `bezoar recipe --reference` prints docs/recipe.md exactly (regenerate it with
`bezoar recipe --reference > docs/recipe.md`), names every key of every step type, and is where the
unknown-key error sends a user."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BEZOAR = str(Path(sys.executable).parent / "bezoar")


def test_the_command_prints_docs_recipe_md():
    """With BEZOAR_DATA unset, as a fresh clone runs it (data defaults follow the variable)."""
    env = {k: v for k, v in os.environ.items() if k != "BEZOAR_DATA"}
    printed = subprocess.run([BEZOAR, "recipe", "--reference"], capture_output=True, text=True, cwd=REPO, timeout=300,
                             env=env)
    assert printed.returncode == 0, printed.stderr[-2000:]
    assert printed.stdout == (REPO / "docs" / "recipe.md").read_text(encoding="utf-8"), \
        "docs/recipe.md is out of date: bezoar recipe --reference > docs/recipe.md"


def test_every_key_of_every_step_type_is_in_the_reference():
    from bezoar.recipe_reference import reference_markdown
    from bezoar.steps import step_types

    text = reference_markdown()
    for name, step in step_types().items():
        assert f"## steps: type {name}" in text
        for key, field in step.model_fields.items():
            if key != "type":  # a nested section is listed key by key: `lamini.n`, `lamini.seeds`, ...
                assert f"| `{field.alias or key}`" in text or f"| `{field.alias or key}." in text, (name, key)


def test_the_unknown_key_error_names_the_reference(tmp_path):
    from bezoar.config import UNKNOWN_KEY, load_recipe
    from bezoar.errors import ConfigError

    path = tmp_path / "recipe.yaml"
    path.write_text("steps:\n  - type: report\n    colour: red\n")
    try:
        load_recipe(path)
    except ConfigError as error:
        assert str(error) == f"{path}:3: steps.0.colour: {UNKNOWN_KEY}"
    else:
        raise AssertionError("an unknown key loaded")
    assert "docs/recipe.md" in UNKNOWN_KEY and "bezoar recipe --reference" in UNKNOWN_KEY
    assert (REPO / "docs" / "recipe.md").is_file()


def test_without_a_flag_the_command_says_what_to_ask_in_one_line():
    said = subprocess.run([BEZOAR, "recipe"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert said.returncode == 2 and "--reference" in said.stderr and "Traceback" not in said.stderr
