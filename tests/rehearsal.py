"""The paper run's production path, rehearsed on 127.0.0.1: recipes/rehearsal.yaml through real servers
and fault-injecting proxies. Shared by tests/test_rehearsal.py (CI-sized) and benchmarks/bench_faults.py.

One `bezoar serve` answers every role (OpenAI chat-completions and Anthropic messages). In a faulty run
each role reaches it through `tests/fault_proxy.py` processes:

    teacher   two endpoints: A injects every retryable fault once (429 in both Retry-After forms, 500,
              502, 503, 529, a reset connection, a truncated body, JSON of the wrong shape); B is
              SIGKILLed mid-generate, so its in-flight and later calls must go to A
    judge     one endpoint that hangs once past the judge's timeout
    claude    the MT-Bench judge (Anthropic API): one 529 (Anthropic's "overloaded")
    all       one seed's requests always get HTTP 400 (the item that cannot succeed)

A clean run uses the same recipe through pass-through proxies (same URLs shape, no faults).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from servers import free_port, wait_healthy

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TEACHER_FAULTS = ("429", "429-date", "500", "502", "503", "529", "reset", "truncated", "wrong-shape")
JUDGE_FAULTS = ("hang",)
CLAUDE_FAULTS = ("529",)
KILL_AFTER = 3
"""Teacher endpoint B is killed once it has delivered this many answers."""
Watch = Callable[[subprocess.Popen, Path], "float | None"]
"""Runs beside a rehearsal's `bezoar run` (the process, the run directory); returns when it acted, if it did."""


@contextmanager
def model_server(log: Path, timeout_s: float = 300):
    """`bezoar serve` on a free port: yields its base URL (no /v1)."""
    port = free_port()
    with open(log, "w") as out:
        process = subprocess.Popen([str(BIN / "bezoar"), "serve", "--port", str(port)], stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", process, timeout_s)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(process)


@dataclass
class Proxy:
    name: str
    process: subprocess.Popen
    port: int
    log: Path

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def requests(self) -> list[dict]:
        """Every POST it handled (see tests/fault_proxy.py)."""
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]


def start_proxy(name: str, upstream: str, workdir: Path, faults=(), poison=(), hang_s: float = 30,
                port: int | None = None, batch_faults=()) -> Proxy:
    port = port or free_port()
    log = workdir / f"proxy-{name}.jsonl"
    log.unlink(missing_ok=True)  # a later run in the same folder counts its own requests only
    command = [sys.executable, str(REPO / "tests" / "fault_proxy.py"), "--upstream", upstream, "--port", str(port),
               "--log", str(log), "--faults", ",".join(faults), "--hang-s", str(hang_s),
               "--batch-faults", ",".join(batch_faults)]
    for text in poison:
        command += ["--poison", text]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_healthy(f"http://127.0.0.1:{port}/health", process, 60)
    return Proxy(name, process, port, log)


@dataclass
class Rehearsal:
    """What one run did: exit code, output, wall time, and what every proxy delivered."""

    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    run_dir: Path
    ports: dict[str, int] = field(default_factory=dict)
    """{proxy: its port}: a later run on the same URLs (e.g. --retry-failed) passes these to rehearse."""
    logged: dict[str, list[dict]] = field(default_factory=dict)
    """{proxy: the requests it handled in this run}, read when the run ended: a later run in the same
    folder starts its proxies with fresh logs."""
    killed_at: float | None = None
    """When teacher endpoint B was killed (time.time(), as the proxies' logs)."""

    def requests(self, proxy: str | None = None) -> list[dict]:
        """What one proxy (or every proxy) handled in this run."""
        return [r for name, rows in self.logged.items() if proxy in (None, name) for r in rows]

    def repeated_calls(self) -> int:
        """Successful answers delivered twice for the same request body."""
        bodies = [r["sha"] for r in self.requests() if r["action"] == "forward" and r["status"] == 200 and r["delivered"]
                  and r.get("method", "POST") == "POST" and not r.get("items")]
        return len(bodies) - len(set(bodies))

    def faults_injected(self) -> dict[str, int]:
        """Per fault (poisoned requests included): how many requests got it."""
        counts: dict[str, int] = {}
        for request in self.requests():
            if request["action"] != "forward":
                counts[request["action"]] = counts.get(request["action"], 0) + 1
        return counts


def recipe_for(workdir: Path, data_dir: Path, **changes) -> Path:
    """recipes/rehearsal.yaml with the data directory filled in and `changes` ({"a.b.c": value}) applied; `a`
    is run, models, or a step's name or type."""
    import yaml

    recipe = yaml.safe_load((REPO / "recipes" / "rehearsal.yaml").read_text())
    for dotted, value in changes.items():
        node = recipe
        *parents, last = dotted.split(".")
        if parents and parents[0] not in recipe:  # a step, by name or type
            node = next(s for s in recipe["steps"] if parents[0] in (s.get("name"), s["type"]))
            parents = parents[1:]
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "rehearsal.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False).replace("${BEZOAR_DATA:-../shared/data}", str(data_dir)))
    return path


