#!/usr/bin/env bash
# The GPU paths bezoar cannot exercise on a CPU-only machine, checked in one go (< 8 min on one GPU):
#   QLoRA SFT and DPO steps (NF4 + double quantisation, compute dtype from the device plan, paged
#   8-bit AdamW), sampled and greedy decoding through the local backend (noise drawn on the GPU),
#   export of the merged model, and `num_processes: 2` under accelerate when there are two GPUs.
# Prints one JSON line (last) and exits 1 if a check failed.
#
# No download: the model is a small Llama initialised from a config (4 layers, hidden 256, random
# weights; ~30 MB with SmolLM2's tokenizer), the data a few made-up conversations and pairs.
#
#   scripts/gpu-check.sh prepare DIR   # on a machine with bezoar installed: write the model into DIR
#   scripts/gpu-check.sh [DIR]         # on the GPU machine (bezoar, torch CUDA, bitsandbytes installed)
#
# Without DIR the check prepares the model itself (needs the embedded SmolLM2 package for the tokenizer).
# PYTHON selects the interpreter (default: .venv/bin/python if present, else python3).
# GPU_CHECK_ON_CPU=1 runs the same steps on a CPU (expecting the CPU plan: 8-bit AdamW unpaged, no
# second process): how the script itself was checked on a machine without a GPU. GPU_CHECK_TIMEOUT_S
# (default 470) bounds the Python part.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [ "${1:-}" = prepare ]; then
  exec "$PYTHON" - "${2:?prepare needs a directory}" <<'EOF'
import sys
from pathlib import Path
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
from bezoar.llm.weights import resolve_model_dir

out = Path(sys.argv[1])
tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir(None))  # SmolLM2's: chat template, EOS
config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=640, num_hidden_layers=4,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                     tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                     eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
LlamaForCausalLM(config).half().save_pretrained(out)
tokenizer.save_pretrained(out)
print(out)
EOF
fi

MODEL=${1:-}
if [ -z "$MODEL" ]; then
  MODEL=$(mktemp -d)/model
  "$0" prepare "$MODEL" >/dev/null
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

timeout "${GPU_CHECK_TIMEOUT_S:-470}" "$PYTHON" - "$MODEL" "$WORK" <<'EOF'
import json, subprocess, sys, time, traceback
from pathlib import Path

model, work = sys.argv[1], Path(sys.argv[2])
result: dict = {"check": "gpu", "ok": False}
failed: list[str] = []


def step(name):
    def wrap(function):
        start = time.perf_counter()
        try:
            value = function()
            result[name] = value if value is not None else "ok"
        except Exception as error:  # every check is reported, not just the first failure
            traceback.print_exc()
            result[name] = f"FAILED: {type(error).__name__}: {str(error)[:300]}"
            failed.append(name)
        result[f"{name}_s"] = round(time.perf_counter() - start, 1)
    return wrap


import torch

import os

cuda = torch.cuda.is_available()
device, optimizer = ("cuda", "paged_adamw_8bit") if cuda else ("cpu", "adamw_bnb_8bit")
result["gpus"] = torch.cuda.device_count()
result["gpu"] = torch.cuda.get_device_name(0) if cuda else None
result["torch"] = torch.__version__
if not cuda and os.environ.get("GPU_CHECK_ON_CPU") != "1":
    print(json.dumps({**result, "error": "no CUDA device (GPU_CHECK_ON_CPU=1 runs the steps on the CPU)"}))
    sys.exit(1)

from bezoar.records import ChatMessage, PreferencePair, Record, RecordMeta, write_jsonl
from bezoar.train.config import DPOStageConfig, SFTStageConfig

user = lambda text: ChatMessage(role="user", content=text)  # noqa: E731
bot = lambda text: ChatMessage(role="assistant", content=text)  # noqa: E731
records = [Record(messages=[user(f"What is {a} plus {b}?"), bot(f"{a} plus {b} is {a + b}.")],
                  meta=RecordMeta(method="gpu-check", seed_ids=[str(a)])).with_id() for a in range(16) for b in (3,)]
pairs = [PreferencePair(prompt=[user(f"What is {a} times 2?")], chosen=[bot(f"It is {2 * a}.")],
                        rejected=[bot("I do not know.")]) for a in range(16)]
