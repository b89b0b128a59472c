"""Two processes at once on what bezoar shares between processes: one call cache written with the
same keys by both, `bezoar status` read while a stage writes, and the one-time model conversion
started by two processes in a fresh cache directory."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.timeout(900)

# Each writer: 3 threads, each walking the same 400 keys in its own order, reading before writing (as
# CachedModel does) and writing the reply that key always gets. It prints, per key, what it returned.
WRITER = """
import hashlib, json, random, sys, threading
from bezoar.llm.cache import CallCache
from bezoar.llm.protocol import Reply

cache, seed = CallCache(sys.argv[1]), int(sys.argv[2])
keys = [f"key-{i}" for i in range(400)]
answers = {}

def reply_for(key):  # what a deterministic model answers: the same text in every process
    return Reply(text=hashlib.sha256(key.encode()).hexdigest() * 3, finish_reason="stop",
                 prompt_tokens=len(key), completion_tokens=7)

def work(thread):
    order = keys[:]
    random.Random(seed * 10 + thread).shuffle(order)
    for start in range(0, len(order), 8):
        chunk = order[start:start + 8]
        found = cache.get_many(chunk)
        for key in chunk:
            reply = found.get(key) or reply_for(key)
            if key not in found:
                cache.put(key, reply)
            answers[key] = reply.text

threads = [threading.Thread(target=work, args=(t,)) for t in range(3)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(answers))
"""


def _env(cache_dir: Path) -> dict:
    return {**os.environ, "BEZOAR_CACHE_DIR": str(cache_dir), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}


def test_two_processes_write_the_same_keys_into_one_cache(tmp_path):
    path = tmp_path / "calls.sqlite"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(seed)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=_env(tmp_path)) for seed in (1, 2)]
    outputs = [w.communicate(timeout=300) for w in writers]
    assert [w.returncode for w in writers] == [0, 0], [err[-2000:] for _, err in outputs]
    first, second = (json.loads(out) for out, _ in outputs)
    assert first == second and len(first) == 400  # both processes got the same answer for every key
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = conn.execute("SELECT key, reply FROM calls").fetchall()
    assert len(rows) == len({key for key, _ in rows}) == 400  # no duplicate, none lost
    assert all(json.loads(reply)["text"] == first[key] for key, reply in rows)  # none torn


def test_two_chat_commands_share_one_cache_entry(tmp_path):
    """The real model in two processes at once: the same greedy reply, one row in the cache."""
    from bezoar.llm.weights import models_cache_dir

    (tmp_path / "models").symlink_to(models_cache_dir(), target_is_directory=True)  # no second conversion
    command = [str(BIN / "bezoar"), "chat", "--json", "--max-new-tokens", "12", "Name a colour."]
    chats = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(tmp_path))
             for _ in range(2)]
    outputs = [c.communicate(timeout=600) for c in chats]
    assert [c.returncode for c in chats] == [0, 0], [err[-2000:] for _, err in outputs]
    replies = [json.loads(out) for out, _ in outputs]
    assert replies[0]["text"] == replies[1]["text"] and replies[0]["text"]
    with sqlite3.connect(tmp_path / "calls.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == 1


def test_status_while_a_stage_runs(tmp_path, data_dir):
    """`bezoar status` polled while `bezoar run --only generate` writes the manifest: every read is a
    table (exit 0, no traceback) showing the stage running; after a SIGKILL it shows it interrupted."""
    from bezoar.llm.weights import models_cache_dir

    recipe = yaml.safe_load((REPO / "recipes" / "tiny.yaml").read_text())
    recipe["run"]["name"] = "watched"
    path = tmp_path / "watched.yaml"
    path.write_text(yaml.safe_dump(recipe).replace("${BEZOAR_DATA:-../shared/data}", str(data_dir)))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "models").symlink_to(models_cache_dir(), target_is_directory=True)
    env = {**_env(tmp_path / "cache"), "COLUMNS": "200"}

    def status() -> str:
        shown = subprocess.run([str(BIN / "bezoar"), "status", "runs/watched"], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=120)
        assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stderr[-2000:]
        row = next(line for line in shown.stdout.splitlines() if "generate" in line)
        return next(s for s in ("interrupted", "running", "done", "pending") if s in row)

    run = subprocess.Popen([str(BIN / "bezoar"), "run", str(path), "--only", "generate"], cwd=tmp_path, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    states, deadline = [], time.time() + 300
    try:
        while states.count("running") < 3 and time.time() < deadline:
            assert run.poll() is None, run.stderr.read()[-2000:]
            if (tmp_path / "runs" / "watched" / "manifest.json").exists():
                states.append(status())
            time.sleep(0.3)
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait(timeout=60)
    assert states.count("running") == 3, states
    assert status() == "interrupted"


CONVERT = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(message)s")
from bezoar.llm.weights import resolve_model_dir
print(resolve_model_dir(None))
"""


