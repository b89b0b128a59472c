"""The openai and anthropic backends against real servers on 127.0.0.1.

Real model servers: `transformers serve` (Hugging Face's own OpenAI-compatible server; the preferred
third-party llama-cpp-python[server] needs a ~15 min source build here) and `bezoar serve`, both serving
the embedded SmolLM2. Faults (429, 5xx, hangs, malformed bodies) come from a scripted loopback server,
since no real server produces them on demand.
"""
from __future__ import annotations

import time

import httpx
import pytest

from bezoar.config import ModelConfig
from bezoar.errors import BackendError
from bezoar.llm.cache import CachedModel
from bezoar.llm.protocol import Sampling
from bezoar.llm.specs import build_backend
from bezoar.llm.weights import resolve_model_dir
from servers import FaultServer, bezoar_server, transformers_server

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
PROMPTS = [[{"role": "user", "content": f"Name an animal that starts with the letter {c}."}] for c in "ABCDEFGH"]


def openai(url: str, **options) -> object:
    return build_backend(ModelConfig(spec=f"openai:smollm2@{url}", **options))


def test_openai_backend_against_transformers_serve(embedded):
    model_dir = resolve_model_dir(None)
    with transformers_server(model_dir) as url:
        backend = build_backend(ModelConfig(spec=f"openai:{model_dir}@{url}"))
        replies = backend.generate([QUESTION, PROMPTS[0]], Sampling(max_new_tokens=24))
    assert "Paris" in replies[0][0].text
    assert replies[0][0].completion_tokens > 0 and replies[0][0].prompt_tokens > 0
    # Same weights, same greedy decoding: the third-party server agrees with our local backend.
    local = embedded.generate([QUESTION], Sampling(max_new_tokens=24))[0][0]
    assert replies[0][0].text.strip() == local.text


def test_openai_backend_and_official_client_against_bezoar_serve(embedded, cache):
    from openai import OpenAI

    with bezoar_server() as url:
        model = CachedModel(openai(url, concurrency=8), cache, role="judge")
        replies = model.chat(PROMPTS, Sampling(max_new_tokens=20))
        local = [r[0].text for r in embedded.generate(PROMPTS, Sampling(max_new_tokens=20))]
        assert [r.text for r in replies] == local  # the server batches, and batching changes nothing
        stats = httpx.get(url.removesuffix("/v1") + "/health").json()
        assert stats["largest_batch"] > 1, f"concurrent requests were not batched: {stats}"

        client = OpenAI(base_url=url, api_key="unused")
        answer = client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=24, temperature=0)
        assert "Paris" in answer.choices[0].message.content and answer.usage.completion_tokens > 0
        streamed = client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=24,
                                                  temperature=0, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in streamed) == answer.choices[0].message.content
        bad = httpx.post(f"{url}/chat/completions", json={"model": "x", "messages": []})
        assert bad.status_code == 400 and "messages" in bad.json()["error"]["message"]


def test_retries_until_the_right_reply():
    server = FaultServer(["429", "500", "hang", "malformed", "ok"], hang_s=3)
    try:
        backend = openai(server.url, timeout_s=1.0, max_retries=6, concurrency=1)
        started = time.time()
        replies = backend.generate([QUESTION], Sampling(max_new_tokens=8))
        assert replies[0][0].text == "fine"
        assert len(server.seen) == 5
        assert time.time() - started >= 1.0  # Retry-After: 1 was honoured
    finally:
        server.close()


def test_past_the_retry_budget_one_clear_error():
    server = FaultServer(["500"] * 10)
    try:
        with pytest.raises(BackendError, match=r"openai:smollm2: gave up after 2 retries; last error: HTTP 500"):
            openai(server.url, max_retries=2).generate([QUESTION], Sampling())
        assert len(server.seen) == 3
    finally:
        server.close()


def test_client_errors_are_not_retried():
    server = FaultServer(["400", "ok"])
    try:
        with pytest.raises(BackendError, match="refused the request.*HTTP 400.*messages is empty"):
            openai(server.url).generate([QUESTION], Sampling())
        assert len(server.seen) == 1
    finally:
        server.close()


def test_requests_spread_over_urls_and_keys_stay_secret(monkeypatch, cache, tmp_path):
    first, second = FaultServer([]), FaultServer([])
    monkeypatch.setenv("MY_KEY", "sk-secret-123")
    try:
        config = ModelConfig(spec=f"openai:smollm2@{first.url},{second.url}", api_key_env="MY_KEY")
        model = CachedModel(build_backend(config), cache)
        model.chat(PROMPTS, Sampling(max_new_tokens=4))
        assert len(first.seen) == 4 and len(second.seen) == 4
        assert first.seen[0]["headers"]["Authorization"] == "Bearer sk-secret-123"
        assert "sk-secret" not in model.identity
        assert b"sk-secret" not in cache.path.read_bytes()
        assert not any(b"sk-secret" in p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    finally:
        first.close()
        second.close()


def test_anthropic_messages_dialect(monkeypatch):
    body = {"type": "message", "content": [{"type": "text", "text": "Rating: [[7]]"}],
            "stop_reason": "end_turn", "usage": {"input_tokens": 30, "output_tokens": 5}}
    server = FaultServer(["529", "ok"], ok_body=body)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    try:
        backend = build_backend(ModelConfig(spec=f"anthropic:claude-2.1@{server.url}", max_retries=2))
        conversation = [{"role": "system", "content": "You are a judge."}, QUESTION[0]]
        reply = backend.generate([conversation], Sampling(max_new_tokens=64, stop=("\n\n",)))[0][0]
        assert reply.text == "Rating: [[7]]" and reply.prompt_tokens == 30
        sent = server.seen[-1]
        assert sent["path"] == "/v1/messages" and sent["headers"]["x-api-key"] == "sk-ant-test"
        assert sent["body"]["system"] == "You are a judge." and sent["body"]["messages"] == [QUESTION[0]]
        assert sent["body"]["stop_sequences"] == ["\n\n"] and "anthropic-version" in sent["headers"]
    finally:
        server.close()


def test_missing_api_key_is_a_clear_error(monkeypatch):
    from bezoar.errors import ConfigError

    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY is not set"):
        build_backend(ModelConfig(spec="anthropic:claude-2.1"))
