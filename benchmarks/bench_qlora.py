"""QLoRA (NF4 base, double quantisation, 8-bit AdamW) against plain fp32 LoRA, on this CPU.

The same `bezoar sft` run twice on real Dolly answers (embedded SmolLM2-135M, fp32 compute, LoRA
r16 on q,k,v, batch 4, one epoch), once with `quantization: none` / `optim: adamw_torch` and once with
`quantization: nf4` (bitsandbytes' CPU backend; the optimizer `auto` picks `adamw_bnb_8bit`, the
unpaged twin of the paper's paged 8-bit AdamW, which is CUDA-only). Printed: seconds per optimizer
step and tokens/s (from the run's own summary: training only), and peak RSS of the whole process.
At 135M parameters the 4-bit base saves only ~380 MB of weights, so expect QLoRA to be slower and
barely smaller here; it pays for models several times larger.

    .venv/bin/python benchmarks/bench_qlora.py [--steps 6]
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import yaml
from bench_ddp import train
from common import DATA, emit  # also puts tests/ on sys.path

from test_train_sft import dolly_records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_qlora-"))
    try:
        emit(bench(root, args.steps))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def bench(root: Path, steps: int) -> dict:
    from bezoar.records import write_jsonl

    data = root / "dolly.jsonl"
    write_jsonl(data, dolly_records(DATA, steps * 4))
    common = dict(dtype="float32", max_steps=steps, per_device_train_batch_size=4, gradient_accumulation_steps=1,
                  warmup_steps=0, learning_rate=3e-4, eval_steps=steps, logging_steps=1, max_length=128,
                  validation_fraction=0.0)
    variants = {"fp32_lora": {"quantization": "none", "optim": "adamw_torch"}, "nf4_qlora": {"quantization": "nf4"}}
    runs = {}
    for name, extra in variants.items():
        recipe = root / f"{name}.yaml"
        recipe.write_text(yaml.safe_dump({"sft": {**common, **extra}}))
        runs[name] = train(data, recipe, root / name, 1)
        runs[name]["s_per_step"] = runs[name]["train_runtime_s"] / steps
        print(f"{name}: {runs[name]['s_per_step']:.2f} s/step, {runs[name]['tokens_per_s']:.1f} tok/s, "
              f"peak RSS {runs[name]['peak_rss_mb']} MB", flush=True)
    fp32, nf4 = runs["fp32_lora"], runs["nf4_qlora"]
    print(f"nf4 / fp32: step time x{nf4['s_per_step'] / fp32['s_per_step']:.2f}, "
          f"peak RSS x{nf4['peak_rss_mb'] / fp32['peak_rss_mb']:.2f}", flush=True)
    return {"steps": steps, "s_per_step_fp32": round(fp32["s_per_step"], 2), "s_per_step_nf4": round(nf4["s_per_step"], 2),
            "step_time_ratio_nf4_over_fp32": round(nf4["s_per_step"] / fp32["s_per_step"], 3),
            "tokens_per_s_fp32": round(fp32["tokens_per_s"], 1), "tokens_per_s_nf4": round(nf4["tokens_per_s"], 1),
            "peak_rss_mb_fp32": fp32["peak_rss_mb"], "peak_rss_mb_nf4": nf4["peak_rss_mb"],
            "peak_rss_ratio_nf4_over_fp32": round(nf4["peak_rss_mb"] / fp32["peak_rss_mb"], 3)}


if __name__ == "__main__":
    main()
