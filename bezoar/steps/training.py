"""What the training steps (sft, sft_hh, dpo, grpo) share: the numbers `bezoar status` shows for a
training run, and the time the plan expects one to take."""
from __future__ import annotations

import math

from bezoar.train.config import TrainSettings

TOKENS_PER_S = {"sft": 330.0, "dpo": 240.0}
"""Training tokens per second of the embedded model on 2 CPU cores, in bf16 on an idle AVX-512 machine:
recipes/tiny.yaml's sft_hh step trained its ~5,000 tokens in 15 s after start-up. DPO's figure also pays for
the reference pass and the held-out pairs' scoring: tiny.yaml's dpo step (32 pairs seen) took 51 s, the
rehearsal's (26) 26 s, verifiable.yaml's (552) 556 s; at 240 they are planned at 37, 32 and 449 s."""
START_S = 12.0
"""A training step's first run: the process, loading the weights, the template check, the first validation pass."""
NEXT_RUN_S = 1.0
"""Each further run in the same step (sft's sequential sets): the weights are loaded already."""
MEAN_TOKENS = 160
"""Tokens of a typical example after truncation, when nothing better is known."""
MEAN_PAIR_TOKENS = 190
"""Tokens of a typical preference pair as DPO trains it, its prompt with both replies (HH-RLHF harmless-base:
168 and 191 a pair in the rehearsal and tiny.yaml; verifiable.yaml's sampled pairs: 202)."""


def training_counts(runs: list[dict]) -> dict[str, float]:
    """Optimizer steps over the runs, and the validation loss before the first and at the best of the last."""
    trained = [r for r in runs if "global_step" in r]
    counts: dict[str, float] = {"steps": sum(r["global_step"] for r in trained)}
    if trained:
        first, last = trained[0], trained[-1]
        if (first.get("initial_eval") or {}).get("eval_loss") is not None:
            counts["eval_loss_before"] = round(first["initial_eval"]["eval_loss"], 4)
        if last.get("best_eval_loss") is not None:
            counts["eval_loss_best"] = round(last["best_eval_loss"], 4)
    return counts


def training_headline(counts: dict[str, float]) -> str:
    """`6 steps, eval loss 2.466 → 2.456` and the step's other counts (`8 pairs`)."""
    text = f"{counts.get('steps', 0):g} steps"
    if "eval_loss_before" in counts and "eval_loss_best" in counts:
        text += f", eval loss {counts['eval_loss_before']:.3f} → {counts['eval_loss_best']:.3f}"
    others = [f"{v:g} {k.replace('_', ' ')}" for k, v in counts.items()
              if k not in ("steps", "eval_loss_before", "eval_loss_best")]
    return ", ".join([text, *others])


def training_wall_s(settings: TrainSettings, examples: float | None, kind: str, first: bool = True) -> float:
    """Expected seconds for one training run on `examples` examples (pairs for DPO); `first` in its step."""
    if not examples:
        return 0.0
    batch = settings.per_device_train_batch_size * settings.gradient_accumulation_steps * settings.launch.num_processes
    train = examples * (1 - settings.validation_fraction)
    steps = settings.max_steps or math.ceil(train / batch) * settings.num_train_epochs
    per_step = min(batch, max(train, 1.0))  # a step never takes more than the data (the epoch ends first)
    per_example = min(2 * settings.max_length, MEAN_PAIR_TOKENS) if kind == "dpo" else min(settings.max_length, MEAN_TOKENS)
    tokens = per_example * per_step * steps
    return (START_S if first else NEXT_RUN_S) + tokens / TOKENS_PER_S.get(kind, 250.0)
