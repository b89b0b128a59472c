"""The official `openai` and `anthropic` SDKs, unchanged, against `bezoar serve` (the embedded model on
127.0.0.1): every call a teacher or judge client makes, online, streamed and as provider batches."""
from __future__ import annotations

import json
import time

import pytest

from servers import bezoar_server

SYSTEM = "You are a terse assistant."
QUESTION = "Name one primary colour."


@pytest.fixture(scope="module")
def server():
    with bezoar_server(batch_size=8) as url:
        yield url


@pytest.fixture(scope="module")
def openai_client(server):
    from openai import OpenAI

    return OpenAI(base_url=server, api_key="anything", max_retries=0)


@pytest.fixture(scope="module")
def anthropic_client(server):
    from anthropic import Anthropic

    return Anthropic(base_url=server.removesuffix("/v1"), api_key="anything", max_retries=0)


def _messages() -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]


def _wait(fetch, ended, timeout_s: float = 600):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        found = fetch()
        if ended(found):
            return found
        time.sleep(0.3)
    raise TimeoutError(f"still not ended: {found}")


def test_openai_sdk_chat_responses_and_completions(openai_client):
    client = openai_client
    assert [m.id for m in client.models.list()] == ["smollm2-135m-instruct"]
    greedy = client.chat.completions.create(model="m", messages=_messages(), max_tokens=8, temperature=0)
    text = greedy.choices[0].message.content
    assert text and greedy.usage.prompt_tokens > 0 and greedy.usage.completion_tokens > 0

    sampled = client.chat.completions.create(model="m", messages=_messages(), max_tokens=6, temperature=0.9, n=2,
                                             seed=7, logprobs=True, top_logprobs=3, stop=["\n\n"])
    assert len(sampled.choices) == 2 and len(sampled.choices[0].logprobs.content[0].top_logprobs) == 3
    again = client.chat.completions.create(model="m", messages=_messages(), max_tokens=6, temperature=0.9, n=2,
                                           seed=7, logprobs=True, top_logprobs=3, stop=["\n\n"])
    assert [c.message.content for c in again.choices] == [c.message.content for c in sampled.choices]  # the seed holds
    streamed = client.chat.completions.create(model="m", messages=_messages(), max_tokens=8, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == text

    # The Responses API: the same conversation (instructions = the system prompt) gives the same text.
    response = client.responses.create(model="m", instructions=SYSTEM, input=QUESTION, max_output_tokens=8, temperature=0)
    assert response.output_text == text and response.status in ("completed", "incomplete")
    assert response.usage.input_tokens == greedy.usage.prompt_tokens
    as_items = client.responses.create(model="m", input=[{"role": "developer", "content": SYSTEM},
                                                         {"role": "user", "content": [{"type": "input_text", "text": QUESTION}]}],
                                       max_output_tokens=8, temperature=0)
    assert as_items.output_text == text
    events = list(client.responses.create(model="m", instructions=SYSTEM, input=QUESTION, max_output_tokens=8,
                                          temperature=0, stream=True))
    assert events[0].type == "response.created" and events[-1].response.output_text == text
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == text
    whole = client.chat.completions.create(model="m", messages=_messages(), max_tokens=64, temperature=0).choices[0]
    assert whole.finish_reason == "stop"  # the helper wants response.completed, not response.incomplete
    with client.responses.stream(model="m", instructions=SYSTEM, input=QUESTION, max_output_tokens=64, temperature=0) as stream:
        assert stream.get_final_response().output_text == whole.message.content
    from openai import BadRequestError

    with pytest.raises(BadRequestError, match="previous_response_id"):
        client.responses.create(model="m", input="hi", previous_response_id="resp_x")

    # Legacy completions: raw text continued, no chat template.
    legacy = client.completions.create(model="m", prompt="The capital of France is", max_tokens=5, temperature=0,
                                       logprobs=2, echo=True)
    assert legacy.choices[0].text.startswith("The capital of France is") and legacy.usage.completion_tokens > 0
    assert legacy.choices[0].logprobs.token_logprobs
    chunks = list(client.completions.create(model="m", prompt="The capital of France is", max_tokens=5,
                                            temperature=0, stream=True))
    assert "The capital of France is" + "".join(c.choices[0].text for c in chunks) == legacy.choices[0].text


def test_openai_sdk_files_and_batches(openai_client):
    client = openai_client
    online = client.chat.completions.create(model="m", messages=_messages(), max_tokens=8, temperature=0).choices[0].message.content
    lines = [{"custom_id": "good", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "m", "messages": _messages(), "max_tokens": 8, "temperature": 0}},
             {"custom_id": "bad", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "m", "messages": [], "max_tokens": 8}}]
    uploaded = client.files.create(file=("in.jsonl", "".join(json.dumps(l) + "\n" for l in lines).encode()), purpose="batch")
    assert uploaded.purpose == "batch" and client.files.retrieve(uploaded.id).bytes == uploaded.bytes
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h",
                                  metadata={"who": "test"})
    assert batch.status in ("validating", "in_progress") and batch.metadata == {"who": "test"}
    done = _wait(lambda: client.batches.retrieve(batch.id), lambda b: b.status in ("completed", "failed"))
    assert done.status == "completed" and (done.request_counts.completed, done.request_counts.failed) == (1, 1)
    good = [json.loads(l) for l in client.files.content(done.output_file_id).text.splitlines()]
    bad = [json.loads(l) for l in client.files.content(done.error_file_id).text.splitlines()]
    assert [r["custom_id"] for r in good] == ["good"] and [r["custom_id"] for r in bad] == ["bad"]
    assert good[0]["response"]["body"]["choices"][0]["message"]["content"] == online  # as answered online
    assert bad[0]["response"]["status_code"] == 400 and "messages" in bad[0]["response"]["body"]["error"]["message"]
    assert batch.id in [b.id for b in client.batches.list()]

    # A batch of Responses API requests, and one cancelled at once.
    responses_file = client.files.create(file=("r.jsonl", json.dumps({"custom_id": "r1", "method": "POST", "url": "/v1/responses",
                                                                      "body": {"model": "m", "instructions": SYSTEM, "input": QUESTION,
                                                                               "max_output_tokens": 8, "temperature": 0}}).encode()),
                                         purpose="batch")
    batch = client.batches.create(input_file_id=responses_file.id, endpoint="/v1/responses", completion_window="24h")
    done = _wait(lambda: client.batches.retrieve(batch.id), lambda b: b.status == "completed")
    row = json.loads(client.files.content(done.output_file_id).text)
    assert row["response"]["body"]["output"][0]["content"][0]["text"] == online
    many = client.files.create(file=("m.jsonl", "".join(json.dumps({**lines[0], "custom_id": f"c{i}"}) + "\n" for i in range(40)).encode()),
                               purpose="batch")
    cancelled = client.batches.cancel(client.batches.create(input_file_id=many.id, endpoint="/v1/chat/completions",
                                                            completion_window="24h").id)
    assert cancelled.status == "cancelling"
    ended = _wait(lambda: client.batches.retrieve(cancelled.id), lambda b: b.status == "cancelled")
    skipped = [json.loads(l) for l in client.files.content(ended.error_file_id).text.splitlines()]
    assert skipped and all(r["error"]["code"] == "batch_cancelled" for r in skipped)
    assert client.files.delete(uploaded.id).deleted
    from openai import NotFoundError

    with pytest.raises(NotFoundError):
        client.batches.retrieve("batch_nope")


