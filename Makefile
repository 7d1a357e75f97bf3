# Two commands do all the set-up on a fresh machine with Python 3.11:
#   make run    create .venv if missing, install the project, run the service
#   make test   the same set-up, then lint, type-check and the whole test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall only when the project's dependencies change.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[server,dev,litellm]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/spend-ledger dev --demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy ledger streams

test: lint typecheck
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .venv-litellm-proxy .mypy_cache .ruff_cache .pytest_cache .hypothesis
