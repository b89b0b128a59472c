"""The LLM judge as human proxy: rubric prompt → reply → verdict, 1-10 rating, reason → accept or not.

Every record gets a `JudgeResult`, including the judge's raw reply. A reply that cannot be read is
asked once more with a stricter prompt (one line of JSON); if that fails too (or the judge's server
refused the item), the record is a failed item (`judge_error`, or `backend_error: <the server's
reason>`): the filter writes it to failed.jsonl, never silently keeps or drops it.

All calls go through `CachedModel`, in chunks: every reply is committed to the cache as it arrives,
so a killed run resumes without repeating a call. Local judges are scored by next-token
probabilities (`bezoar.llm.next_token`) behind the same interface.
"""
from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from string import Template
from typing import Callable

from bezoar.errors import ConfigError
from bezoar.filter.config import JudgeConfig
from bezoar.llm.cache import CachedModel
from bezoar.llm.local import LocalBackend
from bezoar.llm.next_token import rating_scorer
from bezoar.llm.protocol import Conversation, Reply, Sampling
from bezoar.prompts import read_text
from bezoar.records import Record
from bezoar.verdicts import Judgment, parse_judgment

log = logging.getLogger(__name__)

_SPLIT = "=== user ==="


@dataclass(frozen=True)
class JudgePrompt:
    """A system message and a user template with `$field` slots; `id` names the exact wording."""

    id: str
    system: str
    user: str

    def render(self, **fields: str) -> Conversation:
        return [{"role": "system", "content": self.system},
                {"role": "user", "content": Template(self.user).substitute(fields)}]


def load_prompt(name: str) -> JudgePrompt:
    """A prompt file from bezoar/prompts (`judge_rubric`) or any path; system and user split by `=== user ===`."""

    path = Path(name)
    try:
        text = path.read_text(encoding="utf-8") if path.suffix == ".txt" and path.exists() else read_text(f"{name}.txt")
    except (FileNotFoundError, OSError):
        raise ConfigError(f"judge prompt '{name}': neither a file in bezoar/prompts nor a readable .txt path") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"judge prompt '{name}': not UTF-8 text ({error.reason} at byte {error.start})") from None
    if _SPLIT not in text:
        raise ConfigError(f"judge prompt '{name}': needs a line '{_SPLIT}' between the system and the user part")
    system, user = (part.strip() for part in text.split(_SPLIT, 1))
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return JudgePrompt(id=f"{path.stem}#{digest}", system=system, user=user)


@dataclass
class JudgeResult:
    """The judge's decision on one record, with everything needed to audit it."""

    verdict: str | None = None
    rating: float | None = None
    reason: str | None = None
    accepted: bool = False
    error: str | None = None
    fmt: str = "none"
    attempts: int = 1
    raw: list[str] = field(default_factory=list)
    judge: str = ""
    prompt: str = ""
    scoring: str = "generate"
    rule: str = "rating"

    def to_json(self) -> dict:
        return asdict(self)


def scoring_mode(model: CachedModel, requested: str) -> str:
    """`auto` → next-token scoring for local judges, generated replies for remote ones (`logprobs` works
    with OpenAI-compatible servers that return `top_logprobs`: vLLM, `bezoar serve`; not Anthropic)."""

    local = isinstance(model.backend, LocalBackend)
    if requested == "logprobs" and model.identity.startswith("anthropic:"):
        raise ConfigError(f"filter.judge.scoring: logprobs needs a local or OpenAI-compatible judge, but the judge "
                          f"is {model.identity} (the Messages API returns no log-probabilities); use scoring: generate")
    return "logprobs" if requested == "logprobs" or (requested == "auto" and local) else "generate"


def scoring_model(model: CachedModel, mode: str, make_scorer: Callable) -> CachedModel:
    """The model to call: itself, or a next-token scorer over its weights sharing its cache and usage."""
    if mode == "generate":
        return model
    return CachedModel(make_scorer(model.backend), model.cache, role=model.role, usage=model.usage,
                       budget=model.budget)


def decide(judgment: Judgment, config: JudgeConfig, scoring: str) -> bool | None:
    """Accept (True), reject (False), or cannot tell (None) under the configured (already resolved) rule."""
    rating_says = None if judgment.rating is None else judgment.rating >= config.threshold
    if config.rule == "top_fraction":
        return None if judgment.rating is None else True  # provisional: `_keep_top` makes the cut
    if scoring == "logprobs" or config.rule == "rating":
        return rating_says  # a next-token judge gives a rating, never a verdict
    verdict_says = None if judgment.verdict is None else judgment.verdict == "accept"
    if config.rule == "verdict":
        return verdict_says if verdict_says is not None else rating_says
    return None if verdict_says is None or rating_says is None else verdict_says and rating_says


