"""Supervised fine-tuning with TRL's SFTTrainer and a peft LoRA adapter: the `sft` stage (sequential
over the generated sets), the `sft_hh` stage (HH-RLHF chosen replies) and `bezoar sft`.

Each training run writes into its output directory: the adapter (best validation checkpoint) and
tokenizer, `checkpoint-N/` while it runs (removed at the end), `metrics.jsonl`, `tensorboard/`,
`bezoar-train.json` (what it was trained with) and, last, `summary.json`, which marks it done. A
run killed at any point and started again resumes from its newest complete checkpoint: weights,
optimizer, scheduler, RNG and position in the (seeded) data order.
"""
from __future__ import annotations

import logging
from pathlib import Path

from bezoar.config import Recipe
from bezoar.errors import DataError
from bezoar.stage_outputs import continued_from, handed_on, required_output
from bezoar.train.config import SFTStageConfig, TrainSettings
from bezoar.train.examples import PromptCompletion, Prepared, pair_conversations, prepare_sft, read_conversations
from bezoar.train.hh_rlhf import handed_on_slices, hh_slices
from bezoar.train.launch import launch_stage, wants_launch
from bezoar.train.run import TrainingJob, execute
from bezoar.train.template_check import SAMPLE

log = logging.getLogger(__name__)


def sft_trainer_class():
    """TRL's SFTTrainer with bezoar's compact LM head (log-probs only on loss-carrying tokens)."""
    from peft import PeftModel
    from trl import SFTTrainer

    from bezoar.train.lm_head import install_compact_head

    class BezoarSFTTrainer(SFTTrainer):
        def __init__(self, *args, compact_head: bool = True, **kwargs):
            super().__init__(*args, **kwargs)
            if compact_head:
                base = self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model
                install_compact_head(base, outputs=("log_probs", "entropy", "is_top1"))

    return BezoarSFTTrainer


def sft_arguments(job: TrainingJob) -> dict:
    """SFTConfig keywords beyond the shared ones: bezoar tokenized and truncated already."""
    # Padding-free flattens a batch into one row; without a varlen kernel (CPU, no flash-attn) its
    # attention then spans the whole batch, so there we pad length-grouped batches instead.
    padding_free = job.plan.device == "cuda" and _flash_attention()
    # max_length None: encode_sft truncated already, and TRL's own pass would only cost time.
    return {"max_length": None, "padding_free": padding_free,
            "completion_only_loss": None, "assistant_only_loss": False, "packing": False}


def _flash_attention() -> bool:
    import importlib.util

    return importlib.util.find_spec("flash_attn") is not None


def train_sft(base: str, data: list[Path] | Prepared, out_dir: Path, settings: TrainSettings,
              loss: str = "assistant", stage: str = "sft", sample: PromptCompletion | None = None) -> dict:
    """Train (or resume, or skip when already done) one SFT run; returns its summary.

    `data` is JSONL files of chat records, or examples already prepared (then give `sample`, one
    of them in messages form, for the template check).
    """
    from bezoar.train.encoding import load_tokenizer
    from bezoar.train.student import resolve_base

    weights = resolve_base(base)
    tokenizer = load_tokenizer(weights.adapter_dir or weights.base_dir, settings.template)
    if isinstance(data, Prepared):
        prepared, sources = data, []
    else:
        conversations, bad = [], []
        for path in data:
            found, errors = read_conversations(path)
            conversations += found
            bad += errors
        if bad:
            log.warning("%d malformed rows skipped (first: %s)", len(bad), bad[0])
        prepared = prepare_sft(tokenizer, conversations, settings.max_length, loss, settings.validation_fraction,
                               settings.seed, settings.max_validation_examples)
        prepared.bad = bad + prepared.bad
        sources = [str(p) for p in data]
        sample = conversations[0] if conversations else None
    if not prepared.train:
        raise DataError(f"{', '.join(sources) or stage}: no usable training examples "
                        f"({len(prepared.bad)} malformed; first: {prepared.bad[:1]})")
    job = TrainingJob(stage=stage, kind="sft", base=base, weights=weights, tokenizer=tokenizer, prepared=prepared,
              out_dir=Path(out_dir), settings=settings, loss=loss, sources=sources, sample=sample or SAMPLE)
    return execute(job, sft_trainer_class(), sft_arguments)


def run_sft(recipe: Recipe, run_dir: Path, models: dict | None = None) -> dict:
    """The `sft` stage: each data set in order, each continuing the adapter of the one before."""
    if wants_launch(recipe.sft.launch):  # this process only starts the ranks and waits
        return launch_stage("bezoar.train.sft:run_sft", recipe, Path(run_dir), recipe.sft.launch)
    config: SFTStageConfig = recipe.sft
    current = recipe.models.student.spec
    steps, trained = [], {}
    for index, dataset in enumerate(config.datasets, 1):
        name = f"sft-{index}-{dataset.name}"
        path = dataset.path or required_output(run_dir, "filter", dataset.name)  # the filter's kept records
        if path.exists() and not any(line.strip() for line in path.open(encoding="utf-8")):
            log.warning("%s is empty (the filter kept nothing): skipping SFT on %s", path, dataset.name)
            steps.append({"stage": name, "skipped": f"{path} is empty"})
            continue
        out = Path(run_dir) / "models" / name
        steps.append(train_sft(current, [path], out, config, config.loss, stage=name))
        current, trained[name] = str(out), out
    return {"steps": steps, "output": current, "checkpoints": handed_on(run_dir, trained)}


def run_sft_hh(recipe: Recipe, run_dir: Path, models: dict | None = None) -> dict:
    """The `sft_hh` stage: SFT on the chosen replies of the first `sft_n` HH-RLHF pairs. It also hands on
    the recipe's HH-RLHF slices (DPO's pairs, the held-out pairs evaluation scores), trained on or not."""
    if recipe.sft_hh.data.sft_n == 0:  # e.g. recipes/verifiable.yaml: DPO starts from the previous output
        data = recipe.sft_hh.data
        slices = hh_slices(data, Path(run_dir)) if data.path is not None else {}
        return {"skipped": "sft_hh.data.sft_n is 0", "outputs": handed_on_slices(slices, Path(run_dir))}
    if wants_launch(recipe.sft_hh.launch):  # this process only starts the ranks and waits
        return launch_stage("bezoar.train.sft:run_sft_hh", recipe, Path(run_dir), recipe.sft_hh.launch)
    from bezoar.train.encoding import load_tokenizer
    from bezoar.train.student import resolve_base

    config, run_dir = recipe.sft_hh, Path(run_dir)
    slices = hh_slices(config.data, run_dir)
    _, base = continued_from(run_dir, "sft_hh", recipe.models.student.spec)
    weights = resolve_base(base)
    tokenizer = load_tokenizer(weights.adapter_dir or weights.base_dir, config.template)
    conversations = pair_conversations(slices["sft"])
    prepared = prepare_sft(tokenizer, conversations, config.max_length, config.loss,
                           config.validation_fraction, config.seed, config.max_validation_examples)
    out = run_dir / "models" / "sft-hh"
    summary = train_sft(base, prepared, out, config, config.loss, stage="sft-hh", sample=conversations[0])
    return {**summary, "hh_pairs": len(slices["sft"]), "outputs": handed_on_slices(slices, run_dir),
            "checkpoints": handed_on(run_dir, {"sft-hh": out})}
