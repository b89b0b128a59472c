"""`bezoar plan`: calls, tokens, cost and wall time per stage and role, before anything runs. The plan's
call counts are compared with a real run's in tests/test_pipeline.py (the reference run it makes anyway)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BEZOAR = str(Path(sys.executable).parent / "bezoar")


def recipe_with(tmp_path: Path, data_dir: Path, **models) -> Path:
    recipe = yaml.safe_load((REPO / "recipes" / "tiny.yaml").read_text().replace("${BEZOAR_DATA:-../shared/data}",
                                                                                  str(data_dir)))
    recipe["models"].update(models)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_plan_json_of_the_tiny_recipe(data_dir):
    from conftest import DATA

    result = subprocess.run([BEZOAR, "plan", "recipes/tiny.yaml", "--json"], capture_output=True, text=True,
                            cwd=REPO, timeout=120, env={**os.environ, "BEZOAR_DATA": str(DATA)})
    assert result.returncode == 0, result.stderr[-3000:]
    plan = json.loads(result.stdout)
    rows = {(line["stage"], line["role"]): line for line in plan["lines"]}
    assert set(rows) == {("generate", "teacher"), ("generate", "judge"), ("filter", "judge"),
                         ("eval", "student"), ("eval", "judge")}
    # every record needs at least one teacher call; evol's equality check asks the judge
    assert rows["generate", "teacher"]["calls"] >= 6 + 6 + 8 and rows["generate", "judge"]["calls"] > 0
    # MT-Bench: (base + dpo) x 8 questions (per_category 1) x 2 turns, answered and graded
    assert rows["eval", "student"]["calls"] == rows["eval", "judge"]["calls"] == 2 * 8 * 2
    assert rows["eval", "judge"]["completion_tokens"] == 32  # a local judge rates by next token: 1 each
    assert plan["cost_usd"] == 0 and all(line["wall_s"] > 0 for line in plan["lines"])
    assert plan["tokens_counted_with"] in ("the embedded SmolLM2 tokenizer", "chars/4")


def test_cost_and_remote_wall_time_follow_the_recipe(tmp_path, data_dir):
    from bezoar.config import load_recipe
    from bezoar.plan import REMOTE_STREAM_TOK_S, make_plan

    teacher = {"spec": "openai:big@http://user:sekret-token@127.0.0.1:9/v1?api-key=sekret-key", "input_price_per_mtok": 2.0,
               "output_price_per_mtok": 6.0, "concurrency": 4}
    plan = make_plan(load_recipe(recipe_with(tmp_path, data_dir, teacher=teacher)), ["generate"])
    line = next(line for line in plan.lines if line.role == "teacher")
    assert line.cost_usd == round((line.prompt_tokens * 2.0 + line.completion_tokens * 6.0) / 1e6, 2) > 0
    assert line.wall_s == round(line.completion_tokens / (REMOTE_STREAM_TOK_S * 4))
    assert "30 tok/s per request, 4 in flight" in line.note
    assert line.model == "openai:big@http://127.0.0.1:9/v1" and "sekret" not in json.dumps(plan.to_json())


def test_prompt_tokens_are_measured_on_the_seeds(tmp_path, data_dir):
    """Longer seeds make longer prompts: Orca's per-call prompt grows with the seed rows it renders."""
    from bezoar.config import load_recipe
    from bezoar.plan import plan_orca

    recipe = load_recipe(recipe_with(tmp_path, data_dir))
    short = plan_orca(recipe, recipe.generate.orca)[0][2]
    padded = tmp_path / "long.jsonl"
    padded.write_text("".join(json.dumps({"inputs": f"Question {i}: " + "why is the sky blue? " * 50,
                                          "targets": "yes"}) + "\n" for i in range(40)))
    long = plan_orca(recipe, recipe.generate.orca.model_copy(update={
        "seeds": [recipe.generate.orca.seeds[0].model_copy(update={"path": padded})], "mix": {"other": 1}}))[0][2]
    assert short > 20 and long > short + 200  # 50 x 6 words each


def test_replay_follows_the_generate_batching():
    """The plan replays bezoar.generate.runner.Batching: n=3 at one record per item is one round of 3."""
    from bezoar.plan import replay

    assert replay(3, 16, 1.0, 1.0) == (3, 3.0)
    sent, made = replay(100, 16, 1.0, 0.5)
    assert 200 <= sent <= 216 and made >= 100  # about n / yield, never more than one batch over


def test_status_shows_planned_against_done(tmp_path):
    from bezoar.pipeline_commands import console, show_status

    data = {"run_name": "x", "plan": {"calls_by_stage": {"generate": 40, "filter": 16}},
            "stages": {"generate": {"status": "done", "usage": {"teacher": {"calls": 30, "cache_hits": 7}}}}}
    width, console.width = console.width, 200  # every column whole
    try:
        with console.capture() as captured:
            show_status(tmp_path, data)
    finally:
        console.width = width
    row = next(line for line in captured.get().splitlines() if "generate" in line)
    assert "done/planned" in captured.get() and "37/~40" in row  # 30 calls + 7 cache hits of ~40 planned


