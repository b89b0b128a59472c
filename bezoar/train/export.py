"""`bezoar export`: merge a LoRA adapter into its base and save a directory plain transformers loads
(safetensors, tokenizer with the chat template training used, generation config with its EOS);
optionally also a GGUF file (`bezoar.train.gguf_export`).
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from bezoar.errors import ConfigError
from bezoar.records import write_json
from bezoar.train.gguf_export import write_gguf

log = logging.getLogger(__name__)


def export(adapter_dir: Path, out_dir: Path, gguf: bool = False, dtype: str = "float32") -> dict:
    """Merge `adapter_dir` into its base; write `out_dir` atomically (staging dir + rename)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bezoar.train.student import resolve_base

    weights = resolve_base(str(adapter_dir))
    if weights.adapter_dir is None:
        raise ConfigError(f"{adapter_dir}: not a LoRA adapter directory (no adapter_config.json); nothing to merge")
    out_dir = Path(out_dir)
    staging = out_dir.with_name(f".{out_dir.name}.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    base = AutoModelForCausalLM.from_pretrained(weights.base_dir, dtype=getattr(torch, dtype))
    merged = PeftModel.from_pretrained(base, weights.adapter_dir).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(weights.adapter_dir)  # the template training used
    merged.generation_config.eos_token_id = tokenizer.eos_token_id
    merged.generation_config.pad_token_id = tokenizer.pad_token_id
    merged.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    summary = {"adapter": str(weights.adapter_dir), "base": str(weights.base_dir), "output": str(out_dir),
               "dtype": dtype, "parameters": sum(p.numel() for p in merged.parameters())}
    if gguf:

        summary["gguf"] = str(out_dir / "model.gguf")
        write_gguf(merged, tokenizer, staging / "model.gguf")
    write_json(staging / "bezoar-export.json", summary)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(staging, out_dir)
    log.info("merged %s into %s → %s", weights.adapter_dir.name, weights.base_dir.name, out_dir)
    return summary
