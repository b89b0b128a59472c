"""The `openai` backend: any OpenAI-compatible chat-completions server (vLLM, TGI, llama.cpp, OpenAI,
`bezoar serve`). httpx rather than the `openai` client so that retries, load spreading and the cache
behave the same for every remote backend."""
from __future__ import annotations

from bezoar.llm.endpoints import Endpoint
from bezoar.llm.protocol import Conversation, Reply, Sampling
from bezoar.llm.remote import MalformedReply, RemoteBackend, RetryPolicy


class OpenAIDialect:
    def __init__(self, model: str):
        self.model = model

    def url(self, base: str) -> str:
        return f"{base}/chat/completions"

    def headers(self, api_key: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def body(self, conversation: Conversation, sampling: Sampling, sample_index: int) -> dict:
        body = {"model": self.model, "messages": conversation, "max_tokens": sampling.max_new_tokens,
                "temperature": sampling.temperature, "top_p": sampling.top_p,
                "seed": sampling.seed + sample_index}
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if sampling.top_logprobs:
            body.update(logprobs=True, top_logprobs=sampling.top_logprobs)
        if conversation and conversation[-1]["role"] == "assistant":
            # A prefill the reply continues: vLLM's and `bezoar serve`'s extension (api.openai.com has none).
            body.update(continue_final_message=True, add_generation_prompt=False)
        return body

    def parse(self, payload: dict) -> Reply:
        choice = payload["choices"][0]
        reason = choice.get("finish_reason") or "stop"
        if reason == "content_filter":  # a refusal: asking again gets the same answer
            return Reply.failure("refused by the server's content filter (finish_reason: content_filter)")
        text = choice["message"]["content"]
        if not isinstance(text, str):
            raise MalformedReply("choices[0].message.content is not text")
        usage = payload.get("usage") or {}
        return Reply(text=text, finish_reason="length" if reason == "length" else "stop",
                     prompt_tokens=int(usage.get("prompt_tokens") or 0),
                     completion_tokens=int(usage.get("completion_tokens") or 0),
                     top_logprobs=_first_top_logprobs(choice))


class OpenAIBackend(RemoteBackend):
    def __init__(self, model: str, endpoints: tuple[Endpoint, ...], concurrency: int = 8,
                 policy: RetryPolicy | None = None):
        super().__init__(f"openai:{model}", OpenAIDialect(model), endpoints, concurrency, policy or RetryPolicy())
        # The URL is part of the identity (two servers may serve different weights under one name);
        # its credentials are not (the cache stays valid when a key rotates).
        self.identity = f"openai:{model}@{','.join(sorted(e.public for e in endpoints))}"


def _first_top_logprobs(choice: dict) -> dict[str, float] | None:
    """OpenAI's `choices[0].logprobs.content[0].top_logprobs` as token → log-probability, if present."""
    content = (choice.get("logprobs") or {}).get("content") or []
    if not content or not isinstance(content[0], dict):
        return None
    return {str(t["token"]): float(t["logprob"]) for t in content[0].get("top_logprobs") or []}
