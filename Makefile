# The two commands: `make up` runs the cluster, `make test` runs the whole suite.
# Both create the virtualenv (.venv) and install everything they need first.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
NODE_CLIENT := tests/e2e/node/node_modules/.package-lock.json

.PHONY: install up up-detached down test test-fast lint bench chaos clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

$(NODE_CLIENT): tests/e2e/node/package.json tests/e2e/node/package-lock.json
	cd tests/e2e/node && npm ci --no-audit --no-fund --silent

install: $(STAMP)

## Run the whole cluster in the foreground (Ctrl-C stops it). Gateways on 8081 and 8082.
up: install
	$(PY) -m libs.cli.chatctl up

## The same, in the background; `make down` stops it.
up-detached: install
	$(PY) -m libs.cli.chatctl up --detach

down:
	@test -x $(PY) && $(PY) -m libs.cli.chatctl down || true

## The whole suite, against real NATS, Redis and Postgres started on free ports.
test: install $(NODE_CLIENT)
	$(PY) -m ruff check libs services tests bench
	$(PY) -m mypy libs services
	$(PY) -m pytest -q -p no:cacheprovider

test-fast: install
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

lint: install
	$(PY) -m ruff check libs services tests
	$(PY) -m mypy libs services

clean:
	rm -rf .run $(VENV) tests/e2e/node/node_modules

## Benchmarks against Node Socket.IO 4 and plain python-socketio; writes docs/benchmarks.md.
## `make bench BENCH_ARGS=--quick` for the short run.
bench: install
	cd bench/node && npm ci --no-audit --no-fund --silent
	$(PY) -m pip install -q --disable-pip-version-check matplotlib==3.11.2
	$(PY) bench/run.py $(BENCH_ARGS)

## The full reliability suite: longer faults, a 10-minute soak, 100,000 fuzz inputs;
## writes docs/reliability.md.
chaos: install $(NODE_CLIENT)
	CHAT_CHAOS_LONG=1 CHAT_FUZZ_INPUTS=100000 CHAT_CHAOS_REPORT=docs/reliability.md \
		$(PY) -m pytest -q -p no:cacheprovider --timeout=3600 tests/chaos