def test_anthropic_sdk_messages_stream_and_batches(anthropic_client):
    """anthropic 2.x has no sampling parameters (API version 2026-10-21 refuses them): the server samples at
    its default temperature 1.0, seeded by the conversation, so equal requests still get equal text."""
    client = anthropic_client
    message = client.messages.create(model="m", system=SYSTEM, messages=[{"role": "user", "content": QUESTION}],
                                     max_tokens=8, stop_sequences=["\n\n"])
    text = message.content[0].text
    assert text and message.usage.input_tokens > 0 and message.stop_reason in ("end_turn", "max_tokens")
    with client.messages.stream(model="m", system=SYSTEM, messages=[{"role": "user", "content": QUESTION}],
                                max_tokens=8, stop_sequences=["\n\n"]) as stream:
        assert "".join(stream.text_stream) == text
        final = stream.get_final_message()
    assert final.content[0].text == text and final.usage.output_tokens == message.usage.output_tokens
    raw = list(client.messages.create(model="m", system=SYSTEM, messages=[{"role": "user", "content": QUESTION}],
                                      max_tokens=8, stream=True))
    assert [e.type for e in raw][0] == "message_start" and raw[-1].type == "message_stop"

    batch = client.messages.batches.create(requests=[
        {"custom_id": "good", "params": {"model": "m", "system": SYSTEM, "max_tokens": 8,
                                          "stop_sequences": ["\n\n"], "messages": [{"role": "user", "content": QUESTION}]}},
        {"custom_id": "bad", "params": {"model": "m", "messages": [{"role": "user", "content": QUESTION}]}}])
    assert batch.processing_status == "in_progress" and batch.request_counts.processing == 2
    ended = _wait(lambda: client.messages.batches.retrieve(batch.id), lambda b: b.processing_status == "ended")
    assert (ended.request_counts.succeeded, ended.request_counts.errored) == (1, 1) and ended.results_url
    results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    assert results["good"].type == "succeeded" and results["good"].message.content[0].text == text
    assert results["bad"].type == "errored" and "max_tokens" in results["bad"].error.error.message
    assert batch.id in [b.id for b in client.messages.batches.list()]

    many = client.messages.batches.create(requests=[{"custom_id": f"c{i}", "params": {
        "model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": QUESTION}]}} for i in range(40)])
    assert client.messages.batches.cancel(many.id).processing_status == "canceling"
    _wait(lambda: client.messages.batches.retrieve(many.id), lambda b: b.processing_status == "ended")
    kinds = {r.result.type for r in client.messages.batches.results(many.id)}
    assert "canceled" in kinds
    assert client.messages.batches.delete(many.id).type == "message_batch_deleted"
    from anthropic import BadRequestError

    with pytest.raises(BadRequestError, match="custom_id"):
        client.messages.batches.create(requests=[{"custom_id": "no spaces", "params": {}}])
