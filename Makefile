# DEE's everyday commands. `make demo` installs and runs; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo dev test lint format clean

$(BIN)/dee: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/dee

# The main job on the embedded default: `dee dev` (Temporal dev server, Web UI, local mail
# catcher, worker; state under .dee/), then a plan created and a run driven through it.
demo: install
	scripts/demo.sh

# Only the local engine, for your own plans and runs.
dev: install
	$(BIN)/dee dev

test: install
	$(BIN)/python scripts/run_tests.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .dee .mypy_cache .pytest_cache .ruff_cache *.egg-info
