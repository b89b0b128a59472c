"""Refuse before spending: `bezoar validate` and the start of `bezoar run` find every problem that needs
no model call, one `FILE:LINE: key.path: ...` line each, all at once; `bezoar run` probes remote roles
(real loopback servers) before the first step."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from recipe_dicts import shipped, step, without, write
from servers import FaultServer, free_port

REPO = Path(__file__).resolve().parents[1]
BEZOAR = str(Path(sys.executable).parent / "bezoar")
HH = "preferences/hh-rlhf/harmless-base/test.jsonl.gz"


def bezoar(*args: str, cwd: Path = REPO, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    from conftest import DATA

    base = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "HH_RLHF")}
    return subprocess.run([BEZOAR, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**base, "BEZOAR_DATA": str(DATA), **(env or {})})


def test_paper_recipe_is_refused_in_seconds_naming_the_rows_and_the_variable(data_dir):
    keys = {"OPENAI_API_KEY": "sk-test", "ANTHROPIC_API_KEY": "sk-ant-test"}  # keys are set: only the data is short
    started = time.perf_counter()
    result = bezoar("validate", "recipes/openbezoar.yaml", env=keys)
    elapsed = time.perf_counter() - started
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = (REPO / "recipes" / "openbezoar.yaml").read_text().splitlines().index(
        next(t for t in (REPO / "recipes" / "openbezoar.yaml").read_text().splitlines() if "sft_n:" in t)) + 1
    assert lines[0].startswith(f"recipes/openbezoar.yaml:{line}: steps.3.sft_n: "), lines[0]  # the hh_slices step
    assert f"{data_dir / HH} has 2,312 rows" in lines[0] or f"shared/data/{HH} has 2,312 rows" in lines[0]
    assert "101,000" in lines[0] and "set HH_RLHF to a larger HH-RLHF file" in lines[0]
    assert elapsed < 30  # seconds, not the hours after which sft_hh used to find out


def test_shipped_tiny_recipe_passes(monkeypatch):
    from bezoar.config import load_recipe
    from bezoar.preflight import check_recipe

    monkeypatch.chdir(REPO)  # the recipe's data paths are relative to the repository
    check_recipe(load_recipe(REPO / "recipes" / "tiny.yaml"), Path("recipes/tiny.yaml"))


def test_every_problem_is_one_line_at_its_key(tmp_path, data_dir, monkeypatch):
    """Missing seed, malformed seed, unreachable n, short HH file, missing key, licence: all at once."""
    from bezoar.config import load_recipe
    from bezoar.preflight import Refused, refuse_before_spending

    bad_seed = tmp_path / "bad.jsonl"
    bad_seed.write_text('{"instruction": "Name a colour."}\n{"instruction": \n')
    unknown = tmp_path / "mine.jsonl"  # a file the licence registry does not know
    unknown.write_text("".join(f'{{"instruction": "Question {i}?"}}\n' for i in range(5)))
    recipe = shipped("tiny", data_dir)
    recipe["models"]["judge"] = {"spec": "openai:gpt-4o"}  # api.openai.com needs OPENAI_API_KEY
    generate = step(recipe, "generate")
    generate["lamini"]["seeds"] = [{"path": str(tmp_path / "missing.jsonl"), "licence": "apache-2.0"},
                                   {"path": str(bad_seed), "licence": "apache-2.0"}]
    generate["orca"]["seeds"] = [{"path": str(unknown)}]
    generate["orca"]["mix"] = {"other": 1}
    step(recipe, "hh_slices")["heldout_n"] = 3000
    path = write(tmp_path / "broken.yaml", recipe)
    text = path.read_text().splitlines()
    line = {key: 1 + next(i for i, t in enumerate(text) if t.strip().startswith(key)) for key in
            ("orca:", "sft_n:", "spec: openai:gpt-4o", "require_commercial_use:")}
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)

    with pytest.raises(Refused) as caught:
        refuse_before_spending(load_recipe(path), path, load_recipe(path).names(), tmp_path / "run")
    lines = str(caught.value).splitlines()
    said = "\n".join(lines)
    assert f"steps.0.lamini.seeds.0: seed file {tmp_path / 'missing.jsonl'} not found" in said
    assert f"steps.0.lamini.seeds.1: {bad_seed}:2: not valid JSON" in said
    assert f"{path}:{line['orca:'] + 1}: steps.0.orca.n: n=8 cannot be reached: at most 5 records" in said
    assert f"{path}:{line['sft_n:']}: steps.3.sft_n: sft_n 48 + dpo_n 48 + heldout_n 3,000 needs 3,096" in said
    assert "has 2,312 rows (2,304 well-formed)" in said and "point path at a larger" in said
    assert f"{path}:{line['spec: openai:gpt-4o']}: models.judge.api_key_env: " in said and "OPENAI_API_KEY is not set" in said
    assert f"{path}:{line['require_commercial_use:']}: run.require_commercial_use: " in said and str(unknown) in said
    assert len(lines) == 6 and all(t.startswith(f"{path}:") for t in lines), said
    assert not (tmp_path / "run").exists()  # a refusal touches nothing


def test_too_little_disk_is_refused_with_the_numbers(tmp_path, data_dir, monkeypatch):
    """A full disk cannot be produced on demand: the free-space query is the one thing replaced."""
    import shutil

    from bezoar.config import load_recipe
    from bezoar.preflight import Refused, refuse_before_spending

    recipe = (REPO / "recipes" / "tiny.yaml").read_text().replace("${BEZOAR_DATA:-../shared/data}", str(data_dir))
    path = tmp_path / "tiny.yaml"
    path.write_text(recipe)
    monkeypatch.setattr(shutil, "disk_usage", lambda where: shutil._ntuple_diskusage(10**12, 10**12 - 5 * 2**20, 5 * 2**20))
    with pytest.raises(Refused) as caught:
        refuse_before_spending(load_recipe(path), path, ["sft", "sft_hh", "dpo"], tmp_path / "runs" / "tiny")
    message = str(caught.value)
    run_line = 2 + recipe.splitlines().index("run:")  # run_dir is not in the recipe: where its section starts
    assert message.startswith(f"{path}:{run_line}: run.run_dir: ") and "has 5 MB free" in message, message
    assert "needs about 450 MB (sft 270, sft_hh 90, dpo 90" in message  # sft: 3 data sets x (2 kept + 1) x 30 MB


def test_a_step_whose_input_no_step_before_hands_on_is_refused_at_its_type(tmp_path, data_dir):
    """Handoffs are checked before anything runs: sft_hh without an hh_slices step before it, and a `from:`
    naming a step that does not make the input, are one line each at the step's `type`."""
    from bezoar.config import load_recipe
    from bezoar.preflight import Refused, refuse_before_spending

    recipe = without(shipped("tiny", data_dir), "hh_slices")
    step(recipe, "dpo")["from"] = "sft"  # sft hands on checkpoints, not the hh_dpo pairs
    path = write(tmp_path / "gap.yaml", recipe)
    text = path.read_text().splitlines()
    line = {kind: 1 + next(i for i, t in enumerate(text) if t.strip() == f"- type: {kind}") for kind in ("sft_hh", "dpo")}
    loaded = load_recipe(path)
    with pytest.raises(Refused) as caught:
        refuse_before_spending(loaded, path, loaded.names(), tmp_path / "run")
    lines = str(caught.value).splitlines()
    assert lines == [f"{path}:{line['sft_hh']}: steps.3.type: sft_hh reads 'hh_sft', but no step before it hands it "
                     "on; add a step that makes it before this one, or fix `from:`",
                     f"{path}:{line['dpo']}: steps.4.type: dpo reads 'hh_dpo', but the step 'sft' (its `from:`) does "
                     "not hand it on; add a step that makes it before this one, or fix `from:`"], lines
    assert not (tmp_path / "run").exists()


