"""Judging by next-token probabilities: backend wrappers for judges that ignore output formats.

SmolLM2-135M asked to "reply with only the number" starts "The response..." (MACHINE-NOTES §2b), but
its distribution over the next token after "Rating: [[" still ranks 1..10. This wrapper speaks the
`Backend` protocol, so it sits behind `CachedModel` like any backend (cached per conversation, batched,
resumable), and it answers in the very format the rubric asks for, followed by the evidence:

    Rating: [[6.84]]
    {"probabilities": {"1": 0.01, ...}, "mass": 0.93}

so the judge's parser reads it exactly as it reads a remote judge's reply. The rating is the expected
value over the choices (G-Eval's probability-weighted score), which separates records far better than
the argmax digit.

A local judge is scored in one forward pass (`NextTokenScorer`); an OpenAI-compatible one (vLLM,
`bezoar serve`) through the API: the prefix as an assistant prefill, one token, `top_logprobs: 20`
(`TopLogprobScorer`). The API shows only the first token, so there "10" counts as "1" (the two share
it in most tokenizers): a slight pull towards 1 that the ranking of records survives.
"""
from __future__ import annotations

import json
import math

from bezoar.errors import ConfigError
from bezoar.hashing import canonical_hash
from bezoar.llm.cores import SHARE
from bezoar.llm.local import LocalBackend
from bezoar.llm.protocol import Conversation, OnReply, Reply, Sampling

VERSION = 1  # bump when the scoring changes, so cached replies are not mistaken for new ones
RATINGS = tuple(str(r) for r in range(1, 11))
PAIR_CHOICES = ("A", "B", "C")
YES_NO = ("yes", "no")
TOKENS_PER_BATCH = 8192  # padded tokens per forward: ~1 GB of activations for the 135M model


class NextTokenScorer:
    """Wraps a `LocalBackend`; each reply is `prefix + best + "]]"` plus the choice probabilities as JSON."""

    def __init__(self, local, prefix: str, choices: tuple[str, ...], expected_value: bool):
        self.local, self.prefix, self.choices, self.expected_value = local, prefix, choices, expected_value
        tokenizer = local.tokenizer
        self.choice_ids = [tokenizer(c, add_special_tokens=False).input_ids for c in choices]
        self.path = max(self.choice_ids, key=len)[:-1]  # the one multi-token path scored in the same forward
        for ids, choice in zip(self.choice_ids, choices):
            if ids[:-1] != self.path[:len(ids) - 1]:
                raise ConfigError(f"next-token scoring: choice {choice!r} does not lie on one token path; "
                                  "use choices that are single tokens or prefixes of one longer choice")
        tag = canonical_hash({"prefix": prefix, "choices": choices, "ev": expected_value, "v": VERSION})[:12]
        self.identity = f"{local.identity}|next-token:{tag}"

    def generate(self, conversations: list[Conversation], sampling: Sampling,
                 on_reply: OnReply | None = None) -> list[list[Reply]]:
        tokenizer = self.local.tokenizer
        prompts = [tokenizer(self.local.render(c) + self.prefix, add_special_tokens=False).input_ids
                   for c in conversations]
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # similar lengths share a batch
        results: list[list[Reply] | None] = [None] * len(prompts)
        for batch in _batches(order, [len(p) + len(self.path) for p in prompts], self.local.batch_size):
            for index, probabilities in zip(batch, self._score([prompts[i] for i in batch])):
                results[index] = [self._reply(probabilities, len(prompts[index]))]
                if on_reply:
                    on_reply(index, results[index])
        return results  # type: ignore[return-value]

    def _score(self, prompts: list[list[int]]) -> list[dict[str, float]]:
        """One forward per row over prompt + path; raw (unnormalised) probability of each exact choice."""
        import torch

        loaded, device = self.local.loaded, self.local.loaded.plan.device
        rows = [p + self.path for p in prompts]
        width = max(len(r) for r in rows)
        pad = self.local.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        # Left padding shifts positions unless they are given explicitly (generate() does the same).
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        keep = len(self.path) + 1
        with loaded.lock, SHARE.computing(), torch.inference_mode():
            logits = loaded.model(input_ids=ids.to(device), attention_mask=mask.to(device),
                                  position_ids=positions.to(device), logits_to_keep=keep).logits
        logprobs = torch.log_softmax(logits[:, -keep:, :].float(), dim=-1).cpu()
        return [self._exact(row) for row in logprobs]

    def _exact(self, logprobs) -> dict[str, float]:
        """P(choice) from its tokens along the path; a choice that prefixes a longer one ("1" of "10") loses
        the longer one's share, since "[[1" followed by "0" means ten."""
        joint = {c: math.exp(sum(float(logprobs[t, tok]) for t, tok in enumerate(ids)))
                 for c, ids in zip(self.choices, self.choice_ids)}
        exact = {}
        for choice, ids in zip(self.choices, self.choice_ids):
            longer = sum(joint[other] for other, other_ids in zip(self.choices, self.choice_ids)
                         if len(other_ids) > len(ids) and other_ids[:len(ids)] == ids)
            exact[choice] = max(0.0, joint[choice] - longer)
        return exact

    def _reply(self, raw: dict[str, float], prompt_tokens: int) -> Reply:
        return _as_reply(self.prefix, raw, self.expected_value, prompt_tokens)


