# Two commands on a fresh machine with only python3:  make demo  and  make test.
# `make help` lists every target.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The demo needs only the emulator (and orjson): a few packages, not the whole dev set.
DEMO_STAMP := $(VENV)/.demo-installed

.PHONY: help demo test test-fast test-all lint typecheck verifytypes docs check-tests install bench clean

help:
	@echo "make demo          run the demo: the client against the local emulator (installs .[emulator,fast])"
	@echo "make test          lint, typecheck, verifytypes, docs and the tests with coverage (installs .[dev])"
	@echo "make install       create .venv with the dev extras"
	@echo "make lint          ruff check and ruff format --check"
	@echo "make typecheck     mypy (strict)"
	@echo "make verifytypes   pyright --verifytypes: the public API is fully typed"
	@echo "make docs          build the documentation site (mkdocs --strict) into site/"
	@echo "make check-tests   the tests under coverage"
	@echo "make test-fast     the tests without the slow ones (-m 'not slow'), in under 30 s"
	@echo "make test-all      the tests on every Python 3.10-3.13 found (a venv each)"
	@echo "make bench         the benchmarks (about 6 minutes)"
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

# The inner loop: every test but those marked slow (under 30 s).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q

# The suite on every supported Python found (pyenv's, else on PATH), each in .venv-3.X.
# An interpreter that is missing, or cannot install the dev extras, is skipped and said so.
PYTHONS     ?= 3.10 3.11 3.12 3.13
PYENV_ROOT  ?= $(HOME)/.pyenv
PYTEST_ARGS ?= -q -p no:cacheprovider
test-all:
	@summary=""; \
	for v in $(PYTHONS); do \
	  py=$$(ls -d $(PYENV_ROOT)/versions/$$v.*/bin/python$$v 2>/dev/null | sort -V | tail -n 1); \
	  [ -n "$$py" ] || py=$$(command -v python$$v || true); \
	  if [ -z "$$py" ]; then summary="$$summary\n$$v: skipped (no interpreter found)"; continue; fi; \
	  venv=.venv-$$v; \
	  if [ ! -f $$venv/.installed ] || [ pyproject.toml -nt $$venv/.installed ]; then \
	    echo "== Python $$v ($$py): installing .[dev] into $$venv"; \
	    if ! { $$py -m venv $$venv && $$venv/bin/python -m pip install --quiet --upgrade pip \
	           && $$venv/bin/python -m pip install --quiet -e '.[dev]'; }; then \
	      summary="$$summary\n$$v: skipped (cannot install .[dev], see above)"; continue; \
	    fi; \
	    touch $$venv/.installed; \
	  fi; \
	  echo "== Python $$v: pytest"; \
	  if $$venv/bin/python -m pytest $(PYTEST_ARGS); then \
	    summary="$$summary\n$$v: passed"; else summary="$$summary\n$$v: FAILED"; fi; \
	done; \
	printf "== test-all$$summary\n"; \
	case "$$summary" in *FAILED*) exit 1;; esac

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) .venv-3.* .coverage .mypy_cache .ruff_cache .pytest_cache
