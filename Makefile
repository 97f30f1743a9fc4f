# Two entry points for a fresh clone (see README "Quick start"):
#   make demo   runs memstate on the bundled example node
#   make test   runs ruff, mypy --strict and the whole test suite
# Both create ./.venv on first use and reinstall when pyproject.toml changes.

PYTHON ?= python3
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

test: lint typecheck
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
