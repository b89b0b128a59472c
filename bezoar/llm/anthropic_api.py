"""The `anthropic` backend: the Messages API (Claude 2.1 was the paper's MT-Bench judge)."""
from __future__ import annotations

from bezoar.llm.protocol import Conversation, Reply, Sampling
from bezoar.llm.remote import MalformedReply, RemoteBackend, RetryPolicy

API_VERSION = "2023-06-01"


class AnthropicDialect:
    def __init__(self, model: str, api_key: str | None):
        self.model = model
        self._api_key = api_key

    def url(self, base: str) -> str:
        return f"{base}/v1/messages"

    def headers(self) -> dict[str, str]:
        return {"x-api-key": self._api_key or "", "anthropic-version": API_VERSION}

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
        blocks = [b.get("text", "") for b in payload["content"] if b.get("type") == "text"]
        if payload.get("type") == "error" or not isinstance(payload["content"], list):
            raise MalformedReply("no content blocks")
        usage = payload.get("usage") or {}
        return Reply(text="".join(blocks),
                     finish_reason="length" if payload.get("stop_reason") == "max_tokens" else "stop",
                     prompt_tokens=int(usage.get("input_tokens") or 0),
                     completion_tokens=int(usage.get("output_tokens") or 0))


class AnthropicBackend(RemoteBackend):
    def __init__(self, model: str, url: str, api_key: str | None, concurrency: int = 4,
                 timeout_s: float = 120.0, max_retries: int = 6):
        super().__init__(f"anthropic:{model}", AnthropicDialect(model, api_key), (url,), concurrency,
                         RetryPolicy(max_retries, timeout_s))
        self.identity = f"anthropic:{model}"
