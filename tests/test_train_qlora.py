"""QLoRA executed on the CPU with bitsandbytes: NF4 base weights with double quantisation, compute in
the planned dtype, 8-bit AdamW (the CPU twin of the paper's paged 8-bit AdamW: paging is CUDA-only).
A few SFT steps resume after a SIGKILL, DPO continues the adapter, and the merged export generates
the same greedy text as base + adapter."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from bezoar.records import write_jsonl
from killing import kill_after_checkpoint
from test_train_sft import dolly_records

# A backward through a bitsandbytes kernel that has none drops gradients silently: fail instead.
pytestmark = pytest.mark.filterwarnings("error:.*autograd kernel was not registered")
QLORA = dict(quantization="nf4", dtype="float32", max_steps=3, per_device_train_batch_size=4,
             gradient_accumulation_steps=1, warmup_steps=0, learning_rate=3e-3, eval_steps=2, logging_steps=1,
             max_length=64, validation_fraction=0.0, lora={"r": 4, "alpha": 8})
RUNNER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from bezoar.train.config import SFTStageConfig
    from bezoar.train.sft import train_sft
    train_sft("local", [Path(sys.argv[1])], Path(sys.argv[2]), SFTStageConfig.model_validate_json(sys.argv[3]))
""")


@pytest.fixture(scope="module")
def qlora_sft(data_dir, tmp_path_factory) -> tuple[Path, dict]:
    """NF4 SFT killed (SIGKILL) after its step-2 checkpoint, then run again: it resumes."""
    from bezoar.train.config import SFTStageConfig
    from bezoar.train.sft import train_sft

    root = tmp_path_factory.mktemp("qlora")
    data, out = root / "dolly.jsonl", root / "sft"
    write_jsonl(data, dolly_records(data_dir, 8))
    settings = SFTStageConfig(**QLORA)
    kill_after_checkpoint(RUNNER, [str(data), str(out), settings.model_dump_json()], out, step=2)
    return out, train_sft("local", [data], out, settings)


def test_nf4_sft_runs_resumes_and_uses_8bit_adamw(qlora_sft):
    out, summary = qlora_sft
    assert summary["resumed_from"] == "checkpoint-2" and summary["global_step"] == 3
    rows = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    assert [row["step"] for row in rows if "loss" in row] == [1, 2, 3]
    assert all(0 < row["loss"] < 20 for row in rows if "loss" in row)
    assert "quantization nf4, optimizer adamw_bnb_8bit" in summary["plan"]
    assert (out / "adapter_model.safetensors").exists()


def test_nf4_model_is_4bit_with_the_planned_compute_dtype():
    import bitsandbytes as bnb
    import torch

    from bezoar.train.config import SFTStageConfig
    from bezoar.train.student import load_model, plan_training, resolve_base

    plan = plan_training(SFTStageConfig(**QLORA))
    model = load_model(resolve_base("local"), plan)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(m.weight.quant_type == "nf4" and m.weight.quant_state.nested for m in layers)
    assert {m.compute_dtype for m in layers} == {torch.float32}  # the device plan's dtype, not a fixed bf16
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert not any(m.support_avx512bf16_for_cpu for m in layers)  # no inference repacking while training


def test_nf4_dpo_then_export_matches_base_plus_adapter(qlora_sft, data_dir, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bezoar.train.config import DPOStageConfig
    from bezoar.train.dpo import train_dpo
    from bezoar.train.export import export
    from bezoar.hh_rlhf import read_hh_pairs
    from bezoar.train.student import resolve_base

    pairs, _ = read_hh_pairs(data_dir / "preferences/hh-rlhf/harmless-base/test.jsonl.gz")
    short = [p for p in pairs if sum(len(m.content) for m in p.prompt) < 200][:4]
    # With validation: an evaluation in eval mode, then training steps (the path that lost gradients).
    settings = DPOStageConfig(**{**QLORA, "max_steps": 2, "max_length": 96, "learning_rate": 5e-3,
                                 "validation_fraction": 0.25})
    summary = train_dpo(str(qlora_sft[0]), short, tmp_path / "dpo", settings, ref_cache_dir=tmp_path / "ref")
    assert summary["global_step"] == 2 and "quantization nf4" in summary["plan"]

    merged_dir = tmp_path / "merged"
    export(tmp_path / "dpo", merged_dir)
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Name three colours."}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    weights = resolve_base(str(tmp_path / "dpo"))
    unmerged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(weights.base_dir), weights.adapter_dir)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    with torch.inference_mode():
        texts = [model.generate(**prompt, max_new_tokens=24, do_sample=False)[0].tolist() for model in (unmerged, merged)]
    assert texts[0] == texts[1]
