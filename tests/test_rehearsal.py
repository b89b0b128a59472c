"""The paper run's production path on 127.0.0.1 (recipes/rehearsal.yaml): teacher, filter judge and
MT-Bench judge behind HTTP, through fault-injecting proxies (every retryable fault, a hung judge, a
seed that always gets HTTP 400, a teacher endpoint SIGKILLed mid-generate) and with one secret planted
in every place a user can put one. See tests/rehearsal.py for the set-up."""
from __future__ import annotations

import base64
import hashlib
import json
import subprocess

import pytest

from rehearsal import (BIN, CLAUDE_FAULTS, JUDGE_FAULTS, TEACHER_FAULTS, failures, model_server, poison_for,
                       recipe_for, record_ids, rehearse, secret_hits)

SECRET = "s3cr3t-planted-0f9a7c"


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_rehearsal_survives_what_real_apis_do(tmp_path, data_dir):
    with model_server(tmp_path / "serve.log") as upstream:
        recipe = recipe_for(tmp_path, data_dir)
        clean = tmp_path / "clean"
        for stage in ("generate", "filter"):
            done = rehearse(clean, upstream, recipe, faulty=False, args=("--only", stage))
            assert done.returncode == 0, done.stderr[-3000:]
        poison, poisoned_id = poison_for(done.run_dir)

        faulty = rehearse(tmp_path / "faulty", upstream, recipe, faulty=True, poison=(poison,), secret=SECRET)
        assert faulty.returncode == 0, faulty.stderr[-3000:]
        faulty_generated, faulty_filtered = record_ids(faulty.run_dir, "generate"), record_ids(faulty.run_dir, "filter")
        manifest = json.loads((faulty.run_dir / "manifest.json").read_text())  # before --retry-failed changes it
        generate_failures = [f for f in failures(faulty.run_dir) if f["stage"].startswith("generate")]  # and these
        retried = rehearse(tmp_path / "faulty", upstream, recipe, faulty=False, secret=SECRET, ports=faulty.ports,
                           args=("--retry-failed", "--only", "generate"))  # the same URLs, without faults
        assert retried.returncode == 0, retried.stderr[-3000:]

    # The run completed: every stage done; the poisoned seed is the one failed item of generate.
    assert all(manifest["steps"][s]["status"] == "done" for s in ("generate", "filter", "sft", "sft_hh", "dpo", "eval", "report"))
    assert manifest["steps"]["generate"]["failed_items"] == 1, generate_failures

    # Its records are exactly the fault-free run's minus the poisoned one, in generate and in filter.
    clean_generated, clean_filtered = record_ids(done.run_dir, "generate"), record_ids(done.run_dir, "filter")
    expected = {m: [i for i in ids if i != poisoned_id] for m, ids in clean_generated.items()}
    assert expected != clean_generated  # the poisoned record was one of the clean run's
    assert faulty_generated == expected
    assert faulty_filtered == {m: [i for i in ids if i != poisoned_id] for m, ids in clean_filtered.items()}

    # The failed item is on file with the server's reason.
    assert len(generate_failures) == 1
    assert "HTTP 400" in generate_failures[0]["error"] and "context length exceeded" in generate_failures[0]["error"]
    assert poison in json.dumps(generate_failures[0]["input"])

    # Every scripted fault was injected, endpoint B died mid-generate and A took its calls afterwards,
    # and no successful call was made twice.
    injected = faulty.faults_injected()
    for fault in set(TEACHER_FAULTS + JUDGE_FAULTS + CLAUDE_FAULTS):
        assert injected.get(fault, 0) >= 1, f"{fault} never injected: {injected}"
    assert injected["poison"] >= 1 and faulty.killed_at is not None, "teacher endpoint B was never killed"
    assert [r for r in faulty.requests("teacher_a") if r["t"] > faulty.killed_at and r["action"] == "forward"]
    assert faulty.repeated_calls() == 0

    # The report and `bezoar status` show the failure.
    assert "failed item" in (faulty.run_dir / "report" / "index.html").read_text()
    status = subprocess.run([str(BIN / "bezoar"), "status", str(faulty.run_dir)], capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and "failed" in status.stdout

    # --retry-failed asked the failed item again, and only it: the records are now the clean run's.
    assert record_ids(faulty.run_dir, "generate") == clean_generated
    asked_again = [r for r in retried.requests() if r["action"] == "forward"]
    assert len(asked_again) == 1, asked_again
    assert json.loads((faulty.run_dir / "manifest.json").read_text())["steps"]["generate"]["failed_items"] == 0

    # Keys went only where they belong, and the secret is nowhere in what the run left behind.
    assert all(r["authorization"] is None for r in faulty.requests("judge"))  # OPENAI_API_KEY stayed home
    basic = "Basic " + base64.b64encode(f"rehearsal:{SECRET}".encode()).decode()
    assert {r["authorization"] for r in faulty.requests("teacher_a")} == {_hash(basic)}  # URL user-info, on the wire
    assert {r["authorization"] for r in faulty.requests("claude")} == {_hash(SECRET)}  # api_key_env
    assert secret_hits(SECRET, faulty.run_dir, tmp_path / "faulty" / "user-cache", faulty.stdout, faulty.stderr,
                       retried.stdout, retried.stderr) == []
