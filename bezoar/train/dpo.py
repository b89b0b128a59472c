"""DPO with TRL's DPOTrainer and a LoRA adapter: what the `dpo` step and `bezoar dpo` train with.

The reference model is the policy with its adapter switched off (a new adapter), or a frozen copy
of the adapter being continued, loaded as peft adapter "ref": never a second copy of the base.
Reference log-probabilities are computed once before training and cached in a JSON file keyed by
the reference (base and adapter by content, dtype, quantization) and the tokenized pairs, so a
re-run, a resume after a kill or a second experiment on the same pairs skips that pass.

Subclassing TRL's trainer changes three things, nothing in its loss or loop:
- data arrive tokenized by bezoar (`encode_pair`: early turns dropped to fit `max_length`);
- the collator adds a packed layout and the model wrapper runs each pair's prompt once
  (`lm_head.shared_prompt_layout`), with the LM head only on reply tokens;
- `_precompute_ref_logps` reads/writes the cache above (and keeps TRL's pass in memory: its Arrow
  file lands in a per-process temporary directory that the other ranks cannot see).
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from bezoar.errors import DataError
from bezoar.private_apis import require
from bezoar.records import PreferencePair, write_json
from bezoar.train.config import DPOStageConfig
from bezoar.train.encoding import load_tokenizer
from bezoar.train.examples import prepare_pairs, to_dataset
from bezoar.train.lm_head import SHARED_PROMPT_ATTENTION, install_compact_head, shared_prompt_layout
from bezoar.train.run import TrainingJob, execute

log = logging.getLogger(__name__)


class RefCache:
    """Reference log-probs on disk: `<directory>/<key>.json`, key = reference + tokenized pairs."""

    def __init__(self, directory: Path, reference: str):
        self.directory, self.reference = Path(directory), reference

    def key(self, dataset) -> str:
        digest = hashlib.sha256(self.reference.encode())
        for row in dataset.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"]):
            digest.update(json.dumps([row["prompt_ids"], row["chosen_ids"], row["rejected_ids"]]).encode())
        return digest.hexdigest()[:24]

    def load(self, key: str) -> dict | None:
        try:
            return json.loads((self.directory / f"{key}.json").read_text())
        except (OSError, ValueError):
            return None

    def save(self, key: str, chosen: list[float], rejected: list[float]) -> None:
        write_json(self.directory / f"{key}.json", {"reference": self.reference, "rows": len(chosen),
                                                    "ref_chosen_logps": chosen, "ref_rejected_logps": rejected})


def dpo_trainer_class():
    """TRL's DPOTrainer with bezoar's data path, shared-prompt forward and reference cache."""
    import torch


    require("trl", "bezoar's DPO trainer (_prepare_dataset, _precompute_ref_logps)")
    require("transformers", "bezoar's DPO trainer (config._attn_implementation)")
    from peft import PeftModel
    from trl import DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference


    class SharedPromptCollator(DataCollatorForPreference):
        mask_dtype: object = None

        def torch_call(self, examples):
            batch = super().torch_call(examples)
            batch.update(shared_prompt_layout(examples, self.pad_token_id, self.mask_dtype))
            return batch

    class BezoarDPOTrainer(DPOTrainer):
        def __init__(self, *args, ref_cache: RefCache | None = None, shared_prompt: bool = True, **kwargs):
            self.ref_cache, self._head_ready = ref_cache, False
            attention = kwargs["model"].config._attn_implementation
            if shared_prompt and attention not in SHARED_PROMPT_ATTENTION:
                log.info("shared-prompt forward off: %s attention takes no custom mask", attention)
            elif shared_prompt:
                collator = SharedPromptCollator(pad_token_id=kwargs["processing_class"].pad_token_id)
                collator.mask_dtype = torch.bool if attention == "sdpa" else kwargs["model"].dtype
                kwargs["data_collator"] = collator
            super().__init__(*args, **kwargs)
            self._install_head()

        def _install_head(self):
            if not self._head_ready:  # after TRL's own head, which __init__ adds before precomputing
                base = self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model
                install_compact_head(base, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
                self._head_ready = True

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if "prompt_ids" in dataset.column_names:
                return dataset  # tokenized by bezoar (encode_pair)
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            self._signature_columns = list(self._signature_columns) + ["length"]  # for group_by_length

        def _precompute_ref_logps(self, dataset, name, batch_size):
            self._install_head()
            if "ref_chosen_logps" in dataset.column_names:
                return dataset
            key = self.ref_cache.key(dataset) if self.ref_cache else None
            cached = self.ref_cache.load(key) if key else None
            if cached and cached.get("rows") == len(dataset):
                log.info("reference log-probs for %d %s pairs read from the cache (%s)", len(dataset), name, key)
                return (dataset.add_column("ref_chosen_logps", cached["ref_chosen_logps"])
                        .add_column("ref_rejected_logps", cached["ref_rejected_logps"]))
            # A DataLoader draws its base seed from the global RNG even unshuffled: without the fork, a
            # run that computes these draws one number more than a resumed run that reads them from the
            # cache, and the two train on their pairs in different orders (found by tests/test_chaos.py).
            with torch.random.fork_rng(devices=[]):
                chosen, rejected = self._reference_pass(dataset, batch_size)
            if key and self.accelerator.is_main_process:
                self.ref_cache.save(key, chosen, rejected)
            return dataset.add_column("ref_chosen_logps", chosen).add_column("ref_rejected_logps", rejected)

        def _reference_pass(self, dataset, batch_size) -> tuple[list[float], list[float]]:
            """TRL's reference pass, with the result kept in memory. TRL's own writes it to an Arrow
            file beside the dataset, which for an in-memory dataset is a per-process temporary
            directory: the other ranks look for it in theirs and fail (found with 2 processes)."""
            from torch.utils.data import DataLoader
            from trl.models import prepare_deepspeed

            loader = self.accelerator.prepare(DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                                         collate_fn=self.data_collator))
            model = self.ref_model or self.model
            if self.ref_model is None and self.is_deepspeed_enabled:  # as TRL: place/gather ZeRO's parameters
                self._precompute_engine = self._precompute_engine or prepare_deepspeed(self.model, self.accelerator)
                model = self._precompute_engine
            chosen, rejected = [], []
            for batch in loader:
                found = self.accelerator.gather_for_metrics(self.compute_ref_log_probs(model, batch))
                chosen += found[0].float().cpu().tolist()
                rejected += found[1].float().cpu().tolist()
            return chosen, rejected

    return BezoarDPOTrainer


def dpo_arguments(job: TrainingJob) -> dict:
    settings: DPOStageConfig = job.settings  # type: ignore[assignment]
    return {"beta": settings.beta, "max_length": None, "padding_free": False,
            "precompute_ref_log_probs": settings.precompute_ref_log_probs,
            "precompute_ref_batch_size": settings.per_device_train_batch_size * 2, "loss_type": ["sigmoid"]}


def _heldout_metrics(heldout: list[PreferencePair]):
    """After training: TRL's reward accuracy and margins on pairs never trained on."""
    def measure(trainer, job: TrainingJob) -> dict:
        if not heldout:
            return {}
        prepared = prepare_pairs(job.tokenizer, heldout, job.settings.max_length, 0.0, job.settings.seed)
        metrics = trainer.evaluate(eval_dataset=to_dataset(prepared.train), metric_key_prefix="heldout")
        # TRL's DPO metrics come back prefixed "eval_" whatever the prefix; the loss takes ours.
        found = {"heldout_loss": metrics.get("heldout_loss")}
        for name in ("rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected"):
            value = metrics.get(f"eval_{name}", metrics.get(f"heldout_{name}"))
            found[f"heldout_{name}"] = value
        return {"heldout_pairs": len(prepared.train), **{k: float(v) for k, v in found.items() if v is not None}}
    return measure