write_jsonl(work / "sft.jsonl", records)
write_jsonl(work / "pairs.jsonl", pairs)
tiny = dict(quantization="nf4", max_steps=4, per_device_train_batch_size=4, gradient_accumulation_steps=1,
            warmup_steps=0, learning_rate=1e-3, eval_steps=2, logging_steps=1, max_length=64,
            validation_fraction=0.25, lora={"r": 8, "alpha": 16})
base = f"local:{model}"


@step("qlora_sft")
def _():
    from bezoar.train.sft import train_sft

    summary = train_sft(base, [work / "sft.jsonl"], work / "sft", SFTStageConfig(**tiny))
    plan = summary["plan"]
    assert f"on {device}" in plan and f"quantization nf4, optimizer {optimizer}" in plan, plan
    return {"plan": plan, "steps": summary["global_step"], "loss": summary["train_loss"]}


@step("nf4_load")
def _():
    import bitsandbytes as bnb

    from bezoar.train.student import load_model, plan_training, resolve_base

    plan = plan_training(SFTStageConfig(**tiny))
    loaded = load_model(resolve_base(base), plan)
    layers = [m for m in loaded.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and {m.compute_dtype for m in layers} == {plan.dtype}, "4-bit compute dtype is not the plan's"
    assert {p.device.type for p in loaded.parameters()} == {device}
    return {"compute_dtype": plan.dtype_name, "device": str(next(loaded.parameters()).device)}


@step("qlora_dpo")
def _():
    from bezoar.train.dpo import train_dpo
    from bezoar.hh_rlhf import read_pairs

    summary = train_dpo(str(work / "sft"), read_pairs(work / "pairs.jsonl"), work / "dpo",
                        DPOStageConfig(**{**tiny, "max_steps": 3}), ref_cache_dir=work / "ref")
    again = train_dpo(str(work / "sft"), read_pairs(work / "pairs.jsonl"), work / "dpo-again",
                      DPOStageConfig(**{**tiny, "max_steps": 3}), ref_cache_dir=work / "ref")  # cache hit on GPU
    return {"steps": summary["global_step"], "loss": summary["train_loss"], "cached_rerun_loss": again["train_loss"]}


@step("export")
def _():
    from bezoar.train.export import export

    return export(work / "dpo", work / "merged")["output"]


@step("decode")
def _():
    from bezoar.llm.local import LocalBackend
    from bezoar.llm.protocol import Sampling

    backend = LocalBackend(str(work / "merged"), batch_size=8)
    assert backend.loaded.plan.device == device, backend.loaded.plan.describe()
    conversations = [[{"role": "user", "content": f"What is {a} plus 3?"}] for a in range(6)]
    greedy = backend.generate(conversations, Sampling(max_new_tokens=16))
    sampled = backend.generate(conversations, Sampling(temperature=0.8, top_p=0.9, max_new_tokens=16, seed=1, n=2))
    resampled = backend.generate(conversations, Sampling(temperature=0.8, top_p=0.9, max_new_tokens=16, seed=1, n=2))
    assert [r.text for rs in sampled for r in rs] == [r.text for rs in resampled for r in rs], "sampling not seeded"
    return {"greedy_tokens": sum(r.completion_tokens for rs in greedy for r in rs),
            "sampled_tokens": sum(r.completion_tokens for rs in sampled for r in rs),
            "plan": backend.loaded.plan.describe()}


@step("two_processes")
def _():
    if torch.cuda.device_count() < 2:
        return "skipped: one GPU"
    recipe = work / "recipe.yaml"
    recipe.write_text(json.dumps({"sft": {**tiny, "per_device_train_batch_size": 2}}))  # JSON is YAML
    cli = [sys.executable, "-c", "from bezoar.cli import main; main()"]
    subprocess.run([*cli, "sft", "--data", str(work / "sft.jsonl"), "--out", str(work / "ddp"), "--recipe",
                    str(recipe), "--base", base, "--num-processes", "2"], check=True, timeout=240)
    return json.loads((work / "ddp" / "summary.json").read_text())["plan"]


result["failed"] = failed
result["ok"] = not failed
print(json.dumps(result))
sys.exit(1 if failed else 0)
EOF
