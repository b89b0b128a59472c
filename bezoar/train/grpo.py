"""GRPO with TRL's GRPOTrainer, a LoRA adapter and verifiable rewards: `train_grpo`.

Each optimizer step samples `num_generations` completions for each of its constraint prompts from
the policy being trained, scores every completion with lm-eval's IFEval checkers (the share of the
prompt's constraints met; `bezoar.train.rewards`), and moves the policy towards the completions
that beat their group's mean. The reference model, when `beta > 0`, is the policy with its adapter
switched off (or TRL's frozen copy of a continued adapter): never a second copy of the base.

Like SFT and DPO, a run goes through `bezoar.train.run.execute`: it is skipped when done, resumes
from its newest complete checkpoint after a kill (adapter, optimizer, scheduler, RNG, position in
the prompt order; bezoar's rollouts are seeded by step, so the resumed run draws the same samples),
writes `metrics.jsonl` (reward, its spread, completion lengths, clipped share per step) and, last,
`summary.json`.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from statistics import mean

from bezoar.errors import DataError
from bezoar.private_apis import require
from bezoar.records import Record, read_jsonl
from bezoar.train.config import GRPOStageConfig
from bezoar.train.encoding import load_tokenizer
from bezoar.train.examples import Prepared
from bezoar.train.rewards import prompt_row, reward_functions
from bezoar.train.rollouts import BezoarRollouts
from bezoar.train.run import TrainingJob, execute
from bezoar.train.template_check import SAMPLE

log = logging.getLogger(__name__)


def grpo_trainer_class():
    """TRL's GRPOTrainer, quiet about the experimental `rollout_func` bezoar passes on purpose."""
    from trl import GRPOTrainer


    require("trl", "bezoar's GRPO rollouts (GRPOTrainer's experimental rollout_func)")

    class BezoarGRPOTrainer(GRPOTrainer):
        def __init__(self, *args, **kwargs):
            with warnings.catch_warnings():  # the library never prints; the choice is logged instead
                warnings.filterwarnings("ignore", message="You are using 'rollout_func'")
                super().__init__(*args, **kwargs)

        def _get_train_sampler(self, dataset=None):
            return EpochSeeded(super()._get_train_sampler(dataset))

    return BezoarGRPOTrainer


