"""Real servers on 127.0.0.1 for tests: `bezoar serve`, the third-party `transformers serve`, and a
scripted fault server (the only way to cause 429s, hangs and malformed bodies on demand)."""
from __future__ import annotations

import argparse
import email.utils
import json
import socket
import struct
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, timeout_s: float = 180) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}: {process.stdout.read()[-2000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not healthy after {timeout_s} s")


@contextmanager
def running(command: list[str], health_url: str, env: dict | None = None):
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        wait_healthy(health_url, process)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


@contextmanager
def bezoar_server(batch_size: int = 32):
    port = free_port()
    command = [str(VENV_BIN / "bezoar"), "serve", "--port", str(port), "--batch-size", str(batch_size)]
    with running(command, f"http://127.0.0.1:{port}/health"):
        yield f"http://127.0.0.1:{port}/v1"


@contextmanager
def transformers_server(model_dir: Path):
    """Hugging Face's own OpenAI-compatible server (`transformers serve`), preloaded with our weights."""
    import os

    port = free_port()
    command = [str(VENV_BIN / "transformers"), "serve", "--host", "127.0.0.1", "--port", str(port), str(model_dir)]
    with running(command, f"http://127.0.0.1:{port}/health", env={**os.environ, "HF_HUB_OFFLINE": "1"}):
        yield f"http://127.0.0.1:{port}/v1"


OK_BODY = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "fine"}, "finish_reason": "stop"}],
           "usage": {"prompt_tokens": 3, "completion_tokens": 1}}
ANTHROPIC_OK_BODY = {"type": "message", "role": "assistant", "content": [{"type": "text", "text": "fine"}],
                     "stop_reason": "end_turn", "usage": {"input_tokens": 3, "output_tokens": 1}}

# status, body, headers of the scripted answers that are plain HTTP replies
REPLIES = {
    "429": (429, b'{"error": {"message": "slow down"}}', {"Retry-After": "1"}),
    "429-bare": (429, b'{"error": {"message": "slow down"}}', {}),
    "500": (500, b'{"error": "boom"}', {}),
    "502": (502, b"<html>Bad Gateway</html>", {}),
    "503": (503, b'{"error": {"message": "overloaded"}}', {}),
    "529": (529, b'{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}', {}),
    "400": (400, b'{"error": {"message": "bad request: messages is empty"}}', {}),
    "404": (404, b'{"error": {"message": "The model does not exist"}}', {}),
    "413": (413, b'{"error": {"message": "request too large"}}', {}),
    "422": (422, b'{"detail": "unprocessable prompt"}', {}),
    "malformed": (200, b'{"choices": [', {}),
    "wrong-shape": (200, b'{"result": {"text": "fine"}, "usage": {}}', {}),
}
ACTIONS = set(REPLIES) | {"ok", "hang", "429-date", "401", "403", "truncated", "reset", "refusal"}


