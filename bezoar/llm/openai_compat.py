"""The `openai` backend: any OpenAI-compatible chat-completions server (vLLM, TGI, llama.cpp, OpenAI,
`bezoar serve`). httpx rather than the `openai` client so that retries, load spreading and the cache
behave the same for every remote backend."""
from __future__ import annotations

from bezoar.llm.protocol import Conversation, Reply, Sampling
from bezoar.llm.remote import MalformedReply, RemoteBackend, RetryPolicy


class OpenAIDialect:
    def __init__(self, model: str, api_key: str | None):
        self.model = model
        self._api_key = api_key  # sent in a header, never logged, never part of the cache identity

    def url(self, base: str) -> str:
        return f"{base}/chat/completions"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    def body(self, conversation: Conversation, sampling: Sampling, sample_index: int) -> dict:
        body = {"model": self.model, "messages": conversation, "max_tokens": sampling.max_new_tokens,
                "temperature": sampling.temperature, "top_p": sampling.top_p,
                "seed": sampling.seed + sample_index}
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        return body

    def parse(self, payload: dict) -> Reply:
        choice = payload["choices"][0]
        text = choice["message"]["content"]
        if not isinstance(text, str):
            raise MalformedReply("choices[0].message.content is not text")
        usage = payload.get("usage") or {}
        reason = choice.get("finish_reason") or "stop"
        return Reply(text=text, finish_reason="length" if reason == "length" else "stop",
                     prompt_tokens=int(usage.get("prompt_tokens") or 0),
                     completion_tokens=int(usage.get("completion_tokens") or 0))


class OpenAIBackend(RemoteBackend):
    def __init__(self, model: str, urls: tuple[str, ...], api_key: str | None, concurrency: int = 8,
                 timeout_s: float = 120.0, max_retries: int = 6):
        super().__init__(f"openai:{model}", OpenAIDialect(model, api_key), urls, concurrency,
                         RetryPolicy(max_retries, timeout_s))
        # The URL is part of the identity (two servers may serve different weights under one name);
        # the key is not.
        self.identity = f"openai:{model}@{','.join(sorted(urls))}"
