# DEE's everyday commands. `make demo` installs and runs; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint format clean

$(BIN)/dee: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/dee

# The main job on the embedded default (SQLite under .dee/): validate the spec's example
# plan, create it as a version, and show it.
demo: install
	$(BIN)/dee plans validate examples/spec-plan.yaml
	$(BIN)/dee plans create examples/spec-plan.yaml
	$(BIN)/dee plans list
	$(BIN)/dee plans graph outbound-intro

test: install
	$(BIN)/python scripts/run_tests.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .dee .mypy_cache .pytest_cache .ruff_cache *.egg-info
