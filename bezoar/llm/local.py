"""The `local` backend: a transformers model on this machine, continuously batched, chat-templated.

Where the weights come from (embedded GGUF, a directory, a GGUF file, an adapter, a hub id) is
`bezoar.llm.weights`; which dtype and how many threads is `bezoar.llm.device`. This module only
generates.
"""
from __future__ import annotations

import ctypes
import gc
import logging
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

from bezoar.hashing import canonical_hash
from bezoar.llm.attention import use_fp32_attention
from bezoar.llm.continuous import DecodeJob, Decoder, ListSource
from bezoar.llm.device import DevicePlan, decoding_mode, deterministic, plan_device
from bezoar.llm.protocol import Conversation, OnReply, Reply, Sampling
from bezoar.llm.weights import content_identity, resolve_model_dir

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 32  # measured: 140 tok/s at 32, 233 at 64, flat beyond (MACHINE-NOTES §2b)


@dataclass
class LoadedModel:
    """A model and tokenizer loaded once per process and shared by every role that names it."""

    model: object
    tokenizer: object
    plan: DevicePlan
    path: Path
    identity: str
    lock: threading.Lock


# Weak: a model lives as long as a backend or caller holds it, so roles that name the same weights
# share one copy, and weights nobody uses any more (a checkpoint already evaluated) are not pinned here.
_LOADED: weakref.WeakValueDictionary[str, LoadedModel] = weakref.WeakValueDictionary()
_LOAD_LOCK = threading.Lock()


def load(source: str | None, dtype: str = "auto", exact: bool | None = None) -> LoadedModel:
    """Load (or reuse, while someone still holds it) the model named by `source` (None: the embedded SmolLM2).

    `exact` asks for deterministic decoding (fp32); None takes this process's mode (`deterministic()`)."""
    path = resolve_model_dir(source)
    plan = plan_device(dtype, exact=deterministic() if exact is None else exact)
    key = f"{path}:{plan.device}:{plan.dtype_name}"
    with _LOAD_LOCK:
        loaded = _LOADED.get(key)
        if loaded is None:
            loaded = _LOADED[key] = _load_uncached(path, plan)
        return loaded


def free_memory() -> None:
    """Collect the models nobody holds any more and hand their memory back to the OS, so a process
    that evaluates N checkpoints one after another holds one of them at a time, not N."""

    gc.collect()  # a model caught in a reference cycle is freed only by the collector
    try:  # glibc keeps freed arenas mapped; without this RSS stays at its high-water mark
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _load_uncached(path: Path, plan: DevicePlan) -> LoadedModel:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bezoar.llm.prepack import pack_linear_weights

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if (path / "adapter_config.json").exists():
        model = _load_adapter(path, plan)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=plan.dtype)
    model.to(plan.device).eval()
    torch.set_num_threads(plan.threads)
    packed = pack_linear_weights(model) if plan.device == "cpu" else 0
    if plan.device == "cpu" and plan.dtype != torch.float32:
        use_fp32_attention(model)  # the CPU's bf16 attention kernel is slower than fp32 (bezoar.llm.attention)
    if packed:
        _unmap_weights(model)
    log.info("local model %s on %s%s%s", path.name, plan.describe(),
             f", {packed} linear layers pre-packed for oneDNN" if packed else "", _mode_note(plan))
    return LoadedModel(model, tokenizer, plan, path, content_identity(path), threading.Lock())


_MODE_NOTED: set[str] = set()


def _mode_note(plan: DevicePlan) -> str:
    """What the decoding mode means, said once per process and dtype (an eval loads several checkpoints)."""
    if plan.dtype_name in _MODE_NOTED:
        return ""
    _MODE_NOTED.add(plan.dtype_name)
    if plan.dtype_name == "float32":
        return "; batched output equals one-by-one" + (" (deterministic mode)" if deterministic() else "")
    return ("; fast mode: a row's text may depend on its batch, so a resumed run keeps every finished call but "
            "may decode those in flight differently (--deterministic or run.deterministic: true keeps fp32)")


def _unmap_weights(model) -> None:
    """Copy the weights that packing left in place (embeddings, norms) into memory of their own.

    transformers memory-maps the safetensors file and keeps fp32 weights as views of it. Packing reads
    every page of the file, and while the embeddings still viewed it the whole file stayed mapped and
    resident. Measured for SmolLM2-135M: packed, RSS 1,415 MB (624 MB of it the mapped file); after
    this copy, 1,010 MB (the tied embeddings, 113 MB, are the only weight copied)."""
    import torch

    with torch.no_grad():
        for parameter in model.parameters():
            parameter.data = parameter.data.clone()


def _load_adapter(path: Path, plan: DevicePlan):
    """A LoRA adapter directory: load its base, apply the adapter, merge for fast generation."""
    from peft import AutoPeftModelForCausalLM

    model = AutoPeftModelForCausalLM.from_pretrained(path, dtype=plan.dtype)
    return model.merge_and_unload()


class LocalBackend:
    """Batched generation with transformers. Thread-safe: one generate at a time per model."""

    def __init__(self, source: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE, dtype: str = "auto",
                 exact: bool | None = None):
        self.loaded = load(source, dtype, exact)
        self.batch_size = batch_size
        self.identity = f"local:{self.loaded.identity}:{self.loaded.plan.dtype_name}"

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    def render(self, conversation: Conversation) -> str:
        """The prompt exactly as the model sees it: its chat template plus the assistant header, or, when
        the conversation ends with an assistant message, that message left open (a prefill the reply continues)."""
        if conversation and conversation[-1]["role"] == "assistant":
            return self.tokenizer.apply_chat_template(conversation, tokenize=False, continue_final_message=True)
        return self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)

    def generate(self, conversations: list[Conversation], sampling: Sampling,
                 on_reply: OnReply | None = None) -> list[list[Reply]]:
        n = max(1, sampling.n)
        jobs = [DecodeJob((i, s), self.encode(conversation), sampling, row_seed(sampling.seed, conversation, s))
                for i, conversation in enumerate(conversations) for s in range(n)]
        # Longest prompts first: they share a prefill batch with similar lengths (less padding).
        jobs.sort(key=lambda job: -len(job.prompt_ids))
        results: list[list[Reply | None]] = [[None] * n for _ in conversations]
        remaining = [n] * len(conversations)

        def done(job: DecodeJob, reply: Reply) -> None:
            index, sample = job.key
            results[index][sample] = reply
            remaining[index] -= 1
            if remaining[index] == 0 and on_reply:
                on_reply(index, results[index])  # type: ignore[arg-type]

        with self.loaded.lock:
            self.decoder().run(ListSource(jobs), done)
        return results  # type: ignore[return-value]

    def encode(self, conversation: Conversation) -> list[int]:
        return self.tokenizer(self.render(conversation), add_special_tokens=False).input_ids

    def decoder(self) -> Decoder:
        return Decoder(self.loaded.model, self.tokenizer, self.loaded.plan.device, self.batch_size)


def decoding_of(backend) -> dict[str, str] | None:
    """The decoding mode and dtype of a backend's replies (a next-token scorer wraps a local backend);
    None for a remote model, whose server decides how it decodes."""

    local = backend if isinstance(backend, LocalBackend) else getattr(backend, "local", None)
    return decoding_mode(local.loaded.plan.dtype_name) if isinstance(local, LocalBackend) else None


def row_seed(seed: int, conversation: Conversation, sample_index: int) -> int:
    """A seed that depends on the row alone, never on its batch neighbours."""
    return int(canonical_hash([seed, conversation, sample_index])[:15], 16)
