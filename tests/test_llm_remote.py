"""The openai and anthropic backends against real servers on 127.0.0.1, and each fault retried.

Real model servers: `transformers serve` (Hugging Face's own OpenAI-compatible server; the preferred
third-party llama-cpp-python[server] needs a ~15 min source build here) and `bezoar serve` (one start for
this module, OpenAI and Anthropic routes), both serving the embedded SmolLM2. Faults (429, 5xx, hangs,
resets, truncated and malformed bodies) come from a scripted loopback server, since no real server
produces them on demand. Failed items, keys and fail-over have their own test modules.
"""
from __future__ import annotations

import time

import httpx
import pytest

from bezoar.config import ModelConfig
from bezoar.llm.cache import CachedModel
from bezoar.llm.protocol import Sampling
from bezoar.llm.specs import build_backend
from bezoar.llm.weights import resolve_model_dir
from servers import FaultServer, bezoar_server, transformers_server

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
PROMPTS = [[{"role": "user", "content": f"Name an animal that starts with the letter {c}."}] for c in "ABCDEFGH"]


FAST = {"retry_backoff_s": 0.01, "timeout_s": 5.0}  # retries that do not sleep for seconds


def openai(url: str, **options) -> object:
    return build_backend(ModelConfig(spec=f"openai:smollm2@{url}", **options))


@pytest.fixture(scope="module")
def served():
    """One `bezoar serve` for the module (a start costs a model load)."""
    with bezoar_server() as url:
        yield url


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


def test_openai_backend_and_official_client_against_bezoar_serve(embedded, cache, served):
    from openai import OpenAI

    url = served
    model = CachedModel(openai(url, concurrency=8), cache, role="judge")
    replies = model.chat(PROMPTS, Sampling(max_new_tokens=20))
    local = [r[0].text for r in embedded.generate(PROMPTS, Sampling(max_new_tokens=20))]
    assert [r.text for r in replies] == local  # the server batches, and batching changes nothing
    stats = httpx.get(url.removesuffix("/v1") + "/health", timeout=60).json()
    assert stats["largest_batch"] > 1, f"concurrent requests were not batched: {stats}"

    client = OpenAI(base_url=url, api_key="unused")
    answer = client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=24, temperature=0)
    assert "Paris" in answer.choices[0].message.content and answer.usage.completion_tokens > 0
    streamed = client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=24,
                                              temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == answer.choices[0].message.content
    bad = httpx.post(f"{url}/chat/completions", json={"model": "x", "messages": []}, timeout=60)
    assert bad.status_code == 400 and "messages" in bad.json()["error"]["message"]


