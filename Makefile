# Everything a fresh machine with only Python 3.11 needs: `make demo`, `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup demo test lint types pytest bench clean

# Create the virtualenv and install the package with pinned dependencies (constraints.txt pins
# every transitive package too). Re-runs only when the pins change.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip==24.3.1
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/idunno demo

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

types: setup
	$(BIN)/mypy

pytest: setup
	$(BIN)/pytest

test: lint types pytest

bench: setup
	$(BIN)/python bench/membership.py
	$(BIN)/python bench/sdfs.py

clean:
	rm -rf $(VENV) .idunno .mypy_cache .pytest_cache .ruff_cache .hypothesis
