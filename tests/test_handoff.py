"""What steps hand on to each other, read from the run's manifest (bezoar/handoff.py): the nearest done
step before the asking one, or the one `from:` names; paths recorded relative to the run so that a moved
run still resolves; nothing from a step that is not done; and one line naming the step when nothing is
there. Real files, a real manifest, real recipes; no model."""
from __future__ import annotations

import json

import pytest

from bezoar.config import Recipe
from bezoar.errors import DataError
from bezoar.handoff import checkpoints, find, relative, required
from bezoar.run_state import Manifest
from bezoar.steps.base import StepContext
from recipe_dicts import hand_on


def records(path, n: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": f"row {i}"}) + "\n" for i in range(n)))
    return path


def recipe(**eval_from) -> Recipe:
    """generate -> preferences-1 -> dpo-1 -> preferences-2 -> dpo-2 -> eval: two on-policy rounds."""
    return Recipe.model_validate({"steps": [
        {"type": "generate"}, {"type": "preferences"}, {"type": "dpo", "data": {"source": "generated"}},
        {"type": "preferences"}, {"type": "dpo", "data": {"source": "generated"}}, {"type": "eval", **eval_from}]})


@pytest.fixture
def run_dir(tmp_path):
    """A run where every step but eval is done, each handing on its own file or checkpoint."""
    run = tmp_path / "run"
    hand_on(run, "generate", {"constraints": records(run / "generate" / "constraints.jsonl", 4)})
    for round_ in (1, 2):
        hand_on(run, f"preferences-{round_}", {"pairs": records(run / f"preferences-{round_}" / "pairs.jsonl", round_)})
        (run / f"dpo-{round_}").mkdir()
        hand_on(run, f"dpo-{round_}", checkpoints={f"dpo-{round_}": run / f"dpo-{round_}"},
                reference="base" if round_ == 1 else "dpo-1")
    return run


def test_a_step_reads_the_nearest_done_step_before_it(run_dir):
    steps = recipe().names()
    assert steps == ["generate", "preferences-1", "dpo-1", "preferences-2", "dpo-2", "eval"]
    assert find(run_dir, steps[:3], "pairs") == run_dir / "preferences-1" / "pairs.jsonl"  # what dpo-1 reads
    assert find(run_dir, steps[:5], "pairs") == run_dir / "preferences-2" / "pairs.jsonl"  # what dpo-2 reads
    assert find(run_dir, steps[:5], "constraints") == run_dir / "generate" / "constraints.jsonl"
    assert find(run_dir, steps[:1], "pairs") is None  # nothing before it made pairs
    built = recipe()
    context = StepContext(built, run_dir, "dpo-2")
    assert context.input("pairs") == run_dir / "preferences-2" / "pairs.jsonl"
    assert context.continued_from() == ("dpo-1", str(run_dir / "dpo-1"))  # the newest checkpoint before it
    assert [name for name, _ in StepContext(built, run_dir, "eval").checkpoints()] == ["dpo-1", "dpo-2"]


def test_from_names_the_step_that_supplies_an_input(run_dir):
    for source in ("preferences-1", {"pairs": "preferences-1"}):
        built = recipe()
        built.steps[4] = built.steps[4].model_copy(update={"from_": source})  # dpo-2 trains on round 1's pairs
        assert StepContext(built, run_dir, "dpo-2").input("pairs") == run_dir / "preferences-1" / "pairs.jsonl"
    loaded = Recipe.model_validate({"steps": [
        {"type": "generate"}, {"type": "preferences"}, {"type": "preferences"},
        {"type": "dpo", "from": {"pairs": "preferences-1"}, "data": {"source": "generated"}}]})
    assert loaded.step("dpo").source_for("pairs") == "preferences-1" and loaded.step("dpo").source_for("x") is None
    assert find(run_dir, loaded.names()[:3], "pairs", "preferences-1") == run_dir / "preferences-1" / "pairs.jsonl"


def test_a_moved_run_directory_still_resolves(run_dir, tmp_path):
    recorded = json.loads((run_dir / "manifest.json").read_text())["steps"]["preferences-1"]["result"]["outputs"]
    assert recorded == {"pairs": "preferences-1/pairs.jsonl"}  # relative to the run
    moved = run_dir.rename(tmp_path / "elsewhere")
    found = find(moved, recipe().names()[:5], "pairs")
    assert found == moved / "preferences-2" / "pairs.jsonl" and found.is_file()
    assert checkpoints(moved, recipe().names()) == [("dpo-1", moved / "dpo-1"), ("dpo-2", moved / "dpo-2")]
    outside = tmp_path / "shared.jsonl"  # a file outside the run is recorded as it is
    assert relative(moved, {"a": moved / "x" / "y.jsonl", "b": outside}) == {"a": "x/y.jsonl", "b": str(outside)}


def test_a_step_that_is_not_done_hands_on_nothing(run_dir):
    names = recipe().names()[:5]
    for status in ("running", "failed", "stopped", "interrupted"):
        Manifest(run_dir).update("preferences-2", status=status)  # its old result is still in the entry
        assert find(run_dir, names, "pairs") == run_dir / "preferences-1" / "pairs.jsonl"  # the older round's
        Manifest(run_dir).update("dpo-2", status=status)
        assert [n for n, _ in checkpoints(run_dir, names)] == ["dpo-1"]
        Manifest(run_dir).update("dpo-2", status="done")
    Manifest(run_dir).update("preferences-1", status="failed")
    assert find(run_dir, names, "pairs") is None


def test_nothing_handed_on_is_one_line_naming_what_to_run(run_dir, tmp_path):
    with pytest.raises(DataError) as caught:
        required(tmp_path / "empty", ["generate", "filter"], "lamini")
    message = str(caught.value)
    assert len(message.splitlines()) == 1 and "no done step before this one (generate, filter) handed on 'lamini'" in message
    assert "bezoar run RECIPE --from STEP" in message
    with pytest.raises(DataError, match=r"the step 'generate' \(its `from:`\) has not handed on 'pairs'"):
        required(run_dir, ["generate", "preferences-1"], "pairs", "generate")


def test_a_step_run_alone_names_the_step_that_makes_its_input(tmp_path):
    """dpo run alone where hh_slices never ran: its input's maker is named, with the command to run it
    (a stray file where hh_slices would write is not read)."""
    built = Recipe.model_validate({"steps": [{"type": "hh_slices"}, {"type": "sft_hh"}, {"type": "dpo"}]})
    run = tmp_path / "run"
    records(run / "hh_slices" / "dpo.jsonl", 2)
    context = StepContext(built, run, "dpo")
    assert context.maker_of("hh_dpo") == "hh_slices" and context.maker_of("nothing") is None
    with pytest.raises(DataError) as caught:
        context.input("hh_dpo")
    assert str(caught.value) == (f"{run}: the step 'hh_slices' has not handed on 'hh_dpo' (it is not done in this "
                                 "run); run it first: bezoar run RECIPE --from hh_slices")
    named = Recipe.model_validate({"steps": [{"type": "hh_slices"}, {"type": "hh_slices", "name": "other"},
                                             {"type": "dpo", "from": "hh_slices"}]})
    with pytest.raises(DataError, match=r"the step 'hh_slices' \(its `from:`\) has not handed on 'hh_dpo'"):
        StepContext(named, run, "dpo").input("hh_dpo")
