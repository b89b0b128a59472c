"""Endpoints fail over: a role with two URLs survives one of them dying mid-run (its server process
SIGKILLed), loses nothing, calls nothing finished again, and uses the endpoint again once it is back.
The servers are scripted loopback servers in processes of their own (a model server would only add
a model load: what is tested is the client's routing)."""
from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

from bezoar.config import ModelConfig
from bezoar.llm.cache import CachedModel
from bezoar.llm.protocol import Sampling
from bezoar.llm.specs import build_backend
from servers import FaultServer, fault_process, free_port, reply_body

CONCURRENCY = 4


def prompts(prefix: str, n: int) -> list[list[dict]]:
    return [[{"role": "user", "content": f"{prefix} {i:02d}"}] for i in range(n)]


def logged(path: Path) -> list[str]:
    """The prompts a server process received (a line cut by the kill is not a request it answered)."""
    found = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            found.append(json.loads(line)["body"]["messages"][-1]["content"])
        except (ValueError, KeyError):
            pass
    return found


def kill_when(process, log: Path, received: int, killed: threading.Event) -> None:
    deadline = time.monotonic() + 60
    while len(logged(log)) < received and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    killed.set()


def test_a_killed_endpoint_fails_over_and_is_used_again_once_back(tmp_path, cache, caplog):
    caplog.set_level(logging.INFO, logger="bezoar.llm.remote")
    port, log = free_port(), tmp_path / "victim.jsonl"
    survivor = FaultServer([], ok_body=reply_body("survivor"), delay_s=0.05)
    config = ModelConfig(spec=f"openai:m@http://127.0.0.1:{port}/v1,{survivor.url}/v1", concurrency=CONCURRENCY,
                         retry_backoff_s=0.01, timeout_s=10.0, max_retries=6)
    model = CachedModel(build_backend(config), cache, role="teacher")
    first = prompts("first", 24)
    try:
        with fault_process(port, log, reply="victim", delay_s=0.5) as victim:
            killed = threading.Event()
            # At most CONCURRENCY requests are in flight, so by its 6th request the victim has answered
            # at least two; the ones it holds when it dies are in flight.
            killer = threading.Thread(target=kill_when, args=(victim, log, 6, killed))
            killer.start()
            replies = model.chat(first, Sampling(max_new_tokens=4))
            killer.join(timeout=60)
            assert killed.is_set() and victim.wait(timeout=10) == -signal.SIGKILL
        texts = [r.text for r in replies]
        assert not any(r.failed for r in replies) and set(texts) <= {"victim", "survivor"}  # nothing lost
        to_victim = Counter(logged(log))
        to_survivor = Counter(s["body"]["messages"][-1]["content"] for s in survivor.seen)
        answered_by_victim = [p[0]["content"] for p, t in zip(first, texts) if t == "victim"]
        assert len(answered_by_victim) >= 2
        for prompt in answered_by_victim:  # finished there: never asked again anywhere
            assert to_victim[prompt] == 1 and to_survivor[prompt] == 0, prompt
        in_flight = [p for p in to_victim if to_survivor[p]]  # the victim died holding them: asked once more
        assert 1 <= len(in_flight) <= CONCURRENCY
        assert all(to_victim[p] + to_survivor[p] == 1 for p in to_victim + to_survivor if p not in in_flight)
        assert len(cache) == 24
        assert any(f"endpoint http://127.0.0.1:{port}/v1 is down" in r.getMessage() for r in caplog.records)

        # The endpoint comes back (a new server on the same port): after the cool-down it is used again.
        with fault_process(port, log, reply="reborn"):
            time.sleep(config.retry_backoff_s * 20 + 0.1)  # the policy's cool-down, and a little more
            again = model.chat(prompts("second", 8), Sampling(max_new_tokens=4))
        assert not any(r.failed for r in again) and "reborn" in {r.text for r in again}
        assert any(f"endpoint http://127.0.0.1:{port}/v1 answers again" in r.getMessage() for r in caplog.records)
    finally:
        survivor.close()


def test_a_refused_connection_fails_over_to_the_live_endpoint(cache):
    live = FaultServer([])
    dead = f"http://127.0.0.1:{free_port()}/v1"
    try:
        backend = build_backend(ModelConfig(spec=f"openai:m@{dead},{live.url}/v1", concurrency=2,
                                            retry_backoff_s=0.01, timeout_s=5.0, max_retries=2))
        replies = CachedModel(backend, cache).chat(prompts("item", 10), Sampling(max_new_tokens=4))
        assert [r.text for r in replies] == ["fine"] * 10
        assert len(live.seen) == 10  # each item asked once there: a refused request never reached a server
    finally:
        live.close()


def test_a_dead_endpoint_costs_an_item_none_of_its_retries(cache):
    """The live endpoint asks to wait twice (429, Retry-After 1 s: longer than the dead one's cool-down),
    and the one item has two retries: each time it comes back to the dead endpoint, the refusal must move it
    to the live one without spending a retry, or the item runs out of them while the live server answers."""
    live = FaultServer(["429", "429"])
    dead = f"http://127.0.0.1:{free_port()}/v1"
    try:
        backend = build_backend(ModelConfig(spec=f"openai:m@{dead},{live.url}/v1", concurrency=1,
                                            retry_backoff_s=0.01, timeout_s=5.0, max_retries=2))
        replies = CachedModel(backend, cache).chat(prompts("item", 1), Sampling(max_new_tokens=4))
        assert [r.text for r in replies] == ["fine"]
        assert len(live.seen) == 3  # two 429s and the answer: a refused request never reached a server
    finally:
        live.close()
