"""bezoar's local lm-eval tasks: the Open LLM Leaderboard set, reading local files instead of the hub.

The YAMLs in `bezoar/evaluate/tasks/` mirror lm-eval's own task configs (prompt, choices, metrics)
with `${DATA}` where the hub dataset was. `render_tasks` fills in absolute data paths and writes a
folder that lm-eval reads with `--include_path` (or `TaskManager(include_path=...)`), so the same
folder can be re-run with lm-eval's own CLI.
"""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from bezoar.errors import DataError

log = logging.getLogger(__name__)

PREFIX = "bezoar_"
LEADERBOARD = "leaderboard"


@dataclass(frozen=True)
class LocalTask:
    path: str
    """Data file (or folder, for MMLU) relative to the harness data folder."""
    metric: str
    """The leaderboard's headline metric, as lm-eval keys it ("metric,filter")."""
    fewshot: int


LOCAL_TASKS: dict[str, LocalTask] = {
    "arc_challenge": LocalTask("arc_challenge/arc_challenge_test.jsonl", "acc_norm,none", 25),
    "hellaswag": LocalTask("hellaswag/hellaswag_val_full.txt.bz2", "acc_norm,none", 10),
    "truthfulqa_mc2": LocalTask("truthfulqa/truthfulqa_mc_en_validation.json", "acc,none", 0),
    "mmlu": LocalTask("mmlu", "acc,none", 5),
    "winogrande": LocalTask("winogrande/dev.jsonl", "acc,none", 5),
    "gsm8k": LocalTask("gsm8k/test.jsonl", "exact_match,strict-match", 5),
}


def short_name(task: str) -> str:
    return task.removeprefix(PREFIX)


def data_location(task: str, data_dir: Path, overrides: dict[str, Path]) -> Path:
    """Where a local task's data is: the user's override, else data_dir/<default path>."""
    name = short_name(task)
    return Path(overrides.get(name) or Path(data_dir) / LOCAL_TASKS[name].path).expanduser().resolve()


def local_names() -> str:
    """The local tasks as a user may name them (for error messages)."""
    return ", ".join(LOCAL_TASKS) + f" (also as {PREFIX}<name>), or '{LEADERBOARD}'"


def expand_tasks(tasks: list[str], data_dir: Path, overrides: dict[str, Path]) -> tuple[list[str], list[str]]:
    """(local task names to render, other names for lm-eval's registry).

    `leaderboard` means every local task whose data exists (missing ones are logged, not fatal);
    a local task asked for by name must have its data, or the error says where it was looked for.
    A standard lm-eval name of a task bezoar ships (`gsm8k`, `arc_challenge`, ...) means the local
    copy: lm-eval's own config would fetch it from the hub, which bezoar never does at run time.
    """
    local, other = [], []
    for task in tasks:
        if task == LEADERBOARD:
            for name in LOCAL_TASKS:
                if data_location(name, data_dir, overrides).exists():
                    local.append(name)
                else:
                    log.warning("harness: no data for %s at %s; skipped (give data_paths.%s)",
                                name, data_location(name, data_dir, overrides), name)
        elif short_name(task) in LOCAL_TASKS:
            where = data_location(task, data_dir, overrides)
            if not where.exists():
                raise DataError(f"{where}: no data for {task}; give its file with data_paths.{short_name(task)}"
                                f" (--data {short_name(task)}=PATH)")
            local.append(short_name(task))
        elif task.startswith(PREFIX):
            raise DataError(f"no local task '{task}'; local tasks: {local_names()}")
        else:
            other.append(task)
    return list(dict.fromkeys(local)), other


def render_tasks(names: list[str], data_dir: Path, overrides: dict[str, Path], out_dir: Path) -> list[str]:
    """Write the task YAMLs for `names` into out_dir with data paths filled in; returns lm-eval task names."""
    out_dir = Path(out_dir)
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    shipped = resources.files("bezoar.evaluate").joinpath("tasks")
    (out_dir / "bezoar_tasks.py").write_text(shipped.joinpath("bezoar_tasks.py").read_text(encoding="utf-8"))
    for name in names:
        where = data_location(name, data_dir, overrides)
        if name == "mmlu":
            _render_mmlu(shipped, where, out_dir)
            continue
        text = shipped.joinpath(f"{PREFIX}{name}.yaml").read_text(encoding="utf-8")
        (out_dir / f"{PREFIX}{name}.yaml").write_text(text.replace("${DATA}", json.dumps(str(where))))
    return [PREFIX + name for name in names]


def _render_mmlu(shipped, where: Path, out_dir: Path) -> None:
    """One YAML per subject found in where/test (lm-eval itself ships 57 generated files)."""
    subjects = sorted(p.name.removesuffix("_test.csv") for p in (where / "test").glob("*_test.csv"))
    if not subjects:
        raise DataError(f"{where}/test: no <subject>_test.csv files (expected hendrycks' MMLU layout)")
    for folder in ("dev", "val"):
        missing = [s for s in subjects if not (where / folder / f"{s}_{folder}.csv").exists()]
        if missing:
            raise DataError(f"{where}/{folder}: missing {missing[0]}_{folder}.csv (and {len(missing) - 1} more)")
    template = shipped.joinpath("_bezoar_mmlu_subject.yaml.in").read_text(encoding="utf-8")
    for subject in subjects:
        text = (template.replace("${DATA}", json.dumps(str(where))).replace("${SUBJECT_TEXT}", subject.replace("_", " "))
                .replace("${SUBJECT}", subject))
        (out_dir / f"{PREFIX}mmlu_{subject}.yaml").write_text(text)
    (out_dir / f"{PREFIX}mmlu.yaml").write_text(shipped.joinpath(f"{PREFIX}mmlu.yaml").read_text(encoding="utf-8"))


def check_offline(names: list[str], manager) -> None:
    """Fail in one line, before any model loads, for a task lm-eval does not know or cannot load
    offline (its data is on the hub and not in the local datasets cache)."""
    unknown = [name for name in names if name not in manager.all_tasks]
    if unknown:
        raise DataError(f"harness: no task '{unknown[0]}' (neither local nor in lm-eval's registry); "
                        f"local tasks: {local_names()}")
    from lm_eval.tasks import get_task_dict

    for name in names:
        try:
            get_task_dict([name], manager)
        except (ConnectionError, FileNotFoundError) as error:  # the hub is offline, or the data is absent
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise DataError(f"harness: task '{name}' cannot run offline ({reason}); "
                            f"local tasks: {local_names()}") from None
