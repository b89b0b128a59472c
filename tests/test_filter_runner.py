"""The filter step end to end with the embedded judge: outputs per method, every rejection with its reasons,
a run killed mid-judging that resumes with no repeated judge call and the same kept set, and bad input
lines reported as FILE:LINE."""
from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bezoar.config import load_recipe
from bezoar.errors import DataError
from bezoar.filter.runner import load_inputs
from bezoar.llm.cache import CachedModel, CallCache
from bezoar.records import ChatMessage, Record, RecordMeta, read_jsonl, write_jsonl
from bezoar.steps.base import StepContext
from recipe_dicts import hand_on

REPO = Path(__file__).resolve().parents[1]
BEZOAR = str(Path(sys.executable).parent / "bezoar")


def record(method: str, instruction: str, response: str, finish_reason: str = "stop") -> Record:
    return Record(messages=[ChatMessage(role="user", content=instruction), ChatMessage(role="assistant", content=response)],
                  meta=RecordMeta(method=method, teacher="local", finish_reason=finish_reason)).with_id()


def run_filter(recipe_path: Path, run_dir: Path, judge: CachedModel) -> dict:
    """The recipe's filter step, in this process; its summary (the result's details)."""
    recipe = load_recipe(recipe_path)
    return recipe.step("filter").run(StepContext(recipe, run_dir, "filter", {"judge": judge})).details


