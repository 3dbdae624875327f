# The two set-up commands of the README: `make demo` and `make test`.
# Both create .venv with the interpreter below and install pinned versions.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: demo test lint docs bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.core: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) -e .
	touch $@

$(VENV)/.bench: $(VENV)/.core
	$(PIP) -e ".[bench,torch]"
	touch $@

$(VENV)/.test: $(VENV)/.core
	$(PIP) -e ".[test,docs]"
	touch $@

demo: $(VENV)/.core
	$(BIN)/otlabel demo

lint: $(VENV)/.test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy otlabel

docs: $(VENV)/.test
	$(BIN)/mkdocs build --strict --quiet --site-dir $(VENV)/site

# The benchmark table of docs/benchmarks.md (hours at the default sizes; see
# `otlabel bench --help`; BENCH_ARGS=--tiny proves it runs in a minute), after
# every kernel is in Numba's cache: the table times warm calls.
bench: $(VENV)/.bench
	$(BIN)/python -m otlabel.compile
	$(BIN)/otlabel bench $(BENCH_ARGS)

test: lint docs
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache
