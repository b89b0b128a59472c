"""Supervised fine-tuning with TRL's SFTTrainer and a peft LoRA adapter: what the `sft` step (sequential
over the generated sets), the `sft_hh` step (HH-RLHF chosen replies) and `bezoar sft` train with.

Each training run writes into its output directory: the adapter (best validation checkpoint) and
tokenizer, `checkpoint-N/` while it runs (removed at the end), `metrics.jsonl`, `tensorboard/`,
`bezoar-train.json` (what it was trained with) and, last, `summary.json`, which marks it done. A
run killed at any point and started again resumes from its newest complete checkpoint: weights,
optimizer, scheduler, RNG and position in the (seeded) data order.
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from bezoar.errors import DataError
from bezoar.train.config import TrainSettings
from bezoar.train.encoding import load_tokenizer
from bezoar.train.examples import Prepared, PromptCompletion, prepare_sft, read_conversations
from bezoar.train.lm_head import install_compact_head
from bezoar.train.run import TrainingJob, execute
from bezoar.train.template_check import SAMPLE

log = logging.getLogger(__name__)


def sft_trainer_class():
    """TRL's SFTTrainer with bezoar's compact LM head (log-probs only on loss-carrying tokens)."""
    from peft import PeftModel
    from trl import SFTTrainer


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

    return importlib.util.find_spec("flash_attn") is not None


def train_sft(base: str, data: list[Path] | Prepared, out_dir: Path, settings: TrainSettings,
              loss: str = "assistant", stage: str = "sft", sample: PromptCompletion | None = None,
              callbacks: list | None = None) -> dict:
    """Train (or resume, or skip when already done) one SFT run; returns its summary.

    `data` is JSONL files of chat records, or examples already prepared (then give `sample`, one
    of them in messages form, for the template check). `callbacks`: extra TrainerCallbacks.
    """
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
              out_dir=Path(out_dir), settings=settings, loss=loss, sources=sources, sample=sample or SAMPLE,
              callbacks=list(callbacks or []))
    return execute(job, sft_trainer_class(), sft_arguments)