def train_dpo(base: str, pairs: list[PreferencePair], out_dir: Path, settings: DPOStageConfig,
              heldout: list[PreferencePair] | None = None, ref_cache_dir: Path | None = None,
              stage: str = "dpo", callbacks: list | None = None) -> dict:
    """Train (or resume, or skip when done) one DPO run on `pairs`; returns its summary. `callbacks`: extra
    TrainerCallbacks."""
    from bezoar.train.student import plan_training, resolve_base

    if not pairs:
        raise DataError(f"{stage}: no preference pairs to train on")
    weights = resolve_base(base)
    tokenizer = load_tokenizer(weights.adapter_dir or weights.base_dir, settings.template)
    prepared = prepare_pairs(tokenizer, pairs, settings.max_length, settings.validation_fraction, settings.seed,
                             settings.max_validation_examples)
    if not prepared.train:
        raise DataError(f"{stage}: no pair fits max_length={settings.max_length} ({prepared.bad[:1]})")
    plan = plan_training(settings, kind="dpo")
    reference = f"{weights.identity}:{plan.dtype_name}:{plan.quantization}"
    cache = RefCache(ref_cache_dir or Path(out_dir) / "ref-logps", reference) if settings.precompute_ref_log_probs else None
    sample = ([m.model_dump() for m in pairs[0].prompt], [m.model_dump() for m in pairs[0].chosen])
    job = TrainingJob(stage=stage, kind="dpo", base=base, weights=weights, tokenizer=tokenizer, prepared=prepared,
              out_dir=Path(out_dir), settings=settings, sample=sample, after_training=_heldout_metrics(heldout or []),
              trainer_kwargs={"ref_cache": cache, "shared_prompt": settings.shared_prompt},
              callbacks=list(callbacks or []))
    return execute(job, dpo_trainer_class(), dpo_arguments)
