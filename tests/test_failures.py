"""Failures are data: an item a server refuses is recorded and the stage goes on; only a systematic fault
stops it. Against a real HTTP server on 127.0.0.1 that refuses one seed (HTTP 400), as a user runs
`bezoar generate`; the server writes fresh text per request, so no model is needed."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

BEZOAR = str(Path(sys.executable).parent / "bezoar")
TOPICS = ("rivers", "bread", "comets", "violins", "glaciers", "tea", "bridges", "owls")


class RefusingServer:
    """OpenAI-compatible: HTTP 400 for any request containing `poison` (all of them when poison is ""),
    else a reply that differs per request, long enough to pass the generation heuristics."""

    def __init__(self, poison: str):
        self.poison, self.answered, self.refused = poison, 0, 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if outer.poison in body.decode():
                    outer.refused += 1
                    self.answer(400, {"error": {"message": "This model's maximum context length is 2048 tokens"}})
                    return
                outer.answered += 1
                digest = hashlib.sha256(body).digest()
                topic, other = TOPICS[digest[0] % len(TOPICS)], TOPICS[digest[1] % len(TOPICS)]
                text = (f"Compare how {topic} and {other} changed over the last century, with two examples "
                        f"of each and one surprising fact ({digest.hex()[:8]}).")
                self.answer(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                               "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": 10, "completion_tokens": 30}})

            def answer(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def seeds(data_dir: Path, path: Path, rows: int) -> list[dict]:
    lines = (data_dir / "seeds" / "dolly15k_open_qa_subset.jsonl").read_text().splitlines()[:rows]
    path.write_text("\n".join(lines) + "\n")
    return [json.loads(line) for line in lines]


def generate(tmp_path: Path, url: str, method: str, seed_file: Path, n: int, *extra: str) -> subprocess.CompletedProcess:
    command = [BEZOAR, "generate", "--method", method, "--teacher", f"openai:foo@{url}", "--seeds", str(seed_file),
               "--seed-licence", "cc-by-sa-3.0", "--n", str(n), "--out", str(tmp_path / f"{method}.jsonl"), *extra]
    env = {**os.environ, "BEZOAR_CACHE_DIR": str(tmp_path / "cache")}
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def test_one_refused_seed_is_a_failed_item_and_the_stage_goes_on(tmp_path, data_dir):
    rows = seeds(data_dir, tmp_path / "six.jsonl", 6)
    server = RefusingServer(poison=rows[2]["instruction"][:60])
    try:
        first = generate(tmp_path, server.url, "evol", tmp_path / "six.jsonl", 4)
        assert first.returncode == 0, first.stderr
        records, failed = lines(tmp_path / "evol.jsonl"), lines(tmp_path / "evol.failed.jsonl")
        assert len(records) == 3 and len(failed) == 1  # the failed item keeps its place among the 4
        assert failed[0]["error"].startswith("HTTP 400") and "maximum context length" in failed[0]["error"]
        assert rows[2]["instruction"][:60] in json.dumps(failed[0]["input"])
        assert failed[0]["backend"].startswith("openai:foo@") and failed[0]["stage"] == "generate evol"
        assert "failed items" in first.stdout

        # A re-run replays the recorded failure from the cache: no new call, same files.
        calls = server.answered + server.refused
        again = generate(tmp_path, server.url, "evol", tmp_path / "six.jsonl", 4)
        assert again.returncode == 0 and server.answered + server.refused == calls
        assert lines(tmp_path / "evol.failed.jsonl") == failed

        # Once the server takes it, --retry-failed asks that item alone again and it becomes a record.
        server.poison = "\x00never"
        answered = server.answered
        retried = generate(tmp_path, server.url, "evol", tmp_path / "six.jsonl", 4, "--retry-failed")
        assert retried.returncode == 0, retried.stderr
        assert len(lines(tmp_path / "evol.jsonl")) == 4 and lines(tmp_path / "evol.failed.jsonl") == []
        assert server.answered - answered == 2  # its evolution and its answer, nothing else
    finally:
        server.close()


def test_a_systematic_failure_stops_early_with_one_line(tmp_path, data_dir):
    seeds(data_dir, tmp_path / "many.jsonl", 60)
    server = RefusingServer(poison="")  # every request refused
    try:
        result = generate(tmp_path, server.url, "evol", tmp_path / "many.jsonl", 50)
    finally:
        server.close()
    assert result.returncode == 2 and "Traceback" not in result.stderr
    message = " ".join(result.stderr.split())
    assert "items failed (over run.max_failure_rate=0.05)" in message and "evol.failed.jsonl" in message
    tried = len(lines(tmp_path / "evol.failed.jsonl"))
    assert 20 <= tried < 50 and server.refused == tried  # judged once 20 were tried: stopped early
