"""Failures are data: an item that cannot succeed comes back as a failed reply (never cached) while the
rest of the batch goes on; a fault that concerns every item stops the role at once with one line.
Against scripted loopback servers (the only way to get a 400 for one prompt, a 401, a refusal)."""
from __future__ import annotations

import pytest

from bezoar.config import ModelConfig
from bezoar.errors import RoleUnavailable
from bezoar.llm.cache import CachedModel, CallCache
from bezoar.llm.protocol import Sampling
from bezoar.llm.specs import build_backend
from servers import FaultServer, free_port

FAST = {"retry_backoff_s": 0.01, "timeout_s": 5.0}
SEEDS = [[{"role": "user", "content": f"seed {i}: write an instruction about topic {i}"}] for i in range(6)]


class PoisonServer(FaultServer):
    """Answers every prompt, except that the one containing `poison` always gets `action`."""

    def __init__(self, poison: str, action: str, **options):
        super().__init__([], **options)
        self.poison, self.poison_action = poison, action

    def act(self, handler, action):
        body = self.seen[-1]["body"]
        text = " ".join(m["content"] for m in body["messages"])
        super().act(handler, self.poison_action if self.poison in text else action)


def openai(url: str, **options):
    return build_backend(ModelConfig(spec=f"openai:teacher@{url}", **{**FAST, **options}))


def requests_for(server: FaultServer, needle: str) -> int:
    return sum(needle in " ".join(m["content"] for m in s["body"]["messages"]) for s in server.seen)


@pytest.mark.parametrize("status, message", [("400", "HTTP 400: bad request: messages is empty"),
                                             ("404", "HTTP 404: The model does not exist"),
                                             ("413", "HTTP 413: request too large"),
                                             ("422", "HTTP 422: unprocessable prompt")])
def test_a_refused_item_fails_alone_and_is_not_cached(status, message, cache):
    server = PoisonServer("seed 3:", status)
    try:
        model = CachedModel(openai(server.url, concurrency=2), cache, role="teacher")
        replies = model.chat(SEEDS, Sampling(max_new_tokens=8))
        assert [r.failed for r in replies] == [False, False, False, True, False, False]
        assert replies[3].error == message and replies[3].text == ""
        assert requests_for(server, "seed 3:") == 1  # a 4xx is not retried
        assert len(cache) == 5 and model.usage.calls == 6
        again = model.chat(SEEDS, Sampling(max_new_tokens=8))  # a re-run replays the recorded failure
        assert len(server.seen) == 6 and again[3].failed and all(r.cached for r in again)
        retry = CachedModel(model.backend, CallCache(cache.path, retry_failures=True)).chat(SEEDS, Sampling(max_new_tokens=8))
        assert len(server.seen) == 7 and retry[3].error == message and sum(r.cached for r in retry) == 5  # --retry-failed
    finally:
        server.close()


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_a_content_filter_refusal_is_a_failed_item(kind):
    server = PoisonServer("seed 1:", "refusal")
    try:
        backend = build_backend(ModelConfig(spec=f"{kind}:m@{server.url}", **FAST))
        replies = [r[0] for r in backend.generate(SEEDS[:3], Sampling(max_new_tokens=8))]
        assert [r.failed for r in replies] == [False, True, False] and replies[0].text == "fine"
        assert "refus" in replies[1].error and len(server.seen) == 3  # not retried
    finally:
        server.close()


def test_a_body_still_malformed_after_the_retries_fails_the_item():
    server = PoisonServer("seed 2:", "malformed")
    try:
        replies = [r[0] for r in openai(server.url, max_retries=2).generate(SEEDS[:4], Sampling())]
        assert [r.failed for r in replies] == [False, False, True, False]
        assert replies[2].error.startswith("malformed reply from http://127.0.0.1:") and "after 2 retries" in replies[2].error
        assert requests_for(server, "seed 2:") == 3
    finally:
        server.close()


