"""A small run exported as a Hugging Face dataset and model folders: `bezoar export-data` writes parquet per
config and a card with YAML metadata; `datasets.load_dataset` reads every config offline; TRL's SFT and DPO
trainers take the loaded sets as they are; a model folder carries the adapter, a card naming its base."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from recipe_dicts import hand_on, run_step, write

from bezoar.config import load_recipe
from bezoar.hh_rlhf import read_hh_pairs
from bezoar.records import ChatMessage, Lineage, Record, RecordMeta, write_jsonl

BEZOAR = str(Path(sys.executable).parent / "bezoar")


def record(method: str, instruction: str, response: str) -> Record:
    return Record(messages=[ChatMessage(role="user", content=instruction), ChatMessage(role="assistant", content=response)],
                  meta=RecordMeta(method=method, teacher="local", seed_ids=["dolly-1"]),
                  licence=Lineage.of([("databricks-dolly-15k", "seed", "cc-by-sa-3.0"), ("local", "teacher", "apache-2.0")])
                  ).with_id()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, data_dir) -> Path:
    """generate → filter (no judge; contamination on MT-Bench) → preferences (HH-RLHF pairs) → one adapter."""
    tmp = tmp_path_factory.mktemp("hub")
    run_dir = tmp / "run"
    rows = [json.loads(line) for line in (data_dir / "seeds/dolly15k_open_qa_subset.jsonl").open()][300:308]
    question = json.loads((data_dir / "eval/mt_bench/question.jsonl").open().readline())["turns"][0]
    lamini = [record("lamini", r["instruction"], r["response"]) for r in rows[:4]]
    evol = [record("evol_instruct", r["instruction"], r["response"]) for r in rows[4:]]
    evol.append(record("evol_instruct", "Hi! " + question, "Aloha from Hawaii..."))
    generated = {"lamini": run_dir / "generate/lamini.jsonl", "evol": run_dir / "generate/evol.jsonl"}
    write_jsonl(generated["lamini"], lamini)
    write_jsonl(generated["evol"], evol)
    hand_on(run_dir, "generate", outputs=generated)
    contamination = {"eval_paths": [str(data_dir / "eval/mt_bench/question.jsonl")], "embedding": {"enabled": False}}
    recipe = write(tmp / "recipe.yaml", {"run": {"run_dir": str(run_dir)}, "steps": [
        {"type": "generate", "lamini": {"n": 4}, "evol": {"n": 4}, "orca": {"n": 0}},
        {"type": "filter", "judge": {"enabled": False}, "contamination": contamination}]})
    run_step(load_recipe(recipe), run_dir, "filter")
    pairs, _ = read_hh_pairs(data_dir / "preferences/hh-rlhf/harmless-base/test.jsonl.gz")
    write_jsonl(run_dir / "preferences/pairs.jsonl", pairs[:6])
    hand_on(run_dir, "preferences", outputs={"pairs": run_dir / "preferences/pairs.jsonl"})
    adapter = run_dir / "sft/sft-1-lamini"
    _tiny_adapter(adapter)
    hand_on(run_dir, "sft", checkpoints={"sft-1-lamini": adapter})
    return run_dir


def _tiny_adapter(out: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bezoar.llm.weights import resolve_model_dir

    base = resolve_model_dir(None)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=2, target_modules=["q_proj"]))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "dataset"
    result = subprocess.run([BEZOAR, "export-data", str(tiny_run), "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["configs"] == {"lamini": 4, "evol": 4, "rejected": 1, "preferences": 6}
    return out


def test_card_metadata_names_every_config_and_the_run(exported):
    text = (exported / "README.md").read_text()
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["license"] == "cc-by-sa-3.0" and front["task_categories"] == ["text-generation"]
    assert front["size_categories"] == ["n<1K"]
    assert {c["config_name"] for c in front["configs"]} == {"lamini", "evol", "rejected", "preferences"}
    assert [c["config_name"] for c in front["configs"] if c.get("default")] == ["lamini"]  # the first kept set, in the recipe's order
    assert "## Funnel" in text and "## Contamination" in text and "question.jsonl" in text and "1 records removed" in text
    assert "databricks-dolly-15k" in text  # the licence lineage


def test_load_dataset_reads_every_config_offline(exported, monkeypatch):
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    default = datasets.load_dataset(str(exported), split="train")
    assert default.num_rows == 4 and default[0]["messages"][0]["role"] == "user"
    evol = datasets.load_dataset(str(exported), "evol", split="train")
    assert evol.column_names[:2] == ["messages", "id"] and evol[0]["commercial_use"] == "yes"
    rejected = datasets.load_dataset(str(exported), "rejected", split="train")
    assert rejected[0]["step"] == "contamination" and rejected[0]["reasons"] == ["contamination"]
    evidence = json.loads(rejected[0]["evidence"])["matches"][0]
    assert evidence["layer"] == "exact_ngram" and "question_id=81" in evidence["item"]
    pairs = datasets.load_dataset(str(exported), "preferences", split="train")
    assert pairs.column_names[:3] == ["prompt", "chosen", "rejected"] and pairs.num_rows == 6


def test_trl_trainers_take_the_exported_sets_unchanged(exported, tmp_path):
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    from bezoar.llm.weights import resolve_model_dir

    base = resolve_model_dir(None)
    tokenizer = AutoTokenizer.from_pretrained(base)
    common = dict(max_steps=1, per_device_train_batch_size=2, bf16=False, use_cpu=True, report_to=[], save_strategy="no",
                  max_length=128)
    sft = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(base), processing_class=tokenizer,
                     train_dataset=datasets.load_dataset(str(exported), "lamini", split="train"),
                     args=SFTConfig(output_dir=str(tmp_path / "sft"), **common))
    assert sft.train().training_loss > 0
    dpo = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(base), processing_class=tokenizer,
                     train_dataset=datasets.load_dataset(str(exported), "preferences", split="train"),
                     args=DPOConfig(output_dir=str(tmp_path / "dpo"), **common))
    assert dpo.train().training_loss > 0


def test_model_folder_has_the_adapter_and_a_card_naming_its_base(tiny_run, tmp_path):
    from bezoar.report.hub_models import write_hub_folder

    summary = write_hub_folder(tiny_run, tmp_path / "hub")
    folder = Path(summary["models"]["sft-1-lamini"])
    assert (folder / "adapter_config.json").exists() and (folder / "adapter_model.safetensors").exists()
    front = yaml.safe_load((folder / "README.md").read_text().split("---\n")[1])
    assert front["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and front["library_name"] == "peft"
    assert (tmp_path / "hub/dataset/README.md").exists()


def test_a_run_without_data_is_one_line(tmp_path):
    (tmp_path / "run").mkdir()
    result = subprocess.run([BEZOAR, "export-data", str(tmp_path / "run"), "--out", str(tmp_path / "o")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and "handed on no records" in result.stderr.strip()