def _batches(order: list[int], lengths: list[int], max_rows: int, max_tokens: int = TOKENS_PER_BATCH):
    """Consecutive groups of `order` (longest first) under a padded-token budget, not only a row count:
    32 judge prompts of 2,000 tokens would pad to 64k tokens and need gigabytes of attention scores."""
    batch: list[int] = []
    for index in order:
        longest = lengths[batch[0]] if batch else lengths[index]
        if batch and (len(batch) >= max_rows or (len(batch) + 1) * longest > max_tokens):
            yield batch
            batch = []
        batch.append(index)
    if batch:
        yield batch


class TopLogprobScorer:
    """Wraps a remote (OpenAI-compatible) backend; replies in `NextTokenScorer`'s format, from the API's
    `top_logprobs` of the first token after the prefix."""

    TOP = 20  # the most OpenAI's API returns

    def __init__(self, remote, prefix: str, choices: tuple[str, ...], expected_value: bool):
        self.remote, self.prefix, self.choices, self.expected_value = remote, prefix, choices, expected_value
        tag = canonical_hash({"prefix": prefix, "choices": choices, "ev": expected_value, "v": VERSION})[:12]
        self.identity = f"{remote.identity}|top-logprobs:{tag}"

    def generate(self, conversations: list[Conversation], sampling: Sampling,
                 on_reply: OnReply | None = None) -> list[list[Reply]]:
        asked = [c + [{"role": "assistant", "content": self.prefix}] for c in conversations]
        one_token = Sampling(temperature=0.0, max_new_tokens=1, top_logprobs=self.TOP, seed=sampling.seed)

        results: dict[int, list[Reply]] = {}

        def scored(index: int, replies: list[Reply]) -> None:
            results[index] = [self._reply(r) for r in replies]
            if on_reply:
                on_reply(index, results[index])

        self.remote.generate(asked, one_token, on_reply=scored)
        return [results[i] for i in range(len(conversations))]

    def _reply(self, reply: Reply) -> Reply:
        if reply.failed:
            return reply
        if not reply.top_logprobs:
            return Reply.failure(f"{self.remote.identity} returned no top_logprobs: it cannot be scored by "
                                 "logprobs (use scoring: generate)")
        raw = {c: 0.0 for c in self.choices}
        for token, logprob in reply.top_logprobs.items():
            if token.strip() in raw:
                raw[token.strip()] += math.exp(logprob)
        return _as_reply(self.prefix, raw, self.expected_value, reply.prompt_tokens)


def _as_reply(prefix: str, raw: dict[str, float], expected_value: bool, prompt_tokens: int) -> Reply:
    mass = sum(raw.values())
    probabilities = {c: (p / mass if mass > 0 else 1.0 / len(raw)) for c, p in raw.items()}
    if expected_value:
        value = f"{sum(float(c) * p for c, p in probabilities.items()):.2f}"
    else:
        value = max(probabilities, key=probabilities.__getitem__)
    evidence = json.dumps({"probabilities": {c: round(p, 4) for c, p in probabilities.items()}, "mass": round(mass, 4)})
    return Reply(text=f"{prefix}{value}]]\n{evidence}", finish_reason="stop", prompt_tokens=prompt_tokens,
                 completion_tokens=0)


def _scorer(backend, prefix: str, choices: tuple[str, ...], expected_value: bool):

    kind = NextTokenScorer if isinstance(backend, LocalBackend) else TopLogprobScorer
    return kind(backend, prefix, choices, expected_value)


def rating_scorer(backend) -> NextTokenScorer | TopLogprobScorer:
    """Expected 1-10 rating after the rubric's "Rating: [[" (see bezoar/prompts/judge_rubric.txt)."""
    return _scorer(backend, "Rating: [[", RATINGS, expected_value=True)


def pair_scorer(backend) -> NextTokenScorer | TopLogprobScorer:
    """The likeliest of [[A]] / [[B]] / [[C]] (tie) after "Verdict: [[" (see judge_pairwise.txt)."""
    return _scorer(backend, "Verdict: [[", PAIR_CHOICES, expected_value=False)


def same_question_scorer(backend) -> NextTokenScorer | TopLogprobScorer:
    """The likelier of [[yes]] / [[no]] after "Same question: [[" (see judge_same_question.txt), with P(yes)."""
    return _scorer(backend, "Same question: [[", YES_NO, expected_value=False)
