"""The `local` backend: a transformers model on this machine, batched, left-padded, chat-templated.

Where the weights come from (embedded GGUF, a directory, a GGUF file, an adapter, a hub id) is
`bezoar.llm.weights`; which dtype and how many threads is `bezoar.llm.device`. This module only
generates.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from bezoar.llm.cache import canonical_hash
from bezoar.llm.device import DevicePlan, plan_device
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


_LOADED: dict[str, LoadedModel] = {}
_LOAD_LOCK = threading.Lock()


def load(source: str | None, dtype: str = "auto") -> LoadedModel:
    """Load (or reuse) the model named by `source` (None: the embedded SmolLM2)."""
    path = resolve_model_dir(source)
    key = f"{path}:{dtype}"
    with _LOAD_LOCK:
        if key not in _LOADED:
            _LOADED[key] = _load_uncached(path, dtype)
        return _LOADED[key]


def _load_uncached(path: Path, dtype: str) -> LoadedModel:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    plan = plan_device(dtype, exact=True)
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
    log.info("local model %s on %s", path.name, plan.describe())
    return LoadedModel(model, tokenizer, plan, path, content_identity(path), threading.Lock())


def _load_adapter(path: Path, plan: DevicePlan):
    """A LoRA adapter directory: load its base, apply the adapter, merge for fast generation."""
    from peft import AutoPeftModelForCausalLM

    model = AutoPeftModelForCausalLM.from_pretrained(path, dtype=plan.dtype)
    return model.merge_and_unload()


class LocalBackend:
    """Batched generation with transformers. Thread-safe: one generate at a time per model."""

    def __init__(self, source: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE, dtype: str = "auto"):
        self.loaded = load(source, dtype)
        self.batch_size = batch_size
        self.identity = f"local:{self.loaded.identity}:{self.loaded.plan.dtype_name}"

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    def render(self, conversation: Conversation) -> str:
        """The prompt exactly as the model sees it: its chat template plus the assistant header."""
        return self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)

    def generate(self, conversations: list[Conversation], sampling: Sampling,
                 on_reply: OnReply | None = None) -> list[list[Reply]]:
        prompts = [self.render(c) for c in conversations]
        n = max(1, sampling.n)
        jobs = [(i, s) for i in range(len(prompts)) for s in range(n)]
        seeds = {job: row_seed(sampling.seed, conversations[job[0]], job[1]) for job in jobs}
        # Longest first, so similar lengths share a batch (less padding) and memory peaks early.
        lengths = [len(self.tokenizer(p, add_special_tokens=False).input_ids) for p in prompts]
        jobs.sort(key=lambda job: -lengths[job[0]])
        results: list[list[Reply | None]] = [[None] * n for _ in prompts]
        remaining = [n] * len(prompts)
        for start in range(0, len(jobs), self.batch_size):
            batch = jobs[start:start + self.batch_size]
            replies = self._generate_batch([prompts[i] for i, _ in batch], sampling, [seeds[j] for j in batch])
            for (index, sample), reply in zip(batch, replies):
                results[index][sample] = reply
                remaining[index] -= 1
                if remaining[index] == 0 and on_reply:
                    on_reply(index, results[index])  # type: ignore[arg-type]
        return results  # type: ignore[return-value]

    def _generate_batch(self, prompts: list[str], sampling: Sampling, seeds: list[int]) -> list[Reply]:
        import torch
        from transformers import LogitsProcessorList

        tok, model = self.tokenizer, self.loaded.model
        encoded = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.loaded.plan.device)
        # Always argmax: sampling is done by our Gumbel processor, so it is per-row reproducible.
        options = dict(max_new_tokens=sampling.max_new_tokens, pad_token_id=tok.pad_token_id,
                       eos_token_id=tok.eos_token_id, do_sample=False, temperature=None, top_p=None, top_k=None)
        if not sampling.greedy:
            sampler = RowSeededSampler(sampling.temperature, sampling.top_p, seeds, encoded.input_ids.shape[1])
            options["logits_processor"] = LogitsProcessorList([sampler])
        if sampling.stop:
            options.update(stop_strings=list(sampling.stop), tokenizer=tok)
        with self.loaded.lock, torch.inference_mode():
            output = model.generate(**encoded, **options)
        new_tokens = output[:, encoded.input_ids.shape[1]:]
        prompt_counts = encoded.attention_mask.sum(dim=1).tolist()
        return [self._decode(row, count, sampling) for row, count in zip(new_tokens, prompt_counts)]

    def _decode(self, row, prompt_tokens: int, sampling: Sampling) -> Reply:
        ids = row.tolist()
        eos = self.tokenizer.eos_token_id
        finished = eos in ids
        # Rows that finish early are padded after their EOS: cut there.
        ids = ids[:ids.index(eos) + 1] if finished else ids
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        text, stopped = _cut_at_stop(text, sampling.stop)
        reason = "stop" if finished or stopped else ("length" if len(ids) >= sampling.max_new_tokens else "stop")
        return Reply(text=text.strip(), finish_reason=reason, prompt_tokens=int(prompt_tokens),
                     completion_tokens=len(ids))


def row_seed(seed: int, conversation: Conversation, sample_index: int) -> int:
    """A seed that depends on the row alone, never on its batch neighbours."""
    return int(canonical_hash([seed, conversation, sample_index])[:15], 16)


class RowSeededSampler:
    """Temperature + top-p sampling via the Gumbel-max trick with one RNG stream per row.

    transformers' own sampling draws from one global RNG for the whole batch, so a row's text would
    depend on its neighbours and on batch size, and a resumed run would differ from an uninterrupted
    one. Adding Gumbel noise seeded by (row seed, step) and taking the argmax samples from exactly the
    same distribution, independently per row.
    """

    def __init__(self, temperature: float, top_p: float, seeds: list[int], prompt_length: int):
        self.temperature, self.top_p, self.seeds, self.prompt_length = temperature, top_p, seeds, prompt_length

    def __call__(self, input_ids, scores):
        import torch

        scores = scores.float() / self.temperature
        if self.top_p < 1.0:
            scores = _top_p_filter(scores, self.top_p)
        step = input_ids.shape[1] - self.prompt_length
        noise = torch.empty_like(scores)
        for row, seed in enumerate(self.seeds):
            generator = torch.Generator().manual_seed((seed + step * 1_000_003) % (1 << 63))
            noise[row] = torch.rand(scores.shape[1], generator=generator)
        gumbel = -torch.log(-torch.log(noise.clamp_min(1e-20)))
        return scores + gumbel


def _top_p_filter(scores, top_p: float):
    import torch

    sorted_scores, order = torch.sort(scores, descending=True, dim=-1)
    cumulative = torch.softmax(sorted_scores, dim=-1).cumsum(dim=-1)
    drop = cumulative - torch.softmax(sorted_scores, dim=-1) > top_p  # keep the token that crosses top_p
    sorted_scores = sorted_scores.masked_fill(drop, float("-inf"))
    return torch.full_like(scores, float("-inf")).scatter(-1, order, sorted_scores)


def _cut_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """Cut at the first stop string (the OpenAI convention: the stop string is not returned)."""
    cut = min((text.find(s) for s in stops if s and s in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
