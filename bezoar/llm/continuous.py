"""Continuous (iteration-level) batching for the local backend.

transformers' `generate` runs a static batch until its longest row is done, so rows that finish
early leave their slots idle, and a server cannot add a request to a running batch. Here a finished
row leaves the batch at once and a waiting one takes its slot: its prompt is prefilled and its KV
cache is left-padded into the running cache. (transformers' own continuous batching,
`generate_batch`, measured 96 tok/s here against 183 for static batches on CPU, hence this.)

Rows are independent: padding is masked out, positions are per row, and sampling draws from a
per-row seeded stream, so a row's text does not depend on what shares its batch (in fp32).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from bezoar.llm.cores import SHARE
from bezoar.llm.protocol import Reply, Sampling
from bezoar.private_apis import require


PREFILL_ROWS = 16
"""Rows prefilled together: enough for large matrix products, few enough that their lengths stay close."""


@dataclass
class DecodeJob:
    """One (conversation, sample) to decode. `key` is the caller's handle."""

    key: Any
    prompt_ids: list[int]
    sampling: Sampling
    seed: int
    generated: list[int] = field(default_factory=list)
    stopped: bool = False
    top_logprobs: dict[str, float] | None = None
    """The first token's likeliest alternatives, when `sampling.top_logprobs` asks for them."""
    cancelled: bool = False
    """Set from another thread (a server whose client hung up): the row leaves at its next token."""


class JobSource(Protocol):
    def take(self, most: int, wait: bool) -> list[DecodeJob] | None:
        """Up to `most` new jobs; may block when `wait`; None once no job will ever come again."""
        ...


class ListSource:
    """A fixed list of jobs (the backend's `generate`)."""

    def __init__(self, jobs: list[DecodeJob]):
        self.jobs = list(jobs)

    def take(self, most: int, wait: bool) -> list[DecodeJob] | None:
        if not self.jobs:
            return None
        taken, self.jobs = self.jobs[:most], self.jobs[most:]
        return taken


