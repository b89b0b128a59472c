"""Preference accuracy on real held-out HH-RLHF pairs with the embedded model, and the intervals."""
from __future__ import annotations

import math

import pytest

from bezoar.intervals import bootstrap_mean, paired_bootstrap_delta, wilson
from bezoar.evaluate.preference import load_pairs, preference_accuracy, score_pairs

HH = "preferences/hh-rlhf/harmless-base/test.jsonl.gz"
MAX = 384  # tokens per sequence: long HH dialogues are cut from the left, keeping tests quick


def test_wilson_interval_known_values():
    low, high = wilson(8, 10)  # textbook value: 0.490 .. 0.943
    assert (round(low, 3), round(high, 3)) == (0.490, 0.943)
    assert wilson(0, 5)[0] == 0.0 and wilson(5, 5)[1] == 1.0
    assert all(math.isnan(x) for x in wilson(0, 0))


def test_bootstrap_is_seeded_and_brackets_the_mean():
    values = [1, 3, 5, 7, 9, 2, 4, 6, 8, 10]
    assert bootstrap_mean(values, seed=3) == bootstrap_mean(values, seed=3)
    low, high = bootstrap_mean(values)
    assert low < 5.5 < high
    delta = paired_bootstrap_delta({"a": 2.0, "b": 4.0, "c": 6.0}, {"a": 1.0, "b": 3.0, "c": 5.0, "d": 9.0})
    assert delta == {"delta": 1.0, "ci95": [1.0, 1.0], "n": 3}


def test_heldout_slice_is_the_last_pairs(data_dir):
    from bezoar.hh_rlhf import read_hh_pairs, split_slices

    every, _ = read_hh_pairs(data_dir / HH)
    heldout = load_pairs(data_dir / HH, heldout_n=5)
    assert [p.meta["id"] for p in heldout] == [p.meta["id"] for p in split_slices(every, 0, 0, 5)["heldout"]]


@pytest.fixture(scope="module")
def pairs(data_dir):
    return load_pairs(data_dir / HH, heldout_n=3)


def test_loglik_accuracy_on_heldout_pairs(pairs, embedded):
    result = preference_accuracy("local", pairs, batch_size=6, max_length=MAX)
    assert result["n"] == 3 and result["metric"] == "loglik"
    for key in ("loglik", "loglik_per_token"):
        row = result[key]
        assert row["accuracy"] == row["correct"] / 3 and row["accuracy"] == sum(row["items"].values()) / 3
        assert row["ci95"] == list(wilson(row["correct"], 3))
    # the ranking is what the scores say: chosen above rejected
    scored = score_pairs(None, pairs, 2, MAX)
    assert result["loglik"]["items"] == {p.meta["id"]: float(c.logprob > r.logprob) for p, (c, r) in zip(pairs, scored)}


def test_batched_scores_equal_one_by_one(pairs, embedded):
    batched = score_pairs(None, pairs, 6, MAX)
    single = score_pairs(None, pairs, 1, MAX)
    for (c8, r8), (c1, r1) in zip(batched, single):
        assert c8.tokens == c1.tokens and r8.tokens == r1.tokens and c8.tokens > 0
        assert c8.logprob == pytest.approx(c1.logprob, abs=1e-3) and r8.logprob == pytest.approx(r1.logprob, abs=1e-3)
        assert c8.logprob < 0 and r8.logprob < 0


def test_dpo_reward_against_itself_is_all_ties(pairs, embedded):
    """With the reference equal to the policy every implicit reward is 0: TRL counts ties as wrong."""
    result = preference_accuracy("local", pairs[:2], reference="local", batch_size=4, max_length=MAX)
    assert result["metric"] == "dpo_reward"
    assert result["dpo_reward"]["ties"] == 2 and result["accuracy"] == 0.0
    assert result["dpo_reward"]["mean_log_ratio_margin"] == 0.0


def test_chat_api_is_refused(pairs):
    from bezoar.errors import ConfigError

    with pytest.raises(ConfigError, match="scoring needs the weights"):
        preference_accuracy("openai:gpt-4o", pairs)


def test_long_dialogues_are_cut_from_the_left_keeping_the_reply(data_dir, embedded):
    from bezoar.evaluate.preference import _encode

    every = load_pairs(data_dir / HH)
    pair = max(every, key=lambda p: sum(len(m.content) for m in p.prompt))  # the longest dialogue
    tokenizer = embedded.tokenizer
    prompt = [m.model_dump() for m in pair.prompt]
    reply = [m.model_dump() for m in pair.chosen]
    full_prompt, full_reply = _encode(tokenizer, prompt, reply, 100_000)
    cut_prompt, cut_reply = _encode(tokenizer, prompt, reply, 256)
    assert len(full_prompt) + len(full_reply) > 256
    assert len(cut_prompt) + len(cut_reply) <= 256
    assert cut_reply == full_reply[:128] and cut_prompt == full_prompt[-len(cut_prompt):]
    assert tokenizer.decode(full_reply).rstrip().endswith(tokenizer.eos_token)  # the end of turn is scored


def test_preference_command(tmp_path, data_dir):
    import json
    import subprocess
    import sys
    from pathlib import Path

    bezoar = str(Path(sys.executable).parent / "bezoar")
    result = subprocess.run([bezoar, "eval", "preference", "--pairs", str(data_dir / HH), "--heldout-n", "2",
                             "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["n"] == 2 and summary["heldout_n"] == 2 and summary["metric"] == "loglik"
    assert "loglik_per_token" in result.stdout and "Wilson" in result.stdout
    missing = subprocess.run([bezoar, "eval", "preference", "--pairs", str(tmp_path / "none.jsonl")],
                             capture_output=True, text=True, timeout=600)
    assert missing.returncode == 2 and missing.stderr.strip() == f"{tmp_path / 'none.jsonl'}: no such file"
