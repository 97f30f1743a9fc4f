# Two entry points for a fresh clone (see README "Quick start"):
#   make demo   runs memstate on the bundled example node
#   make test   runs ruff, mypy --strict and the whole test suite
# Both create ./.venv on first use and reinstall when pyproject.toml changes.

PYTHON ?= python3
# pytest-xdist workers for `make test` (the suite is tested with 2, the CI machine's cores).
PYTEST_WORKERS ?= 2
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unit clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,plot]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/memstate demo

lint: $(STAMP)
	$(BIN)/ruff check memstate tests benchmarks scripts/cgvm
	$(BIN)/ruff format --check memstate tests benchmarks scripts/cgvm

typecheck: $(STAMP)
	$(BIN)/mypy memstate

# The suite starts hundreds of memstate processes. Where PYTHONDONTWRITEBYTECODE is set (as in
# some CI images), Python never caches compiled modules, so each of them would compile every
# module it imports again (~0.3 s of CPU per daemon); Python still reads caches made beforehand.
# Hash-checked, as the VM harness writes them (tests/vm/harness.py): never stale, never rewritten.
# pytest runs on $(PYTEST_WORKERS) workers; the tests that share a costly fixture (the VM boot
# above all) run on one worker as a group, which tests/conftest.py marks (docs/testing.md).
test: lint typecheck
	$(BIN)/python -m compileall -q -j 0 --invalidation-mode checked-hash memstate tests
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup --durations=30

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