class Decoder:
    """Owns the running batch: admits jobs, steps all rows once per token, retires finished rows."""

    def __init__(self, model, tokenizer, device: str, max_batch: int):
        import torch


        require("transformers", "the continuous-batching decoder (the Cache and DynamicLayer classes, the cache= keyword)")
        self.model, self.tokenizer, self.device, self.max_batch = model, tokenizer, device, max_batch
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos
        # Prefilling one or two rows at a time is slow; wait for a quarter of the slots to free up.
        self.admit_at = max(1, max_batch // 4)
        self.active = 0
        self.computing = False
        # On the CPU a half-precision model attends in fp32 at its decode steps (bezoar.llm.attention): keep
        # the KV cache in fp32 there rather than cast all of it at every step.
        self.kv_dtype = torch.float32 if device == "cpu" else None

    def run(self, source: JobSource, on_done: Callable[[DecodeJob, Reply], None]) -> None:
        try:
            self._run(source, on_done)
        finally:
            self._computing(False)

    def _run(self, source: JobSource, on_done: Callable[[DecodeJob, Reply], None]) -> None:
        import torch

        rows: list[DecodeJob] = []
        state: dict = {"cache": None, "mask": None, "logits": None}
        closed = False
        with torch.inference_mode():
            while True:
                free = self.max_batch - len(rows)
                if not closed and (free >= self.admit_at or not rows):
                    if not rows:
                        self._computing(False)  # waiting for work (a server between requests)
                    new = source.take(free, wait=not rows)
                    closed = new is None
                    if new:
                        self._computing(True)
                        self._admit(rows, new, state)
                self.active = len(rows)
                if not rows:
                    if closed:
                        return
                    continue
                SHARE.rebalance()
                tokens = self._choose(rows, state["logits"])
                finished = [i for i, (job, token) in enumerate(zip(rows, tokens)) if self._append(job, token)]
                for i in finished:
                    on_done(rows[i], self._reply(rows[i]))
                keep = [i for i in range(len(rows)) if i not in set(finished)]
                rows = [rows[i] for i in keep]
                if rows:
                    self._step(state, keep, [tokens[i] for i in keep])
                else:
                    state.update(cache=None, mask=None, logits=None)  # the next admission starts afresh

    def _computing(self, on: bool) -> None:
        """Tell the other bezoar processes (bezoar.llm.cores) when this decoder starts and stops computing:
        an idle server leaves them its cores."""
        if on != self.computing:
            self.computing = on
            SHARE.busy(on)

    def _admit(self, rows: list[DecodeJob], new: list[DecodeJob], state: dict) -> None:
        """Prefill the new jobs, shortest prompts first, in chunks of PREFILL_ROWS: one left-padded batch pads
        every prompt to the longest (bench_generation's 64 prompts, 34 to 77 tokens: 4,928 positions for 2,818
        real ones; in chunks, 3,216), and a prefill's cost grows with its padded positions."""
        ordered = sorted(new, key=lambda job: len(job.prompt_ids))
        for start in range(0, len(ordered), PREFILL_ROWS):
            self._prefill(rows, ordered[start:start + PREFILL_ROWS], state)

    def _prefill(self, rows: list[DecodeJob], new: list[DecodeJob], state: dict) -> None:
        import torch

        from bezoar.llm.kv_cache import merge, new_cache

        longest = max(len(j.prompt_ids) for j in new)
        ids = torch.full((len(new), longest), self.pad, dtype=torch.long)
        mask = torch.zeros((len(new), longest), dtype=torch.long)
        for r, job in enumerate(new):  # left padding
            ids[r, longest - len(job.prompt_ids):] = torch.tensor(job.prompt_ids)
            mask[r, longest - len(job.prompt_ids):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = new_cache(self.model.config.num_hidden_layers, self.kv_dtype)
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                         position_ids=positions.to(self.device), cache=cache, use_cache=True, logits_to_keep=1)
        logits = out.logits[:, -1, :].float()
        if state["cache"] is None:
            state.update(cache=cache, mask=mask.to(self.device), logits=logits)
        else:
            state["cache"], state["mask"] = merge(state["cache"], state["mask"], cache, mask.to(self.device))
            state["logits"] = torch.cat([state["logits"], logits])
        rows.extend(new)

    def _step(self, state: dict, keep: list[int], tokens: list[int]) -> None:
        import torch

        from bezoar.llm.kv_cache import select, trim

        cache, mask = state["cache"], state["mask"]
        if len(keep) < mask.shape[0]:
            index = torch.tensor(keep, device=mask.device)
            cache = select(cache, index)
            mask = mask.index_select(0, index)
            cache, mask = trim(cache, mask)
        positions = mask.sum(-1, keepdim=True)
        mask = torch.cat([mask, torch.ones((mask.shape[0], 1), dtype=mask.dtype, device=mask.device)], dim=1)
        ids = torch.tensor(tokens, device=mask.device).unsqueeze(1)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                         use_cache=True, logits_to_keep=1)
        state.update(cache=cache, mask=mask, logits=out.logits[:, -1, :].float())

    def _choose(self, rows: list[DecodeJob], logits) -> list[int]:
        chosen = logits.argmax(dim=-1)
        for r, job in enumerate(rows):
            if job.sampling.top_logprobs and not job.generated:
                job.top_logprobs = self._top_logprobs(logits[r], job.sampling.top_logprobs)
            if not job.sampling.greedy:
                chosen[r] = _sample(logits[r], job.sampling, job.seed, len(job.generated))
        return chosen.tolist()

    def _top_logprobs(self, logits, k: int) -> dict[str, float]:
        import torch

        values, ids = torch.log_softmax(logits, dim=-1).topk(k)
        found: dict[str, float] = {}
        for value, token in zip(values.tolist(), ids.tolist()):
            found.setdefault(self.tokenizer.decode([token]), value)  # two ids may decode alike: keep the likelier
        return found

    def _append(self, job: DecodeJob, token: int) -> bool:
        """Add a token; True when the job is finished (EOS, a stop string, or the length cap)."""
        job.generated.append(token)
        if token == self.eos or job.cancelled:
            return True
        if job.sampling.stop:
            tail = self.tokenizer.decode(job.generated[-24:], skip_special_tokens=True)
            if any(s and s in tail for s in job.sampling.stop):
                job.stopped = True
                return True
        return len(job.generated) >= job.sampling.max_new_tokens

    def _reply(self, job: DecodeJob) -> Reply:
        text = self.tokenizer.decode(job.generated, skip_special_tokens=True)
        cut = min((text.find(s) for s in job.sampling.stop if s and s in text), default=-1)
        if cut >= 0:
            text = text[:cut]  # the OpenAI convention: the stop string is not returned
        done = job.generated[-1] == self.eos or job.stopped or cut >= 0
        return Reply(text=text.strip(), finish_reason="stop" if done else "length",
                     prompt_tokens=len(job.prompt_ids), completion_tokens=len(job.generated),
                     top_logprobs=job.top_logprobs)


def _sample(logits, sampling: Sampling, seed: int, step: int) -> int:
    """Temperature + top-p sampling by the Gumbel-max trick, from a stream seeded by (row, step).

    The noise is drawn by a generator on the logits' own device (a CPU generator's noise subtracted
    from CUDA logits is a device mismatch); a given (seed, step) draws the same stream on one kind
    of device, so resumed runs repeat their samples there."""
    import torch

    scores = logits / sampling.temperature
    if sampling.top_p < 1.0:
        scores = _nucleus(scores, sampling.top_p)
    generator = torch.Generator(device=scores.device).manual_seed((seed + step * 1_000_003) % (1 << 63))
    noise = torch.rand(scores.shape[0], generator=generator, device=scores.device).clamp_min(1e-20)
    return int((scores - torch.log(-torch.log(noise))).argmax())


def _nucleus(scores, top_p: float):
    """Scores outside the top-p nucleus set to -inf (the token that crosses top_p is kept).

    Sorting all 49k scores took ~50-90 ms per row and step on 2 busy cores, more than the forward
    pass; the nucleus nearly always lies in the top few hundred tokens, so look there first (topk,
    ~0.5 ms) and sort everything only when it does not. Same tokens kept as a full sort.
    """
    import torch

    probs, size = torch.softmax(scores, dim=-1), scores.shape[0]
    for k in (min(512, size), size):
        top, order = torch.topk(probs, k)
        if k == size or float(top.sum()) > top_p:
            break
    keep = order[~(top.cumsum(-1) - top > top_p)]
    return torch.full_like(scores, float("-inf")).index_copy(0, keep, scores.index_select(0, keep))
