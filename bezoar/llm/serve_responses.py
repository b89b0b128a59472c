"""`bezoar serve`'s OpenAI Responses API (`POST /v1/responses`, `client.responses.create` and
`client.responses.stream`) and legacy completions (`POST /v1/completions`, `client.completions.create`),
over the same continuously batched engine as chat completions.

Text in, text out: a request with tools, images, files or `previous_response_id` gets a 400 saying so.
Responses are not stored (`store` is answered false; `GET /v1/responses/{id}` is not offered).
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.requests import Request  # at module level: FastAPI resolves the handlers' annotations here

from bezoar.llm.protocol import Reply, Sampling
from bezoar.llm.serve_errors import BadRequest, openai_error, served

ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}


class ResponsesRequest(BaseModel):
    """The subset of the Responses API a local model can honour; other fields are ignored."""

    model_config = ConfigDict(extra="ignore")
    model: str = ""
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_logprobs: int | None = Field(None, ge=0, le=20)
    include: list[str] | None = None
    stream: bool = False
    tools: list[dict] | None = None
    previous_response_id: str | None = None

    @model_validator(mode="after")
    def _text_only(self) -> "ResponsesRequest":
        if self.tools:
            raise ValueError("tools: not supported by bezoar serve (text in, text out)")
        if self.previous_response_id:
            raise ValueError("previous_response_id: bezoar serve stores no responses; send the whole conversation in `input`")
        return self

    def conversation(self) -> list[dict]:
        system = [{"role": "system", "content": self.instructions}] if self.instructions else []
        if isinstance(self.input, str):
            return system + [{"role": "user", "content": self.input}]
        return system + [_message(item, index) for index, item in enumerate(self.input)]

    def sampling(self) -> Sampling:
        wants_logprobs = "message.output_text.logprobs" in (self.include or [])
        return Sampling(temperature=self.temperature, top_p=self.top_p, max_new_tokens=self.max_output_tokens or 512,
                        top_logprobs=(self.top_logprobs or 1) if wants_logprobs else 0)


def _message(item: dict, index: int) -> dict:
    """An input item (`{"role", "content"}`, `content` text or input_text/output_text parts) as a chat turn."""
    if item.get("type", "message") != "message" or item.get("role") not in ROLES:
        raise BadRequest(f"input.{index}: only messages with role user, assistant, system or developer are supported")
    content = item.get("content")
    if isinstance(content, list):
        if any(not isinstance(p, dict) or p.get("type") not in ("input_text", "output_text", "text") for p in content):
            raise BadRequest(f"input.{index}.content: only text parts (input_text, output_text) are supported")
        content = "".join(str(p.get("text", "")) for p in content)
    if not isinstance(content, str):
        raise BadRequest(f"input.{index}.content: must be text or a list of text parts")
    return {"role": ROLES[item["role"]], "content": content}


async def respond(engine, model_name: str, request: ResponsesRequest, gone=None) -> dict:
    replies = await engine.submit(request.conversation(), request.sampling(), gone)
    return response_object(request, replies[0], model_name)


def response_object(request: ResponsesRequest, reply: Reply, model_name: str) -> dict:
    cut = reply.finish_reason == "length"
    part = {"type": "output_text", "text": reply.text, "annotations": [], "logprobs": _logprobs(reply)}
    now = int(time.time())
    return {"id": f"resp_{uuid.uuid4().hex}", "object": "response", "created_at": now, "completed_at": now,
            "status": "incomplete" if cut else "completed", "model": model_name,
            "incomplete_details": {"reason": "max_output_tokens"} if cut else None, "error": None,
            "instructions": request.instructions, "max_output_tokens": request.max_output_tokens,
            "output": [{"type": "message", "id": f"msg_{uuid.uuid4().hex}", "status": "incomplete" if cut else "completed",
                        "role": "assistant", "content": [part]}],
            "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "temperature": request.temperature,
            "top_p": request.top_p, "top_logprobs": request.top_logprobs, "metadata": {}, "store": False,
            "text": {"format": {"type": "text"}}, "truncation": "disabled",
            "usage": {"input_tokens": reply.prompt_tokens,
                      "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                      "output_tokens": reply.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                      "total_tokens": reply.prompt_tokens + reply.completion_tokens}}


def _logprobs(reply: Reply) -> list[dict]:
    """The first token's log-probability and alternatives (later tokens carry none here)."""
    if reply.top_logprobs is None:
        return []
    alternatives = [{"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in reply.top_logprobs.items()]
    best = max(alternatives, key=lambda a: a["logprob"])
    return [{**best, "top_logprobs": alternatives}]


def response_events(response: dict):
    """The Responses API's event stream for one finished response (the text in one delta)."""
    item = response["output"][0]
    part = item["content"][0]
    opened = {**response, "status": "in_progress", "output": [], "usage": None, "completed_at": None}
    events = [("response.created", {"response": opened}), ("response.in_progress", {"response": opened}),
              ("response.output_item.added", {"output_index": 0, "item": {**item, "status": "in_progress", "content": []}}),
              ("response.content_part.added", {"output_index": 0, "item_id": item["id"], "content_index": 0,
                                               "part": {**part, "text": ""}}),
              ("response.output_text.delta", {"output_index": 0, "item_id": item["id"], "content_index": 0,
                                              "delta": part["text"], "logprobs": part["logprobs"]}),
              ("response.output_text.done", {"output_index": 0, "item_id": item["id"], "content_index": 0,
                                             "text": part["text"], "logprobs": part["logprobs"]}),
              ("response.content_part.done", {"output_index": 0, "item_id": item["id"], "content_index": 0, "part": part}),
              ("response.output_item.done", {"output_index": 0, "item": item}),
              (f"response.{response['status']}", {"response": response})]
    for number, (name, data) in enumerate(events):
        yield f"event: {name}\ndata: {json.dumps({'type': name, 'sequence_number': number, **data})}\n\n"


class TextCompletionRequest(BaseModel):
    """Legacy completions: raw text continued, without the chat template."""

    model_config = ConfigDict(extra="ignore")
    model: str = ""
    prompt: str | list[str]
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = None
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False
    stream: bool = False

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def sampling(self) -> Sampling:
        stop = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return Sampling(temperature=self.temperature, top_p=self.top_p, n=self.n, stop=tuple(stop),
                        max_new_tokens=self.max_tokens, seed=self.seed or 0,
                        top_logprobs=(self.logprobs or 1) if self.logprobs is not None else 0)


async def text_completion(engine, model_name: str, request: TextCompletionRequest, gone=None) -> dict:
    choices, prompt_tokens, completion_tokens = [], 0, 0
    for number, prompt in enumerate(request.prompts()):
        replies = await engine.submit([{"role": "prompt", "content": prompt}], request.sampling(), gone, text=prompt)
        prompt_tokens += replies[0].prompt_tokens
        for sample, reply in enumerate(replies):
            completion_tokens += reply.completion_tokens
            choices.append({"text": (prompt if request.echo else "") + reply.text, "index": number * request.n + sample,
                            "logprobs": _legacy_logprobs(reply), "finish_reason": reply.finish_reason})
    return {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
            "model": model_name, "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


def _legacy_logprobs(reply: Reply) -> dict | None:
    if reply.top_logprobs is None:
        return None
    token, logprob = max(reply.top_logprobs.items(), key=lambda kv: kv[1])
    return {"tokens": [token], "token_logprobs": [logprob], "top_logprobs": [reply.top_logprobs], "text_offset": [0]}


def completion_chunks(body: dict):
    for choice in body["choices"]:
        base = {"id": body["id"], "object": "text_completion", "created": body["created"], "model": body["model"]}
        for text, reason in ((choice["text"], None), ("", choice["finish_reason"])):
            chunk = {**base, "choices": [{"text": text, "index": choice["index"], "logprobs": None, "finish_reason": reason}]}
            yield f"data: {json.dumps(chunk)}\n\n"
    yield "data: [DONE]\n\n"


def add_response_routes(app, engine, model_name: str) -> None:
    from fastapi.responses import JSONResponse

    @app.post("/v1/responses")
    async def responses(request: ResponsesRequest, raw: Request):
        try:
            request.conversation()
        except BadRequest as error:
            return JSONResponse(status_code=400, content=openai_error(str(error), param=str(error).split(":")[0]))
        return await served(respond(engine, model_name, request, raw.is_disconnected), openai_error,
                            response_events if request.stream else None)

    @app.post("/v1/completions")
    async def completions(request: TextCompletionRequest, raw: Request):
        return await served(text_completion(engine, model_name, request, raw.is_disconnected), openai_error,
                            completion_chunks if request.stream else None)