class FaultServer:
    """Answers each request with the next scripted behaviour (`ACTIONS`): an HTTP status, "hang" (answer
    "ok" after `hang_s`), "429-date" (Retry-After as an HTTP date 2 s ahead), "401"/"403" (echoing the
    credentials it got, as careless real servers do), "truncated" (fewer body bytes than announced),
    "reset" (the connection is reset, no answer), "malformed", "wrong-shape" (valid JSON, not a reply),
    "refusal" (a content-filter refusal), "ok" (after `delay_s`). An unknown action is an error, at once.
    Records the requests it saw (path with query, headers, body, arrival time) to check what a client sends.
    Replies in OpenAI's shape, or Anthropic's for /v1/messages, unless `ok_body` is given."""

    def __init__(self, script: list[str], ok_body: dict | None = None, hang_s: float = 3.0, delay_s: float = 0.0,
                 port: int = 0, log_path: Path | None = None):
        unknown = [a for a in script if a not in ACTIONS]
        if unknown:
            raise ValueError(f"FaultServer: unknown action(s) {unknown}; known: {sorted(ACTIONS)}")
        self.script, self.ok_body, self.hang_s, self.delay_s = list(script), ok_body, hang_s, delay_s
        self.seen: list[dict] = []
        self.lock = threading.Lock()
        self.log = open(log_path, "a", encoding="utf-8") if log_path else None
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers: a killed server resets live connections

            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with outer.lock:
                    seen = {"path": self.path, "headers": dict(self.headers), "body": json.loads(body),
                            "time": time.monotonic()}
                    outer.seen.append(seen)
                    action = outer.script.pop(0) if outer.script else "ok"
                    if outer.log:  # for a server in another process, which a test may SIGKILL
                        outer.log.write(json.dumps(seen) + "\n")
                        outer.log.flush()
                outer.act(self, action)

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def body_for(self, handler: BaseHTTPRequestHandler) -> dict:
        if self.ok_body is not None:
            return self.ok_body
        return ANTHROPIC_OK_BODY if handler.path.endswith("/messages") else OK_BODY

    def act(self, handler: BaseHTTPRequestHandler, action: str) -> None:
        if action not in ACTIONS:
            raise ValueError(f"FaultServer: unknown action {action!r}")
        if action == "hang":
            time.sleep(self.hang_s)
            action = "ok"
        if action == "reset":  # SO_LINGER 0: close() sends RST, as a crashed server's kernel does
            handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            handler.close_connection = True
            handler.connection.close()
            return
        headers: dict[str, str] = {}
        if action in REPLIES:
            status, body, headers = REPLIES[action]
        elif action == "429-date":
            status, body = 429, b'{"error": {"message": "slow down"}}'
            headers = {"Retry-After": email.utils.formatdate(time.time() + 2, usegmt=True)}
        elif action in ("401", "403"):
            got = handler.headers.get("Authorization", "") + " " + handler.path
            status, body = int(action), json.dumps({"error": {"message": f"Incorrect API key provided: {got}"}}).encode()
        elif action == "refusal":
            status, body = 200, json.dumps(self._refusal(handler)).encode()
        else:  # ok, truncated
            time.sleep(self.delay_s)
            status, body = 200, json.dumps(self.body_for(handler)).encode()
        self._send(handler, status, body, headers, truncate=action == "truncated")

    @staticmethod
    def _refusal(handler: BaseHTTPRequestHandler) -> dict:
        if handler.path.endswith("/messages"):
            return {**ANTHROPIC_OK_BODY, "content": [], "stop_reason": "refusal"}
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": None},
                             "finish_reason": "content_filter"}], "usage": {"prompt_tokens": 3, "completion_tokens": 0}}

    @staticmethod
    def _send(handler, status: int, body: bytes, headers: dict, truncate: bool = False) -> None:
        try:
            handler.send_response(status)
            for key, value in {"Content-Type": "application/json", **headers}.items():
                handler.send_header(key, value)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body[:len(body) // 2] if truncate else body)
            if truncate:
                handler.wfile.flush()
                handler.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout): that is the point of "hang"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if self.log:
            self.log.close()


@contextmanager
def fault_process(port: int, log_path: Path, reply: str, delay_s: float = 0.0):
    """A FaultServer in a process of its own (always "ok", with `reply` as its text), which a test may
    SIGKILL; each request it receives is logged to `log_path` as one JSON line."""
    command = [sys.executable, __file__, "--port", str(port), "--log", str(log_path), "--reply", reply,
               "--delay-s", str(delay_s)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 30
        while not _listening(port):
            if process.poll() is not None or time.time() > deadline:
                process.kill()
                raise RuntimeError(f"fault server on port {port} did not start: {process.stdout.read()[-2000:]}")
            time.sleep(0.05)
        yield process
    finally:
        process.kill()
        process.wait(timeout=20)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def reply_body(text: str) -> dict:
    return {**OK_BODY, "choices": [{**OK_BODY["choices"][0], "message": {"role": "assistant", "content": text}}]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="A FaultServer in its own process (always 'ok').")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--reply", default="fine")
    parser.add_argument("--delay-s", type=float, default=0.0)
    options = parser.parse_args()
    FaultServer([], ok_body=reply_body(options.reply), delay_s=options.delay_s, port=options.port, log_path=options.log)
    threading.Event().wait()
