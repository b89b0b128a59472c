"""`bezoar plan`: calls, tokens, cost and wall time per step and role, before anything runs. The plan's
call counts are compared with a real run's (the smoke reference run, made anyway for tests/test_chaos.py)."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from recipe_dicts import shipped, step, write

REPO = Path(__file__).resolve().parents[1]
BEZOAR = str(Path(sys.executable).parent / "bezoar")


def recipe_with(tmp_path: Path, data_dir: Path, **models) -> Path:
    recipe = shipped("tiny", data_dir)
    recipe["models"].update(models)
    return write(tmp_path / "recipe.yaml", recipe)


def planned_teacher(recipe: dict, folder: Path, method: str) -> tuple[int, int]:
    """(calls, prompt tokens) the plan expects of the teacher for one generate scheme: the recipe planned
    with every other scheme at n: 0 (a plan line sums a role's calls over the step's schemes)."""
    from bezoar.config import load_recipe
    from bezoar.generate.config import METHODS
    from bezoar.plan import make_plan

    alone = copy.deepcopy(recipe)
    for other in METHODS:
        if other != method:
            step(alone, "generate")[other]["n"] = 0
    loaded = load_recipe(write(folder / f"only-{method}.yaml", alone))
    line = next(line for line in make_plan(loaded, ["generate"]).lines if line.role == "teacher")
    return line.calls, line.prompt_tokens


def test_plan_json_of_the_tiny_recipe(data_dir):
    from conftest import DATA

    result = subprocess.run([BEZOAR, "plan", "recipes/tiny.yaml", "--json"], capture_output=True, text=True,
                            cwd=REPO, timeout=120, env={**os.environ, "BEZOAR_DATA": str(DATA)})
    assert result.returncode == 0, result.stderr[-3000:]
    plan = json.loads(result.stdout)
    rows = {(line["step"], line["role"]): line for line in plan["lines"]}
    assert set(rows) == {("generate", "teacher"), ("generate", "judge"), ("filter", "judge"),
                         ("eval", "student"), ("eval", "judge")}
    # every record needs at least one teacher call; evol's equality check asks the judge
    assert rows["generate", "teacher"]["calls"] >= 6 + 6 + 8 and rows["generate", "judge"]["calls"] > 0
    # MT-Bench: (base + dpo) x 8 questions (per_category 1) x 2 turns, answered and graded
    assert rows["eval", "student"]["calls"] == rows["eval", "judge"]["calls"] == 2 * 8 * 2
    assert rows["eval", "judge"]["completion_tokens"] == 0  # a local judge rates by next token: generates none
    assert plan["cost_usd"] == 0 and all(line["wall_s"] > 0 for line in plan["lines"])
    assert plan["tokens_counted_with"] in ("the embedded SmolLM2 tokenizer", "chars/4")


def test_cost_and_remote_wall_time_follow_the_recipe(tmp_path, data_dir):
    from bezoar.config import load_recipe
    from bezoar.plan import make_plan

    teacher = {"spec": "openai:big@http://user:sekret-token@127.0.0.1:9/v1?api-key=sekret-key", "input_price_per_mtok": 2.0,
               "output_price_per_mtok": 6.0, "concurrency": 4}
    plan = make_plan(load_recipe(recipe_with(tmp_path, data_dir, teacher=teacher)), ["generate"])
    line = next(line for line in plan.lines if line.role == "teacher")
    assert line.cost_usd == round((line.prompt_tokens * 2.0 + line.completion_tokens * 6.0) / 1e6, 2) > 0
    assert line.wall_s == round(line.completion_tokens / (30.0 * 4))  # stream_tok_s's default
    assert "30 tok/s per request, 4 in flight" in line.note
    # a server slower than an API (one on the run's own CPU cores) says how fast it streams
    slow = make_plan(load_recipe(recipe_with(tmp_path, data_dir, teacher={**teacher, "stream_tok_s": 7.5})), ["generate"])
    slow_line = next(line for line in slow.lines if line.role == "teacher")
    assert slow_line.wall_s == round(slow_line.completion_tokens / (7.5 * 4)) > line.wall_s
    assert "7.5 tok/s per request" in slow_line.note
    assert line.model == "openai:big@http://127.0.0.1:9/v1" and "sekret" not in json.dumps(plan.to_json())


def test_prompt_tokens_are_measured_on_the_seeds(tmp_path, data_dir):
    """Longer seeds make longer prompts: Orca's per-call prompt grows with the seed rows it renders."""
    recipe = shipped("tiny", data_dir)
    calls, tokens = planned_teacher(recipe, tmp_path, "orca")
    short = tokens / calls
    padded = tmp_path / "long.jsonl"
    padded.write_text("".join(json.dumps({"inputs": f"Question {i}: " + "why is the sky blue? " * 50,
                                          "targets": "yes"}) + "\n" for i in range(40)))
    orca = step(recipe, "generate")["orca"]
    orca["seeds"], orca["mix"] = [{"path": str(padded)}], {"other": 1}
    calls, tokens = planned_teacher(recipe, tmp_path, "orca")
    long = tokens / calls
    assert short > 20 and long > short + 200  # 50 x 6 words each


