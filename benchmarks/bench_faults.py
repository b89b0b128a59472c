"""The rehearsal (recipes/rehearsal.yaml) end to end, without and then with faults, against one `bezoar serve`.

Without faults: every role through pass-through proxies. With faults: every retryable fault on a teacher
endpoint, a hung judge call, a 529 from the Anthropic-API judge, one seed whose requests always get
HTTP 400, and the second teacher endpoint SIGKILLed mid-generate (see tests/rehearsal.py).

Goal: records_faulty == records_clean - 1, repeated_calls == 0, wall_s_faulty <= 1.5 x wall_s_clean.

    .venv/bin/python benchmarks/bench_faults.py [--workdir DIR]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import DATA, emit, peak_rss_mb
from rehearsal import failures, model_server, poison_for, recipe_for, record_ids, rehearse


def count(ids: dict[str, list[str]]) -> int:
    return sum(len(v) for v in ids.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="bench-faults-"))
    root.mkdir(parents=True, exist_ok=True)
    with model_server(root / "serve.log") as upstream:
        recipe = recipe_for(root, DATA)
        clean = rehearse(root / "clean", upstream, recipe, faulty=False)
        if clean.returncode != 0:
            raise SystemExit(f"clean run failed: {clean.stderr[-2000:]}")
        poison, poisoned_id = poison_for(clean.run_dir)
        faulty = rehearse(root / "faulty", upstream, recipe, faulty=True, poison=(poison,))
        if faulty.returncode != 0:
            raise SystemExit(f"faulty run failed: {faulty.stderr[-2000:]}")
    clean_ids, faulty_ids = record_ids(clean.run_dir, "generate"), record_ids(faulty.run_dir, "generate")
    expected = {m: [i for i in ids if i != poisoned_id] for m, ids in clean_ids.items()}
    injected = faulty.faults_injected()
    print(f"clean:  {count(clean_ids)} records, {clean.wall_s:.0f} s")
    print(f"faulty: {count(faulty_ids)} records, {faulty.wall_s:.0f} s, faults {injected}")
    print(f"faulty records == clean minus the poisoned one: {faulty_ids == expected}")
    print(f"wall time ratio faulty/clean: {faulty.wall_s / clean.wall_s:.2f}")
    emit({"records_clean": count(clean_ids), "records_faulty": count(faulty_ids),
          "records_match": faulty_ids == expected, "failed_items": len(failures(faulty.run_dir)),
          "repeated_calls": faulty.repeated_calls() + clean.repeated_calls(),
          "faults_injected": sum(injected.values()), "faults_by_kind": injected,
          "endpoint_killed": faulty.killed_at is not None,
          "wall_s_clean": round(clean.wall_s, 1), "wall_s_faulty": round(faulty.wall_s, 1),
          "wall_ratio": round(faulty.wall_s / clean.wall_s, 2), "peak_rss_mb_driver": round(peak_rss_mb())})


if __name__ == "__main__":
    main()