def test_a_5xx_on_one_item_while_the_endpoint_answers_fails_that_item():
    server = PoisonServer("seed 0:", "500")
    try:
        replies = [r[0] for r in openai(server.url, max_retries=2, concurrency=2).generate(SEEDS, Sampling())]
        assert [r.failed for r in replies] == [True] + [False] * 5
        assert replies[0].error == "HTTP 500: boom (after 2 retries)" and requests_for(server, "seed 0:") == 3
    finally:
        server.close()


def test_5xx_on_every_item_makes_the_role_unavailable():
    server = FaultServer(["500"] * 100)
    try:
        with pytest.raises(RoleUnavailable, match=r"^openai:teacher at http://127\.0\.0\.1:\d+: 3 items in a row "
                                                  r"failed with server errors after 1 retries.*HTTP 500: boom$"):
            openai(server.url, max_retries=1, concurrency=1).generate(SEEDS, Sampling())
        assert len(server.seen) < 12  # stopped before every item spent its two attempts
    finally:
        server.close()


@pytest.mark.parametrize("status", ["401", "403"])
def test_a_refused_key_stops_the_role_at_once_and_keeps_what_finished(status, cache, monkeypatch):
    monkeypatch.setenv("TEACHER_KEY", "sk-teacher-0123456789")
    server = FaultServer(["ok", "ok", status] + ["ok"] * 10)
    try:
        model = CachedModel(openai(server.url, concurrency=1, api_key_env="TEACHER_KEY"), cache, role="teacher")
        with pytest.raises(RoleUnavailable) as caught:
            model.chat(SEEDS, Sampling())
        message = str(caught.value)
        assert "\n" not in message and message.startswith(f"openai:teacher at {server.url}: the server refused")
        assert f"HTTP {status}" in message and "TEACHER_KEY" in message
        assert "sk-teacher-0123456789" not in message and "***" in message  # the server echoed the key: scrubbed
        assert len(server.seen) == 3 and len(cache) == 2 and model.usage.calls == 2  # finished items committed
    finally:
        server.close()


def test_no_endpoint_reachable_makes_the_role_unavailable():
    dead = [f"http://127.0.0.1:{free_port()}/v1", f"http://127.0.0.1:{free_port()}/v1"]
    backend = openai(",".join(dead), max_retries=3)
    with pytest.raises(RoleUnavailable, match=r"^openai:teacher: no endpoint reachable \(http://127.0.0.1:\d+/v1, "
                                              r"http://127.0.0.1:\d+/v1\) after 3 retries; last error: ConnectError"):
        backend.generate(SEEDS, Sampling())


def test_a_rate_limit_that_never_lifts_makes_the_role_unavailable():
    server = FaultServer(["429-bare"] * 100)
    try:
        with pytest.raises(RoleUnavailable, match=r"still rate limited after 2 retries \(HTTP 429: slow down\)"):
            openai(server.url, max_retries=2, concurrency=1).generate(SEEDS, Sampling())
        assert len(server.seen) < 18  # stopped when the first item ran out of retries, not after all of them
    finally:
        server.close()


def test_a_hang_on_one_item_while_the_endpoint_answers_fails_that_item():
    server = PoisonServer("seed 5:", "hang", hang_s=3)
    try:
        replies = [r[0] for r in openai(server.url, max_retries=1, timeout_s=1.0, concurrency=3).generate(SEEDS, Sampling())]
        assert [r.failed for r in replies] == [False] * 5 + [True]
        assert replies[5].error.startswith("ReadTimeout at http://127.0.0.1:") and requests_for(server, "seed 5:") == 2
    finally:
        server.close()


def test_called_inside_an_event_loop_the_error_still_reaches_the_caller():
    """A notebook or a server calls generate from a running loop: the batch runs in a thread, and a
    RoleUnavailable raised there must come back, not vanish."""
    import asyncio

    server = FaultServer(["ok", "401"])
    try:
        backend = openai(server.url, concurrency=1)

        async def inside() -> None:
            backend.generate(SEEDS[:3], Sampling())

        with pytest.raises(RoleUnavailable, match="HTTP 401"):
            asyncio.run(inside())
    finally:
        server.close()