def rehearse(workdir: Path, upstream: str, recipe: Path, faulty: bool, poison: tuple[str, ...] = (),
             secret: str | None = None, args: tuple[str, ...] = (), timeout_s: float = 2400,
             ports: dict[str, int] | None = None, batch_faults: dict[str, tuple[str, ...]] | None = None,
             watch: Watch | None = None, extra_env: dict[str, str] | None = None) -> Rehearsal:
    """One `bezoar run` of `recipe` through proxies in front of `upstream` (a `bezoar serve` base URL), on
    `ports` when given: the URLs are part of the recipe, so a run on other ports is another recipe.
    `batch_faults` ({proxy: faults}) are given to the batches created through each proxy (tests/batch_faults.py);
    `watch(process, run_dir)`, if given, runs beside the command (e.g. to kill it) and returns when it acted."""
    workdir.mkdir(parents=True, exist_ok=True)
    faults = {"teacher_a": TEACHER_FAULTS, "teacher_b": (), "judge": JUDGE_FAULTS, "claude": CLAUDE_FAULTS}
    proxies = {name: start_proxy(name, upstream, workdir, injected if faulty else (), poison,
                                 port=(ports or {}).get(name), batch_faults=(batch_faults or {}).get(name, ()))
               for name, injected in faults.items()}
    env = {**_environment(workdir, proxies, secret), **(extra_env or {})}
    run_dir = workdir / "runs" / "rehearsal"
    if watch is None and faulty:
        watch = lambda process, run_dir: _kill_b_mid_generate(process, proxies["teacher_b"], run_dir)  # noqa: E731
    try:
        return _run(workdir, recipe, run_dir, env, proxies, watch=watch, args=args, timeout_s=timeout_s)
    finally:
        for proxy in proxies.values():
            _stop(proxy.process)


def _environment(workdir: Path, proxies: dict[str, Proxy], secret: str | None) -> dict:
    """Where each role goes; with `secret`, the same secret planted everywhere a user can put one."""
    def teacher(name: str) -> str:
        auth = f"rehearsal:{secret}@" if secret else ""  # URL user-info
        return proxies[name].url("/v1").replace("http://", f"http://{auth}")

    judge = proxies["judge"].url("/v1") + (f"?api-key={secret}" if secret else "")  # URL query
    env = {**os.environ, "BEZOAR_CACHE_DIR": str(workdir / "user-cache"),
           "REHEARSAL_TEACHER_URLS": f"{teacher('teacher_a')},{teacher('teacher_b')}",
           "REHEARSAL_JUDGE_URL": judge, "REHEARSAL_CLAUDE_URL": proxies["claude"].url(),
           "REHEARSAL_API_KEY": secret or "rehearsal-key"}  # the variable api_key_env names
    if secret:
        env.update(OPENAI_API_KEY=secret, ANTHROPIC_API_KEY=secret)  # provider keys: must go nowhere here
    return env


def _run(workdir: Path, recipe: Path, run_dir: Path, env: dict, proxies: dict[str, Proxy], watch: Watch | None,
         args: tuple[str, ...], timeout_s: float) -> Rehearsal:
    command = [str(BIN / "bezoar"), "run", str(recipe), "--run-dir", str(run_dir), *args]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    killed_at = watch(process, run_dir) if watch else None
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
    ports = {name: proxy.port for name, proxy in proxies.items()}
    logged = {name: proxy.requests() for name, proxy in proxies.items()}
    return Rehearsal(process.returncode, stdout, stderr, time.perf_counter() - started, run_dir, ports, logged,
                     killed_at)


def _kill_b_mid_generate(process: subprocess.Popen, endpoint: Proxy, run_dir: Path) -> float | None:
    """SIGKILL teacher endpoint B once it has answered KILL_AFTER calls while generate runs."""
    while process.poll() is None:
        if len(endpoint.requests()) >= KILL_AFTER and _stage_status(run_dir, "generate") == "running":
            os.killpg(endpoint.process.pid, signal.SIGKILL)
            endpoint.process.wait(timeout=30)
            return time.time()
        if _stage_status(run_dir, "generate") == "done":
            return None
        time.sleep(0.2)
    return None


def _stage_status(run_dir: Path, stage: str) -> str | None:
    try:
        return json.loads((run_dir / "manifest.json").read_text())["steps"].get(stage, {}).get("status")
    except (OSError, ValueError, KeyError):
        return None


def stop_process(process: subprocess.Popen) -> None:
    """SIGTERM a process started in a session of its own (its group), SIGKILL if it lingers."""
    _stop(process)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=20)


def content_key(row: dict) -> str:
    """A record's id without its teacher field: the two runs reach the same teacher through proxies on
    different ports, and a record's id names the teacher's URLs (its lineage)."""
    from bezoar.records import Record

    record = Record.model_validate(row)
    record.meta.teacher = ""
    return record.with_id().meta.id


def record_ids(run_dir: Path, folder: str) -> dict[str, list[str]]:
    """{data set: sorted content keys} of the records kept in RUN_DIR/FOLDER (a step's folder)."""
    found = {}
    for path in sorted((run_dir / folder).glob("*.jsonl")):
        if "." in path.stem or path.stem in ("failed", "rejected", "judgments"):  # not records kept
            continue
        found[path.stem] = sorted(content_key(json.loads(line)) for line in path.read_text().splitlines() if line.strip())
    return found


def failures(run_dir: Path) -> list[dict]:
    """Every failed item of the run, from every stage's failures files."""
    rows = []
    for path in sorted(run_dir.rglob("*failed.jsonl")):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


def poison_for(clean_run: Path) -> tuple[str, str]:
    """(a text only one generated record's requests contain, that record's key): the clean run's first Orca
    record; its seed question is the poison."""
    first = json.loads((clean_run / "generate" / "orca.jsonl").read_text().splitlines()[0])
    question = next(m["content"] for m in first["messages"] if m["role"] == "user")
    return question[:80], content_key(first)


def secret_hits(secret: str, *places: Path | str) -> list[str]:
    """Files (under the given directories) or texts that contain `secret`."""
    hits = []
    needle = secret.encode()
    for place in places:
        if isinstance(place, Path) and place.exists():
            files = [place] if place.is_file() else [p for p in place.rglob("*") if p.is_file()]
            hits += [str(f) for f in files if needle in f.read_bytes()]
        elif isinstance(place, str) and secret in place:
            hits.append("(output text)")
    return hits