class EpochSeeded:
    """TRL's RepeatSampler with `set_epoch`, which the Trainer calls at each epoch: the prompt order then depends
    on (seed, epoch) alone. TRL's draws every epoch's order from one generator seeded once, so a run resumed
    in its second epoch or later (a fresh generator) trained on another order than a run never killed: found
    when a GRPO run resumed at checkpoint-2 of 4 prompts (2 steps an epoch) sampled other rollouts at step 3."""

    def __init__(self, sampler):
        self.sampler = sampler

    def __iter__(self):
        return iter(self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        if self.sampler.shuffle:
            self.sampler.generator.manual_seed((self.sampler.seed or 0) + epoch)


def rollout_engine(settings: GRPOStageConfig, device: str) -> str:
    """`auto` resolved: bezoar's decoder on a CPU (1.44x TRL's generation there: `bezoar.train.rollouts`),
    TRL's `generate` on a GPU (not measured: no GPU here)."""
    if settings.rollout != "auto":
        return settings.rollout
    return "bezoar" if device == "cpu" else "transformers"


def grpo_arguments(job: TrainingJob) -> dict:
    """GRPOConfig keywords beyond the shared ones (TRL's names and meanings)."""
    s: GRPOStageConfig = job.settings  # type: ignore[assignment]
    return {"num_generations": s.num_generations, "max_completion_length": s.max_completion_length,
            "temperature": s.temperature, "top_p": s.top_p, "beta": s.beta, "epsilon": s.epsilon,
            "loss_type": s.loss_type, "scale_rewards": s.scale_rewards, "num_iterations": s.num_iterations,
            "mask_truncated_completions": s.mask_truncated_completions, "remove_unused_columns": False,
            "shuffle_dataset": True, "log_completions": False, **_continuous_batching(s, job.plan.device)}


def _continuous_batching(settings: GRPOStageConfig, device: str) -> dict:
    """transformers' `generate_batch` when asked for. On a CPU its paged KV cache is capped at 10% of
    memory: at transformers' own default it took a 13.9 GB RSS for 4 rollouts of 16 tokens."""
    if rollout_engine(settings, device) != "transformers_continuous":
        return {"use_transformers_continuous_batching": False}
    capped = {"transformers_continuous_batching_config": {"max_memory_percent": 0.1}} if device == "cpu" else {}
    return {"use_transformers_continuous_batching": True, **capped}


def prepare_prompts(tokenizer, records: list[Record], settings: GRPOStageConfig) -> Prepared:
    """Constraint prompts → GRPO rows (conversation + checker fields + length). A prompt without
    constraints (nothing can verify its answers) or longer than `max_length` is left out and counted."""
    rows, bad = [], []
    for record in records:
        row = prompt_row(record)
        if not row["instruction_id_list"]:
            bad.append(f"{record.meta.id or '?'}: no constraints, so no program can score its answers")
            continue
        text = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        length = len(tokenizer(text, add_special_tokens=False).input_ids)
        if length > settings.max_length:
            bad.append(f"{record.meta.id or '?'}: the prompt has {length} tokens, over max_length={settings.max_length}")
            continue
        rows.append({**row, "length": length + settings.max_completion_length})
    return Prepared(rows, [], bad)


def reward_summary(trainer, job: TrainingJob) -> dict:
    """After training: the reward and completion length at the first and last steps, and time per step."""
    rows = [row for row in trainer.state.log_history if "reward" in row]
    if not rows:
        return {}
    found = {"first_reward": rows[0]["reward"], "last_reward": rows[-1]["reward"],
             "mean_reward": mean(row["reward"] for row in rows),
             "first_completion_length": rows[0].get("completions/mean_length"),
             "last_completion_length": rows[-1].get("completions/mean_length"),
             "zero_std_share": mean(row.get("frac_reward_zero_std", 0.0) for row in rows),
             "rollout": rollout_engine(job.settings, job.plan.device)}  # type: ignore[arg-type]
    times = [row["step_time"] for row in rows if "step_time" in row]
    if times:
        found["s_per_step"] = mean(times)
    return found


def train_grpo(config: GRPOStageConfig, prompts: list[Record] | Path, start_model: str, out_dir: Path,
               stage: str = "grpo", callbacks: list | None = None) -> dict:
    """Train (or resume, or skip when done) one GRPO run from `start_model` (`local`, `local:PATH`, an
    adapter directory) on constraint prompts (records, or a JSONL of them); returns its summary.
    `callbacks`: extra TrainerCallbacks, e.g. `bezoar.train.metrics.CPUBudget` to stop at a CPU budget."""
    from bezoar.train.student import plan_training, resolve_base

    records = list(read_jsonl(prompts, Record)) if isinstance(prompts, (str, Path)) else list(prompts)
    weights = resolve_base(start_model)
    tokenizer = load_tokenizer(weights.adapter_dir or weights.base_dir, config.template)
    prepared = prepare_prompts(tokenizer, records, config)
    if not prepared.train:
        raise DataError(f"{stage}: no usable constraint prompt ({prepared.bad[:1] or 'none given'})")
    if prepared.bad:
        log.warning("%s: %d prompts left out, e.g. %s", stage, len(prepared.bad), prepared.bad[0])
    engine = rollout_engine(config, plan_training(config, kind="grpo").device)
    job = TrainingJob(stage=stage, kind="grpo", base=start_model, weights=weights, tokenizer=tokenizer,
                      prepared=prepared, out_dir=Path(out_dir), settings=config,
                      sample=(prepared.train[0]["prompt"], SAMPLE[1]), after_training=reward_summary,
                      callbacks=list(callbacks or []))
    job.trainer_kwargs = {"reward_funcs": reward_functions(config.rewards, config.max_completion_length,
                                                           [tokenizer.eos_token_id])}
    if engine == "bezoar":
        job.trainer_kwargs["rollout_func"] = BezoarRollouts(tokenizer, config.max_completion_length,
                                                            config.temperature, config.top_p, config.seed)
    log.info("%s: rollouts by %s", stage, engine)
    return execute(job, grpo_trainer_class(), grpo_arguments)
