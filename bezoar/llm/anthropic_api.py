"""The `anthropic` backend: the Messages API (Claude 2.1 was the paper's MT-Bench judge), at
api.anthropic.com or any server speaking it (`bezoar serve` does, at /v1/messages)."""
from __future__ import annotations

from bezoar.llm.endpoints import PROVIDER_URLS, Endpoint
from bezoar.llm.protocol import Conversation, Reply, Sampling
from bezoar.llm.remote import MalformedReply, RemoteBackend, RetryPolicy

API_VERSION = "2023-06-01"


class AnthropicDialect:
    def __init__(self, model: str):
        self.model = model

    def url(self, base: str) -> str:
        return f"{base}/v1/messages"

    def headers(self, api_key: str | None) -> dict[str, str]:
        return {"anthropic-version": API_VERSION, **({"x-api-key": api_key} if api_key else {})}

    def body(self, conversation: Conversation, sampling: Sampling, sample_index: int) -> dict:
        # The Messages API takes the system prompt apart from the turns.
        system = "\n\n".join(m["content"] for m in conversation if m["role"] == "system")
        body = {"model": self.model, "max_tokens": sampling.max_new_tokens, "temperature": sampling.temperature,
                "messages": [m for m in conversation if m["role"] != "system"]}
        if system:
            body["system"] = system
        if sampling.top_p < 1.0:
            body["top_p"] = sampling.top_p
        if sampling.stop:
            body["stop_sequences"] = list(sampling.stop)
        return body

    def parse(self, payload: dict) -> Reply:
        if payload.get("type") == "error" or not isinstance(payload["content"], list):
            raise MalformedReply("no content blocks")
        if payload.get("stop_reason") == "refusal":  # a refusal: asking again gets the same answer
            return Reply.failure("refused by the server's safety filter (stop_reason: refusal)")
        blocks = [b["text"] for b in payload["content"] if b.get("type") == "text"]
        if not all(isinstance(b, str) for b in blocks):
            raise MalformedReply("a text block holds no text")
        usage = payload.get("usage") or {}
        return Reply(text="".join(blocks),
                     finish_reason="length" if payload.get("stop_reason") == "max_tokens" else "stop",
                     prompt_tokens=int(usage.get("input_tokens") or 0),
                     completion_tokens=int(usage.get("output_tokens") or 0))


class AnthropicBackend(RemoteBackend):
    def __init__(self, model: str, endpoints: tuple[Endpoint, ...], concurrency: int = 4,
                 policy: RetryPolicy | None = None):
        super().__init__(f"anthropic:{model}", AnthropicDialect(model), endpoints, concurrency, policy or RetryPolicy())
        # Anthropic's own API keeps the identity it always had (existing caches stay valid); any other
        # server is named by its URL, as for openai.
        urls = sorted(e.public for e in endpoints)
        self.identity = f"anthropic:{model}" + ("" if urls == [PROVIDER_URLS["anthropic"]] else f"@{','.join(urls)}")
