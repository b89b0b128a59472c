"""Learning online from verifiable rewards on a CPU: which arm gains most IFEval at the same CPU budget?

Arms, each from the embedded SmolLM2-135M-Instruct ("base"), on constraint prompts made from the Dolly
seeds (IFEval's 25 types, our own wording; a dev split of them is held out for choosing settings):

  base       nothing trained
  dpo1       one round: k samples per prompt from the base, IFEval's checkers pick chosen/rejected, DPO
  dpo3       three rounds on a third of the prompts each, every round sampling from the newest checkpoint
  grpo       prompts that teach (k samples, scores must spread), then GRPO with the checkers as reward
  dpo_grpo   one DPO round on half the prompts, then prompts that teach and GRPO from the DPO model

Budget: the CPU seconds (this process, all threads: robust to neighbours on a shared machine) that an
arm spends before evaluation. `--budget-cpu-s`, default the dpo1 arm's own (run first). The DPO
rounds share the prompts and epochs of dpo1 (equal work by construction, measured and reported);
the GRPO arms stop training when the budget is spent (`bezoar.train.metrics.CPUBudget`).

Each arm then gets: IFEval (541 prompts; `--ifeval-limit` for smoke runs) with all four metrics and
per-type accuracy, paired 95% intervals against base (prompts resampled whole); the same on the dev
split of our own prompts; HH-RLHF preference accuracy on the last 200 pairs of harmless-base test,
paired against base; answer length (words, empty share) of the IFEval answers; wall time, CPU time
and peak RSS of the arm's process. Nothing is tuned on IFEval: compare settings by the dev columns.

    .venv/bin/python benchmarks/bench_rl.py --out runs/bench-rl            # hours on 2 shared cores
    .venv/bin/python benchmarks/bench_rl.py --out runs/bench-rl-tiny --tiny  # minutes: every path, toy sizes

Each arm runs in its own process (its peak RSS is its own) and writes `arms/NAME.json`; a re-run skips
finished arms, and a killed arm resumes from the call cache and its training checkpoints. The last
line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import random
import subprocess
import sys
import time
from pathlib import Path

from common import DATA, emit, peak_rss_mb

HH = "preferences/hh-rlhf/harmless-base/test.jsonl.gz"
ARMS = ("base", "dpo1", "dpo3", "grpo", "dpo_grpo")
TINY = dict(prompts=12, dev_fraction=0.25, k=2, sample_tokens=16, epochs=1.0, batch_size=2, accumulation=1,
            ifeval_limit=6, ifeval_tokens=24, heldout_n=6, grpo_generations=2, grpo_tokens=16, grpo_batch=4,
            grpo_accumulation=1, bootstrap=100)


# ---- data -----------------------------------------------------------------------------------------

def prompt_split(args) -> tuple[list, list]:
    """(train, dev) constraint prompts, written under out/prompts (the dev file in IFEval's format)."""
    from bezoar.generate.constraints import checker_doc, make_records
    from bezoar.generate.seeds import read_seeds
    from bezoar.preferences.teaching import split_prompts
    from bezoar.records import write_jsonl

    seeds = read_seeds(DATA / "seeds/dolly15k_open_qa_subset.jsonl").seeds
    records = make_records(seeds, args.prompts, random.Random(args.seed), None, 1, args.max_constraints)
    train, dev = split_prompts(records, args.dev_fraction, args.seed)
    write_jsonl(args.out / "prompts" / "train.jsonl", train)
    write_jsonl(args.out / "prompts" / "dev.jsonl", [checker_doc(r, f"dev-{i}") for i, r in enumerate(dev)])
    return train, dev


def heldout_pairs(args) -> list:
    from bezoar.train.config import HHData
    from bezoar.train.hh_rlhf import hh_slices

    return hh_slices(HHData(path=DATA / HH, sft_n=0, dpo_n=0, heldout_n=args.heldout_n))["heldout"]


# ---- training pieces ------------------------------------------------------------------------------

def student(spec: str, cache):
    from bezoar.config import ModelConfig
    from bezoar.llm.specs import open_model

    return open_model(ModelConfig(spec=spec), role="student", cache=cache)


def dpo_round(args, records: list, start: str, out: Path, cache) -> tuple[str, dict]:
    """k samples per prompt from `start`, checker-picked pairs, DPO continuing `start`'s adapter."""
    from bezoar.preferences.config import PreferencesConfig
    from bezoar.preferences.stage import make_pairs
    from bezoar.train.dpo import train_dpo
    from bezoar.train.config import DPOStageConfig

    config = PreferencesConfig(k=args.k, temperature=args.temperature,
                               max_new_tokens=args.sample_tokens, margin=args.margin)
    made = make_pairs(student(start, cache), None, records, config, start, args.seed, out / "pairs")
    pairs = made.pop("pairs_data")
    steps = max(1, math.ceil(len(pairs) * args.epochs / (args.batch_size * args.accumulation)))
    settings = DPOStageConfig(beta=args.beta, learning_rate=args.dpo_lr, max_steps=steps, warmup_steps=min(2, steps // 4),
                              per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=args.accumulation,
                              validation_fraction=0.0, eval_steps=max(steps, 1), load_best_model_at_end=False,
                              max_length=384, logging_steps=5, lora={"r": 16, "alpha": 32})
    if not pairs:
        return start, {"pairs": 0, "skipped": "no pair"}
    trained = train_dpo(start, pairs, out / "model", settings)
    return f"local:{(out / 'model').resolve()}", {**{k: made[k] for k in ("prompts", "pairs", "ties", "all_fail")},
                                                  "steps": trained["global_step"]}


def grpo_phase(args, records: list, start: str, out: Path, cache, budget_s: float) -> tuple[str, dict]:
    """Prompts that teach (sampled from `start`), then GRPO from `start` until `budget_s` CPU seconds."""
    from bezoar.preferences.config import SelectionConfig
    from bezoar.preferences.teaching import select_teaching_prompts
    from bezoar.train.config import GRPOStageConfig
    from bezoar.train.grpo import train_grpo
    from bezoar.train.metrics import CPUBudget

    before = time.process_time()
    config = SelectionConfig(k=args.grpo_generations, temperature=args.temperature, max_new_tokens=args.grpo_tokens)
    chosen = select_teaching_prompts(student(start, cache), records, config, args.seed, out / "teaching")
    kept = chosen.pop("records")
    selection = {k: chosen[k] for k in ("candidates", "kept", "kept_share", "reasons", "types_before", "types_after")}
    if not kept:
        return start, {"selection": selection, "skipped": "no prompt teaches"}
    settings = GRPOStageConfig(num_generations=args.grpo_generations, max_completion_length=args.grpo_tokens,
                               temperature=args.temperature, learning_rate=args.grpo_lr, beta=args.grpo_beta,
                               per_device_train_batch_size=args.grpo_batch,
                               gradient_accumulation_steps=args.grpo_accumulation, max_steps=args.grpo_max_steps,
                               num_train_epochs=1000.0, eval_steps=5, lora={"r": 16, "alpha": 32})
    left = budget_s - (time.process_time() - before)
    trained = train_grpo(settings, kept, start, out / "model", callbacks=[CPUBudget(max(left, 1.0))])
    keys = ("global_step", "first_reward", "last_reward", "mean_reward", "s_per_step", "last_completion_length")
    return f"local:{(out / 'model').resolve()}", {"selection": selection, **{k: trained.get(k) for k in keys}}


def train_arm(name: str, args, train: list, budget_s: float | None, cache) -> tuple[str, dict]:
    """The arm's model spec and what its training did; budget_s None only for dpo1 (it sets the budget)."""
    out = args.out / "arms" / name
    used = lambda: time.process_time() - started  # noqa: E731
    started = time.process_time()
    if name == "base":
        return "local", {}
    if name == "dpo1":
        spec, info = dpo_round(args, train, "local", out / "round-1", cache)
        return spec, {"rounds": [info]}
    if name == "dpo3":
        spec, rounds = "local", []
        for index in range(3):
            part = train[index::3]
            spec, info = dpo_round(args, part, spec, out / f"round-{index + 1}", cache)
            rounds.append({**info, "model": spec})
        return spec, {"rounds": rounds}
    if name == "grpo":
        return grpo_phase(args, train, "local", out / "grpo", cache, budget_s)
    if name == "dpo_grpo":
        half = len(train) // 2
        spec, dpo = dpo_round(args, train[:half], "local", out / "round-1", cache)
        spec, grpo = grpo_phase(args, train[half:], spec, out / "grpo", cache, budget_s - used())
        return spec, {"rounds": [dpo], **grpo}
    raise ValueError(name)


# ---- evaluation -----------------------------------------------------------------------------------

def ifeval_run(args, name: str, spec: str, prompts: Path, limit: int | None, out: Path, cache) -> dict:
    """IFEval's scoring on `prompts` (IFEval's own file, or our dev split in its format), cached on disk."""
    from bezoar.evaluate.config import IFEvalConfig
    from bezoar.evaluate.ifeval import run_ifeval
    from bezoar.llm.local import free_memory

    if (out / "summary.json").exists():
        return json.loads((out / "summary.json").read_text())
    model = student(spec, cache)
    config = IFEvalConfig(enabled=True, prompts=prompts, limit=limit, max_new_tokens=args.ifeval_tokens,
                          bootstrap_samples=args.bootstrap)
    summary = run_ifeval(model, config, out, name)
    del model
    free_memory()
    return summary


def dev_score(args, name: str, spec: str, cache) -> float:
    """Instruction-level strict accuracy on our own dev prompts (what settings are chosen by)."""
    summary = ifeval_run(args, name, spec, args.out / "prompts" / "dev.jsonl", None, args.out / "dev" / name, cache)
    return summary["metrics"]["inst_strict"]["value"]


def answer_length(summary: dict) -> dict:
    from bezoar.records import read_jsonl

    answers = [row["response"] for row in read_jsonl(summary["files"]["answers"])]
    words = [len(a.split()) for a in answers]
    return {"mean_words": sum(words) / max(len(words), 1), "empty_share": sum(w == 0 for w in words) / max(len(words), 1)}


def evaluate_arm(name: str, spec: str, args, heldout: list, cache) -> dict:
    from bench_quality import hh_accuracy

    ifeval = ifeval_run(args, name, spec, DATA / "eval/ifeval/input_data.jsonl", args.ifeval_limit,
                        args.out / "ifeval" / name, cache)
    dev = ifeval_run(args, name, spec, args.out / "prompts" / "dev.jsonl", None, args.out / "dev" / name, cache)
    return {"ifeval_summary": str(args.out / "ifeval" / name / "summary.json"),
            "dev_summary": str(args.out / "dev" / name / "summary.json"),
            "ifeval": {m: v["value"] for m, v in ifeval["metrics"].items()},
            "dev": {m: v["value"] for m, v in dev["metrics"].items()},
            "hh": hh_accuracy(args.out, name, spec, heldout), "length": answer_length(ifeval)}


def run_arm(args) -> None:
    """Child process: train one arm within the budget, evaluate it, write arms/NAME.json."""
    from bezoar.llm.cache import CallCache

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    wall, cpu = time.perf_counter(), time.process_time()
    train = prompt_split(args)[0]
    cache = CallCache(args.out / "cache" / "calls.sqlite")
    spec, training = train_arm(args.arm, args, train, args.budget_cpu_s, cache)
    trained = {"cpu_s": round(time.process_time() - cpu, 1), "wall_s": round(time.perf_counter() - wall, 1)}
    for index, step in enumerate(training.get("rounds", [])[:-1] if args.arm == "dpo3" else []):
        step["dev_inst_strict"] = dev_score(args, f"{args.arm}-round-{index + 1}", step["model"], cache)  # after each round
    result = {"arm": args.arm, "model": spec, "training": training, "train_cpu_s": trained["cpu_s"],
              "train_wall_s": trained["wall_s"], **evaluate_arm(args.arm, spec, args, heldout_pairs(args), cache)}
    result.update(wall_s=round(time.perf_counter() - wall, 1), cpu_s=round(time.process_time() - cpu, 1),
                  peak_rss_mb=round(peak_rss_mb(), 1))
    (args.out / "arms").mkdir(parents=True, exist_ok=True)
    (args.out / "arms" / f"{args.arm}.json").write_text(json.dumps(result, indent=1))


# ---- comparison -----------------------------------------------------------------------------------

def paired(arm: dict, base: dict, samples: int) -> dict:
    """Each IFEval metric's change against base with a paired 95% interval, and HH accuracy's."""
    from bezoar.evaluate.ifeval import paired_inst_delta
    from bezoar.intervals import paired_bootstrap_delta

    new, old = (json.loads(Path(s["ifeval_summary"]).read_text())["metrics"] for s in (arm, base))
    deltas = {}
    for metric in ("prompt_strict", "prompt_loose"):
        deltas[metric] = paired_bootstrap_delta(new[metric]["items"], old[metric]["items"], samples)
    for metric in ("inst_strict", "inst_loose"):
        deltas[metric] = paired_inst_delta(new[metric]["items"], old[metric]["items"], samples)
    deltas["hh_accuracy"] = paired_bootstrap_delta(arm["hh"]["loglik"]["items"], base["hh"]["loglik"]["items"], samples)
    return {k: {"delta": round(v["delta"], 4), "ci95": [round(x, 4) for x in v["ci95"]]} for k, v in deltas.items() if v}


def report(results: dict[str, dict], args) -> dict:
    base = results["base"]
    print(f"\n{'arm':10s} {'train cpu s':>11s} {'wall s':>7s} {'RSS MB':>7s}  {'inst strict (vs base)':32s} "
          f"{'prompt strict':>13s} {'dev inst':>8s} {'HH acc':>7s} {'words':>6s} {'empty':>6s}")
    figures: dict = {"arms": {}}
    for name, arm in results.items():
        deltas = paired(arm, base, args.bootstrap) if name != "base" else {}
        inst = deltas.get("inst_strict")
        shown = f"{arm['ifeval']['inst_strict']:.4f}" + (f" {inst['delta']:+.4f} {inst['ci95']}" if inst else "")
        print(f"{name:10s} {arm['train_cpu_s']:11.0f} {arm['wall_s']:7.0f} {arm['peak_rss_mb']:7.0f}  {shown:32s} "
              f"{arm['ifeval']['prompt_strict']:13.4f} {arm['dev']['inst_strict']:8.4f} {arm['hh']['accuracy']:7.3f} "
              f"{arm['length']['mean_words']:6.1f} {arm['length']['empty_share']:6.3f}")
        figures["arms"][name] = {"ifeval": arm["ifeval"], "vs_base": deltas, "dev": arm["dev"],
                                 "hh_accuracy": arm["hh"]["accuracy"], "length": arm["length"],
                                 "train_cpu_s": arm["train_cpu_s"], "wall_s": arm["wall_s"], "cpu_s": arm["cpu_s"],
                                 "peak_rss_mb": arm["peak_rss_mb"], "training": _brief(arm["training"])}
    types = {name: json.loads(Path(arm["ifeval_summary"]).read_text())["by_type"] for name, arm in results.items()}
    print(f"\n{'instruction type (IFEval, strict)':44s} {'n':>4s} " + " ".join(f"{n:>9s}" for n in results))
    for kind, row in types["base"].items():
        print(f"{kind:44s} {row['n']:4d} " + " ".join(f"{types[n].get(kind, {}).get('strict', math.nan):9.3f}"
                                                      for n in results))
    figures["by_type"] = {kind: {n: types[n].get(kind, {}).get("strict") for n in results} for kind in types["base"]}
    return figures


def _brief(training: dict) -> dict:
    """What the JSON line keeps of an arm's training record (the type tables stay in arms/NAME.json)."""
    selection = training.get("selection")
    kept = {k: v for k, v in training.items() if k != "selection"}
    if selection:
        kept["selection"] = {k: selection[k] for k in ("candidates", "kept", "kept_share", "reasons")}
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-rl"))
    parser.add_argument("--tiny", action="store_true", help="toy sizes: every code path in minutes")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--budget-cpu-s", type=float, default=None, help="default: the dpo1 arm's training CPU time")
    parser.add_argument("--prompts", type=int, default=480, help="constraint prompts, dev split included")
    parser.add_argument("--dev-fraction", type=float, default=1 / 6)
    parser.add_argument("--max-constraints", type=int, default=2)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--sample-tokens", type=int, default=128)
    parser.add_argument("--margin", type=float, default=0.5)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--dpo-lr", type=float, default=5e-4)
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--accumulation", type=int, default=2)
    parser.add_argument("--grpo-generations", type=int, default=4)
    parser.add_argument("--grpo-tokens", type=int, default=128)
    parser.add_argument("--grpo-lr", type=float, default=2e-5)
    parser.add_argument("--grpo-beta", type=float, default=0.0)
    parser.add_argument("--grpo-batch", type=int, default=8)
    parser.add_argument("--grpo-accumulation", type=int, default=2)
    parser.add_argument("--grpo-max-steps", type=int, default=10_000, help="the CPU budget stops it first")
    parser.add_argument("--ifeval-limit", type=int, default=None, help="IFEval prompts (default all 541)")
    parser.add_argument("--ifeval-tokens", type=int, default=192)
    parser.add_argument("--heldout-n", type=int, default=200)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arm", help=argparse.SUPPRESS)  # the child's arm
    args = parser.parse_args()
    if args.tiny:
        defaults = {a.dest: a.default for a in parser._actions}
        for key, value in TINY.items():
            if getattr(args, key) == defaults[key]:  # --tiny sets what the command line left at its default
                setattr(args, key, value)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.arm:
        return run_arm(args)
    started = time.perf_counter()
    prompt_split(args)  # once, before the arms: they all read these files
    arms = args.arms.split(",")
    results = {}
    for name in ["base", "dpo1"] + [a for a in arms if a not in ("base", "dpo1")]:
        path = args.out / "arms" / f"{name}.json"
        if not path.exists():
            budget = args.budget_cpu_s or (results["dpo1"]["train_cpu_s"] if "dpo1" in results else None)
            command = [sys.executable, __file__, *sys.argv[1:], "--arm", name]
            if budget is not None and "--budget-cpu-s" not in sys.argv:
                command += ["--budget-cpu-s", str(budget)]
            print(f"arm {name}: {' '.join(command[2:])}", flush=True)
            subprocess.run(command, check=True)
        results[name] = json.loads(path.read_text())
    figures = report(results, args)
    figures.update(budget_cpu_s=args.budget_cpu_s or results["dpo1"]["train_cpu_s"], tiny=args.tiny,
                   ifeval_prompts=args.ifeval_limit or 541, hh_heldout_pairs=args.heldout_n,
                   wall_s=round(time.perf_counter() - started, 1), peak_rss_mb_parent=round(peak_rss_mb(), 1),
                   settings={k: v for k, v in vars(args).items() if k not in ("out", "arm", "arms")})
    emit(figures)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
