"""`bezoar serve`'s batch endpoints, answered from the local model in seconds:

- OpenAI files (`POST/GET /v1/files`, `GET/DELETE /v1/files/{id}`, `GET /v1/files/{id}/content`) and batches
  (`POST/GET /v1/batches`, `GET /v1/batches/{id}`, `POST /v1/batches/{id}/cancel`): a JSONL input file of
  `{"custom_id", "method", "url", "body"}` lines for /v1/chat/completions, /v1/completions or /v1/responses;
  statuses validating -> in_progress -> finalizing -> completed (or failed, cancelling -> cancelled); answers
  in an output file, item errors (and `batch_cancelled` items) in an error file.
- Anthropic Message Batches (`POST/GET /v1/messages/batches`, `GET/DELETE /v1/messages/batches/{id}`,
  `POST .../cancel`, `GET .../results`): in_progress -> (canceling ->) ended; `succeeded`, `errored`
  (params are validated as each item runs, as Anthropic does), `canceled` per item.

Every item is answered as the online route answers it (`bezoar.llm.serve.answerers`), through the same
continuous-batching engine. State is in memory: a restarted server knows no batch or file (a client polling
one gets a 404). Nothing expires here: the fault proxy (tests/fault_proxy.py) imitates expiry.
"""
from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from fastapi import File, Form, UploadFile  # at module level: FastAPI resolves the handlers' annotations here
from starlette.requests import Request

from bezoar.llm.serve_errors import anthropic_error, openai_error

Answer = Callable[[dict], Awaitable[tuple[int, dict]]]
OPENAI_MAX_REQUESTS, OPENAI_MAX_BYTES = 50_000, 200 * 1024 * 1024
ANTHROPIC_MAX_REQUESTS, ANTHROPIC_MAX_BYTES = 100_000, 256 * 1024 * 1024
FILE_PURPOSES = {"assistants", "batch", "fine-tune", "vision", "user_data", "evals"}
CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
DAY_S = 24 * 3600


def _hex(n: int = 24) -> str:
    return uuid.uuid4().hex[:n]


