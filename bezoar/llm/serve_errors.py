"""What can go wrong with one request to `bezoar serve`, and how each API it speaks says so."""
from __future__ import annotations

from collections.abc import Awaitable, Callable


class BadRequest(ValueError):
    """A request the model cannot honour (too long for its context, a conversation its chat template
    refuses): the client gets a 400 with this message."""


class ClientGone(Exception):
    """The client hung up before its reply was ready (answered with nginx's 499, which nobody reads)."""


def openai_error(message: str, kind: str = "invalid_request_error", param: str | None = None) -> dict:
    """OpenAI's error body."""
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def anthropic_error(message: str, kind: str = "invalid_request_error") -> dict:
    """Anthropic's error body."""
    return {"type": "error", "error": {"type": kind, "message": message}}


def validation_message(problems: list[dict]) -> tuple[str, str]:
    """(the dotted field, `field: what is wrong`) of pydantic's first problem."""
    problem = problems[0]
    where = ".".join(str(p) for p in problem["loc"] if p != "body")
    return where, (f"{where}: {problem['msg']}" if where else problem["msg"])


async def answered(answer: Awaitable[dict], error_body: Callable[..., dict]):
    """The answer's body, or the HTTP response its failure gets (400, 499 for a client gone, 500)."""
    from fastapi.responses import JSONResponse, Response

    try:
        return await answer
    except BadRequest as error:
        where = str(error).split(":", 1)[0]
        body = error_body(str(error), param=where) if error_body is openai_error else error_body(str(error))
        return JSONResponse(status_code=400, content=body)
    except ClientGone:
        return Response(status_code=499)
    except Exception as error:
        kind = "server_error" if error_body is openai_error else "api_error"
        return JSONResponse(status_code=500, content=error_body(str(error), kind))


async def served(answer: Awaitable[dict], error_body: Callable[..., dict], events: Callable | None = None):
    """`answered`, as JSON or, when `events` is given (the client asked for `stream`), as the server-sent
    events `events(body)` makes of the finished answer."""
    from fastapi.responses import StreamingResponse

    body = await answered(answer, error_body)
    if events is not None and isinstance(body, dict):
        return StreamingResponse(events(body), media_type="text/event-stream")
    return body