# --- probes ------------------------------------------------------------------------------------

def probe_recipe(tmp_path: Path, data_dir: Path, teacher: dict) -> Path:
    recipe = shipped("tiny", data_dir)
    recipe["models"]["teacher"] = {"max_retries": 0, "licence": "apache-2.0", **teacher}
    return write(tmp_path / "probe.yaml", recipe)


@pytest.mark.parametrize("case", ["unauthorised", "unreachable"])
def test_run_probes_remote_roles_first(tmp_path, data_dir, case):
    server = FaultServer(["401"]) if case == "unauthorised" else None
    url = server.url + "/v1" if server else f"http://127.0.0.1:{free_port()}/v1"
    secret = "sk-probe-secret-1234"
    recipe = probe_recipe(tmp_path, data_dir, {"spec": f"openai:foo@{url}", "api_key_env": "PROBE_KEY"})
    try:
        result = bezoar("run", str(recipe), "--only", "generate", cwd=tmp_path, env={"PROBE_KEY": secret})
    finally:
        if server:
            server.close()
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"role 'teacher' (openai:foo): endpoint {url}: "), result.stderr
    assert ("HTTP 401 unauthorised" in lines[0] and "PROBE_KEY" in lines[0]) if server else "unreachable" in lines[0]
    assert secret not in result.stderr + result.stdout  # the 401 body echoed the key: scrubbed
    if server:
        assert [s["path"] for s in server.seen] == ["/v1/chat/completions"]  # GET /models: 501 here, then 1 token
        assert server.seen[0]["body"]["max_tokens"] == 1
    assert not (tmp_path / "runs" / "tiny" / "manifest.json").exists()  # no step started
    if not server:  # --no-probe: the step starts and meets the dead endpoint itself
        skipped = bezoar("run", str(recipe), "--only", "generate", "--no-probe", cwd=tmp_path, env={"PROBE_KEY": secret})
        assert skipped.returncode == 2 and "--no-probe" not in skipped.stderr, skipped.stderr[-3000:]
        assert (tmp_path / "runs" / "tiny" / "manifest.json").exists()


