"""The comparison says how its answers were decoded, and flags checkpoints decoded in different modes."""
from __future__ import annotations

import json

from bezoar.evaluate.compare import compare, describe_decoding


def _summary(run_dir, kind: str, checkpoint: str, value: float, decoding: dict | None) -> tuple[str, str]:
    """Writes RUN_DIR/eval/KIND/CHECKPOINT/summary.json (as an eval step does); returns its compare entry."""
    folder = run_dir / "eval" / kind / checkpoint
    folder.mkdir(parents=True)
    items = {f"p{i}": float(i % 2 == 0 or value > 0.5) for i in range(6)}
    summary = {"kind": "ifeval", "metrics": {"inst_strict": {"value": value, "ci95": [0, 1], "items": items}}}
    if decoding is not None:
        summary["decoding"] = decoding
    (folder / "summary.json").write_text(json.dumps(summary))
    return f"{kind}/{checkpoint}", str(folder / "summary.json")


def test_one_mode_is_stated(tmp_path):
    fast = {"mode": "fast", "dtype": "bfloat16"}
    summaries = dict([_summary(tmp_path, "ifeval", "base", 0.5, fast), _summary(tmp_path, "ifeval", "dpo", 0.8, fast)])
    result = compare(summaries, ["base", "dpo"], tmp_path / "eval" / "comparison.json")
    assert result["decoding"] == fast
    assert json.loads((tmp_path / "eval" / "comparison.json").read_text())["decoding"] == fast
    assert describe_decoding(result["decoding"]) == "decoded in fast mode (bfloat16), every checkpoint alike"


def test_checkpoints_decoded_in_different_modes_are_flagged(tmp_path, caplog):
    summaries = dict([
        _summary(tmp_path, "ifeval", "base", 0.5, None),  # written before the mode was recorded: fp32, deterministic
        _summary(tmp_path, "ifeval", "dpo", 0.8, {"mode": "fast", "dtype": "bfloat16"})])
    result = compare(summaries, ["base", "dpo"], tmp_path / "eval" / "comparison.json")
    assert result["decoding"] == {"mixed": {"base": ["deterministic/float32"], "dpo": ["fast/bfloat16"]}}
    assert "different decoding modes" in caplog.text
    assert "do not compare like with like" in describe_decoding(result["decoding"])
