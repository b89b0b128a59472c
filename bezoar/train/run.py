"""One training run, shared by SFT, DPO and GRPO: skip if done, resume if killed, check the template,
train with TRL, keep the best checkpoint, and write the summary last.

A run is identified by a fingerprint of everything that decides its result (settings, loss, base
weights and adapter by content, the tokenized data). The same fingerprint in `summary.json` means
done; in `bezoar-train.json` it means "resume from the newest complete checkpoint"; a different
one means the old checkpoints belong to another experiment and are set aside.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bezoar.fingerprint import fingerprint, record, recorded
from bezoar.private_apis import require
from bezoar.processes import is_main_process
from bezoar.records import write_json
from bezoar.train.config import TrainSettings
from bezoar.train.encoding import template_sha256
from bezoar.train.examples import Prepared, to_dataset
from bezoar.train.metrics import (
    MetricsLog,
    SharedCores,
    best_metrics,
    last_complete_checkpoint,
    quiet,
    tensorboard_callback,
    trim_metrics,
)
from bezoar.train.student import BaseWeights, TrainPlan, attach_adapter, load_model, plan_training
from bezoar.train.template_check import check_template, require_template, trained_template

log = logging.getLogger(__name__)

TRAIN_INFO = "bezoar-train.json"
SUMMARY = "summary.json"


@dataclass
class TrainingJob:
    stage: str
    kind: str  # "sft", "dpo" or "grpo"
    base: str
    weights: BaseWeights
    tokenizer: Any
    prepared: Prepared
    out_dir: Path
    settings: TrainSettings
    loss: str = "assistant"
    sources: list[str] = field(default_factory=list)
    sample: tuple[list[dict], list[dict]] = ([], [])
    """One (prompt, reply) in messages form: what the template check renders before training."""
    trainer_kwargs: dict = field(default_factory=dict)
    after_training: Callable[[Any, "TrainingJob"], dict] | None = None
    plan: TrainPlan | None = None
    callbacks: list = field(default_factory=list)
    """Extra transformers TrainerCallbacks (e.g. `CPUBudget`); not part of the fingerprint."""

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for row in self.prepared.train + [{"validation": True}] + self.prepared.validation:
            digest.update(json.dumps(row, sort_keys=True).encode())
        return fingerprint({"kind": self.kind, "loss": self.loss, "settings": self.settings,
                            "base": self.weights.identity, "data": digest.hexdigest()})[:16]


def execute(job: TrainingJob, trainer_class, kind_arguments: Callable[[TrainingJob], dict]) -> dict:
    """Run `job` to completion (or return its existing summary when it is already done)."""
    out = job.out_dir
    print_ = job.fingerprint()
    done = recorded(out / SUMMARY, print_)
    if done is not None:
        log.info("%s: already trained (%s), skipping", job.stage, out)
        return done
    longest = max(len(r.get("input_ids", ())) or r.get("length", 0) for r in job.prepared.train)
    job.plan = plan_training(job.settings, longest, job.kind)
    log.info("%s: %s", job.stage, job.plan.describe())
    _check_template(job)
    checkpoint = _resume_point(job, print_)
    trainer = _build_trainer(job, trainer_class, kind_arguments)
    info = _read(out / TRAIN_INFO) if checkpoint else {}
    if not checkpoint:
        info = _train_info(job, print_)
        if job.prepared.validation:  # eval loss before any step: the baseline SFT must beat
            info["initial_eval"] = _plain(trainer.evaluate())
        if trainer.is_world_process_zero():
            write_json(out / TRAIN_INFO, info)
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    return _finish(job, trainer, info, result, time.perf_counter() - start, checkpoint)


def _check_template(job: TrainingJob) -> None:
    prompt, reply = job.sample
    report = check_template(job.tokenizer, prompt, reply, loss=job.loss,
                            expected_sha256=job.settings.expected_chat_template,
                            trained_with=trained_template(job.weights.adapter_dir))
    require_template(report, job.stage)


def _resume_point(job: TrainingJob, fingerprint: str) -> Path | None:
    out = job.out_dir
    info = _read(out / TRAIN_INFO)
    main = is_main_process()  # under `accelerate launch` every rank decides alike; only rank 0 touches files
    checkpoint = last_complete_checkpoint(out, remove_incomplete=main) if job.settings.resume else None
    if checkpoint and info.get("fingerprint") != fingerprint:
        log.warning("%s: checkpoints in %s are from another configuration or data; starting over", job.stage, out)
        for old in out.glob("checkpoint-*") if main else ():
            shutil.rmtree(old, ignore_errors=True)
        checkpoint = None
    metrics = out / "metrics.jsonl"
    if checkpoint:
        step = _read(checkpoint / "trainer_state.json").get("global_step", 0)
        if main:
            trim_metrics(metrics, step)
        log.info("%s: resuming from %s (step %d)", job.stage, checkpoint.name, step)
    elif metrics.exists() and main:
        metrics.unlink()
    return checkpoint


def common_arguments(job: TrainingJob) -> dict:
    """TrainingArguments every bezoar run passes explicitly (TRL's defaults are not ours)."""
    s, plan = job.settings, job.plan
    validate = bool(job.prepared.validation)
    return dict(
        output_dir=str(job.out_dir), per_device_train_batch_size=s.per_device_train_batch_size,
        per_device_eval_batch_size=s.per_device_train_batch_size, gradient_accumulation_steps=s.gradient_accumulation_steps,
        learning_rate=s.learning_rate, lr_scheduler_type=s.lr_scheduler_type, warmup_steps=s.warmup_steps,
        num_train_epochs=s.num_train_epochs, max_steps=s.max_steps or -1, weight_decay=s.weight_decay,
        max_grad_norm=s.max_grad_norm, optim=plan.optim, logging_steps=s.logging_steps, logging_first_step=True,
        eval_strategy="steps" if validate else "no", eval_steps=s.eval_steps, save_strategy="steps",
        save_steps=s.eval_steps, save_total_limit=s.save_total_limit,
        load_best_model_at_end=s.load_best_model_at_end and validate, metric_for_best_model="eval_loss",
        greater_is_better=False, seed=s.seed, data_seed=s.seed, report_to="none", dataloader_num_workers=0,
        **_renamed_arguments(plan.gradient_checkpointing), **plan.trl_precision())


def _renamed_arguments(checkpointing: bool) -> dict:
    """Arguments transformers 5 renamed, under whichever name the installed version has.

    Length-grouped batches: similar lengths share a batch, so padded batches waste little."""

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    prefix = "activation" if "activation_checkpointing" in names else "gradient"
    grouping = ({"train_sampling_strategy": "group_by_length"} if "train_sampling_strategy" in names
                else {"group_by_length": True})
    return {f"{prefix}_checkpointing": checkpointing, f"{prefix}_checkpointing_kwargs": {"use_reentrant": False},
            **grouping}


def _build_trainer(job: TrainingJob, trainer_class, kind_arguments):
    from trl import DPOConfig, GRPOConfig, SFTConfig


    model = load_model(job.weights, job.plan)
    model, peft_config = attach_adapter(model, job.weights, job.settings, job.plan)
    config_class = {"sft": SFTConfig, "dpo": DPOConfig, "grpo": GRPOConfig}[job.kind]
    args = config_class(**common_arguments(job), **kind_arguments(job))

    callbacks = [MetricsLog(job.out_dir / "metrics.jsonl", job.stage), tensorboard_callback(job.out_dir / "tensorboard"),
                 SharedCores(), *job.callbacks]
    trainer = _mended(trainer_class)(model=model, args=args, train_dataset=to_dataset(job.prepared.train),
                            eval_dataset=to_dataset(job.prepared.validation), processing_class=job.tokenizer,
                            peft_config=peft_config, callbacks=callbacks, **job.trainer_kwargs)
    quiet(trainer)
    return trainer


def _mended(trainer_class):
    """`trainer_class` with two mends of transformers' Trainer, both at private seams (hence `require`):

    - resumed from a checkpoint already at `max_steps` (a run killed after its last save, while
      finishing), it trains no further: transformers 5.24 skips the batches done, then takes one more
      step before it checks the limit (found by benchmarks/bench_chaos.py: DPO ended at step 3 of 2);
    - length-grouped sampling forms its mega-batches from the global batch, not the per-rank one, so N
      processes see the same examples at each step as one process with the same global batch
      (found by benchmarks/bench_ddp.py: with 24 examples the loss curves parted at step 1)."""
    from transformers.trainer_pt_utils import LengthGroupedSampler


    require("transformers", "bezoar's trainer mends (Trainer._run_epoch, Trainer._get_train_sampler)")

    class Mended(trainer_class):
        def _run_epoch(self, *args, **kwargs):
            if 0 < self.state.max_steps <= self.state.global_step:
                self.control.should_training_stop = True
                return None
            return super()._run_epoch(*args, **kwargs)

        def _get_train_sampler(self, *args, **kwargs):
            sampler = super()._get_train_sampler(*args, **kwargs)
            if isinstance(sampler, LengthGroupedSampler):
                sampler.batch_size *= self.args.world_size
            return sampler

    Mended.__name__ = Mended.__qualname__ = trainer_class.__name__
    return Mended


def _train_info(job: TrainingJob, fingerprint: str) -> dict:

    return {"fingerprint": fingerprint, "stage": job.stage, "kind": job.kind, "base": job.base,
            "base_dir": str(job.weights.base_dir),
            "continued_adapter": str(job.weights.adapter_dir) if job.weights.adapter_dir else None,
            "template": job.settings.template, "template_sha256": template_sha256(job.tokenizer),
            "eos_token": job.tokenizer.eos_token, "plan": job.plan.describe(), "sources": job.sources,
            "settings": job.settings.model_dump(mode="json"), "data": job.prepared.summary()}


def _finish(job: TrainingJob, trainer, info: dict, result, seconds: float, resumed_from: Path | None) -> dict:
    out = job.out_dir
    extra = job.after_training(trainer, job) if job.after_training else {}
    model = trainer.model
    if "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter("ref")  # the frozen DPO reference copy is not part of the result
    trainer.save_model(str(out))
    summary = {"stage": job.stage, "output": str(out), "fingerprint": info["fingerprint"],
               "train_runtime_s": round(seconds, 1), "global_step": trainer.state.global_step,
               "train_loss": result.training_loss, "initial_eval": info.get("initial_eval"),
               **best_metrics(trainer.state.log_history), "data": job.prepared.summary(), "plan": info["plan"],
               "template_sha256": info["template_sha256"]}
    if summary.get("initial_eval") and "best_eval_loss" in summary:
        summary["eval_loss_change"] = summary["best_eval_loss"] - summary["initial_eval"]["eval_loss"]
    summary.update(extra)
    if resumed_from:  # killed and picked up from this checkpoint
        summary["resumed_from"] = resumed_from.name
    if trainer.is_world_process_zero():
        write_json(out / TRAIN_INFO, {**info, "finished": True})
        for checkpoint in out.glob("checkpoint-*"):
            shutil.rmtree(checkpoint, ignore_errors=True)
        record(out / SUMMARY, info["fingerprint"], summary)  # last: marks the run done
    return summary


def _read(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def _plain(metrics: dict) -> dict:
    return {k: float(v) if isinstance(v, (int, float)) else v for k, v in metrics.items()}
