# Bisik: `make demo` to try it, `make test` to run every check.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint bench fuzz server clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/bisik demo

lint: install
	$(BIN)/ruff check src tests bench fuzz
	$(BIN)/ruff format --check src tests bench fuzz
	$(BIN)/mypy src

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
