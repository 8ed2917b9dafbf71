# Thaw: `make demo` runs the main job on the embedded default; `make test` runs the whole suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export HF_HUB_OFFLINE = 1
export TRANSFORMERS_OFFLINE = 1
export OPENBLAS_NUM_THREADS = 1

.PHONY: demo test test-unit lint redis postgres bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

redis:
	@command -v redis-server >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq redis-server; }

# The integration tier starts its own throwaway cluster with Debian's server binaries (initdb, pg_ctl).
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq postgresql; }

demo: $(STAMP)
	$(BIN)/thaw demo --json out/demo.json

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test-unit: $(STAMP)
	$(BIN)/pytest -q -m "not integration and not slow"

test: $(STAMP) redis postgres lint
	$(BIN)/pytest -q -m "" --durations=15

bench: $(STAMP)
	$(BIN)/python bench/ingest.py --json bench/results/ingest.json
	$(BIN)/python -m bench.scale --items 10000 --json bench/results/scale_10k.json
	$(BIN)/python -m bench.scale --items 100000 --json bench/results/scale_100k.json

clean:
	rm -rf $(VENV) .thaw out
