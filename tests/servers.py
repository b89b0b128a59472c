"""Real servers on 127.0.0.1 for tests: `bezoar serve`, the third-party `transformers serve`, and a
scripted fault server (the only way to cause 429s, hangs and malformed bodies on demand)."""
from __future__ import annotations

import json
import socket
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


class FaultServer:
    """Answers each request with the next scripted behaviour: "429", "500", "hang", "malformed", "ok",
    "400". Records the requests it saw (headers included, to check what a client sends)."""

    def __init__(self, script: list[str], ok_body: dict = OK_BODY, hang_s: float = 3.0):
        self.script, self.ok_body, self.hang_s = list(script), ok_body, hang_s
        self.seen: list[dict] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with outer.lock:
                    outer.seen.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
                    action = outer.script.pop(0) if outer.script else "ok"
                outer.act(self, action)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def act(self, handler: BaseHTTPRequestHandler, action: str) -> None:
        if action == "hang":
            time.sleep(self.hang_s)
            action = "ok"
        status, body, headers = {
            "429": (429, b'{"error": "slow down"}', {"Retry-After": "1"}),
            "500": (500, b'{"error": "boom"}', {}),
            "400": (400, b'{"error": {"message": "bad request: messages is empty"}}', {}),
            "malformed": (200, b'{"choices": [', {}),
            "ok": (200, json.dumps(self.ok_body).encode(), {}),
        }[action]
        try:
            handler.send_response(status)
            for key, value in {"Content-Type": "application/json", **headers}.items():
                handler.send_header(key, value)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout): that is the point of "hang"

    def close(self) -> None:
        self.server.shutdown()