def test_two_processes_convert_the_embedded_model_once(tmp_path):
    """A fresh cache directory and two processes asking for the embedded model at the same moment:
    one converts (~20 s), the other waits on the lock and uses its result."""
    processes = [subprocess.Popen([sys.executable, "-c", CONVERT], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=_env(tmp_path)) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], [err[-2000:] for _, err in outputs]
    paths = {out.strip() for out, _ in outputs}
    assert len(paths) == 1
    target = Path(paths.pop())
    assert sum("converting" in err for _, err in outputs) == 1  # one conversion, not two
    assert (target / "config.json").exists() and (target / "model.safetensors").stat().st_size > 100_000_000
    assert [p.name for p in target.parent.iterdir() if ".tmp" in p.name] == []  # no staging left behind
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(target).model_type == "llama"


SHARER = """
import sys, time
from bezoar.llm.cores import SHARE
SHARE.cores = 4
with SHARE.computing():
    print(SHARE.threads, flush=True)
    sys.stdin.readline()  # wait for the test
    SHARE.checked = 0.0
    print(SHARE.rebalance(), flush=True)
    sys.stdin.readline()
"""


def test_processes_computing_at_once_share_the_cores(tmp_path):
    """Each bezoar process computing registers under the user cache and takes cores // (processes computing)
    threads; one that leaves gives its cores back, and one that was SIGKILLed is not counted."""
    env = {**_env(tmp_path)}
    env.pop("OMP_NUM_THREADS", None)
    env.pop("BEZOAR_DETERMINISTIC", None)  # deterministic mode keeps a fixed thread count

    def start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", SHARER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)

    first = start()
    assert first.stdout.readline().strip() == "4"  # alone: every core
    second = start()
    assert second.stdout.readline().strip() == "2"  # beside the first
    first.stdin.write("\n")
    first.stdin.flush()
    assert first.stdout.readline().strip() == "2"  # the first looks again and makes room
    os.kill(second.pid, signal.SIGKILL)  # leaves its entry behind
    second.wait(timeout=60)
    assert (tmp_path / "cores" / str(second.pid)).exists()
    third = start()
    assert third.stdout.readline().strip() == "2"  # the first and itself: the dead entry is not counted
    assert not (tmp_path / "cores" / str(second.pid)).exists()
    for process in (first, third):
        process.stdin.write("\n\n")
        process.stdin.flush()
        process.communicate(timeout=60)
        assert process.returncode == 0
    assert [p.name for p in (tmp_path / "cores").iterdir()] == []  # each left on its way out


def test_the_thread_count_does_not_change_the_numbers(embedded):
    """Sharing changes a process's thread count while it decodes: logits must not depend on it (in fp32,
    deterministic mode, and in bf16), or a run beside another would decode otherwise than alone."""
    import torch

    from bezoar.llm.local import LocalBackend

    threads = torch.get_num_threads()
    ids = torch.tensor([embedded.encode([{"role": "user", "content": "Name three rivers in Europe."}])] * 3)
    try:
        for backend in (embedded, LocalBackend(exact=False)):
            logits = []
            for count in (1, 2):
                torch.set_num_threads(count)
                with torch.inference_mode():
                    logits.append(backend.loaded.model(input_ids=ids).logits)
            assert torch.equal(logits[0], logits[1]), backend.loaded.plan.dtype_name
    finally:
        torch.set_num_threads(threads)
