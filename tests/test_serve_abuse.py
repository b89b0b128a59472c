"""`bezoar serve` under abuse and load, as a real server on 127.0.0.1 with the embedded model: fuzzed
request bodies (hypothesis; one server start, many bodies), malformed JSON, missing fields, a huge
`max_tokens`, a client that hangs up mid-request, and a short soak of concurrent clients.

The property for every body: a 200 with a completion, or a 4xx whose body is a JSON error; never a
5xx, and the server keeps serving. `benchmarks/bench_serve_soak.py` is the long soak.
"""
from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from servers import free_port, running

BEZOAR = str(Path(sys.executable).parent / "bezoar")
pytestmark = pytest.mark.timeout(600)
CASES: Counter = Counter()


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.fixture(scope="module")
def server(request):
    """One decode slot (batch size 1): a request that kept its slot after its client left would
    block every later one, so the hang-up test can tell a freed slot from a busy one."""
    port = free_port()
    command = [BEZOAR, "serve", "--port", str(port), "--batch-size", "1"]
    with running(command, f"http://127.0.0.1:{port}/health") as process:
        yield {"url": f"http://127.0.0.1:{port}", "pid": process.pid}
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print("\nbezoar serve bodies per outcome: " + json.dumps(dict(sorted(CASES.items()))))


def _post(url: str, body, timeout: float = 120) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body, allow_nan=True).encode()
    return httpx.post(f"{url}/v1/chat/completions", content=content, timeout=timeout,
                      headers={"content-type": "application/json"})


def _check(response: httpx.Response) -> None:
    """200 with a completion, or 4xx with a JSON error body; never 5xx."""
    assert response.status_code < 500, response.text[:500]
    body = response.json()
    if response.status_code == 200:
        assert body["object"] == "chat.completion" and body["choices"]
        assert all(isinstance(c["message"]["content"], str) for c in body["choices"])
    else:
        assert 400 <= response.status_code < 500 and isinstance(body["error"]["message"], str), body
    CASES[str(response.status_code)] += 1


# --- fuzzed bodies --------------------------------------------------------------------------------

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(), st.text(max_size=20))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                            st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                           max_leaves=8)
messages = st.one_of(
    st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system"]), "content": st.text(max_size=40)}),
             min_size=1, max_size=2),
    st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool", "", "x"]),
                                    "content": st.one_of(st.text(max_size=40), json_values)}), max_size=3),
    json_values)
# Bodies that are close to valid, so that many reach the decoder; max_tokens is tiny (fast) or absurd.
near_valid = st.fixed_dictionaries(
    {"messages": messages,
     "max_tokens": st.one_of(st.integers(1, 3), st.integers(9000, 10**30), st.integers(-3, 0), json_values)},
    optional={"model": json_values, "temperature": st.one_of(st.floats(-1, 3), json_values),
              "top_p": st.one_of(st.floats(-1, 2), json_values), "n": st.one_of(st.integers(-1, 3), json_values),
              "stop": st.one_of(st.text(max_size=5), st.lists(st.text(max_size=5), max_size=2), json_values),
              "seed": st.one_of(st.integers(-10**30, 10**30), json_values), "stream": st.booleans(),
              "logprobs": st.booleans(), "top_logprobs": st.one_of(st.integers(-2, 25), json_values)})
# Valid bodies with every honoured knob drawn over its whole range (a huge seed included).
valid = st.fixed_dictionaries(
    {"messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant"]),
                                                 "content": st.text(max_size=40)}), min_size=1, max_size=3),
     "max_tokens": st.integers(1, 3)},
    optional={"temperature": st.floats(0, 2), "top_p": st.floats(0.01, 1), "n": st.integers(1, 3),
              "seed": st.integers(-10**30, 10**30), "stop": st.lists(st.text(max_size=3), max_size=2),
              "logprobs": st.booleans(), "top_logprobs": st.integers(0, 20), "model": st.text(max_size=10)})
raw_bytes = st.one_of(st.binary(max_size=60), st.text(max_size=60).map(str.encode),
                      st.sampled_from([b"", b"{", b"[]", b"null", b'{"messages": [}', b"\xff\xfe", b'{"messages": "hi"}']))


@settings(max_examples=80, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=st.one_of(valid, near_valid, json_values, raw_bytes))
def test_fuzzed_bodies_get_a_reply_or_a_json_4xx(server, body):
    if isinstance(body, dict) and body.get("stream") is True:
        body = {**body, "stream": False}  # the streamed shape is checked below; here, the JSON body
    _check(_post(server["url"], body))


