"""Does DPO on on-policy, checker-verified constraint pairs make the student follow instructions better?

base (embedded SmolLM2-135M-Instruct)
  -> DPO on on-policy constraint pairs (prompts from the Dolly seeds, k samples, lm-eval's IFEval
     checkers pick chosen/rejected)                                        = dpo_verifiable
  -> the same number of DPO steps on as many HH-RLHF pairs (the obvious alternative)  = dpo_hh
IFEval (541 held-out prompts, no judge) on all three, paired bootstrap intervals of the changes
(prompts resampled whole); HH-RLHF preference accuracy (log-likelihood) on held-out pairs, which
must not fall. Nothing is tuned on IFEval's prompts.

    .venv/bin/python benchmarks/bench_quality.py --out runs/bench-quality            # hours on 2 shared cores
    .venv/bin/python benchmarks/bench_quality.py --out runs/bq-smoke --prompts 24 --limit 20 --ifeval-tokens 64

Resumable: samples and answers come from the call cache under --out, training resumes from its
checkpoints. The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import random
import time
from pathlib import Path

from common import DATA, emit, peak_rss_mb

HH = "preferences/hh-rlhf/harmless-base/test.jsonl.gz"


def constraint_pairs(out: Path, args, cache) -> tuple[list, dict]:
    from bezoar.generate.constraints import make_records
    from bezoar.generate.seeds import read_seeds
    from bezoar.llm.cache import CachedModel
    from bezoar.llm.local import LocalBackend
    from bezoar.preferences.config import PreferencesConfig
    from bezoar.preferences.stage import make_pairs

    seeds = read_seeds(DATA / "seeds/dolly15k_open_qa_subset.jsonl").seeds
    records = make_records(seeds, args.prompts, random.Random(args.seed), None, 1, args.max_constraints)
    config = PreferencesConfig(enabled=True, k=args.k, temperature=args.temperature, max_new_tokens=args.sample_tokens,
                               margin=args.margin)
    student = CachedModel(LocalBackend(), cache, role="student")
    summary = make_pairs(student, None, records, config, "local", args.seed, out / "pairs")
    pairs = summary.pop("pairs_data")
    return pairs, summary


def dpo_settings(args, pairs: int):
    from bezoar.train.config import DPOStageConfig

    per_step = args.batch_size * args.accumulation
    steps = max(1, math.ceil(pairs * args.epochs / per_step))
    settings = DPOStageConfig(beta=args.beta, learning_rate=args.learning_rate, max_steps=steps, warmup_steps=2,
                              per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=args.accumulation,
                              validation_fraction=0.0, eval_steps=max(steps, 1), load_best_model_at_end=False,
                              max_length=384, logging_steps=5, lora={"r": 16, "alpha": 32})
    return settings, steps


def ifeval(out: Path, name: str, spec: str, args, cache) -> dict:
    from bezoar.config import ModelConfig
    from bezoar.evaluate.config import IFEvalConfig
    from bezoar.evaluate.ifeval import run_ifeval
    from bezoar.llm.local import free_memory
    from bezoar.llm.specs import open_model

    path = out / "ifeval" / name / "summary.json"
    if path.exists() and json.loads(path.read_text()).get("prompts") == (args.limit or 541):
        return json.loads(path.read_text())
    model = open_model(ModelConfig(spec=spec), role=name, cache=cache)
    config = IFEvalConfig(enabled=True, prompts=DATA / "eval/ifeval/input_data.jsonl", limit=args.limit,
                          max_new_tokens=args.ifeval_tokens)
    summary = run_ifeval(model, config, out / "ifeval" / name, name)
    del model  # the model caches hold it weakly: this lets the next checkpoint load into freed memory
    free_memory()
    return summary


def hh_accuracy(out: Path, name: str, spec: str, heldout: list) -> dict:
    from bezoar.evaluate.preference import preference_accuracy

    path = out / f"preference-{name}.json"
    if not path.exists():
        path.write_text(json.dumps(preference_accuracy(spec, heldout, batch_size=8)))
    return json.loads(path.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-quality"))
    parser.add_argument("--prompts", type=int, default=400, help="constraint prompts (pairs are fewer)")
    parser.add_argument("--max-constraints", type=int, default=2)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--sample-tokens", type=int, default=128)
    parser.add_argument("--margin", type=float, default=0.5)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--learning-rate", type=float, default=5e-4,
                        help="5e-5 left the DPO loss at 0.685 after 2 epochs (a LoRA barely moved)")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--accumulation", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="IFEval prompts (default all 541)")
    parser.add_argument("--ifeval-tokens", type=int, default=192)
    parser.add_argument("--heldout-n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    started = time.perf_counter()
    from bezoar.evaluate.ifeval import paired_inst_delta
    from bezoar.llm.cache import CallCache
    from bezoar.train.config import HHData
    from bezoar.train.dpo import train_dpo
    from bezoar.train.hh_rlhf import hh_slices

    args.out.mkdir(parents=True, exist_ok=True)
    cache = CallCache(args.out / "cache" / "calls.sqlite")
    pairs, stats = constraint_pairs(args.out, args, cache)
    slices = hh_slices(HHData(path=DATA / HH, sft_n=0, dpo_n=len(pairs), heldout_n=args.heldout_n))
    settings, steps = dpo_settings(args, len(pairs))
    verifiable = train_dpo("local", pairs, args.out / "dpo-verifiable", settings, heldout=slices["heldout"][:64])
    hh = train_dpo("local", slices["dpo"], args.out / "dpo-hh", settings, heldout=slices["heldout"][:64])
    models = {"base": "local", "dpo_verifiable": f"local:{(args.out / 'dpo-verifiable').resolve()}",
              "dpo_hh": f"local:{(args.out / 'dpo-hh').resolve()}"}
    scores = {name: ifeval(args.out, name, spec, args, cache) for name, spec in models.items()}
    hh_acc = {name: hh_accuracy(args.out, name, spec, slices["heldout"]) for name, spec in models.items()}
    inst = {name: s["metrics"]["inst_strict"] for name, s in scores.items()}
    delta = paired_inst_delta(inst["dpo_verifiable"]["items"], inst["base"]["items"])
    delta_hh = paired_inst_delta(inst["dpo_hh"]["items"], inst["base"]["items"])
    print(f"{'instruction type':48s} {'n':>4s} " + " ".join(f"{n:>15s}" for n in models))
    for kind, row in scores["base"]["by_type"].items():
        print(f"{kind:48s} {row['n']:4d} " + " ".join(f"{scores[n]['by_type'][kind]['strict']:15.3f}" for n in models))
    for name in models:
        print(f"{name:15s} IFEval inst strict {inst[name]['value']:.4f} {inst[name]['ci95']}, "
              f"prompt strict {scores[name]['metrics']['prompt_strict']['value']:.4f}, "
              f"HH pref acc {hh_acc[name]['accuracy']:.3f} {hh_acc[name]['ci95']}")
    print(f"verifiable - base: {delta['delta']:+.4f} {delta['ci95']}; hh - base: {delta_hh['delta']:+.4f} {delta_hh['ci95']}")
    figures = {
        "ifeval_inst_strict_base": inst["base"]["value"], "ifeval_inst_strict_dpo_verifiable": inst["dpo_verifiable"]["value"],
        "ifeval_inst_strict_dpo_hh": inst["dpo_hh"]["value"], "delta": delta["delta"], "delta_ci95": delta["ci95"],
        "delta_hh": delta_hh["delta"], "delta_hh_ci95": delta_hh["ci95"],
        "ifeval_prompt_strict": {n: s["metrics"]["prompt_strict"]["value"] for n, s in scores.items()},
        "ifeval_inst_loose": {n: s["metrics"]["inst_loose"]["value"] for n, s in scores.items()},
        "hh_pref_acc": {n: a["accuracy"] for n, a in hh_acc.items()}, "hh_heldout_pairs": len(slices["heldout"]),
        "ifeval_prompts": scores["base"]["prompts"], "ifeval_max_new_tokens": args.ifeval_tokens,
        "pairs": stats["pairs"], "prompts": stats["prompts"], "ties": stats["ties"], "all_fail": stats["all_fail"],
        "mean_sample_score": stats["mean_answer_score"], "dpo_steps": steps,
        "settings": {k: getattr(args, k) for k in ("k", "temperature", "sample_tokens", "margin", "beta",
                                                   "learning_rate", "epochs", "batch_size", "accumulation")},
        "dpo_verifiable_heldout_reward_acc": verifiable.get("heldout_rewards/accuracies"),
        "dpo_hh_heldout_reward_acc": hh.get("heldout_rewards/accuracies"),
        "wall_s": round(time.perf_counter() - started, 1), "peak_rss_mb": round(peak_rss_mb(), 1)}
    emit(figures)


if __name__ == "__main__":
    main()
