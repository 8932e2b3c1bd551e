# Two commands do all the set-up on a fresh machine:
#   make run    the whole pipeline embedded (broker + ClickHouse + worker + traffic + metrics)
#   make test   lint, type-check and the whole test suite (what CI runs)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test venv lint unit integration generate clean bench bench-env bench-otelcol fuzz

$(BIN)/imtel: pyproject.toml pipeline/ingest/_fastlog.c
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $(BIN)/imtel

venv: $(BIN)/imtel

run: venv
	$(BIN)/imtel embedded

lint: venv
	$(BIN)/ruff check pipeline tests tools bench/otelcol
	$(BIN)/mypy

unit: venv
	$(BIN)/python -m pytest tests/unit -q

integration: venv
	$(BIN)/python -m pytest tests/integration -q

# Two test processes (pytest-xdist), a whole file at a time each: most integration tests spend their
# time waiting on rebalances, outages and steady traffic, not computing, so two at once nearly halve the
# wall time on 2 cores (measured: 594 s one at a time, 320 s so; each test took about as long as alone).
test: lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# The native parser (pipeline/ingest/_fastlog.c) under libFuzzer + ASan + UBSan, longer than the ~20 s of
# `make test` (tests/unit/test_fuzz_fastlog.py). Needs clang-14 and libclang-rt-14-dev (Debian).
# The corpus grows in FUZZ_DIR across runs; a crash input is left there and named on failure.
FUZZ_SECONDS ?= 600
FUZZ_JOBS ?= 1
FUZZ_DIR ?= /tmp/imtel-fuzz-fastlog
fuzz: venv
	$(BIN)/python -m tests.fuzz.fastlog --seconds $(FUZZ_SECONDS) --jobs $(FUZZ_JOBS) --workdir $(FUZZ_DIR)

generate: venv
	$(BIN)/python -m pipeline.monitoring.dashboards
	$(BIN)/python -m pipeline.monitoring.slo
	$(BIN)/python tools/gen_k8s.py

# The benchmark (README "Performance"): every contender three times (the slow ones: or one 15 s window),
# medians with min-max; measured 8.7 minutes on 2 cores (9.9 with other test suites running beside it),
# before the otlp workload and the OpenTelemetry Collector contender were added (not yet re-measured).
# BENCH_ARGS="--quick" for a smoke run, "--no-readme" to leave the README alone, "--broker tansu" for the
# bundled broker instead of a real Kafka node.
# Quix Streams gets its own virtualenv: it pins confluent-kafka < 2.13, the pipeline pins 2.16.
QUIX_VENV := .venv-quix

$(QUIX_VENV)/.installed: bench/requirements-quix.txt
	$(PY) -m venv $(QUIX_VENV)
	$(QUIX_VENV)/bin/pip install -q --upgrade pip
	$(QUIX_VENV)/bin/pip install -q -r bench/requirements-quix.txt
	touch $@

bench-env: venv $(QUIX_VENV)/.installed

# The OpenTelemetry Collector contender (otelcol) is built with Go before the run (cached under
# ~/.cache/imtel/otelcol/<version>: cold ~170 s, then instant). Without Go the build step says why and
# the bench goes on: the contender is then reported as not run, with that reason.
bench-otelcol: venv
	-$(BIN)/python -m pipeline.dev.bench.otelcol

bench: bench-env bench-otelcol
	$(BIN)/imtel bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(QUIX_VENV) data .pytest_cache .mypy_cache .ruff_cache