def test_anthropic_backend_against_bezoar_serve(embedded, served, monkeypatch):
    """`bezoar serve` speaks the Messages API over the same decoder: same greedy text as the local backend."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "must-not-be-needed-here")
    root = served.removesuffix("/v1")
    backend = build_backend(ModelConfig(spec=f"anthropic:smollm2@{root}", retry_backoff_s=0.01))  # a real decode: no short timeout
    assert backend.identity == f"anthropic:smollm2@{root}" and backend.endpoints[0].api_key is None
    conversations = [[{"role": "system", "content": "Answer briefly."}, QUESTION[0]], PROMPTS[1]]
    replies = [r[0] for r in backend.generate(conversations, Sampling(max_new_tokens=16))]
    local = [r[0] for r in embedded.generate(conversations, Sampling(max_new_tokens=16))]
    assert [r.text for r in replies] == [r.text for r in local]  # the system prompt went where the local one did
    assert [r.completion_tokens for r in replies] == [r.completion_tokens for r in local]
    assert replies[0].prompt_tokens == local[0].prompt_tokens
    assert replies[1].finish_reason == local[1].finish_reason  # max_tokens <-> length, end_turn <-> stop

    raw = httpx.post(f"{root}/v1/messages", json={"model": "m", "max_tokens": 4, "system": [{"type": "text", "text": "Be brief."}],
                                                  "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]}, timeout=120)
    assert raw.status_code == 200 and raw.json()["type"] == "message" and raw.json()["stop_reason"] == "max_tokens"
    assert raw.json()["usage"]["output_tokens"] == 4 and raw.json()["content"][0]["type"] == "text"
    for bad, where in [(b'{"model": "m", "max_tokens": 4, "messages": [', "JSON"),
                       (b'{"model": "m", "messages": [{"role": "user", "content": "x"}]}', "max_tokens"),
                       (b'{"model": "m", "max_tokens": 4, "messages": []}', "messages"),
                       (b'{"model": "m", "max_tokens": 4, "messages": [{"role": "robot", "content": "x"}]}', "role"),
                       (b'[1, 2]', "")]:
        answer = httpx.post(f"{root}/v1/messages", content=bad, headers={"content-type": "application/json"}, timeout=60)
        assert answer.status_code == 400 and answer.json()["type"] == "error", (bad, answer.text)
        assert where in answer.json()["error"]["message"], (bad, answer.text)
    broken = httpx.post(f"{served}/chat/completions", content=b'{"messages": [{', headers={"content-type": "application/json"},
                        timeout=60)
    assert broken.status_code == 400 and "JSON" in broken.json()["error"]["message"]
    assert httpx.get(f"{root}/health", timeout=60).json()["status"] == "ok"  # still serving after the abuse


def test_fault_server_refuses_an_unknown_action():
    with pytest.raises(ValueError, match="unknown action"):
        FaultServer(["529", "teapot"])


# Each fault, then a good answer: the client must retry (the server sees exactly two requests) and
# return the good answer.
@pytest.mark.parametrize("fault", ["429-bare", "500", "502", "503", "529", "reset", "truncated", "malformed", "wrong-shape"])
def test_each_fault_is_retried(fault):
    server = FaultServer([fault, "ok"])
    try:
        replies = openai(server.url, max_retries=1, concurrency=1, **FAST).generate([QUESTION], Sampling(max_new_tokens=8))
        assert replies[0][0].text == "fine" and not replies[0][0].failed, replies[0][0].error
        assert len(server.seen) == 2
    finally:
        server.close()


def test_anthropic_overloaded_529_is_retried(monkeypatch):
    server = FaultServer(["529", "ok"])
    try:
        reply = build_backend(ModelConfig(spec=f"anthropic:claude-2.1@{server.url}", max_retries=1, **FAST)) \
            .generate([QUESTION], Sampling(max_new_tokens=8))[0][0]
        assert reply.text == "fine" and len(server.seen) == 2 and server.seen[1]["path"] == "/v1/messages"
    finally:
        server.close()


def test_a_hang_past_the_timeout_is_cut_and_retried():
    server = FaultServer(["hang", "ok"], hang_s=6)
    try:
        started = time.monotonic()
        replies = openai(server.url, max_retries=1, concurrency=1, retry_backoff_s=0.01, timeout_s=1.0) \
            .generate([QUESTION], Sampling(max_new_tokens=8))
        elapsed = time.monotonic() - started
        assert replies[0][0].text == "fine" and len(server.seen) == 2
        assert 1.0 <= elapsed < 4.0  # cut at the timeout, not waited out (6 s)
    finally:
        server.close()


@pytest.mark.parametrize("fault", ["429", "429-date"])
def test_retry_after_is_honoured_in_both_forms(fault):
    """Seconds ("1") or an HTTP date (2 s ahead, whole seconds: at least 1 s away). The backoff base is
    10 ms and nothing hangs, so only Retry-After can explain a gap of a second between the requests."""
    server = FaultServer([fault, "ok"])
    try:
        reply = openai(server.url, max_retries=1, concurrency=1, **FAST).generate([QUESTION], Sampling())[0][0]
        assert reply.text == "fine" and len(server.seen) == 2
        assert server.seen[1]["time"] - server.seen[0]["time"] >= 1.0
    finally:
        server.close()


def test_retries_until_the_right_reply():
    """Several faults in a row, each retried, the last attempt answered."""
    server = FaultServer(["429-bare", "500", "hang", "malformed", "reset", "ok"], hang_s=3)
    try:
        backend = openai(server.url, timeout_s=1.0, max_retries=5, concurrency=1, retry_backoff_s=0.01)
        replies = backend.generate([QUESTION], Sampling(max_new_tokens=8))
        assert replies[0][0].text == "fine"
        assert len(server.seen) == 6
    finally:
        server.close()


def test_requests_spread_over_urls(cache):
    first, second = FaultServer([]), FaultServer([])
    try:
        model = CachedModel(openai(f"{first.url},{second.url}", **FAST), cache)
        model.chat(PROMPTS, Sampling(max_new_tokens=4))
        assert len(first.seen) == 4 and len(second.seen) == 4
    finally:
        first.close()
        second.close()


def test_anthropic_messages_dialect(monkeypatch):
    body = {"type": "message", "content": [{"type": "text", "text": "Rating: [[7]]"}],
            "stop_reason": "end_turn", "usage": {"input_tokens": 30, "output_tokens": 5}}
    server = FaultServer(["ok"], ok_body=body)
    monkeypatch.setenv("MY_ANTHROPIC_KEY", "sk-ant-test")
    try:
        backend = build_backend(ModelConfig(spec=f"anthropic:claude-2.1@{server.url}", api_key_env="MY_ANTHROPIC_KEY", **FAST))
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
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(ConfigError, match="NO_SUCH_KEY_VAR is not set"):
        build_backend(ModelConfig(spec="openai:m@http://127.0.0.1:9/v1", api_key_env="NO_SUCH_KEY_VAR"))
