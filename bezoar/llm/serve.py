"""`bezoar serve`: an OpenAI-compatible server over the local backend (chat completions here; the Responses
API and legacy completions in `serve_responses`; files and batches in `serve_batches`), which also speaks
Anthropic's Messages API (`POST /v1/messages`, streamed or not, and Message Batches), so that every remote
role, batched or not, can be rehearsed on this machine with the official SDKs unchanged.

Requests are continuously batched: each joins the running batch as soon as a slot is free and
leaves it as soon as it is done (batching is where the speed is on CPU: ~10x one-by-one). Users serve a trained student with it; the judge and MT-Bench stages then talk to it over HTTP.
"""
from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request  # at module level: FastAPI resolves the handlers' annotations here

from bezoar.errors import ConfigError
from bezoar.llm.continuous import DecodeJob, Decoder
from bezoar.llm.local import LocalBackend, row_seed
from bezoar.llm.protocol import Reply, Sampling
from bezoar.llm.serve_errors import BadRequest, ClientGone, anthropic_error, openai_error, served, validation_message
from bezoar.llm.serve_responses import (
    ResponsesRequest,
    TextCompletionRequest,
    add_response_routes,
    respond,
    text_completion,
)
from bezoar.llm.specs import parse_spec

log = logging.getLogger(__name__)


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: str


class ChatRequest(BaseModel):
    """The subset of OpenAI's request that a local model can honour; other fields are ignored."""

    model_config = ConfigDict(extra="ignore")
    model: str = ""
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    """With `logprobs`: the first token's likeliest alternatives (later tokens carry none here)."""

    def sampling(self) -> Sampling:
        stop = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return Sampling(temperature=self.temperature, top_p=self.top_p, n=self.n, stop=tuple(stop),
                        max_new_tokens=self.max_completion_tokens or self.max_tokens or 512, seed=self.seed or 0,
                        top_logprobs=(self.top_logprobs or 1) if self.logprobs else 0)