def judge_records(records: list[Record], model: CachedModel, config: JudgeConfig,
                  progress: Callable[[int], None] | None = None) -> list[JudgeResult]:
    """Judge each record (instruction, response); results are in input order."""

    mode = scoring_mode(model, config.scoring)
    if config.rule == "auto":
        config = config.model_copy(update={"rule": "top_fraction" if mode == "logprobs" else "rating"})
    caller = scoring_model(model, mode, rating_scorer)
    prompt, strict = load_prompt(config.prompt), load_prompt(config.strict_prompt)
    pairs = [(truncate(r.instruction, config.max_chars), truncate(r.response, config.max_chars)) for r in records]
    sampling = Sampling(temperature=0.0, max_new_tokens=config.max_new_tokens)
    prefill = config.prefill if mode == "generate" and config.prefill else None
    ask = (lambda conversation: conversation + [{"role": "assistant", "content": prefill}]) if prefill else (lambda c: c)
    first = _chat(caller, [ask(prompt.render(instruction=i, response=r)) for i, r in pairs], sampling, config, progress)
    results = [_result(_prefilled(reply, prefill), config, mode, caller.identity, prompt.id) for reply in first]
    retry = [i for i, result in enumerate(results) if result.error]
    if retry:
        log.info("judge: %d of %d replies unreadable, asking again with the strict prompt", len(retry), len(records))
        again = _chat(caller, [strict.render(instruction=pairs[i][0], response=pairs[i][1]) for i in retry],
                      sampling, config, None)
        for index, reply in zip(retry, again):
            second = _result(reply, config, mode, caller.identity, strict.id)  # the strict prompt asks for JSON
            second.attempts, second.raw = 2, results[index].raw + second.raw
            if second.error == "unreadable":
                second.error = "judge_error"
            results[index] = second
    if config.rule == "top_fraction":
        _keep_top(results, config.keep_fraction)
    return results


def _prefilled(reply: Reply, prefill: str | None) -> Reply:
    """The judge's reply as the rubric asks for it: the prefill it was started on, then its continuation."""
    if not prefill or reply.failed:
        return reply
    return Reply(prefill + reply.text, reply.finish_reason, reply.prompt_tokens, reply.completion_tokens, reply.cached)


def _keep_top(results: list[JudgeResult], fraction: float) -> None:
    """Accept the best-rated `fraction` of the readable results; the cut is a rating, so ties stay together."""

    ratings = sorted((r.rating for r in results if r.rating is not None and not r.error), reverse=True)
    if not ratings:
        return
    cut = ratings[max(0, math.ceil(len(ratings) * fraction) - 1)]
    for result in results:
        if result.rating is not None and not result.error:
            result.accepted = result.rating >= cut


def _chat(model: CachedModel, conversations: list[Conversation], sampling: Sampling, config: JudgeConfig,
          progress: Callable[[int], None] | None) -> list[Reply]:
    """In chunks, so progress is reported and each chunk's replies are committed before the next starts;
    all at once for a batch judge (`batch: true`): one provider batch, not one per chunk waited on in turn."""
    if model.batched:
        return model.chat(conversations, sampling, progress=progress)
    replies: list[Reply] = []
    for start in range(0, len(conversations), config.chunk_size):
        replies += model.chat(conversations[start:start + config.chunk_size], sampling, progress=progress)
    return replies


def _result(reply: Reply, config: JudgeConfig, mode: str, identity: str, prompt_id: str) -> JudgeResult:
    judgment = parse_judgment(reply.text) if not reply.failed else Judgment()
    accepted = decide(judgment, config, mode)
    reason = judgment.reason
    if mode == "logprobs":
        judgment.fmt = "logprobs"
        reason = "rating = expected value of the judge's next-token distribution over 1-10"
    error = None if accepted is not None else (f"backend_error: {reply.error}" if reply.failed else "unreadable")
    return JudgeResult(verdict=judgment.verdict, rating=judgment.rating, reason=reason, accepted=bool(accepted),
                       error=error, fmt=judgment.fmt, raw=[reply.text], judge=identity, prompt=prompt_id, scoring=mode,
                       rule=config.rule)


def truncate(text: str, limit: int) -> str:
    """The first `limit` characters, marked ` [...]` when cut (what a judge is shown of a long text)."""
    return text if len(text) <= limit else text[:limit] + " [...]"
