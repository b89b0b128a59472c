"""DPO with the embedded SmolLM2 on real HH-RLHF pairs: the loss falls on a tiny over-fit set, the
reference log-probs are cached and reused, held-out reward accuracy is reported, and the steps
`hh_slices` → `sft_hh` → `dpo` chain through disjoint HH-RLHF slices."""
from __future__ import annotations

import json
import logging

import pytest

TINY = dict(max_steps=4, per_device_train_batch_size=4, gradient_accumulation_steps=1, warmup_steps=0,
            learning_rate=5e-3, eval_steps=2, logging_steps=1, max_length=96, validation_fraction=0.0)


@pytest.fixture(scope="module")
def hh_file(data_dir):
    return data_dir / "preferences/hh-rlhf/harmless-base/test.jsonl.gz"


@pytest.fixture(scope="module")
def trained(hh_file, tmp_path_factory):
    """Four steps over the same four short real pairs; held-out = the file's last four pairs."""
    from bezoar.hh_rlhf import read_hh_pairs, split_slices
    from bezoar.steps.base import Progress
    from bezoar.train.config import DPOStageConfig
    from bezoar.train.dpo import train_dpo
    from bezoar.train.metrics import StepProgress

    pairs, _ = read_hh_pairs(hh_file)
    short = [p for p in pairs if sum(len(m.content) for m in p.prompt) < 200][:4]
    heldout = split_slices(pairs, 0, 0, 4)["heldout"]
    root = tmp_path_factory.mktemp("dpo")
    reported: list[dict] = []
    summary = train_dpo("local", short, root / "dpo", DPOStageConfig(**TINY), heldout=heldout,
                        ref_cache_dir=root / "ref", callbacks=[StepProgress(Progress(reported.append))])
    return root, short, {**summary, "progress": reported}


def test_dpo_loss_falls_and_reports_heldout(trained):
    root, _, summary = trained
    rows = [json.loads(line) for line in (root / "dpo/metrics.jsonl").open()]
    losses = [row["loss"] for row in rows if "loss" in row]
    assert len(losses) == 4 and abs(losses[0] - 0.6931) < 1e-3  # policy == reference at step 1
    assert losses[-1] < 0.6 and rows[-2].get("rewards/accuracies", 0) > 0.5 or losses[-1] < 0.5, losses
    assert summary["heldout_pairs"] == 4
    # `bezoar status` sees the training move: steps done out of planned, from the first to the last
    assert [(r["done"], r["total"]) for r in summary["progress"]] == [(step, 4) for step in range(5)]
    assert summary["progress"][-1]["unit"] == "optimizer steps"
    assert 0 <= summary["heldout_rewards/accuracies"] <= 1 and "heldout_rewards/margins" in summary
    assert (root / "dpo/adapter_model.safetensors").exists()
    assert not (root / "dpo/ref").exists()  # the reference is not saved with the result


def test_reference_log_probs_are_cached_and_reused(trained, caplog, tmp_path):
    from bezoar.train.config import DPOStageConfig
    from bezoar.train.dpo import train_dpo

    root, pairs, _ = trained
    cached = sorted((root / "ref").glob("*.json"))
    assert cached  # train pairs (+ held-out pairs)
    entry = json.loads(cached[0].read_text())
    assert entry["rows"] == len(entry["ref_chosen_logps"]) and all(v < 0 for v in entry["ref_chosen_logps"])
    with caplog.at_level(logging.INFO, logger="bezoar.train.dpo"):
        train_dpo("local", pairs, tmp_path / "again", DPOStageConfig(**{**TINY, "max_steps": 1}),
                  ref_cache_dir=root / "ref")
    assert "read from the cache" in caplog.text
    assert sorted((root / "ref").glob("*.json")) == cached  # nothing recomputed


def test_hh_slices_sft_hh_then_dpo_use_disjoint_slices(hh_file, tmp_path):
    from bezoar.config import Recipe
    from recipe_dicts import run_step

    settings = {**TINY, "max_steps": 1, "max_length": 128}
    recipe = Recipe.model_validate({"steps": [
        {"type": "hh_slices", "path": str(hh_file), "sft_n": 4, "dpo_n": 4, "heldout_n": 2},
        {"type": "sft_hh", **settings},
        {"type": "dpo", **settings}]})
    hh = run_step(recipe, tmp_path, "hh_slices")
    sft = run_step(recipe, tmp_path, "sft_hh")
    dpo = run_step(recipe, tmp_path, "dpo")
    slices = {name: [json.loads(line)["meta"]["id"] for line in (tmp_path / f"hh_slices/{name}.jsonl").open()]
              for name in ("sft", "dpo", "heldout")}
    assert [len(v) for v in slices.values()] == [4, 4, 2]
    assert not set(slices["sft"]) & set(slices["dpo"]) and not set(slices["heldout"]) & (set(slices["sft"]) | set(slices["dpo"]))
    info = json.loads((tmp_path / "dpo/bezoar-train.json").read_text())
    assert info["continued_adapter"] == sft.details["output"] == str(tmp_path / "sft_hh")
    assert dpo.details["heldout_pairs"] == 2 and dpo.counts["hh_pairs"] == 4
    # What each step handed on, by name, relative to the run directory.
    assert hh.outputs == {f"hh_{n}": f"hh_slices/{n}.jsonl" for n in ("sft", "dpo", "heldout")}
    assert sft.checkpoints == {"sft_hh": "sft_hh"}
    assert dpo.checkpoints == {"dpo": "dpo"} and dpo.reference == "sft_hh"