class TextBlock(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"] = "text"
    text: str


def _text(content: str | list[TextBlock]) -> str:
    return content if isinstance(content, str) else "".join(block.text for block in content)


class AnthropicMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["user", "assistant"]
    content: str | list[TextBlock]


class MessagesRequest(BaseModel):
    """The subset of Anthropic's Messages request that a local model can honour; other fields are ignored."""

    model_config = ConfigDict(extra="ignore")
    model: str = ""
    system: str | list[TextBlock] | None = None
    messages: list[AnthropicMessageIn] = Field(min_length=1)
    max_tokens: int = Field(ge=1)
    temperature: float = Field(1.0, ge=0, le=1)
    top_p: float = Field(1.0, gt=0, le=1)
    stop_sequences: list[str] | None = None
    stream: bool = False
    """Server-sent events as Anthropic sends them (`messages.stream`); the text arrives in one delta."""

    def conversation(self) -> list[dict]:
        system = [{"role": "system", "content": _text(self.system)}] if self.system else []
        return system + [{"role": m.role, "content": _text(m.content)} for m in self.messages]

    def sampling(self) -> Sampling:
        return Sampling(temperature=self.temperature, top_p=self.top_p, max_new_tokens=self.max_tokens,
                        stop=tuple(self.stop_sequences or ()))


class QueueSource:
    """Requests from HTTP handlers, handed to the decoder as slots free up (continuous batching)."""

    def __init__(self):
        self.queue: queue.Queue[DecodeJob] = queue.Queue()
        self.is_open: Callable[[], bool] = lambda: True  # Engine.run says when the HTTP side has gone

    def take(self, most: int, wait: bool) -> list[DecodeJob] | None:
        jobs: list[DecodeJob] = []
        while wait and not jobs:  # wake up now and then to notice that the HTTP side has gone
            try:
                jobs.append(self.queue.get(timeout=0.5))
            except queue.Empty:
                if not self.is_open():
                    return None
        while len(jobs) < most:
            try:
                jobs.append(self.queue.get_nowait())
            except queue.Empty:
                break
        return [job for job in jobs if not job.cancelled]  # its client has gone: never decode it


class Engine:
    """The decoder owns the model; HTTP handlers put requests in its queue and await their replies.

    `serve` calls `run` from the main thread and puts the HTTP server in a thread: on a 2-core AVX2
    machine the same decode took ~15% longer in a side thread (4 alternating runs of the same 8
    prompts: 9.6 s against 11.4 s on average)."""

    def __init__(self, backend, batch_size: int):
        self.backend, self.batch_size = backend, batch_size
        self.decoder = Decoder(backend.loaded.model, backend.tokenizer, backend.loaded.plan.device, batch_size)
        self.stats = {"requests": 0, "largest_batch": 0}
        self.waiting: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future, list]] = {}
        self.source = QueueSource()
        self.context = getattr(backend.loaded.model.config, "max_position_embeddings", None) or 2**31

    def run(self, is_open: Callable[[], bool]) -> None:
        """Decode requests until `is_open()` turns false while nothing is waiting."""
        self.source.is_open = is_open
        with self.backend.loaded.lock:
            self.decoder.run(self.source, self._done)

    async def submit(self, conversation: list[dict], sampling: Sampling,
                     gone: Callable[[], Awaitable[bool]] | None = None, text: str | None = None) -> list[Reply]:
        """The replies; if `gone()` turns true first (the client hung up), its rows are cancelled
        and their slots freed at the next token. With `text` (legacy completions), that raw text is the
        prompt, without the chat template (`conversation` then only seeds sampling)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        prompt = self._encode(conversation, sampling, text)
        n = max(1, sampling.n)
        ticket = id(future)
        self.waiting[ticket] = (loop, future, [None] * n)
        self.stats["requests"] += 1
        jobs = [DecodeJob((ticket, sample), prompt, sampling, row_seed(sampling.seed, conversation, sample)) for sample in range(n)]
        for job in jobs:
            self.source.queue.put(job)
        while gone is not None and not future.done():
            # Seldom: under load on 2 cores, polling every 0.25-1 s measured slower first replies.
            await asyncio.wait({future}, timeout=5.0)
            if not future.done() and await gone():
                for job in jobs:
                    job.cancelled = True
                self.waiting.pop(ticket, None)
                self.stats["cancelled"] = self.stats.get("cancelled", 0) + 1
                raise ClientGone()
        return await future

    def _encode(self, conversation: list[dict], sampling: Sampling, text: str | None = None) -> list[int]:
        from jinja2 import TemplateError

        try:
            prompt = self.backend.encode(conversation) if text is None else \
                self.backend.tokenizer(text, add_special_tokens=False).input_ids
        except TemplateError as error:
            raise BadRequest(f"messages: the model's chat template refuses this conversation ({error})") from None
        if not prompt:
            raise BadRequest("prompt: must not be empty")
        if len(prompt) + sampling.max_new_tokens > self.context:
            raise BadRequest(f"max_tokens: the prompt's {len(prompt)} tokens + max_tokens {sampling.max_new_tokens} "
                             f"exceed the model's context of {self.context} tokens")
        return prompt

    def _done(self, job: DecodeJob, reply: Reply) -> None:
        self.stats["largest_batch"] = max(self.stats["largest_batch"], self.decoder.active)
        ticket, sample = job.key
        if ticket not in self.waiting:  # cancelled: its client has gone
            return
        loop, future, replies = self.waiting[ticket]
        replies[sample] = reply
        if all(r is not None for r in replies):
            del self.waiting[ticket]
            loop.call_soon_threadsafe(_settle, future, replies)


def _settle(future: asyncio.Future, replies: list[Reply]) -> None:
    if not future.done():
        future.set_result(replies)


Answer = Callable[[dict], Awaitable[tuple[int, dict]]]
"""One request body in, (HTTP status, response body) out: what a batch item gets (`bezoar.llm.serve_batches`)."""


async def chat_completion(engine: Engine, model_name: str, request: ChatRequest,
                          gone: Callable[[], Awaitable[bool]] | None = None) -> dict:
    replies = await engine.submit([m.model_dump() for m in request.messages], request.sampling(), gone)
    return _completion(replies, model_name)


async def anthropic_message(engine: Engine, model_name: str, request: MessagesRequest,
                            gone: Callable[[], Awaitable[bool]] | None = None) -> dict:
    replies = await engine.submit(request.conversation(), request.sampling(), gone)
    return _message(replies[0], model_name)


def answerer(request_type: type[BaseModel], answer: Callable, error_body: Callable[..., dict]) -> Callable:
    """An `Answer` for one API: validates the body as that API does, answers it, shapes errors its way."""


    async def run(engine: Engine, model_name: str, body: dict) -> tuple[int, dict]:
        try:
            request = request_type.model_validate(body)
        except ValidationError as error:
            return 400, error_body(validation_message(error.errors())[1])
        if getattr(request, "stream", False):
            return 400, error_body("stream: not available in a batch")
        try:
            return 200, await answer(engine, model_name, request)
        except BadRequest as error:
            return 400, error_body(str(error))
        except Exception as error:  # one item's crash is that item's answer, as online
            return 500, error_body(str(error), "api_error" if error_body is anthropic_error else "server_error")

    return run


def answerers(engine: Engine, model_name: str) -> dict[str, Answer]:
    """Every route a batch may name, as an `Answer`."""
    routes = {"/v1/chat/completions": answerer(ChatRequest, chat_completion, openai_error),
              "/v1/completions": answerer(TextCompletionRequest, text_completion, openai_error),
              "/v1/responses": answerer(ResponsesRequest, respond, openai_error),
              "/v1/messages": answerer(MessagesRequest, anthropic_message, anthropic_error)}
    return {path: (lambda body, run=run: run(engine, model_name, body)) for path, run in routes.items()}


def anthropic_route(path: str) -> bool:
    return path.startswith("/v1/messages")


def create_app(engine: Engine, model_name: str):
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    from bezoar.llm.serve_batches import add_batch_routes

    app = FastAPI(title="bezoar serve")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError):
        where, message = validation_message(error.errors())
        body = anthropic_error(message) if anthropic_route(request.url.path) else openai_error(message, param=where)
        return JSONResponse(status_code=400, content=body)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, error: HTTPException):
        """A body that is not even JSON (or a wrong path or method) gets the API's error shape too."""
        message, kind = str(error.detail), "invalid_request_error" if error.status_code < 500 else "api_error"
        if error.status_code == 404:
            kind = "not_found_error" if anthropic_route(request.url.path) else "invalid_request_error"
        body = anthropic_error(message, kind) if anthropic_route(request.url.path) else openai_error(message, kind)
        return JSONResponse(status_code=error.status_code, content=body)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "bezoar"}]}

    @app.get("/health")
    async def health():
        """Liveness, plus how well requests are being batched."""
        return {"status": "ok", **engine.stats}

    add_chat_routes(app, engine, model_name)
    add_response_routes(app, engine, model_name)
    add_batch_routes(app, answerers(engine, model_name), in_flight=2 * engine.batch_size)
    return app