def test_probe_passes_when_one_endpoint_answers(tmp_path):
    from bezoar.config import ModelConfig
    from bezoar.llm.probe import probe_role
    from bezoar.llm.specs import build_backend

    server = FaultServer(["ok"])
    dead = f"http://127.0.0.1:{free_port()}/v1"
    try:
        backend = build_backend(ModelConfig(spec=f"anthropic:claude-x@{server.url},{dead}"))
        results = probe_role("mt_bench_judge", backend)  # one endpoint up: the role is usable
    finally:
        server.close()
    assert [r.ok for r in results] == [True, False]
    assert [s["path"] for s in server.seen] == ["/v1/messages"] and server.seen[0]["body"]["max_tokens"] == 1


@pytest.mark.parametrize("script, ok", [(["529", "reset", "503", "ok"], True), (["400"], False)])
def test_probe_retries_a_busy_server_not_a_refusal(script, ok):
    """A hosted API that answers 529 "overloaded" or drops a connection for a moment is not down: the probe
    retries as a real call would; a 400 is an answer, and one try says so."""
    from bezoar.config import ModelConfig
    from bezoar.llm.probe import RoleUnreachable, probe_role
    from bezoar.llm.specs import build_backend

    server = FaultServer(script)
    try:
        backend = build_backend(ModelConfig(spec=f"anthropic:claude-x@{server.url}", max_retries=4, retry_backoff_s=0.01))
        if ok:
            assert [r.ok for r in probe_role("mt_bench_judge", backend)] == [True]
        else:
            with pytest.raises(RoleUnreachable, match="HTTP 400"):
                probe_role("mt_bench_judge", backend)
    finally:
        server.close()
    assert len(server.seen) == len(script)
