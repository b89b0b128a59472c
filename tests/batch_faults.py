"""Provider-batch faults for tests/fault_proxy.py: what OpenAI Batch and Anthropic Message Batches do that a
loopback server answering in seconds never does. Each batch created through the proxy takes the next fault:

    expired      once the batch has ended upstream, it reads as expired: the last half of its items (at least
                 one) were never run (OpenAI: status expired, those items in an error file as batch_expired;
                 Anthropic: those results of type expired)
    partial      the batch's first item failed (OpenAI: HTTP 400 in the error file; Anthropic: errored)
    poll-500     its first POLL_500 polls get HTTP 500, then the truth
    never-ends   it never ends, as long as this proxy runs (a batch that outlives the client's wait)
    none         no fault (to give a later batch one)

The rewriting works on the answers' JSON, so the server behind stays the real `bezoar serve`.
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
import time

BATCH_FAULTS = ("expired", "partial", "poll-500", "never-ends", "none")
POLL_500 = 3
OPENAI_BATCH = re.compile(r"^(?:/v1)?/batches/([^/?]+)$")
OPENAI_FILE = re.compile(r"^(?:/v1)?/files/([^/?]+)/content$")
ANTHROPIC_BATCH = re.compile(r"^/v1/messages/batches/([^/?]+)$")
ANTHROPIC_RESULTS = re.compile(r"^/v1/messages/batches/([^/?]+)/results$")


def item_hashes(path: str, body: bytes) -> list[str]:
    """One hash per request a batch upload or create carries (its body / params, canonical JSON)."""
    if path.endswith("/files"):
        rows = [json.loads(line) for line in body.splitlines() if line.startswith(b'{"custom_id"')]
        return [_hash(row.get("body")) for row in rows]
    if path.endswith("/messages/batches"):
        return [_hash(r.get("params")) for r in (json.loads(body or b"{}").get("requests") or [])]
    return []


def _hash(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def dropped(count: int) -> int:
    return max(1, count // 2) if count else 0


class BatchFaults:
    def __init__(self, faults: list[str]):
        unknown = [f for f in faults if f not in BATCH_FAULTS]
        if unknown:
            raise SystemExit(f"unknown batch fault(s) {unknown}; known: {', '.join(BATCH_FAULTS)}")
        self.queue = list(faults)
        self.by_batch: dict[str, str] = {}
        self.polls: dict[str, int] = {}
        self.files: dict[str, tuple[str, str]] = {}  # file id -> (batch id, "output" | "error")
        self.outputs: dict[str, str] = {}  # batch id -> its upstream output file id
        self.errors: dict[str, str | None] = {}  # batch id -> its upstream error file id
        self.lock = threading.Lock()

    def created(self, path: str, status: int, payload: bytes) -> None:
        """A batch was created through the proxy: it takes the next fault."""
        if status != 200 or not (path.rstrip("/").endswith("/batches")):
            return
        with self.lock:
            batch_id = json.loads(payload)["id"]
            self.by_batch[batch_id] = self.queue.pop(0) if self.queue else "none"

    def before_get(self, path: str) -> tuple[int, bytes, str] | None:
        """An answer that replaces the upstream one (poll-500), else None."""
        match = OPENAI_BATCH.match(path) or ANTHROPIC_BATCH.match(path)
        if not match or self.by_batch.get(match.group(1)) != "poll-500":
            return None
        with self.lock:
            self.polls[match.group(1)] = self.polls.get(match.group(1), 0) + 1
            if self.polls[match.group(1)] <= POLL_500:
                return 500, b'{"error": {"message": "injected server error while polling", "type": "server_error"}}', "poll-500"
        return None

    def rewrite(self, path: str, status: int, content: bytes, fetch) -> tuple[bytes, str]:
        """The upstream answer as the fault has it, and the action to log. `fetch(path)` reads upstream."""
        match = OPENAI_FILE.match(path)
        if match and match.group(1) in self.files:  # the error file it made up is unknown upstream
            return self._openai_file(match.group(1), content, fetch)
        if status != 200:
            return content, "forward"
        for pattern, method in ((OPENAI_BATCH, self._openai_batch), (OPENAI_FILE, self._openai_file),
                                (ANTHROPIC_BATCH, self._anthropic_batch), (ANTHROPIC_RESULTS, self._anthropic_results)):
            match = pattern.match(path)
            if match:
                return method(match.group(1), content, fetch)
        return content, "forward"

    def _openai_batch(self, batch_id: str, content: bytes, fetch) -> tuple[bytes, str]:
        fault = self.by_batch.get(batch_id, "none")
        batch = json.loads(content)
        ended = batch["status"] == "completed"
        counts = batch["request_counts"]
        if fault == "never-ends" or (fault in ("expired", "partial") and not ended):
            if fault == "never-ends":
                batch.update(status="in_progress", output_file_id=None, error_file_id=None, completed_at=None,
                             finalizing_at=None, request_counts={**counts, "completed": 0, "failed": 0})
            return json.dumps(batch).encode(), fault if fault == "never-ends" else "forward"
        if fault not in ("expired", "partial"):
            return content, "forward"
        with self.lock:
            self.outputs[batch_id], self.errors[batch_id] = batch.get("output_file_id"), batch.get("error_file_id")
            error_file = batch.get("error_file_id") or f"file-bzfault-{batch_id[-12:]}"
            self.files[error_file] = (batch_id, "error")
            if batch.get("output_file_id"):
                self.files[batch["output_file_id"]] = (batch_id, "output")
        lost = dropped(counts["completed"]) if fault == "expired" else min(1, counts["completed"])
        batch.update(error_file_id=error_file, request_counts={**counts, "completed": counts["completed"] - lost,
                                                               "failed": counts["failed"] + lost})
        if fault == "expired":
            batch.update(status="expired", expired_at=int(time.time()), completed_at=None)
        return json.dumps(batch).encode(), fault

    def _openai_file(self, file_id: str, content: bytes, fetch) -> tuple[bytes, str]:
        if file_id not in self.files:
            return content, "forward"
        batch_id, role = self.files[file_id]
        fault = self.by_batch[batch_id]
        outputs = fetch(f"/files/{self.outputs[batch_id]}/content").splitlines() if self.outputs[batch_id] else []
        lost = outputs[len(outputs) - dropped(len(outputs)):] if fault == "expired" else outputs[:1]
        if role == "output":
            return b"".join(line + b"\n" for line in outputs if line not in lost), fault
        upstream_errors = fetch(f"/files/{self.errors[batch_id]}/content").splitlines() if self.errors[batch_id] else []
        return b"".join(line + b"\n" for line in upstream_errors + [self._failed(line, fault) for line in lost]), fault

    @staticmethod
    def _failed(line: bytes, fault: str) -> bytes:
        row = json.loads(line)
        if fault == "expired":
            row.update(response=None, error={"code": "batch_expired", "message": "This request could not be executed before the completion window expired."})
        else:
            row.update(response={"status_code": 400, "request_id": row["response"]["request_id"], "body": {"error": {
                "message": "injected item failure", "type": "invalid_request_error", "param": None, "code": None}}})
        return json.dumps(row).encode()

    def _anthropic_batch(self, batch_id: str, content: bytes, fetch) -> tuple[bytes, str]:
        fault = self.by_batch.get(batch_id, "none")
        batch = json.loads(content)
        counts = batch["request_counts"]
        total = sum(counts.values())
        if fault == "never-ends":
            batch.update(processing_status="in_progress", ended_at=None, results_url=None,
                         request_counts={"processing": total, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0})
            return json.dumps(batch).encode(), fault
        if fault not in ("expired", "partial") or batch["processing_status"] != "ended":
            return content, "forward"
        lost = dropped(counts["succeeded"]) if fault == "expired" else min(1, counts["succeeded"])
        moved = "expired" if fault == "expired" else "errored"
        batch["request_counts"] = {**counts, "succeeded": counts["succeeded"] - lost, moved: counts[moved] + lost}
        return json.dumps(batch).encode(), fault

    def _anthropic_results(self, batch_id: str, content: bytes, fetch) -> tuple[bytes, str]:
        fault = self.by_batch.get(batch_id, "none")
        if fault not in ("expired", "partial"):
            return content, "forward"
        rows = [json.loads(line) for line in content.splitlines() if line.strip()]
        good = [i for i, r in enumerate(rows) if r["result"]["type"] == "succeeded"]
        lost = set(good[len(good) - dropped(len(good)):] if fault == "expired" else good[:1])
        for index in lost:
            rows[index]["result"] = {"type": "expired"} if fault == "expired" else {"type": "errored", "error": {
                "type": "error", "error": {"type": "invalid_request_error", "message": "injected item failure"}}}
        return b"".join(json.dumps(r).encode() + b"\n" for r in rows), fault