def add_chat_routes(app, engine: Engine, model_name: str) -> None:
    """POST /v1/chat/completions (OpenAI) and /v1/messages (Anthropic), each streamed on request."""
    @app.post("/v1/chat/completions")
    async def completions(request: ChatRequest, raw: Request):
        return await served(chat_completion(engine, model_name, request, raw.is_disconnected), openai_error,
                            _as_stream if request.stream else None)

    @app.post("/v1/messages")
    async def messages(request: MessagesRequest, raw: Request):
        return await served(anthropic_message(engine, model_name, request, raw.is_disconnected), anthropic_error,
                            _as_message_stream if request.stream else None)


def _message(reply: Reply, model_name: str) -> dict:
    """An Anthropic Messages API reply."""
    return {"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant", "model": model_name,
            "content": [{"type": "text", "text": reply.text}],
            "stop_reason": "max_tokens" if reply.finish_reason == "length" else "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": reply.prompt_tokens, "output_tokens": reply.completion_tokens}}


def _completion(replies: list[Reply], model_name: str) -> dict:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
        "model": model_name,
        "choices": [{"index": i, "message": {"role": "assistant", "content": r.text},
                     "finish_reason": r.finish_reason, "logprobs": _logprobs(r)} for i, r in enumerate(replies)],
        "usage": {"prompt_tokens": replies[0].prompt_tokens,
                  "completion_tokens": sum(r.completion_tokens for r in replies),
                  "total_tokens": replies[0].prompt_tokens + sum(r.completion_tokens for r in replies)},
    }