def test_replay_follows_the_generate_batching():
    """The plan replays bezoar.generate.runner.Batching: n=3 at one record per item is one round of 3."""
    from bezoar.plan import replay

    assert replay(3, 16, 1.0, 1.0) == (3, 3.0)
    sent, made = replay(100, 16, 1.0, 0.5)
    assert 200 <= sent <= 216 and made >= 100  # about n / yield, never more than one batch over


def test_status_shows_planned_against_done(tmp_path):
    from bezoar.pipeline_commands import console, show_status

    data = {"run_name": "x", "plan": {"calls_by_step": {"generate": 40, "filter": 16}},
            "steps": {"generate": {"status": "done", "usage": {"teacher": {"calls": 30, "cache_hits": 7}}}}}
    width, console.width = console.width, 200  # every column whole
    try:
        with console.capture() as captured:
            show_status(tmp_path, data)
    finally:
        console.width = width
    row = next(line for line in captured.get().splitlines() if "generate" in line)
    assert "done/planned" in captured.get() and "37/~40" in row  # 30 calls + 7 cache hits of ~40 planned


EXACT_TOLERANCE = 0.5
"""Where a step's calls follow from the recipe (Orca: one call per seed; the filter judge: one per
record; MT-Bench: two turns per question and checkpoint), planned and real calls agree within 50%: at
n=3 a single rejection moves a count by a third."""


@pytest.mark.xdist_group("smoke")  # beside the other users of the session's smoke runs
@pytest.mark.slow
@pytest.mark.timeout(2700)  # asks for the session's smoke runs (conftest.smoke_runs), built once for several modules
def test_planned_calls_match_a_real_run(smoke_runs):
    """The plan stored at `bezoar run` start against the calls the never-killed smoke run answered
    (made + cache hits). LaMini and Evol-Instruct depend on the teacher's yields, which the plan assumes
    for a capable teacher: there the 135M teacher may need more calls, never far fewer."""
    data = json.loads((smoke_runs.root / "runs" / "reference" / "manifest.json").read_text())
    planned = {(line["step"], line["role"]): line for line in data["plan"]["lines"]}
    schemes = data["steps"]["generate"]["result"]["details"]["schemes"]
    recipe = yaml.safe_load((smoke_runs.root / "reference.yaml").read_text())
    by_scheme = {m: planned_teacher(recipe, smoke_runs.root, m)[0] for m in ("lamini", "evol", "orca")}

    def answered(usage: dict) -> int:
        return usage["calls"] + usage["cache_hits"]

    exact = {"orca": (by_scheme["orca"], answered(schemes["orca"]["usage"])),
             "filter": (planned["filter", "judge"]["calls"], answered(data["steps"]["filter"]["usage"]["judge"])),
             "mt_bench": (planned["eval", "judge"]["calls"], answered(data["steps"]["eval"]["usage"]["judge"]))}
    for name, (plan, done) in exact.items():
        assert abs(done - plan) <= EXACT_TOLERANCE * plan, (name, exact)
    # eval's student is left out: the manifest counts the base student's calls only (each checkpoint is a
    # model of its own, outside the run's roles), while the plan counts every checkpoint's answers.
    assumed = {m: (by_scheme[m], answered(schemes[m]["usage"])) for m in ("lamini", "evol")}
    assert sum(by_scheme.values()) == planned["generate", "teacher"]["calls"]  # the schemes' plans add up
    assert all(done >= plan / 2 for plan, done in assumed.values()), assumed


def test_a_partial_run_replans_only_its_steps(tmp_path, data_dir):
    from bezoar.config import load_recipe
    from bezoar.plan import make_plan

    recipe = load_recipe(recipe_with(tmp_path, data_dir))
    full = make_plan(recipe).to_json()
    again = make_plan(recipe, ["filter"]).over(full, ["filter"])
    assert again["calls_by_step"] == full["calls_by_step"] and len(again["lines"]) == len(full["lines"])
    assert make_plan(recipe, ["filter"]).over(None, ["filter"])["calls_by_step"] == {"filter": 15}  # 20 x 0.75



