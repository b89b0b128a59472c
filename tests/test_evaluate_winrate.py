"""Pairwise win rate: both orders cancel the judge's position bias, checkers decide constraint prompts,
and the length-controlled rate removes a win bought with length."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

BEZOAR = str(Path(sys.executable).parent / "bezoar")


def test_length_control_discounts_wins_that_come_with_length():
    from bezoar.evaluate.winrate import length_controlled

    diffs = [40, 35, 30, 25, 20, 15, -15, -20, -25, -30] * 3
    longer_wins = [1.0 if d > 0 else 0.0 for d in diffs]
    longer_wins[0] = 0.0  # one long loss, so the fit is finite
    longer_wins[6] = 1.0  # and one short win
    raw = sum(longer_wins) / len(longer_wins)
    controlled = length_controlled(longer_wins, diffs)
    assert raw == 0.6 and controlled < raw - 0.05
    same_length = length_controlled([1.0, 0.0, 0.5, 1.0, 0.0, 0.5], [0] * 6)
    assert same_length == pytest.approx(0.5, abs=1e-3)
    assert length_controlled([1.0, 1.0], [3, -2]) is None  # all wins: no logistic fit


@pytest.mark.slow
def test_a_model_against_itself_ties_in_both_orders(data_dir, local_model):
    from bezoar.evaluate.winrate import load_prompts, run_winrate
    from bezoar.llm.cache import CachedModel

    prompts = load_prompts(data_dir / "eval/mt_bench/question.jsonl", 2)
    assert prompts[0].text.startswith("Compose an engaging travel blog post")
    judge = CachedModel(local_model.backend, local_model.cache, role="judge")
    summary = run_winrate(local_model, local_model, judge, prompts, Path(local_model.cache.path).parent / "wr",
                          max_new_tokens=16, bootstrap_samples=20)
    # Identical answers: whichever position the judge prefers, ours wins one order and loses the other.
    assert summary["ties"] == 2 and summary["win_rate"] == 0.5 and summary["by"] == {"checkers": 0, "judge": 2}
    assert judge.usage.calls == 4 and local_model.usage.calls == 2  # the baseline's answers come from the cache


@pytest.mark.slow
def test_winrate_command_lets_checkers_decide_constraint_prompts(tmp_path, data_dir):
    from bezoar.generate.constraints import make_records
    from bezoar.generate.seeds import read_seeds
    from bezoar.records import write_jsonl

    records = make_records(read_seeds(data_dir / "seeds/dolly15k_open_qa_subset.jsonl").seeds, 3, random.Random(0))
    write_jsonl(tmp_path / "prompts.jsonl", records)
    result = subprocess.run([BEZOAR, "eval", "winrate", "--model", "local", "--prompts", str(tmp_path / "prompts.jsonl"),
                             "--max-new-tokens", "16", "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    assert summary["by"] == {"checkers": 3, "judge": 0} and summary["ties"] == 3 and summary["judge"] is None
    lines = [json.loads(line) for line in (tmp_path / "out/answers.jsonl").read_text().splitlines()]
    assert all(line["by"] == "checkers" and line["ours"] == line["theirs"] for line in lines)
