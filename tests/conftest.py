"""Shared fixtures: the real embedded model (loaded once per session), real data, fresh caches."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("BEZOAR_DATA", REPO.parent / "shared" / "data")).resolve()

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# The suite checks equalities that only deterministic decoding promises (batched = one-by-one, a resumed run =
# one never killed), so it decodes in fp32 unless a test asks for the fast default (BEZOAR_DETERMINISTIC=0,
# `exact=False`): tests/test_device.py, test_llm_local.py and test_chaos.py's fast-mode run do.
os.environ.setdefault("BEZOAR_DETERMINISTIC", "1")


def _pin_xdist_worker() -> None:
    """Under pytest-xdist (`make test` runs `-n auto`), each worker and every process it starts keeps to its
    own share of the cores: torch gives a process one thread per core it may use, and two workers each
    spinning one thread per core of the machine run several times slower than one at a time (llm/cores.py).
    fp32 logits and gradients do not depend on the thread count (tests/test_two_processes.py), so the
    suite's equalities hold on any share. Set before torch is imported, so OpenMP sizes its pool by it."""
    worker, workers = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not (worker and workers) or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    index, count = int(worker.removeprefix("gw")), int(workers)
    share = cores[index * len(cores) // count:(index + 1) * len(cores) // count] or cores[index % len(cores):][:1]
    os.sched_setaffinity(0, share)


_pin_xdist_worker()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """../shared/data (or $BEZOAR_DATA): real seeds, HH-RLHF, MT-Bench and harness data."""
    assert DATA.is_dir(), f"real data not found at {DATA}; set BEZOAR_DATA"
    return DATA


@pytest.fixture(scope="session")
def embedded():
    """The embedded SmolLM2 through the local backend, loaded once for the whole session."""
    from bezoar.llm.local import LocalBackend

    return LocalBackend()


@pytest.fixture(scope="session")
def embedded_fast():
    """The embedded SmolLM2 as a default run decodes it: fast mode (bf16 where this machine is faster in it)."""
    from bezoar.llm.local import LocalBackend

    return LocalBackend(exact=False)


@pytest.fixture
def cache(tmp_path):
    from bezoar.llm.cache import CallCache

    return CallCache(tmp_path / "calls.sqlite")


@pytest.fixture
def local_model(embedded, cache):
    """A cached, role-bound embedded model with a fresh cache (no hits from earlier tests)."""
    from bezoar.llm.cache import CachedModel

    return CachedModel(embedded, cache, role="test")


@pytest.fixture(scope="session")
def smoke_reference(tmp_path_factory, data_dir):
    """A smoke-sized `bezoar run` never killed, with its own cache: ROOT/runs/reference (tests/chaos.py).
    Minutes: tests using it (or `smoke_runs`) carry a timeout mark that covers it."""
    from chaos import smoke_reference as run_reference

    return run_reference(tmp_path_factory.mktemp("pipeline"), data_dir)


@pytest.fixture(scope="session")
def smoke_runs(smoke_reference, data_dir):
    """Beside the reference, the same recipe SIGKILLed in every stage and resumed: ROOT/runs/killed;
    shared by test_chaos.py and test_pipeline.py."""
    from chaos import smoke_runs as run_killed

    return run_killed(smoke_reference, data_dir)


@pytest.fixture(scope="session")
def fast_smoke_runs(smoke_reference, data_dir):
    """The same recipe in fast mode, SIGKILLed in every step and resumed (ROOT/runs/fast), and replayed from
    its call cache alone (ROOT/runs/replay): tests/test_chaos.py."""
    from chaos import fast_smoke_runs as run_fast

    return run_fast(smoke_reference, data_dir)
