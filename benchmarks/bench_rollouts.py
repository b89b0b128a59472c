"""GRPO's rollouts on the CPU: who should generate them?

The policy exactly as GRPOTrainer holds it (the embedded SmolLM2-135M-Instruct in the training dtype
the plan picks, a fresh LoRA adapter from peft's `get_peft_model`, train mode toggled around
sampling) samples `--generations` completions for each of `--prompts` constraint prompts, up to
`--max-tokens` new tokens at temperature 1.0, with:

  transformers             TRL's default path: `model.generate` on the left-padded batch, sampling
                           (a static batch: it runs until its longest row stops)
  transformers_continuous  TRL's `use_transformers_continuous_batching`: `model.generate_batch`
  bezoar                   bezoar's continuous-batching decoder (`bezoar.train.rollouts`), per-row seeds

Each engine runs in its own process (so its peak RSS is its own), rounds interleaved so a busy
neighbour slows every engine alike. Tokens/s counts completion tokens up to and including EOS.

    .venv/bin/python benchmarks/bench_rollouts.py [--prompts 8 --generations 4 --max-tokens 128 --rounds 2]
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import DATA, emit, peak_rss_mb

ENGINES = ("transformers", "transformers_continuous", "bezoar")


def constraint_prompts(count: int, generations: int) -> list[list[dict]]:
    """`count` constraint prompts from the Dolly seeds, each `generations` times in a row (as TRL passes them)."""
    from bezoar.generate.constraints import make_records
    from bezoar.generate.seeds import read_seeds

    seeds = read_seeds(DATA / "seeds/dolly15k_open_qa_subset.jsonl").seeds
    records = make_records(seeds, count, random.Random(1), None, 1, 2)
    return [[{"role": "user", "content": r.instruction}] for r in records for _ in range(generations)]


def policy():
    """(model, tokenizer, plan): base + fresh LoRA adapter in the planned dtype, as the trainer builds it."""
    from peft import get_peft_model

    from bezoar.train.config import GRPOStageConfig
    from bezoar.train.encoding import load_tokenizer
    from bezoar.train.student import attach_adapter, load_model, plan_training, resolve_base

    settings = GRPOStageConfig()
    weights = resolve_base("local")
    plan = plan_training(settings, kind="grpo")
    model, lora = attach_adapter(load_model(weights, plan), weights, settings, plan)
    return get_peft_model(model, lora).train(), load_tokenizer(weights.base_dir), plan


def run_transformers(model, tokenizer, prompts, args, continuous: bool) -> list[int]:
    """Completion lengths from transformers, with the generation settings TRL's GRPOTrainer builds."""
    import torch
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=args.max_tokens, do_sample=True, pad_token_id=tokenizer.pad_token_id,
                              bos_token_id=tokenizer.bos_token_id, eos_token_id=[tokenizer.eos_token_id],
                              temperature=1.0, top_p=1.0, top_k=0, disable_compile=True)
    ids = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
           for p in prompts]
    model.eval()
    with torch.no_grad():
        if continuous:  # TRL's config caps the paged cache at 50% of memory; 10% here (shared machine)
            from transformers.generation import ContinuousBatchingConfig

            outputs = model.generate_batch(ids, generation_config=config, progress_bar=False,
                                           continuous_batching_config=ContinuousBatchingConfig(max_memory_percent=0.1))
            lengths = [len(o.generated_tokens) for o in outputs.values()]
        else:
            longest = max(map(len, ids))
            batch = torch.tensor([[tokenizer.pad_token_id] * (longest - len(i)) + i for i in ids])
            mask = torch.tensor([[0] * (longest - len(i)) + [1] * len(i) for i in ids])
            out = model.generate(input_ids=batch, attention_mask=mask, generation_config=config)[:, longest:]
            lengths = [_until_eos(row.tolist(), tokenizer.eos_token_id) for row in out]
    model.train()
    return lengths


def _until_eos(row: list[int], eos: int) -> int:
    return row.index(eos) + 1 if eos in row else len(row)


def run_bezoar(model, tokenizer, prompts, args) -> list[int]:
    from bezoar.train.rollouts import BezoarRollouts

    rollouts = BezoarRollouts(tokenizer, args.max_tokens, 1.0, 1.0, seed=0)
    ids = [rollouts.encode(p) for p in prompts]
    completions = rollouts.decode(model, ids, rollouts.row_seeds(prompts, 0), "cpu")
    return [len(c) for c in completions]


