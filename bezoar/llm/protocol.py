"""The one protocol every backend speaks: a batch of conversations in, replies out."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Protocol

# OpenAI-style chat messages: [{"role": "system"|"user"|"assistant", "content": "..."}].
Message = dict[str, str]
Conversation = list[Message]


@dataclass(frozen=True)
class Sampling:
    """Decoding settings. `temperature == 0` means greedy (deterministic)."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int = 0
    n: int = 1
    top_logprobs: int = 0
    """Also return the `top_logprobs` likeliest first tokens with their log-probabilities (0: none)."""

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def cache_fields(self) -> dict:
        """The fields that change a reply (an explicit allow-list: `n` is not one, the sample index is)."""
        fields = {"temperature": self.temperature, "top_p": self.top_p,
                  "max_new_tokens": self.max_new_tokens, "stop": list(self.stop), "seed": self.seed}
        if self.top_logprobs:  # only when asked, so every earlier key stays valid
            fields["top_logprobs"] = self.top_logprobs
        return fields

    def with_(self, **changes) -> "Sampling":
        values = asdict(self)
        values.update(changes)
        values["stop"] = tuple(values["stop"])
        return Sampling(**values)


@dataclass
class Reply:
    """One completion. `finish_reason` is "stop", "length", or "error": an item that cannot succeed
    (a non-retryable 4xx, a content-filter refusal, a body still unreadable after the retries), with
    the server's reason in `error`. Such a reply is never cached; the stage records it as a failed item."""

    text: str
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = field(default=False, compare=False)
    error: str | None = field(default=None, compare=False)
    top_logprobs: dict[str, float] | None = None
    """The first token's likeliest alternatives (token text → log-probability), when Sampling asked."""

    @property
    def failed(self) -> bool:
        return self.finish_reason == "error"

    @classmethod
    def failure(cls, error: str) -> "Reply":
        return cls(text="", finish_reason="error", error=error)

    def to_json(self) -> dict:
        found = {"text": self.text, "finish_reason": self.finish_reason,
                 "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}
        if self.top_logprobs is not None:
            found["top_logprobs"] = self.top_logprobs
        return found


class Backend(Protocol):
    """A model that answers conversations. Implementations: local, openai, anthropic."""

    identity: str
    """What the cache keys on: backend kind and model (never a key or URL with credentials)."""

    def generate(self, conversations: list[Conversation], sampling: Sampling,
                 on_reply: "OnReply | None" = None) -> list[list[Reply]]:
        """`sampling.n` replies per conversation, in input order.

        `on_reply(index, replies)` is called as soon as each conversation is answered, so the
        cache can commit it before the rest of the batch finishes (a kill loses only calls in flight).
        """
        ...


OnReply = Callable[[int, list[Reply]], None]