EXACT_TOLERANCE = 0.5
"""Where a stage's calls follow from the recipe (Orca: one call per seed; the filter judge: one per
record; MT-Bench: two turns per question and checkpoint), planned and real calls agree within 50%: at
n=3 a single rejection moves a count by a third."""


@pytest.mark.slow
@pytest.mark.timeout(2700)  # asks for the session's smoke runs (conftest.smoke_runs), built once for several modules
def test_planned_calls_match_a_real_run(smoke_runs):
    """The plan stored at `bezoar run` start against the calls the never-killed smoke run answered
    (made + cache hits). LaMini and Evol-Instruct depend on the teacher's yields, which the plan assumes
    for a capable teacher: there the 135M teacher may need more calls, never far fewer."""
    data = json.loads((smoke_runs.root / "runs" / "reference" / "manifest.json").read_text())
    planned = {(line["stage"], line["role"]): line for line in data["plan"]["lines"]}
    schemes = data["stages"]["generate"]["summary"]["schemes"]

    def answered(usage: dict) -> int:
        return usage["calls"] + usage["cache_hits"]

    exact = {"orca": (planned["generate", "teacher"]["by_scheme"]["orca"], answered(schemes["orca"]["usage"])),
             "filter": (planned["filter", "judge"]["calls"], answered(data["stages"]["filter"]["usage"]["judge"])),
             "mt_bench": (planned["eval", "judge"]["calls"], answered(data["stages"]["eval"]["usage"]["judge"]))}
    for name, (plan, done) in exact.items():
        assert abs(done - plan) <= EXACT_TOLERANCE * plan, (name, exact)
    # eval's student is left out: the manifest counts the base student's calls only (each checkpoint is a
    # model of its own, outside the run's roles), while the plan counts every checkpoint's answers.
    assumed = {m: (planned["generate", "teacher"]["by_scheme"][m], answered(schemes[m]["usage"]))
               for m in ("lamini", "evol")}
    assert all(done >= plan / 2 for plan, done in assumed.values()), assumed


def test_a_partial_run_replans_only_its_stages(tmp_path, data_dir):
    from bezoar.config import load_recipe
    from bezoar.plan import make_plan

    recipe = load_recipe(recipe_with(tmp_path, data_dir))
    full = make_plan(recipe).to_json()
    again = make_plan(recipe, ["filter"]).over(full, ["filter"])
    assert again["calls_by_stage"] == full["calls_by_stage"] and len(again["lines"]) == len(full["lines"])
    assert make_plan(recipe, ["filter"]).over(None, ["filter"])["calls_by_stage"] == {"filter": 16}


LISTED = "\n".join(f"{i}. {text}" for i, text in enumerate([
    "Describe how a lighthouse keeper spent a winter night in 1890.",
    "Compare the migration routes of arctic terns and bar-tailed godwits.",
    "Write a short limerick about a forgetful robot vacuum cleaner.",
    "Explain why sourdough bread rises more slowly than yeasted bread.",
    "List three ways a small village library could attract teenage readers.",
    "Summarise the plot of a heist story set inside a glacier research station.",
    "Plan a two-day cycling tour along a river with one overnight stop.",
    "Classify these instruments as string, wind or percussion: oboe, cello, marimba.",
], 1))


def test_planned_generate_calls_match_a_run_against_a_loopback_server(tmp_path, data_dir):
    """The real LaMini and Orca code against a real HTTP server that answers every call with one numbered
    list (parseable, so the yields are known): planned and made calls agree within EXACT_TOLERANCE."""
    from bezoar.config import load_recipe
    from bezoar.generate.stage import run_generate
    from bezoar.llm.cache import CallCache
    from bezoar.stage_process import LazyModels
    from bezoar.plan import make_plan
    from servers import OK_BODY, FaultServer

    body = {**OK_BODY, "choices": [{**OK_BODY["choices"][0], "message": {"role": "assistant", "content": LISTED}}]}
    server = FaultServer([], ok_body=body)
    try:
        teacher = {"spec": f"openai:teacher@{server.url}/v1", "licence": "apache-2.0", "max_retries": 0}
        path = recipe_with(tmp_path, data_dir, teacher=teacher)
        recipe = yaml.safe_load(path.read_text())
        recipe["generate"]["evol"]["n"] = 0  # its evolutions would all be one text: duplicates, not a yield
        recipe["generate"]["lamini"]["n"] = recipe["generate"]["orca"]["n"] = 3
        path.write_text(yaml.safe_dump(recipe))
        loaded = load_recipe(path)
        planned = next(line for line in make_plan(loaded, ["generate"]).lines if line.role == "teacher").by_scheme
        summary = run_generate(loaded, tmp_path / "run", LazyModels(loaded, CallCache(tmp_path / "calls.sqlite")))
    finally:
        server.close()
    made = {m: s["usage"]["calls"] for m, s in summary["schemes"].items()}
    assert set(made) == set(planned) == {"lamini", "orca"}
    for method in made:
        assert abs(made[method] - planned[method]) <= EXACT_TOLERANCE * planned[method], (planned, made)
    assert sum(made.values()) == len(server.seen)  # every call the stage made reached the server once