def one_engine(args) -> None:
    """Child process: load the policy, warm up, time one rollout batch; print one JSON line."""
    model, tokenizer, plan = policy()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    prompts = constraint_prompts(args.prompts, args.generations)
    run = (lambda p: run_bezoar(model, tokenizer, p, args)) if args.engine == "bezoar" else \
        (lambda p: run_transformers(model, tokenizer, p, args, args.engine == "transformers_continuous"))
    run(prompts[:2])  # warm-up: first-call allocations and kernel choices
    started, cpu = time.perf_counter(), time.process_time()
    lengths = run(prompts)
    seconds, cpu_s = time.perf_counter() - started, time.process_time() - cpu
    print(json.dumps({"engine": args.engine, "dtype": plan.dtype_name, "seconds": seconds, "cpu_s": cpu_s,
                      "tokens": sum(lengths), "tok_s": sum(lengths) / seconds, "tok_cpu_s": sum(lengths) / cpu_s,
                      "rollouts": len(lengths), "peak_rss_mb": peak_rss_mb()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: the plan's). On an oversubscribed machine every multi-threaded op "
                             "waits a scheduler quantum for its second thread (measured: a 8x576x1536 matmul took "
                             "24 ms with 2 threads, 0.08 ms for 1 row on 1 thread), so 1 thread measures the code")
    parser.add_argument("--engine", help=argparse.SUPPRESS)  # the child's engine
    args = parser.parse_args()
    if args.engine:
        return one_engine(args)
    engines = args.engines.split(",")
    results: dict[str, list[dict]] = {e: [] for e in engines}
    for _ in range(args.rounds):
        for engine in engines:
            command = [sys.executable, __file__, "--engine", engine] + [
                f"--{k.replace('_', '-')}={getattr(args, k)}" for k in ("prompts", "generations", "max_tokens", "threads")]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                print(f"{engine}: failed\n{done.stderr[-2000:]}")
                results[engine].append({"failed": done.stderr.strip().splitlines()[-1:]})
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{engine:24s} {row['tokens']:5d} tokens in {row['seconds']:6.1f} s = {row['tok_s']:6.1f} tok/s "
                  f"({row['tok_cpu_s']:6.1f} per CPU-s), peak RSS {row['peak_rss_mb']:.0f} MB ({row['dtype']})", flush=True)
            results[engine].append(row)
    figures = {"prompts": args.prompts, "generations": args.generations, "max_tokens": args.max_tokens,
               "rounds": args.rounds, "threads": args.threads or "plan", "peak_rss_mb_parent": round(peak_rss_mb(), 1)}
    for engine, rows in results.items():
        good = [r for r in rows if "tok_s" in r]
        if good:
            figures[engine] = {"tok_s": round(statistics.median(r["tok_s"] for r in good), 1),
                               "tok_per_cpu_s": round(statistics.median(r["tok_cpu_s"] for r in good), 1),
                               "s_per_batch": round(statistics.median(r["seconds"] for r in good), 1),
                               "peak_rss_mb": round(max(r["peak_rss_mb"] for r in good), 1), "dtype": good[0]["dtype"]}
        else:
            figures[engine] = {"failed": rows[0]["failed"]}
    base = figures.get("transformers", {}).get("tok_s")
    for engine in engines:
        pairs = zip(results[engine], results.get("transformers", []))  # round by round: the same neighbours
        ratios = [round(r["tok_s"] / t["tok_s"], 2) for r, t in pairs if "tok_s" in r and "tok_s" in t]
        if base and "tok_s" in figures[engine]:
            figures[engine]["per_round_vs_transformers"] = ratios
            figures[engine]["speed_vs_transformers"] = round(figures[engine]["tok_s"] / base, 2)
            figures[engine]["cpu_speed_vs_transformers"] = round(
                figures[engine]["tok_per_cpu_s"] / figures["transformers"]["tok_per_cpu_s"], 2)
            print(f"{engine}: {figures[engine]['speed_vs_transformers']}x transformers' generate in tokens/s, "
                  f"{figures[engine]['cpu_speed_vs_transformers']}x in tokens per CPU-second")
    emit(figures)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
