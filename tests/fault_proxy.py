"""A fault-injecting reverse proxy in front of a real model server, run as a process of its own.

    python tests/fault_proxy.py --upstream http://127.0.0.1:8100 --port 8101 --log calls.jsonl \
        --faults 429,500,hang --poison "a text only one seed's requests contain"

Each POST takes the next scripted fault, if any is left; a request whose body contains a poison text is
always refused with HTTP 400 (the server-side "context length exceeded" a real API gives one item);
everything else is forwarded to the upstream server and its answer relayed. Every request is logged
(one JSON line: number, body hash, action, status, whether the answer reached the client), so a test can
count faults and successful calls made twice. Being a process, it can be SIGKILLed like a dead endpoint.

Faults: 429 (Retry-After in seconds), 429-date (Retry-After as an HTTP date), 500, 502, 503, 529,
reset (the connection is closed with no answer), hang (no answer for --hang-s seconds), truncated
(a 200 whose JSON body is cut short), wrong-shape (a 200 with well-formed JSON of another shape).

Provider batches: `--batch-faults expired,partial,poll-500,never-ends` gives each batch created through the
proxy the next fault (see tests/batch_faults.py). GETs are logged too (path, action); a batch upload or create
logs one hash per item it carries (`items`), so a test can count items submitted twice, and its size (`bytes`).
"""
from __future__ import annotations

import argparse
import email.utils
import hashlib
import json
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from batch_faults import BatchFaults, item_hashes

FAULTS = ("429", "429-date", "500", "502", "503", "529", "reset", "hang", "truncated", "wrong-shape")
RETRY_AFTER_S = 2


class Proxy:
    def __init__(self, upstream: str, faults: list[str], poison: list[str], log_path: str, hang_s: float,
                 batch_faults: list[str] | None = None):
        unknown = [f for f in faults if f not in FAULTS]
        if unknown:
            raise SystemExit(f"unknown fault(s) {unknown}; known: {', '.join(FAULTS)}")
        self.upstream, self.faults, self.poison, self.hang_s = upstream.rstrip("/"), list(faults), poison, hang_s
        self.client = httpx.Client(timeout=600)
        self.lock = threading.Lock()
        self.count = 0
        self.log = open(log_path, "a", encoding="utf-8")
        self.batches = BatchFaults(batch_faults or [])

    def next_action(self, body: bytes) -> tuple[int, str]:
        with self.lock:
            self.count += 1
            if any(p.encode() in body for p in self.poison):
                return self.count, "poison"
            return self.count, self.faults.pop(0) if self.faults else "forward"

    def note(self, number: int, path: str, body: bytes, status: int, action: str, delivered: bool,
             authorization: str | None, method: str = "POST") -> None:
        line = {"n": number, "method": method, "path": path, "sha": hashlib.sha256(body).hexdigest(), "status": status,
                "action": action, "delivered": delivered, "t": round(time.time(), 3), "bytes": len(body),
                "items": item_hashes(path, body) if status == 200 else [],
                # what credential came, as a hash: the log must not hold the secret itself
                "authorization": hashlib.sha256(authorization.encode()).hexdigest()[:16] if authorization else None}
        with self.lock:
            self.log.write(json.dumps(line) + "\n")
            self.log.flush()


def handler_for(proxy: Proxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep the test's output clean
            pass

        def do_GET(self):
            with proxy.lock:
                proxy.count += 1
                number = proxy.count
            authorization = self.headers.get("Authorization") or self.headers.get("x-api-key")
            injected = proxy.batches.before_get(self.path)
            if injected:
                status, payload, action = injected
            else:
                response = proxy.client.get(proxy.upstream + self.path, headers=self.forwarded())
                status = response.status_code
                payload, action = proxy.batches.rewrite(self.path, status, response.content, self.fetch)
                status = 200 if action != "forward" else status  # a file it made up exists here
            delivered = self.reply(status, payload)
            if "/batches" in self.path or "/files" in self.path:  # batch traffic; probes and health stay unlogged
                proxy.note(number, self.path, b"", status, action, delivered, authorization, method="GET")

        def fetch(self, path: str) -> bytes:
            return proxy.client.get(proxy.upstream + "/v1" + path, headers=self.forwarded()).content

        def forwarded(self) -> dict:
            names = ("authorization", "x-api-key", "anthropic-version", "content-type", "accept")
            return {k.lower(): v for k, v in self.headers.items() if k.lower() in names}

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            number, action = proxy.next_action(body)
            authorization = self.headers.get("Authorization") or self.headers.get("x-api-key")
            if action in ("reset", "hang"):
                if action == "hang":
                    time.sleep(proxy.hang_s)
                self.reset()
                proxy.note(number, self.path, body, 0, action, False, authorization)
                return
            status, payload, headers = self.answer(action, body)
            proxy.batches.created(self.path, status, payload)
            delivered = self.reply(status, payload, headers)
            proxy.note(number, self.path, body, status, action, delivered, authorization)

        def answer(self, action: str, body: bytes) -> tuple[int, bytes, dict]:
            if action == "forward":
                response = proxy.client.post(proxy.upstream + self.path, content=body,
                                             headers={"content-type": "application/json", **self.forwarded()})
                return response.status_code, response.content, {}
            if action == "poison":
                return 400, b'{"error": {"type": "invalid_request_error", "message": "context length exceeded"}}', {}
            if action in ("429", "429-date"):
                later = email.utils.formatdate(time.time() + RETRY_AFTER_S + 1, usegmt=True)
                return 429, b'{"error": {"message": "rate limited"}}', {
                    "Retry-After": str(RETRY_AFTER_S) if action == "429" else later}
            if action == "truncated":
                return 200, b'{"id": "x", "choices": [{"index": 0, "message": {"role": "assis', {}
            if action == "wrong-shape":
                return 200, b'{"id": "x", "object": "chat.completion", "result": {"text": "not here"}}', {}
            return int(action), b'{"error": {"message": "injected server error"}}', {}

        def reply(self, status: int, payload: bytes, headers: dict | None = None) -> bool:
            try:
                self.send_response(status)
                for key, value in {"Content-Type": "application/json", **(headers or {})}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                self.wfile.flush()
                return True
            except (BrokenPipeError, ConnectionResetError):
                return False  # the client gave up (its timeout): nothing was delivered

        def reset(self) -> None:
            """Close with RST: the client sees a reset connection, not an answer."""
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--upstream", required=True, help="base URL of the real server, e.g. http://127.0.0.1:8100")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", required=True, help="JSONL file of delivered answers")
    parser.add_argument("--faults", default="", help=f"comma-separated, in order: {', '.join(FAULTS)}")
    parser.add_argument("--poison", action="append", default=[], help="a request containing this text gets HTTP 400")
    parser.add_argument("--hang-s", type=float, default=10.0)
    parser.add_argument("--batch-faults", default="", help="comma-separated, one per batch created: expired, partial, "
                                                           "poll-500, never-ends, none")
    args = parser.parse_args(argv)
    proxy = Proxy(args.upstream, [f for f in args.faults.split(",") if f], args.poison, args.log, args.hang_s,
                  [f for f in args.batch_faults.split(",") if f])
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler_for(proxy))
    server.daemon_threads = True
    print(f"fault proxy on 127.0.0.1:{args.port} -> {args.upstream}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
