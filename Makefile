# Two commands on a fresh machine with only python3:  make demo  and  make test.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck verifytypes docs check-tests install bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/encharge-async demo

lint: $(STAMP)
	$(BIN)/ruff check encharge_async tests benchmarks examples
	$(BIN)/ruff format --check encharge_async tests benchmarks examples

typecheck: $(STAMP)
	$(BIN)/mypy

# coverage starts before pytest, so the pytest11 plugin's early import of the package counts.
check-tests: $(STAMP)
	$(BIN)/coverage run -m pytest
	$(BIN)/coverage report

# The public API must stay fully typed (pyright ignores --pythonpath in this mode).
verifytypes: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" PYTHONPATH="$(CURDIR)" $(BIN)/pyright --verifytypes encharge_async --ignoreexternal

docs: $(STAMP)
	$(BIN)/mkdocs build --strict -d site

test: lint typecheck verifytypes docs check-tests

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) .coverage .mypy_cache .ruff_cache .pytest_cache
