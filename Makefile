# `make run` and `make test` do all the set-up on a fresh machine.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
CONFIG ?= examples/functions.toml

.PHONY: install broker run test lint unit image bench bench-more clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(BIN)/.installed

broker:
	bash rabbitmq/ensure-broker.sh

run: install broker
	$(BIN)/asyncinvoke topology declare --config $(CONFIG)
	$(BIN)/asyncinvoke serve --config $(CONFIG)

lint: install
	$(BIN)/ruff check service tests examples
	$(BIN)/mypy
	$(BIN)/mypy --strict --warn-unused-ignores tests/typing

test: install broker lint
	$(BIN)/pytest -q -p no:cacheprovider

unit: install
	$(BIN)/pytest -q tests/unit

# The container image, with podman (docker where podman is missing), and its size.
# BASE=IMAGE picks the base (default: the official Python slim image); without a registry:
#   make image BASE=$$(deploy/base-image.sh)
image: install
	BASE=$(BASE) bash deploy/image.sh

# The benchmark suite (issue 8's six parts, about 15 minutes), summed up in one table,
# then worker processes, then scale-out on the local 3-node cluster against one node,
# asyncinvoke and Dramatiq (bench_cluster, about 5 minutes; it starts the cluster if it
# is not running, as root). Each part also runs alone (see docs/benchmarks.md):
#   .venv/bin/python -m tests.bench.bench_peers | tests.bench producer | tests.bench.bench_delay
bench: install broker
	$(BIN)/pip install -q -e '.[test,peers]'
	$(BIN)/python -m tests.bench.suite
	$(BIN)/python -m tests.bench.private tests.bench.bench_processes
	$(BIN)/python -m tests.bench.bench_cluster

# The other benchmarks: worker CPU per message against bare aio-pika (and its profile),
# the HTTP gateway under wrk, and the dead-letter tool's export.
bench-more: install broker
	$(BIN)/pip install -q -e '.[test,peers]'
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq wrk >/dev/null; } || echo "wrk not installed: the gateway benchmark will say so and skip"
	$(BIN)/python -m tests.bench e2e producer
	$(BIN)/python -m tests.bench.bench_gateway
	$(BIN)/python -m tests.bench.bench_dlq
	$(BIN)/python -m tests.bench.bench_heartbeat
	$(BIN)/python -m tests.bench.bench_queue_types

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
