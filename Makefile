# Everything a fresh machine with only Python 3.11 needs: `make demo`, `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup demo test lint types pytest browser netns bench bench-deps clean

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

pytest: setup browser netns
	$(BIN)/pytest

test: lint types browser netns pytest

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

# The multi-host tests (tests/test_netns.py, idunno.testing.netns) put each node in its own Linux
# network namespace and inject partitions and packet loss with nftables. They need root, `ip`
# (iproute2) and `nft` (nftables); missing tools are installed here when we are root with
# apt-get, otherwise one line says what to install, and those tests skip with the same advice.
NETNS_PKGS := nftables iproute2
netns:
	@if command -v nft >/dev/null 2>&1 && command -v ip >/dev/null 2>&1; then \
	  exit 0; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing $(NETNS_PKGS) for the network-namespace tests (apt-get)"; \
	  log=$$(mktemp); \
	  if (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends $(NETNS_PKGS)) >"$$log" 2>&1; then \
	    echo "installed $(NETNS_PKGS)"; rm -f "$$log"; \
	  else \
	    tail -n 5 "$$log"; \
	    echo "make netns: apt-get could not install $(NETNS_PKGS) (full log: $$log): the network-namespace tests skip until they are installed"; \
	  fi; \
	else \
	  echo "make netns: nft or ip is missing: install Debian's $(NETNS_PKGS) (sudo apt-get install --no-install-recommends $(NETNS_PKGS)); the network-namespace tests skip until then (they also need root)"; \
	fi

# What only the benchmarks need (Ray Data for bench/vs_ray.py), in the same .venv: ray's own
# requirements all accept the versions constraints.txt pins, so `-c constraints.txt` keeps the
# project's packages where they are and bench/requirements-ray.txt pins only what ray adds. Not
# part of `setup`: the package never imports ray, and `make test` does not need it.
RAY_STAMP := $(VENV)/.bench-deps-stamp
$(RAY_STAMP): $(STAMP) bench/requirements-ray.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -r bench/requirements-ray.txt
	@touch $(RAY_STAMP)

bench-deps: $(RAY_STAMP)

# Every benchmark, then bench/results/REPORT.md from all their results (about 2 hours on 2 cores:
# the 100 chaos schedules take one; the chaos runs need root and `make netns`).
bench: setup bench-deps netns
	$(BIN)/python bench/membership.py
	$(BIN)/python bench/sdfs.py
	$(BIN)/python bench/zoo_speed.py
	rm -f bench/results/inference_rerun_*  # re-runs of single sections belong to the last full run
	$(BIN)/python bench/inference.py
	$(BIN)/python bench/chaos.py --runs 100
	$(BIN)/python bench/vs_ray.py
	$(BIN)/python bench/report.py

clean:
	rm -rf $(VENV) .idunno .mypy_cache .pytest_cache .ruff_cache .hypothesis