def make_run(tmp_path: Path, data_dir: Path, good: int = 12) -> tuple[Path, Path, dict]:
    """A run directory whose generate step left real Dolly pairs plus planted bad ones."""
    rows = [json.loads(line) for line in (data_dir / "seeds/dolly15k_open_qa_subset.jsonl").open()][200:200 + good]
    mt_bench = json.loads((data_dir / "eval/mt_bench/question.jsonl").open().readline())
    lamini = [record("lamini", r["instruction"], r["response"]) for r in rows[: good // 2]]
    evol = [record("evol_instruct", r["instruction"], r["response"]) for r in rows[good // 2:]]
    planted = {
        "refusal": record("lamini", "Tell me how volcanoes erupt and why.", "I'm sorry, but I can't help with that."),
        "truncated": record("evol_instruct", "Describe the water cycle in detail.", "Water evaporates from", "length"),
        "near_duplicate": record("lamini", rows[0]["instruction"].rstrip("?") + " exactly?", rows[0]["response"]),
        "contamination": record("evol_instruct", mt_bench["turns"][0], "Aloha! Hawaii was wonderful..."),
    }
    run_dir = tmp_path / "run"
    # The rewording follows its original (ties in a duplicate cluster keep the first record read).
    write_jsonl(run_dir / "generate/lamini.jsonl", lamini + [planted["refusal"], planted["near_duplicate"]])
    write_jsonl(run_dir / "generate/evol.jsonl", evol + [planted["truncated"], planted["contamination"]])
    # The pipeline's record of a done generate step: what it hands on, by name.
    hand_on(run_dir, "generate", {"lamini": run_dir / "generate/lamini.jsonl", "evol": run_dir / "generate/evol.jsonl"})
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("steps:\n"
                      "  - {type: generate, lamini: {n: 6}, evol: {n: 6}, orca: {n: 0}}\n"
                      "  - type: filter\n"
                      "    judge: {chunk_size: 2, rule: top_fraction, keep_fraction: 0.5}\n"
                      f"    contamination: {{eval_paths: ['{data_dir / 'eval/mt_bench/question.jsonl'}']}}\n")
    return run_dir, recipe, planted


def test_step_writes_kept_per_method_rejected_with_reasons_and_summary(tmp_path, data_dir, embedded):
    run_dir, recipe_path, planted = make_run(tmp_path, data_dir, good=6)
    judge = CachedModel(embedded, CallCache(tmp_path / "calls.sqlite"), role="judge")
    summary = run_filter(recipe_path, run_dir, judge)
    out = run_dir / "filter"
    assert sorted(p.name for p in out.iterdir()) == ["evol.jsonl", "failed.jsonl", "judgments.jsonl", "lamini.jsonl",
                                                     "rejected.jsonl", "summary.json"]
    assert (out / "failed.jsonl").read_text() == "" and summary["failed_items"] == 0
    rejected = {r.meta.id: r.meta.details["filter"] for r in read_jsonl(out / "rejected.jsonl", Record)}
    assert "refusal" in rejected[planted["refusal"].meta.id]["reasons"]
    assert rejected[planted["truncated"].meta.id]["reasons"] == ["truncated"]
    assert rejected[planted["near_duplicate"].meta.id]["reasons"] == ["near_duplicate"]
    contaminated = rejected[planted["contamination"].meta.id]
    assert contaminated["step"] == "contamination" and "question_id=81" in contaminated["matches"][0]["item"]
    kept = [r for name in ("lamini", "evol") for r in read_jsonl(out / f"{name}.jsonl", Record)]
    assert kept and all(r.meta.judge["accepted"] and r.meta.judge["raw"] for r in kept)
    assert {r.meta.method for r in read_jsonl(out / "lamini.jsonl", Record)} <= {"lamini"}
    # The counts add up: per step, per reason, per method.
    assert summary["input"] == 10 and summary["kept"] + summary["rejected"] == 10 == len(kept) + len(rejected)
    steps = {s["step"]: s for s in summary["steps"]}
    assert steps["heuristics"]["removed"] == 2 and steps["near_dedup"]["removed"] == 1
    assert steps["contamination"]["removed"] == 1 and steps["judge"]["records"] == len(kept)
    assert summary["judge"]["judged"] == 6 and summary["judge"]["usage"]["calls"] == 6
    assert sum(m["kept"] for m in summary["methods"].values()) == len(kept)
    assert summary["methods"]["evol"]["rejected"]["contamination"] == 1
    assert summary["methods"]["lamini"]["rejected"]["near_duplicate"] == 1
    judgments = list(read_jsonl(out / "judgments.jsonl"))
    assert len(judgments) == 6 and all(j["raw"][0].startswith("Rating: [[") for j in judgments)


CHILD = """
import sys
from pathlib import Path
from bezoar.config import load_recipe
from bezoar.llm.cache import CachedModel, CallCache
from bezoar.llm.local import LocalBackend
from bezoar.steps.base import StepContext
run_dir, recipe, cache = sys.argv[1:4]
judge = CachedModel(LocalBackend(batch_size=1), CallCache(cache), role="judge")
print("loaded", flush=True)
recipe = load_recipe(recipe)
recipe.step("filter").run(StepContext(recipe, Path(run_dir), "filter", {"judge": judge}))
"""


def cached_calls(path: Path) -> int:
    if not path.exists():
        return 0
    with sqlite3.connect(path, timeout=30) as conn:
        try:
            return conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
        except sqlite3.OperationalError:  # the table is being created
            return 0


def test_killed_mid_judging_resumes_without_repeating_a_call(tmp_path, data_dir, embedded):
    run_dir, recipe_path, _ = make_run(tmp_path, data_dir, good=8)
    cache_path = tmp_path / "calls.sqlite"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(run_dir), str(recipe_path), str(cache_path)],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    while cached_calls(cache_path) < 2 and child.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=60)
    done_before = cached_calls(cache_path)
    assert child.returncode == -signal.SIGKILL, child.stdout.read()[-2000:]
    assert not (run_dir / "filter/summary.json").exists(), "the child finished before it could be killed"
    assert 2 <= done_before < 8

    # Resume in this process: only the judgments the killed run did not finish reach the model.
    judge = CachedModel(embedded, CallCache(cache_path), role="judge")
    summary = run_filter(recipe_path, run_dir, judge)
    judged = summary["judge"]["judged"]
    assert judged == 8
    assert judge.usage.calls == judged - done_before and judge.usage.cache_hits == done_before
    assert cached_calls(cache_path) == judged  # every judgment was computed exactly once

    # An uninterrupted run from scratch keeps exactly the same records with the same ratings.
    fresh_dir = tmp_path / "fresh"
    fresh_dir.mkdir()
    os.symlink(run_dir / "generate", fresh_dir / "generate")
    shutil.copy(run_dir / "manifest.json", fresh_dir / "manifest.json")  # its paths are relative to the run
    fresh = CachedModel(embedded, CallCache(tmp_path / "fresh.sqlite"), role="judge")
    run_filter(recipe_path, fresh_dir, fresh)

    def kept(root: Path) -> dict[str, float]:
        return {r.meta.id: r.meta.judge["rating"] for name in ("lamini", "evol")
                for r in read_jsonl(root / f"filter/{name}.jsonl", Record)}

    assert kept(run_dir) == kept(fresh_dir) and len(kept(run_dir)) >= 4


def test_malformed_input_line_is_reported_as_file_and_line(tmp_path):
    bad = tmp_path / "generated.jsonl"
    good = record("lamini", "Name three primary colours.", "Red, yellow and blue.")
    bad.write_text(good.model_dump_json() + "\n\n" + '{"messages": [{"role": "user", "content": "Hi"}\n')
    result = subprocess.run([BEZOAR, "filter", "--in", str(bad), "--out",
                             str(tmp_path / "out"), "--no-judge"], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "COLUMNS": "300"}, timeout=600)
    assert result.returncode == 2, result.stderr
    assert f"{bad}:3: not valid JSON" in result.stderr.replace("\n", "")
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text('{"instruction": "Name a colour.", "response": "Blue."}\n{"messages": [{"role": "robot", "content": "x"}]}\n')
    with pytest.raises(DataError, match=r"wrong.jsonl:2: messages\.0\.role"):
        load_inputs([wrong])


def test_cli_filters_plain_rows_and_several_inputs(tmp_path, data_dir):
    rows = [json.loads(line) for line in (data_dir / "seeds/dolly15k_open_qa_subset.jsonl").open()][:30]
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text("".join(json.dumps(r) + "\n" for r in rows[:20]))
    second.write_text("".join(json.dumps(r) + "\n" for r in rows[15:30]))  # five exact duplicates of the first file
    out = tmp_path / "out"
    result = subprocess.run([BEZOAR, "filter", "--in", str(first), str(second), "--out", str(out),
                             "--no-judge", "--eval", str(data_dir / "eval/mt_bench/question.jsonl")],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["input"] == 35 and summary["reasons"].get("exact_duplicate") == 5
    assert summary["methods"]["b"]["rejected"]["exact_duplicate"] == 5
    assert summary["kept"] == len((out / "kept.jsonl").read_text().splitlines())
    assert summary["contamination"]["checked"] and summary["contamination"]["eval_items"] == 80


def test_recipe_filter_step_errors_name_file_line_and_key(tmp_path):
    from bezoar.errors import ConfigError

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("steps:\n  - type: filter\n    judge:\n      treshold: 7\n    dedup:\n      threshold: 1.5\n")
    with pytest.raises(ConfigError) as error:
        load_recipe(recipe)
    assert f"{recipe}:4: steps.0.judge.treshold: unknown key" in str(error.value)
    assert f"{recipe}:6: steps.0.dedup.threshold: " in str(error.value)


def test_cli_takes_the_settings_of_the_recipes_filter_step(tmp_path, data_dir):
    rows = [json.loads(line) for line in (data_dir / "seeds/dolly15k_open_qa_subset.jsonl").open()][:10]
    rows_file = tmp_path / "a.jsonl"
    rows_file.write_text("".join(json.dumps(r) + "\n" for r in rows + rows[:3]))  # three exact duplicates
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("run:\n  deterministic: true\nsteps:\n  - type: filter\n    dedup:\n      exact: false\n"
                      "      near: false\n    contamination:\n      enabled: false\n")
    result = subprocess.run([BEZOAR, "filter", "--in", str(rows_file), "--out", str(tmp_path / "out"), "--no-judge",
                             "--recipe", str(recipe)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["input"] == 13 and "exact_duplicate" not in summary["reasons"]  # the step's dedup settings
    without = tmp_path / "none.yaml"
    without.write_text("steps:\n  - type: report\n")
    refused = subprocess.run([BEZOAR, "filter", "--in", str(rows_file), "--out", str(tmp_path / "out2"), "--no-judge",
                              "--recipe", str(without)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2
    assert refused.stderr.strip() == f"--recipe: {without} has no filter step to take settings from"
