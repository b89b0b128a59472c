"""`bezoar generate` and `bezoar stats` run as a user runs them: a SIGKILL mid-run and a restart,
malformed seeds, the licence gate, the stats table and JSON."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

BEZOAR = str(Path(sys.executable).parent / "bezoar")


def _env(cache_dir: Path) -> dict:
    """A fresh call cache, sharing the converted embedded model (converting it again costs ~25 s)."""
    from bezoar.llm.weights import models_cache_dir

    cache_dir.mkdir(parents=True, exist_ok=True)
    if not (cache_dir / "models").exists():
        models_cache_dir().mkdir(parents=True, exist_ok=True)
        (cache_dir / "models").symlink_to(models_cache_dir(), target_is_directory=True)
    return {**os.environ, "BEZOAR_CACHE_DIR": str(cache_dir), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _orca_recipe(path: Path, max_new_tokens: int) -> Path:
    path.write_text("steps:\n  - type: generate\n    orca:\n      mix: {cot: 1, t0: 1}\n"
                    f"      response_sampling: {{temperature: 0.7, max_new_tokens: {max_new_tokens}}}\n", encoding="utf-8")
    return path


def _cached_calls(cache_dir: Path) -> int:
    path = cache_dir / "calls.sqlite"
    if not path.exists():
        return 0
    with sqlite3.connect(path, timeout=30) as conn:
        return conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0]


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


@pytest.mark.slow
def test_sigkilled_generate_resumes_to_exactly_n_unique_records_with_cache_hits(data_dir, tmp_path):
    cache = tmp_path / "cache"
    out = tmp_path / "orca.jsonl"
    n = 5
    command = [BEZOAR, "generate", "--method", "orca", "--teacher", "local", "--n", str(n), "--out", str(out),
               "--recipe", str(_orca_recipe(tmp_path / "r.yaml", 24)), "--batch-size", "1", "--seed", "7",
               "--seeds", str(data_dir / "seeds/flan/cot_data/creak_train.tsv.gz"),
               str(data_dir / "seeds/flan/t0_p3_sample_25_per_template.jsonl.gz")]
    process = subprocess.Popen(command, env=_env(cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 600
    while len(_lines(out)) < 2 and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()[-2000:]
    written, cached = len(_lines(out)), _cached_calls(cache)
    assert 2 <= written < n and cached >= written  # killed mid-run, after some work was finished

    resumed = subprocess.run(command, env=_env(cache), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    records = [json.loads(line) for line in _lines(out)]
    assert len(records) == n and len({r["meta"]["id"] for r in records}) == n
    assert len({r["messages"][-2]["content"] for r in records}) == n  # no duplicated task either
    summary = json.loads((tmp_path / "orca.generate.json").read_text())["summary"]
    assert summary["usage"]["cache_hits"] >= cached and summary["new_records"] == n - written

    # The resumed file is the file an uninterrupted run writes: same records, same order. The
    # uninterrupted run has its own empty cache, so the equality comes from the decoding, not the cache.
    fresh = tmp_path / "fresh.jsonl"
    again = subprocess.run([*command[:command.index("--out") + 1], str(fresh), *command[command.index("--out") + 2:]],
                           env=_env(tmp_path / "fresh_cache"), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    usage = json.loads((tmp_path / "fresh.generate.json").read_text())["summary"]["usage"]
    assert usage["cache_hits"] == 0 and usage["calls"] >= n  # every reply decoded afresh
    assert _lines(fresh) == _lines(out)


def test_malformed_seed_line_is_reported_or_skipped_with_a_count(data_dir, tmp_path):
    with open(data_dir / "seeds/flan/cot_data/ecqa_train.tsv.gz", "rb") as handle:
        import gzip

        lines = gzip.decompress(handle.read()).decode("utf-8").splitlines(keepends=True)[:4]
    lines[2] = "a question without its answer column\n"
    seeds = tmp_path / "cot_data" / "ecqa_broken.tsv"  # in a cot_data folder, like FLAN's, so it samples as CoT
    seeds.parent.mkdir()
    seeds.write_text("".join(lines), encoding="utf-8")
    base = [BEZOAR, "generate", "--method", "orca", "--n", "1", "--seeds", str(seeds), "--seed-licence", "apache-2.0",
            "--recipe", str(_orca_recipe(tmp_path / "r.yaml", 8))]
    failed = subprocess.run([*base, "--out", str(tmp_path / "a.jsonl")], env=_env(tmp_path / "c"), capture_output=True, text=True,
                            timeout=300)
    assert failed.returncode == 2
    assert failed.stderr.strip() == f"{seeds}:3: expected at least 2 tab-separated columns (inputs, target), got 1"
    skipped = subprocess.run([*base, "--skip-bad-lines", "--out", str(tmp_path / "b.jsonl")], env=_env(tmp_path / "c"),
                             capture_output=True, text=True, timeout=300)
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    assert "skipped 1 malformed seed rows" in skipped.stderr and len(_lines(tmp_path / "b.jsonl")) == 1
    assert json.loads((tmp_path / "b.generate.json").read_text())["summary"]["skipped_seed_rows"] == 1


def test_licence_gate_stops_the_command_before_any_model_work(data_dir, tmp_path):
    result = subprocess.run([BEZOAR, "generate", "--method", "lamini", "--n", "2", "--require-commercial-use",
                             "--out", str(tmp_path / "x.jsonl"), "--seeds", str(data_dir / "seeds/dolly15k_open_qa_subset.jsonl"),
                             str(data_dir / "seeds/alpaca_en_demo_llamafactory.json")],
                            env=_env(tmp_path / "cache"), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "alpaca_en_demo_llamafactory.json (stanford-alpaca)' has licence 'cc-by-nc-4.0'" in result.stderr
    assert not (tmp_path / "cache" / "calls.sqlite").exists() and not (tmp_path / "x.jsonl").exists()


def test_stats_prints_tables_and_writes_json(data_dir, tmp_path):
    from bezoar.records import ChatMessage, Lineage, Record, RecordMeta, write_jsonl

    rows = [json.loads(line) for line in open(data_dir / "seeds/dolly15k_open_qa_subset.jsonl", encoding="utf-8")][:50]
    lineage = Lineage.of([("databricks-dolly-15k", "seed", "cc-by-sa-3.0"), ("local", "teacher", "apache-2.0")])
    records = [Record(messages=[ChatMessage(role="user", content=r["instruction"]), ChatMessage(role="assistant", content=r["response"])],
                      meta=RecordMeta(method="evol", details={"strategy": "in_depth", "operation": "deepening", "epoch": 1,
                                                              "category": r["category"]}),
                      licence=lineage).with_id() for r in rows]
    path = tmp_path / "evol.jsonl"
    write_jsonl(path, records + records[:10])  # 10 repeated instructions
    table = subprocess.run([BEZOAR, "stats", str(path), "--json", str(tmp_path / "stats.json")], capture_output=True, text=True,
                           timeout=120)
    assert table.returncode == 0, table.stderr
    assert "60 records" in table.stdout and "in_depth:deepening" in table.stdout
    found = json.loads((tmp_path / "stats.json").read_text())
    assert found["records"] == 60 and found["unique_instruction_fraction"] == round(50 / 60, 4)
    assert found["by_evolution"] == {"in_depth:deepening": 60} and found["commercial_use"] == {"yes": 60}
    assert 0 < found["distinct_2"] <= 1 and found["distinct_1"] < found["distinct_2"]
    assert found["instruction_words"]["count"] == 60
    printed = json.loads(subprocess.run([BEZOAR, "stats", str(path), "--json", "-"], capture_output=True, text=True,
                                        timeout=120).stdout)
    assert printed == found


def test_a_recipe_without_a_generate_step_is_one_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("steps:\n  - type: report\n")
    result = subprocess.run([BEZOAR, "generate", "--method", "orca", "--n", "1", "--out", str(tmp_path / "o.jsonl"),
                             "--recipe", str(recipe)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip() == f"--recipe: {recipe} has no generate step to take settings from"
    assert not (tmp_path / "o.jsonl").exists()
