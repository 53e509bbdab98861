# Bisik: `make demo` to try it, `make test` to run every check.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install lock demo test lint bench fuzz server clean

# The exact versions in requirements.lock, checked against its hashes; then Bisik
# itself without resolving anything again. Re-run when either file changes.
$(BIN)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

install: $(BIN)/.installed

# Resolve pyproject.toml's dependencies again (Python 3.11, x86_64 Linux) into
# requirements.lock, with every file's hash; `make install` then installs them.
lock: install
	$(BIN)/pip install --quiet uv
	$(BIN)/uv pip compile --quiet --generate-hashes --extra dev --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock" \
		pyproject.toml -o requirements.lock

demo: install
	$(BIN)/bisik demo

lint: install
	$(BIN)/ruff check src tests bench fuzz
	$(BIN)/ruff format --check src tests bench fuzz
	$(BIN)/mypy src
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest

bench: install
	$(BIN)/python bench/run_all.py

# Hostile-input suite with many more examples than CI runs (EXAMPLES=... to change).
fuzz: install
	$(BIN)/python fuzz/run.py --examples $(or $(EXAMPLES),2000)

server: install
	$(BIN)/bisik server --data bisik-data

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache src/*.egg-info
