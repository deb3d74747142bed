# DEE's everyday commands. `make demo` installs and runs; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo dev test lint format lock clean

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

# The image's runtime dependencies pinned with their hashes (the Dockerfile installs them with
# --require-hashes): run it after changing [project] dependencies in pyproject.toml. Pins
# already in the lock are kept; `rm requirements/runtime.lock` first to move them all on.
# uv is installed into the venv for this only.
lock: install
	$(BIN)/pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml --universal --python-version 3.11 --generate-hashes \
		--custom-compile-command "make lock" --output-file requirements/runtime.lock

clean:
	rm -rf $(VENV) .dee .mypy_cache .pytest_cache .ruff_cache *.egg-info
