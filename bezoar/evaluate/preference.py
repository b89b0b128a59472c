"""Preference accuracy: how often a model ranks the chosen reply above the rejected one.

Without a reference model the ranking is by the reply's log-likelihood under the model's chat
template (also reported per token, which removes the bias towards short replies). With a reference
it is DPO's implicit reward, β·(log π(y|x) − log π_ref(y|x)): TRL's `rewards/accuracies` on held-out
pairs (β > 0 does not change the ranking). Ties count as wrong, as in TRL. Intervals are Wilson 95%.

Scoring is a plain forward pass, so it is written here rather than borrowed from TRL's trainer,
which only computes it inside a training/eval loop over its own dataset pipeline.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from bezoar.errors import ConfigError, DataError
from bezoar.hh_rlhf import read_pairs
from bezoar.intervals import wilson
from bezoar.llm.cores import SHARE
from bezoar.llm.device import decoding_mode
from bezoar.llm.local import free_memory, load
from bezoar.records import PreferencePair, write_json

log = logging.getLogger(__name__)


@dataclass
class Scored:
    logprob: float
    tokens: int


def load_pairs(path: Path, heldout_n: int | None = None) -> list[PreferencePair]:
    """HH-RLHF transcripts or bezoar pair JSONL; the last `heldout_n` pairs (split_slices' held-out slice)."""

    pairs = read_pairs(path)
    return pairs[-heldout_n:] if heldout_n else pairs


def preference_accuracy(model: str | Path, pairs: Iterable[PreferencePair | dict], reference: str | Path | None = None,
                        batch_size: int = 8, max_length: int = 1024) -> dict:
    """Accuracy of `model` (a spec such as `local`/`local:PATH`, or a directory) on `pairs`.

    Returns the headline `accuracy` (DPO implicit reward when `reference` is given, else
    log-likelihood) with `ci95`, and each ranking (`loglik`, `loglik_per_token`, `dpo_reward`)
    with its accuracy, interval, counts and per-pair outcomes (`items`).
    """
    pairs = [p if isinstance(p, PreferencePair) else PreferencePair.model_validate(p) for p in pairs]
    if not pairs:
        raise DataError("preference accuracy: no pairs given")
    ids = [str(p.meta.get("id", i)) for i, p in enumerate(pairs)]
    policy = score_pairs(_source(model), pairs, batch_size, max_length)
    result = {"n": len(pairs), "model": str(model), "reference": str(reference) if reference else None,
              "decoding": decoding_mode(),
              "loglik": _accuracy(ids, [c.logprob - r.logprob for c, r in policy]),
              "loglik_per_token": _accuracy(ids, [c.logprob / max(c.tokens, 1) - r.logprob / max(r.tokens, 1)
                                                  for c, r in policy])}
    if reference is not None:

        free_memory()  # the policy's weights go before the reference's load: one model at a time
        ref = score_pairs(_source(reference), pairs, batch_size, max_length)
        margins = [(c.logprob - rc.logprob) - (r.logprob - rr.logprob) for (c, r), (rc, rr) in zip(policy, ref)]
        result["dpo_reward"] = _accuracy(ids, margins)
        result["dpo_reward"]["mean_log_ratio_margin"] = sum(margins) / len(margins)
    metric = "dpo_reward" if reference is not None else "loglik"
    result.update(metric=metric, accuracy=result[metric]["accuracy"], ci95=result[metric]["ci95"])
    return result


def _accuracy(ids: list[str], margins: list[float]) -> dict:
    """Share of strictly positive margins, its Wilson interval, and the per-pair outcomes."""
    correct = sum(m > 0 for m in margins)
    return {"accuracy": correct / len(margins), "ci95": list(wilson(correct, len(margins))),
            "correct": correct, "ties": sum(m == 0 for m in margins),
            "items": {i: float(m > 0) for i, m in zip(ids, margins)}}


def _source(model: str | Path) -> str | None:
    """A spec or path → what `bezoar.llm.local.load` takes (None = the embedded model)."""
    text = str(model)
    kind, _, rest = text.partition(":")
    if kind in ("openai", "anthropic"):
        raise ConfigError(f"preference accuracy: '{text}' is a chat API; scoring needs the weights "
                          "(give local, local:PATH or a model/adapter directory)")
    if kind == "local":
        return rest or None
    return text


def score_pairs(source: str | None, pairs: list[PreferencePair], batch_size: int, max_length: int) -> list[tuple[Scored, Scored]]:
    """(chosen, rejected) summed log-probabilities of the reply tokens given the prompt."""

    loaded = load(source)
    sequences = []
    for pair in pairs:
        prompt = [m.model_dump() for m in pair.prompt]
        for reply in (pair.chosen, pair.rejected):
            sequences.append(_encode(loaded.tokenizer, prompt, [m.model_dump() for m in reply], max_length))
    scores = _score(loaded, sequences, batch_size)
    return [(scores[2 * i], scores[2 * i + 1]) for i in range(len(pairs))]


def _encode(tokenizer, prompt: list[dict], reply: list[dict], max_length: int) -> tuple[list[int], list[int]]:
    """(prompt ids, reply ids) as the chat template renders them, the reply's end-of-turn included.

    The reply is the text the full conversation adds after the prompt with its generation header,
    which is exactly what the model is trained to produce (TRL tokenises prompt and completion the
    same way). The prompt is cut from the left when the pair would not fit.
    """
    head = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(prompt + reply, tokenize=False)
    if not full.startswith(head):  # a template that rewrites earlier turns: score the plain reply
        full = head + "".join(m["content"] for m in reply) + (tokenizer.eos_token or "")
    prompt_ids = tokenizer(head, add_special_tokens=False).input_ids
    reply_ids = tokenizer(full[len(head):], add_special_tokens=False).input_ids[:max_length // 2 or 1]
    return prompt_ids[-(max_length - len(reply_ids)):], reply_ids


def _score(loaded, sequences: list[tuple[list[int], list[int]]], batch_size: int) -> list[Scored]:
    """Batched forward passes, longest first; only the reply positions' logits are computed."""
    import torch

    order = sorted(range(len(sequences)), key=lambda i: -sum(map(len, sequences[i])))
    scores: list[Scored | None] = [None] * len(sequences)
    pad = loaded.tokenizer.pad_token_id or 0
    for start in range(0, len(order), batch_size):
        batch = [sequences[i] for i in order[start:start + batch_size]]
        width = max(len(p) + len(r) for p, r in batch)
        keep = max(len(r) for _, r in batch) + 1
        # Left padding puts every reply at the end, so `logits_to_keep` can skip the prompt logits.
        ids = torch.tensor([[pad] * (width - len(p) - len(r)) + p + r for p, r in batch])
        mask = torch.tensor([[0] * (width - len(p) - len(r)) + [1] * (len(p) + len(r)) for p, r in batch])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with loaded.lock, SHARE.computing(), torch.inference_mode():
            logits = loaded.model(input_ids=ids.to(loaded.plan.device), attention_mask=mask.to(loaded.plan.device),
                                  position_ids=positions.to(loaded.plan.device), logits_to_keep=keep).logits
        for row, (index, (_, reply)) in enumerate(zip(order[start:start + batch_size], batch)):
            window = logits[row, keep - len(reply) - 1:keep - 1].float()
            logprobs = torch.log_softmax(window, dim=-1).gather(-1, torch.tensor(reply, device=window.device)[:, None])
            scores[index] = Scored(float(logprobs.sum()), len(reply))
    return scores  # type: ignore[return-value]


def run_preference(model: str, config, out_dir: Path, reference: str | None = None) -> dict:
    """Score the pairs named by `config` (a PreferenceConfig with `pairs` set); summary.json under out_dir."""
    if config.pairs is None:
        raise ConfigError("preference: no pairs file (give --pairs, or eval.preference.pairs / sft_hh.data.path)")
    pairs = load_pairs(config.pairs, config.heldout_n)[:config.limit]
    result = preference_accuracy(model, pairs, reference, config.batch_size, config.max_length)
    result.update(pairs_file=str(config.pairs), heldout_n=config.heldout_n)
    write_json(Path(out_dir) / "summary.json", result)
    return result
