# Everything a fresh machine with only Python 3.11 needs: `make demo`, `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup demo test lint types pytest browser bench clean

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

pytest: setup browser
	$(BIN)/pytest

test: lint types browser pytest

# The dashboard's browser tests (tests/test_dashboard.py) drive Debian's chromium through its
# chromedriver. Installed here when missing (root with apt-get, as in CI); otherwise one line
# says what to install, and those tests fail with the same advice (they never skip).
BROWSER_PKGS := chromium chromium-driver
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then \
	  exit 0; \
	elif [ -n "$$CHROME_BIN" ] && [ -n "$$CHROMEDRIVER" ]; then \
	  exit 0; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing $(BROWSER_PKGS) for the browser tests (apt-get)"; \
	  log=$$(mktemp); \
	  if (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends $(BROWSER_PKGS)) >"$$log" 2>&1; then \
	    echo "installed $(BROWSER_PKGS)"; rm -f "$$log"; \
	  else \
	    tail -n 5 "$$log"; \
	    echo "make browser: apt-get could not install $(BROWSER_PKGS) (full log: $$log): the browser tests fail until they are installed"; \
	  fi; \
	else \
	  echo "make browser: chromium and chromedriver are missing: install Debian's $(BROWSER_PKGS) (sudo apt-get install --no-install-recommends $(BROWSER_PKGS)), or set CHROME_BIN and CHROMEDRIVER; the browser tests fail until then"; \
	fi

bench: setup
	$(BIN)/python bench/membership.py
	$(BIN)/python bench/sdfs.py

clean:
	rm -rf $(VENV) .idunno .mypy_cache .pytest_cache .ruff_cache .hypothesis