def test_malformed_missing_and_huge_requests_are_400s(server):
    url = server["url"]
    cases = {
        "not JSON": b'{"messages": [{"role": "user", "content": "hi"}',
        "no messages": {"max_tokens": 2},
        "empty messages": {"messages": [], "max_tokens": 2},
        "no content": {"messages": [{"role": "user"}], "max_tokens": 2},
        "max_tokens beyond the context": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**12},
        "negative max_tokens": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": -1},
        "n too large": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "n": 1000},
    }
    for name, body in cases.items():
        response = _post(url, body)
        assert response.status_code == 400, (name, response.status_code, response.text[:300])
        assert response.json()["error"]["message"], name
    huge = _post(url, cases["max_tokens beyond the context"]).json()["error"]
    assert "context" in huge["message"] and huge["param"] == "max_tokens"


def test_a_client_that_hangs_up_frees_its_slot(server):
    url = server["url"]
    before = httpx.get(f"{url}/health", timeout=10).json()
    body = json.dumps({"messages": [{"role": "user", "content": "Write a very long story about the sea."}],
                       "max_tokens": 4000, "temperature": 0, "stream": True, "stop": ["NEVER-SEEN"]}).encode()
    with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        time.sleep(2)  # it holds the only slot now, decoding toward 4000 tokens
    # Hung up. Were the slot still taken, this would wait for ~4000 tokens (minutes on a CPU).
    started = time.perf_counter()
    quick = _post(url, {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 2}, timeout=120)
    waited = time.perf_counter() - started
    _check(quick)
    assert quick.status_code == 200 and waited < 30, waited
    after = httpx.get(f"{url}/health", timeout=10).json()
    assert after.get("cancelled", 0) == before.get("cancelled", 0) + 1


def test_streamed_reply_is_server_sent_events(server):
    with httpx.stream("POST", f"{server['url']}/v1/chat/completions", timeout=120,
                      json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "stream": True}) as reply:
        assert reply.status_code == 200
        events = [line for line in reply.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and json.loads(events[0][6:])["object"] == "chat.completion.chunk"


def soak(url: str, clients: int, seconds: float, max_tokens: int, prompts: list[str]) -> dict:
    """`clients` threads posting chat requests back to back for `seconds`; counts and errors."""
    counts: Counter = Counter()
    errors: list[str] = []
    stop_at = time.perf_counter() + seconds

    def client(index: int) -> None:
        with httpx.Client(timeout=300) as http:
            turn = 0
            while time.perf_counter() < stop_at:
                prompt = prompts[(index + turn * clients) % len(prompts)]
                turn += 1
                try:
                    response = http.post(f"{url}/v1/chat/completions", json={
                        "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                        "temperature": 0.7, "seed": index})
                    if response.status_code != 200:
                        errors.append(f"{response.status_code} {response.text[:200]}")
                    else:
                        counts["requests"] += 1
                        counts["completion_tokens"] += response.json()["usage"]["completion_tokens"]
                except httpx.HTTPError as error:
                    errors.append(repr(error))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {**counts, "errors": len(errors), "first_error": errors[0] if errors else None}


def test_short_soak_of_concurrent_clients():
    """CI-sized: 8 clients for ~10 s against a server batching 8: no error, memory stays put."""
    port = free_port()
    command = [BEZOAR, "serve", "--port", str(port), "--batch-size", "8"]
    with running(command, f"http://127.0.0.1:{port}/health") as process:
        url = f"http://127.0.0.1:{port}"
        prompts = [f"Give one fact about the number {i}." for i in range(64)]
        soak(url, 8, 2, 4, prompts)  # warm-up: the first batches allocate the KV cache
        start_rss = rss_mb(process.pid)
        figures = soak(url, 8, 8, 8, prompts)
        end_rss = rss_mb(process.pid)
        health = httpx.get(f"{url}/health", timeout=10).json()
    print(f"soak: {figures}, RSS {start_rss:.0f} -> {end_rss:.0f} MB, largest batch {health['largest_batch']}")
    assert figures["errors"] == 0, figures["first_error"]
    assert figures["requests"] >= 8 and health["largest_batch"] > 1
    assert end_rss < start_rss * 1.25 + 50, (start_rss, end_rss)
