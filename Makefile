# Two commands on a fresh machine with only python3:  make demo  and  make test.
# `make help` lists every target.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The demo needs only the emulator (and orjson): a few packages, not the whole dev set.
DEMO_STAMP := $(VENV)/.demo-installed

.PHONY: help demo test lint typecheck verifytypes docs check-tests install bench clean

help:
	@echo "make demo          run the demo: the client against the local emulator (installs .[emulator,fast])"
	@echo "make test          lint, typecheck, verifytypes, docs and the tests with coverage (installs .[dev])"
	@echo "make install       create .venv with the dev extras"
	@echo "make lint          ruff check and ruff format --check"
	@echo "make typecheck     mypy (strict)"
	@echo "make verifytypes   pyright --verifytypes: the public API is fully typed"
	@echo "make docs          build the documentation site (mkdocs --strict) into site/"
	@echo "make check-tests   the tests under coverage"
	@echo "make bench         the benchmarks (about 4 minutes)"
	@echo "make clean         remove .venv and the tools' caches"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP) $(DEMO_STAMP)

$(DEMO_STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[emulator,fast]'
	touch $(DEMO_STAMP)

install: $(STAMP)

demo: $(DEMO_STAMP)
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