def test_eval_scores_a_dpo_checkpoints_pairs_under_it_and_its_reference(tmp_path, data_dir):
    """Preference accuracy reads the pairs once per model, and once more under a DPO checkpoint's reference
    (verifiable.yaml: the base and the dpo checkpoint, 200 held-out pairs)."""
    from bezoar.config import load_recipe
    from bezoar.plan import LOCAL_PREFILL_TOK_S, make_plan
    from bezoar.steps.eval import EVAL_START_S, PREFERENCE_PAIR_TOKENS

    recipe = shipped("verifiable", data_dir)
    scored = make_plan(load_recipe(write(tmp_path / "scored.yaml", recipe)), ["eval"]).wall_s["eval"]
    step(recipe, "eval")["preference"]["enabled"] = False
    unscored = make_plan(load_recipe(write(tmp_path / "unscored.yaml", recipe)), ["eval"]).wall_s["eval"]
    passes = 1 + 2  # the base under itself; the dpo checkpoint under itself and under the base
    expected = 2 * EVAL_START_S + passes * 200 * PREFERENCE_PAIR_TOKENS / LOCAL_PREFILL_TOK_S
    assert abs((scored - unscored) - expected) <= 1, (scored, unscored, expected)  # wall times are whole seconds


def test_a_fresh_model_cache_plans_the_weights_conversion_once(tmp_path, data_dir, monkeypatch):
    """The first step that loads the embedded model converts its GGUF (once per model cache): tiny's generate."""
    import bezoar.plan as plan_module
    from bezoar.config import load_recipe

    recipe = load_recipe(recipe_with(tmp_path, data_dir))
    plan_module._tokenizer()  # counted alike in both plans (the tokenizer found once per process)
    converted = tmp_path / "converted" / "models" / "SmolLM2-135M-Instruct.Q4_1-0123456789ab"
    converted.mkdir(parents=True)
    (converted / "model.safetensors").write_bytes(b"")  # the plan only looks for it
    monkeypatch.setenv("BEZOAR_CACHE_DIR", str(converted.parents[1]))
    warm = plan_module.make_plan(recipe).wall_s
    monkeypatch.setenv("BEZOAR_CACHE_DIR", str(tmp_path / "fresh"))
    fresh = plan_module.make_plan(recipe).wall_s
    assert abs(fresh.pop("generate") - warm.pop("generate") - plan_module.WEIGHTS_CONVERSION_S) <= 1
    assert fresh == warm

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
    from bezoar.llm.cache import CallCache
    from bezoar.roles import LazyModels
    from bezoar.steps.base import StepContext
    from servers import OK_BODY, FaultServer

    body = {**OK_BODY, "choices": [{**OK_BODY["choices"][0], "message": {"role": "assistant", "content": LISTED}}]}
    server = FaultServer([], ok_body=body)
    try:
        teacher = {"spec": f"openai:teacher@{server.url}/v1", "licence": "apache-2.0", "max_retries": 0}
        recipe = shipped("tiny", data_dir)
        recipe["models"]["teacher"] = teacher
        generate = step(recipe, "generate")
        generate["evol"]["n"] = 0  # its evolutions would all be one text: duplicates, not a yield
        generate["lamini"]["n"] = generate["orca"]["n"] = 3
        planned = {m: planned_teacher(recipe, tmp_path, m)[0] for m in ("lamini", "orca")}
        loaded = load_recipe(write(tmp_path / "recipe.yaml", recipe))
        models = LazyModels(dict(loaded.models), CallCache(tmp_path / "calls.sqlite"))
        result = loaded.step("generate").run(StepContext(loaded, tmp_path / "run", "generate", models))
    finally:
        server.close()
    made = {m: s["usage"]["calls"] for m, s in result.details["schemes"].items()}
    assert set(made) == set(planned) == {"lamini", "orca"}
    for method in made:
        assert abs(made[method] - planned[method]) <= EXACT_TOLERANCE * planned[method], (planned, made)
    assert sum(made.values()) == len(server.seen)  # every call the step made reached the server once


def test_prompt_tokens_of_the_embedded_model_are_what_its_chat_template_renders(data_dir):
    """The plan counts what SmolLM2's template adds (its default system message where a conversation has none,
    the answer's header): IFEval's prompts, and a judge's prompts that bring their own system message."""
    from transformers import AutoTokenizer

    from bezoar.config_base import ModelConfig
    from bezoar.llm.weights import resolve_model_dir
    from bezoar.plan import Calls, lines_for, mean_tokens, share_without_system

    rows = [json.loads(line) for line in (data_dir / "eval/ifeval/input_data.jsonl").read_text().splitlines()[:40]]
    asks = [[{"role": "user", "content": row["prompt"]}] for row in rows]
    judged = [[{"role": "system", "content": "You grade answers from 1 to 10."}, *ask] for ask in asks]
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir(None))
    for conversations in (asks, judged):
        rendered = sum(len(tokenizer.apply_chat_template(c, add_generation_prompt=True, return_dict=True)["input_ids"])
                       for c in conversations)
        calls = Calls("student", ModelConfig(spec="local"), len(conversations), mean_tokens(conversations), 0,
                      without_system=share_without_system(conversations))
        planned = lines_for("eval", [calls])[0].prompt_tokens
        assert abs(planned - rendered) / rendered < 0.05, (planned, rendered)
    assert share_without_system(asks) == 1.0 and share_without_system(judged) == 0.0