def _logprobs(reply: Reply) -> dict | None:
    """OpenAI's logprobs shape, for the first token only (what a logprobs judge reads)."""
    if reply.top_logprobs is None:
        return None
    alternatives = [{"token": t, "logprob": v} for t, v in reply.top_logprobs.items()]
    best = max(alternatives, key=lambda a: a["logprob"])
    return {"content": [{**best, "top_logprobs": alternatives}]}


async def _as_stream(body: dict):
    """Server-sent events for clients that ask for `stream: true` (the whole reply arrives at once)."""
    for choice in body["choices"]:
        base = {"id": body["id"], "object": "chat.completion.chunk", "created": body["created"], "model": body["model"]}
        for delta, reason in (({"role": "assistant", "content": choice["message"]["content"]}, None),
                              ({}, choice["finish_reason"])):
            chunk = {**base, "choices": [{"index": choice["index"], "delta": delta, "finish_reason": reason}]}
            yield f"data: {json.dumps(chunk)}\n\n"
    yield "data: [DONE]\n\n"


async def _as_message_stream(message: dict):
    """Anthropic's event stream for one finished message: message_start, a text block (start, one delta,
    stop), message_delta with the stop reason and usage, message_stop; each `event: NAME` + `data: JSON`."""
    text = message["content"][0]["text"]
    usage = message["usage"]
    started = {**message, "content": [], "stop_reason": None, "stop_sequence": None,
               "usage": {"input_tokens": usage["input_tokens"], "output_tokens": 0}}
    events = [("message_start", {"message": started}),
              ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
              ("ping", {}),
              ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": text}}),
              ("content_block_stop", {"index": 0}),
              ("message_delta", {"delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                                 "usage": {"output_tokens": usage["output_tokens"]}}),
              ("message_stop", {})]
    for name, data in events:
        yield f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n"


def serve(spec: str, host: str = "127.0.0.1", port: int = 8000, batch_size: int = 32, dtype: str = "auto") -> None:
    import uvicorn


    parsed = parse_spec(spec)
    if parsed.kind != "local":
        raise ConfigError(f"serve: '{spec}' is not a local model; serve local models only (local or local:PATH)")
    backend = LocalBackend(parsed.model, batch_size=batch_size, dtype=dtype)
    name = parsed.model or "smollm2-135m-instruct"
    engine = Engine(backend, batch_size)
    server = uvicorn.Server(uvicorn.Config(create_app(engine, name), host=host, port=port, log_level="warning"))
    http = threading.Thread(target=server.run, name="bezoar-http", daemon=True)
    http.start()
    while not server.started:
        if not http.is_alive():  # uvicorn has logged why (e.g. the port is taken)
            raise ConfigError(f"serve: could not listen on {host}:{port}")
        time.sleep(0.05)
    log.info("serving %s on http://%s:%d/v1 (batches of up to %d)", name, host, port, batch_size)
    engine.run(is_open=http.is_alive)