def _rfc3339(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat().replace("+00:00", "Z")


@dataclass
class StoredFile:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int = field(default_factory=lambda: int(time.time()))

    def to_json(self) -> dict:
        expires = self.created_at + 30 * DAY_S if self.purpose.startswith("batch") else None
        return {"id": self.id, "object": "file", "bytes": len(self.data), "created_at": self.created_at,
                "filename": self.filename, "purpose": self.purpose, "status": "processed", "expires_at": expires,
                "status_details": None}


@dataclass
class OpenAIBatch:
    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict | None
    created_at: int = field(default_factory=lambda: int(time.time()))
    status: str = "validating"
    times: dict[str, int] = field(default_factory=dict)
    output_file_id: str | None = None
    error_file_id: str | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    errors: list[dict] = field(default_factory=list)
    tokens: dict[str, int] = field(default_factory=lambda: {"input": 0, "output": 0})

    def move(self, status: str) -> None:
        self.status = status
        self.times[f"{status}_at"] = int(time.time())

    def to_json(self) -> dict:
        stamps = {f"{s}_at": self.times.get(f"{s}_at") for s in
                  ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")}
        return {"id": self.id, "object": "batch", "endpoint": self.endpoint, "model": None,
                "errors": {"object": "list", "data": self.errors} if self.errors else None,
                "input_file_id": self.input_file_id, "completion_window": self.completion_window,
                "status": self.status, "output_file_id": self.output_file_id, "error_file_id": self.error_file_id,
                "created_at": self.created_at, "expires_at": self.created_at + DAY_S, **stamps,
                "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
                "usage": {"input_tokens": self.tokens["input"], "input_tokens_details": {"cached_tokens": 0},
                          "output_tokens": self.tokens["output"], "output_tokens_details": {"reasoning_tokens": 0},
                          "total_tokens": self.tokens["input"] + self.tokens["output"]},
                "metadata": self.metadata}


@dataclass
class MessageBatch:
    id: str
    requests: list[dict]
    results_base: str
    created_at: float = field(default_factory=time.time)
    processing_status: str = "in_progress"
    ended_at: float | None = None
    cancel_initiated_at: float | None = None
    results: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        if self.processing_status == "ended":  # per-type counts are zero until the whole batch ends
            for row in self.results:
                counts[row["result"]["type"]] += 1
        else:
            counts["processing"] = len(self.requests)
        ended = self.processing_status == "ended"
        return {"id": self.id, "type": "message_batch", "processing_status": self.processing_status,
                "request_counts": counts, "ended_at": _rfc3339(self.ended_at), "created_at": _rfc3339(self.created_at),
                "expires_at": _rfc3339(self.created_at + DAY_S), "archived_at": None,
                "cancel_initiated_at": _rfc3339(self.cancel_initiated_at),
                "results_url": f"{self.results_base}/v1/messages/batches/{self.id}/results" if ended else None}


@dataclass
class BatchBook:
    """Everything the server holds: files, both kinds of batch, and the tasks that answer them."""

    files: dict[str, StoredFile] = field(default_factory=dict)
    openai: dict[str, OpenAIBatch] = field(default_factory=dict)
    anthropic: dict[str, MessageBatch] = field(default_factory=dict)
    tasks: set[asyncio.Task] = field(default_factory=set)
    cancelled: set[str] = field(default_factory=set)
    in_flight: int = 64
    """Items of one batch handed to the engine at once."""

    def start(self, work: Awaitable) -> None:
        task = asyncio.ensure_future(work)
        self.tasks.add(task)  # held, or the loop may drop it half-way
        task.add_done_callback(self.tasks.discard)


async def answer_all(items: list, answer: Callable[[object], Awaitable[dict]], stop: Callable[[], bool],
                     skipped: Callable[[object], dict], in_flight: int) -> list[dict]:
    """Each item's result, at most `in_flight` at once (the engine batches them; more would only wait in its
    queue, and a cancel could no longer skip them); items not yet started when `stop()` turns true get
    `skipped(item)` (a cancelled batch's unanswered items)."""
    gate = asyncio.Semaphore(in_flight)

    async def one(item) -> dict:
        async with gate:
            return skipped(item) if stop() else await answer(item)

    return list(await asyncio.gather(*(one(item) for item in items)))


def listing(items: list, limit: int, after: str | None, openai: bool = True) -> dict:
    """A list page as both APIs give one: newest first, after the item with id `after`, at most `limit`."""
    ordered = list(reversed(items))
    if after:
        ids = [i.id for i in ordered]
        ordered = ordered[ids.index(after) + 1:] if after in ids else []
    page = ordered[:limit]
    return {**({"object": "list"} if openai else {}), "data": [i.to_json() for i in page],
            "has_more": len(ordered) > limit, "first_id": page[0].id if page else None,
            "last_id": page[-1].id if page else None}


def add_batch_routes(app, answers: dict[str, Answer], in_flight: int) -> BatchBook:
    book = BatchBook(in_flight=in_flight)
    add_file_routes(app, book)
    add_openai_batch_routes(app, book, answers)
    add_message_batch_routes(app, book, answers["/v1/messages"])
    return book


def add_file_routes(app, book: BatchBook) -> None:
    from fastapi.responses import JSONResponse, Response

    def missing(file_id: str) -> JSONResponse:
        return JSONResponse(status_code=404, content=openai_error(f"No such File object: {file_id}", param="id"))

    @app.post("/v1/files")
    async def upload(file: UploadFile = File(...), purpose: str = Form(...)):
        if purpose not in FILE_PURPOSES:
            return JSONResponse(status_code=400, content=openai_error(
                f"purpose: must be one of {', '.join(sorted(FILE_PURPOSES))}, not '{purpose}'", param="purpose"))
        data = await file.read()
        if purpose == "batch" and len(data) > OPENAI_MAX_BYTES:
            return JSONResponse(status_code=400, content=openai_error("file: a batch input file may hold at most 200 MB",
                                                                      param="file"))
        stored = StoredFile(f"file-{_hex()}", file.filename or "upload", purpose, data)
        book.files[stored.id] = stored
        return stored.to_json()

    @app.get("/v1/files")
    async def list_files(purpose: str | None = None, limit: int = 10_000, after: str | None = None):
        return listing([f for f in book.files.values() if purpose in (None, f.purpose)], limit, after)

    @app.get("/v1/files/{file_id}")
    async def get_file(file_id: str):
        return book.files[file_id].to_json() if file_id in book.files else missing(file_id)

    @app.get("/v1/files/{file_id}/content")
    async def file_content(file_id: str):
        if file_id not in book.files:
            return missing(file_id)
        return Response(content=book.files[file_id].data, media_type="application/octet-stream")

    @app.delete("/v1/files/{file_id}")
    async def delete_file(file_id: str):
        if book.files.pop(file_id, None) is None:
            return missing(file_id)
        return {"id": file_id, "object": "file", "deleted": True}


def add_openai_batch_routes(app, book: BatchBook, answers: dict[str, Answer]) -> None:
    from fastapi.responses import JSONResponse

    def refuse(message: str, param: str | None = None, status: int = 400) -> JSONResponse:
        return JSONResponse(status_code=status, content=openai_error(message, param=param))

    @app.post("/v1/batches")
    async def create(raw: Request):
        body = await raw.json()
        endpoint, file_id = body.get("endpoint"), body.get("input_file_id")
        if endpoint not in answers or endpoint == "/v1/messages":
            return refuse(f"endpoint: must be /v1/chat/completions, /v1/completions or /v1/responses here, not {endpoint!r}",
                          "endpoint")
        if body.get("completion_window") != "24h":
            return refuse("completion_window: must be '24h'", "completion_window")
        if file_id not in book.files:
            return refuse(f"input_file_id: no such file: {file_id}", "input_file_id", 404 if file_id else 400)
        if book.files[file_id].purpose != "batch":
            return refuse(f"input_file_id: file {file_id} was not uploaded with purpose 'batch'", "input_file_id")
        batch = OpenAIBatch(f"batch_{_hex()}", file_id, endpoint, "24h", body.get("metadata"))
        book.openai[batch.id] = batch
        book.start(run_openai_batch(book, batch, answers[endpoint]))
        return batch.to_json()

    @app.get("/v1/batches")
    async def list_batches(limit: int = 20, after: str | None = None):
        return listing(list(book.openai.values()), max(1, min(limit, 100)), after)

    @app.get("/v1/batches/{batch_id}")
    async def get_batch(batch_id: str):
        if batch_id not in book.openai:
            return refuse(f"No batch found with id '{batch_id}'.", "batch_id", 404)
        return book.openai[batch_id].to_json()

    @app.post("/v1/batches/{batch_id}/cancel")
    async def cancel(batch_id: str):
        batch = book.openai.get(batch_id)
        if batch is None:
            return refuse(f"No batch found with id '{batch_id}'.", "batch_id", 404)
        if batch.status not in ("validating", "in_progress", "finalizing"):
            return refuse(f"Cannot cancel a batch with status '{batch.status}'.", status=409)
        book.cancelled.add(batch_id)
        batch.move("cancelling")
        return batch.to_json()


def read_openai_lines(data: bytes, endpoint: str) -> tuple[list[dict], list[dict]]:
    """(requests, validation errors with their line numbers) of an OpenAI batch input file."""
    requests, errors, seen = [], [], set()
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            errors.append({"code": "invalid_json_line", "line": number, "message": "This line is not valid JSON.", "param": None})
            continue
        problem = None
        if not isinstance(row, dict) or not isinstance(row.get("custom_id"), str):
            problem = ("missing_required_parameter", "custom_id", "custom_id is required")
        elif row["custom_id"] in seen:
            problem = ("duplicate_custom_id", "custom_id", f"custom_id '{row['custom_id']}' is used twice")
        elif row.get("method") != "POST":
            problem = ("invalid_request", "method", "method must be POST")
        elif row.get("url") != endpoint:
            problem = ("mismatched_endpoint", "url", f"url must be the batch's endpoint {endpoint}")
        elif not isinstance(row.get("body"), dict):
            problem = ("missing_required_parameter", "body", "body must be an object")
        if problem:
            errors.append({"code": problem[0], "line": number, "message": problem[2], "param": problem[1]})
            continue
        seen.add(row["custom_id"])
        requests.append(row)
    if len(requests) > OPENAI_MAX_REQUESTS:
        errors.append({"code": "too_many_requests", "line": None, "param": None,
                       "message": f"a batch may hold at most {OPENAI_MAX_REQUESTS} requests, this file has {len(requests)}"})
    return requests, errors


async def run_openai_batch(book: BatchBook, batch: OpenAIBatch, answer: Answer) -> None:
    await asyncio.sleep(0)  # the create call answers "validating" first, as OpenAI's does
    requests, errors = read_openai_lines(book.files[batch.input_file_id].data, batch.endpoint)
    batch.total = len(requests)
    if errors or not requests:
        batch.errors = errors or [{"code": "empty_file", "line": None, "param": None, "message": "The input file is empty."}]
        batch.move("failed")
        return
    batch.move("in_progress")

    async def one(row: dict) -> dict:
        status, body = await answer(row["body"])
        ok = 200 <= status < 300
        batch.completed, batch.failed = batch.completed + ok, batch.failed + (not ok)
        usage = (body.get("usage") or {}) if ok else {}
        batch.tokens["input"] += int(usage.get("prompt_tokens") or usage.get("input_tokens") or 0)
        batch.tokens["output"] += int(usage.get("completion_tokens") or usage.get("output_tokens") or 0)
        return {"id": f"batch_req_{_hex()}", "custom_id": row["custom_id"],
                "response": {"status_code": status, "request_id": f"req_{_hex()}", "body": body}, "error": None}

    def skipped(row: dict) -> dict:
        return {"id": f"batch_req_{_hex()}", "custom_id": row["custom_id"], "response": None,
                "error": {"code": "batch_cancelled", "message": "The batch was cancelled before this request ran."}}

    rows = await answer_all(requests, one, lambda: batch.id in book.cancelled, skipped, book.in_flight)
    batch.move("finalizing")
    good = [r for r in rows if r["response"] and 200 <= r["response"]["status_code"] < 300]
    bad = [r for r in rows if r not in good]
    for name, chosen in (("output_file_id", good), ("error_file_id", bad)):
        if chosen:
            stored = StoredFile(f"file-{_hex()}", f"{batch.id}_{name.split('_')[0]}.jsonl", "batch_output",
                                b"".join(json.dumps(r).encode() + b"\n" for r in chosen))
            book.files[stored.id] = stored
            setattr(batch, name, stored.id)
    batch.move("cancelled" if batch.id in book.cancelled else "completed")


def add_message_batch_routes(app, book: BatchBook, answer: Answer) -> None:
    from fastapi.responses import JSONResponse, Response

    def refuse(message: str, status: int = 400, kind: str = "invalid_request_error") -> JSONResponse:
        return JSONResponse(status_code=status, content=anthropic_error(message, kind))

    def missing(batch_id: str) -> JSONResponse:
        return refuse(f"message batch {batch_id} not found", 404, "not_found_error")

    @app.post("/v1/messages/batches")
    async def create(raw: Request):
        body = await raw.body()
        if len(body) > ANTHROPIC_MAX_BYTES:
            return refuse("request too large: a batch may be at most 256 MB", 413, "request_too_large")
        requests = (json.loads(body) or {}).get("requests")
        problem = check_message_requests(requests)
        if problem:
            return refuse(problem)
        batch = MessageBatch(f"msgbatch_{_hex()}", requests, str(raw.base_url).rstrip("/"))
        book.anthropic[batch.id] = batch
        book.start(run_message_batch(book, batch, answer))
        return batch.to_json()

    @app.get("/v1/messages/batches")
    async def list_batches(limit: int = 20, after_id: str | None = None):
        return listing(list(book.anthropic.values()), max(1, min(limit, 1000)), after_id, openai=False)

    @app.get("/v1/messages/batches/{batch_id}")
    async def get_batch(batch_id: str):
        return book.anthropic[batch_id].to_json() if batch_id in book.anthropic else missing(batch_id)

    @app.post("/v1/messages/batches/{batch_id}/cancel")
    async def cancel(batch_id: str):
        batch = book.anthropic.get(batch_id)
        if batch is None:
            return missing(batch_id)
        if batch.processing_status == "in_progress":
            book.cancelled.add(batch_id)
            batch.processing_status, batch.cancel_initiated_at = "canceling", time.time()
        return batch.to_json()

    @app.get("/v1/messages/batches/{batch_id}/results")
    async def results(batch_id: str):
        batch = book.anthropic.get(batch_id)
        if batch is None:
            return missing(batch_id)
        if batch.processing_status != "ended":
            return refuse(f"message batch {batch_id} has not ended: its results are not ready")
        return Response(content=b"".join(json.dumps(r).encode() + b"\n" for r in batch.results),
                        media_type="application/binary")

    @app.delete("/v1/messages/batches/{batch_id}")
    async def delete(batch_id: str):
        batch = book.anthropic.get(batch_id)
        if batch is None:
            return missing(batch_id)
        if batch.processing_status != "ended":
            return refuse(f"message batch {batch_id} is still processing: cancel it first")
        del book.anthropic[batch_id]
        return {"id": batch_id, "type": "message_batch_deleted"}


def check_message_requests(requests) -> str | None:
    """Why a Message Batches create body is refused at once (params are checked as each item runs)."""
    if not isinstance(requests, list) or not requests:
        return "requests: must be a non-empty list"
    if len(requests) > ANTHROPIC_MAX_REQUESTS:
        return f"requests: at most {ANTHROPIC_MAX_REQUESTS} per batch, not {len(requests)}"
    seen = set()
    for index, request in enumerate(requests):
        custom_id = request.get("custom_id") if isinstance(request, dict) else None
        if not isinstance(custom_id, str) or not CUSTOM_ID.match(custom_id):
            return f"requests.{index}.custom_id: must match ^[a-zA-Z0-9_-]{{1,64}}$"
        if custom_id in seen:
            return f"requests.{index}.custom_id: '{custom_id}' is used twice in this batch"
        if not isinstance(request.get("params"), dict):
            return f"requests.{index}.params: must be an object"
        seen.add(custom_id)
    return None


async def run_message_batch(book: BatchBook, batch: MessageBatch, answer: Answer) -> None:
    await asyncio.sleep(0)

    async def one(request: dict) -> dict:
        status, body = await answer(request["params"])
        result = {"type": "succeeded", "message": body} if 200 <= status < 300 else {"type": "errored", "error": body}
        return {"custom_id": request["custom_id"], "result": result}

    batch.results = await answer_all(batch.requests, one, lambda: batch.id in book.cancelled,
                                     lambda r: {"custom_id": r["custom_id"], "result": {"type": "canceled"}},
                                     book.in_flight)
    batch.processing_status, batch.ended_at = "ended", time.time()
