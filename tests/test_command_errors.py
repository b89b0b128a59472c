"""Every sub-command, given what a user gets wrong (a missing file, an unknown name, a bad model spec,
a task that needs the network), ends in one line on stderr and exit code 2, never a traceback.

The commands run in this process through `bezoar.cli.main` (the same path as the `bezoar` script,
without ~2 s of interpreter start per case); an exception that escapes `main` is a bug and fails the
test with its own traceback. A sub-command without a case here fails the test too, so a new command
joins the walk.
"""
from __future__ import annotations

import logging
import sys
import time

import pytest

from bezoar import cli


def _cases(tmp, data) -> dict[str, list[str]]:
    missing = tmp / "missing"
    bad_yaml = tmp / "bad.yaml"
    bad_yaml.write_text("run: {name: x\n  oops: [\n")
    bad_jsonl = tmp / "bad.jsonl"
    bad_jsonl.write_text('{"messages": [}\n')
    recipe = tmp / "recipe.yaml"
    recipe.write_text("run: {name: walk}\n")
    questions = str(data / "eval/mt_bench/question.jsonl")
    harness = str(data / "eval/harness")
    return {
        "validate: missing recipe": ["validate", f"{missing}.yaml"],
        "validate: bad YAML": ["validate", str(bad_yaml)],
        "chat: missing model dir": ["chat", "--model", f"local:{missing}", "hi"],
        "chat: unknown backend": ["chat", "--model", "bogus:x", "hi"],
        "chat: API key not set": ["chat", "--model", "openai:gpt-4o", "hi"],
        "serve: missing model dir": ["serve", "--model", f"local:{missing}", "--port", "0"],
        "serve: unknown backend": ["serve", "--model", "bogus:x"],
        "generate: unknown method": ["generate", "--method", "nosuch", "--seeds", str(bad_jsonl), "--n", "1",
                                     "--out", str(tmp / "o.jsonl")],
        "generate: missing seeds": ["generate", "--method", "lamini", "--seeds", f"{missing}.jsonl", "--n", "1",
                                    "--out", str(tmp / "o.jsonl")],
        "generate: bad teacher spec": ["generate", "--method", "lamini", "--teacher", "bogus:x", "--seeds",
                                       str(bad_jsonl), "--n", "1", "--out", str(tmp / "o.jsonl")],
        "stats: missing file": ["stats", f"{missing}.jsonl"],
        "stats: bad JSONL": ["stats", str(bad_jsonl)],
        "filter: missing input": ["filter", "--in", f"{missing}.jsonl", "--out", str(tmp / "f"), "--no-judge"],
        "filter: bad judge spec": ["filter", "--judge", "bogus:x", "--in", str(bad_jsonl), "--out", str(tmp / "f")],
        "judge-check: missing pairs": ["judge-check", "--pairs", f"{missing}.jsonl"],
        "sft: missing data": ["sft", "--data", f"{missing}.jsonl", "--out", str(tmp / "s")],
        "sft: missing base": ["sft", "--base", f"local:{missing}", "--data", str(bad_jsonl), "--out", str(tmp / "s")],
        "dpo: missing pairs": ["dpo", "--pairs", f"{missing}.jsonl", "--out", str(tmp / "d")],
        "check-template: missing model": ["check-template", "--model", f"local:{missing}"],
        "check-template: missing data": ["check-template", "--data", f"{missing}.jsonl"],
        "export: missing adapter": ["export", "--adapter", str(missing), "--out", str(tmp / "e")],
        "compare: not a run": ["compare", str(missing)],
        "run: missing recipe": ["run", f"{missing}.yaml"],
        "run: unknown step": ["run", str(recipe), "--from", "trian"],
        "recipe: nothing asked": ["recipe"],
        "plan: missing recipe": ["plan", f"{missing}.yaml"],
        "status: not a run": ["status", str(missing)],
        "report: not a run": ["report", str(missing)],
        "export-data: not a run": ["export-data", str(missing), "--out", str(tmp / "d")],
        "export-models: not a run": ["export-models", str(missing), "--out", str(tmp / "mo")],
        "eval mt-bench: missing questions": ["eval", "mt-bench", "--out", str(tmp / "m"), "--questions", f"{missing}.jsonl"],
        "eval mt-bench: bad judge spec": ["eval", "mt-bench", "--out", str(tmp / "m"), "--questions", questions,
                                          "--judge", "bogus:x"],
        "eval harness: unknown task": ["eval", "harness", "--tasks", "nosuchtask", "--data-dir", harness,
                                       "--out", str(tmp / "h")],
        "eval harness: task needs the hub": ["eval", "harness", "--tasks", "arc_easy", "--data-dir", harness,
                                             "--out", str(tmp / "h")],
        "eval harness: chat API": ["eval", "harness", "--tasks", "gsm8k", "--model", "anthropic:claude-2.1",
                                   "--data-dir", harness, "--out", str(tmp / "h")],
        "eval preference: missing pairs": ["eval", "preference", "--pairs", f"{missing}.jsonl"],
        "eval ifeval: missing prompts": ["eval", "ifeval", "--out", str(tmp / "i"), "--prompts", f"{missing}.jsonl"],
        "eval run: missing recipe": ["eval", "run", f"{missing}.yaml"],
        "eval winrate: missing prompts": ["eval", "winrate", "--model", "local", "--prompts", f"{missing}.jsonl",
                                          "--out", str(tmp / "w")],
        "eval winrate: bad model spec": ["eval", "winrate", "--model", "bogus:x", "--prompts", questions,
                                         "--out", str(tmp / "w")],
    }


def test_a_usage_error_is_click_s_message_and_exit_2_not_a_traceback(monkeypatch, capfd):
    """typer raises its own copy of click's usage errors: a missing argument or an unknown command still
    ends in click's usage message and exit code 2."""
    for argv in (["run"], ["nosuch"], ["plan", "--bogus"]):
        code = _run(argv, monkeypatch)
        err = capfd.readouterr().err
        assert code == 2 and "Error:" in err and "Traceback" not in err, (argv, code, err[-2000:])


def _commands(command, prefix: str = "") -> list[str]:
    """Every leaf sub-command of the CLI, e.g. 'eval harness'."""
    if not hasattr(command, "commands"):
        return [prefix]
    return [name for key, sub in command.commands.items() for name in _commands(sub, f"{prefix} {key}".strip())]


def _run(argv: list[str], monkeypatch) -> int:
    monkeypatch.setattr(sys, "argv", ["bezoar", *argv])
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        cli.main()
    except SystemExit as done:
        return done.code
    finally:  # the CLI configures logging for itself; give pytest its handlers back
        root.handlers[:], root.level = handlers, level
    return 0


def test_every_command_turns_bad_input_into_one_line(tmp_path, data_dir, monkeypatch, capfd):
    import typer

    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):  # the harness sets them for itself
        monkeypatch.setenv(name, "1")
    monkeypatch.chdir(tmp_path)
    cases = _cases(tmp_path, data_dir)
    covered = {name.split(":")[0] for name in cases}
    assert covered == set(_commands(typer.main.get_command(cli.app))), "every sub-command needs a case"
    for name, argv in cases.items():
        started = time.perf_counter()
        code = _run(argv, monkeypatch)
        err = capfd.readouterr().err
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, (name, code, err[-2000:])
        with capfd.disabled():  # the walk, as a user would see it (pytest -s)
            print(f"{time.perf_counter() - started:5.1f} s  {name}: {lines[0]}")
    assert not (tmp_path / "missing").exists()  # no command made an output folder for a failed input
