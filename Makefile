# Anomaly Connect Payments — developer and CI entry points.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: demo test bench bench-tests faults fuzz build lint fmt check run

## make demo: the embedded default — one process, SQLite, in-process bus, sandbox emulators;
## five scripted customers (YooKassa, Stars, USDT, card in Telegram, CryptoBot) and a refund (KEEP=1 keeps it running until Ctrl-C)
demo:
	$(CARGO) build --workspace --bins
	RUST_LOG=$${RUST_LOG:-error} target/debug/demo

## make test: the whole test suite against real PostgreSQL and RabbitMQ on 127.0.0.1.
## Classic queues by default (see crates/messaging/README.md, "Queue type"); one test always
## covers quorum queues. AMQP_QUEUE_TYPE=quorum make test runs everything on quorum queues.
AMQP_QUEUE_TYPE ?= classic
test:
	AMQP_QUEUE_TYPE=$(AMQP_QUEUE_TYPE) $(CARGO) test --workspace --locked --no-fail-fast

## make bench: the load generator's standard set (release build; the four services as separate
## processes on PostgreSQL + RabbitMQ with the sandbox); writes bench/results/<date>.json and .md.
## BENCH_SECONDS=10 for a short run; SCENARIOS picks scenarios.
bench:
	$(CARGO) build --release --workspace --bins --locked
	AMQP_QUEUE_TYPE=$(AMQP_QUEUE_TYPE) RUST_LOG=$${RUST_LOG:-error} target/release/loadgen $(SCENARIOS)

## make bench-tests: the benchmarks kept as ignored tests (pre-checkout answer time and others)
bench-tests:
	AMQP_QUEUE_TYPE=$(AMQP_QUEUE_TYPE) $(CARGO) test --workspace --release --locked -- --ignored --nocapture --test-threads 1

## make faults: the fault-injection suite against the services as separate processes (300 payments
## under kill -9 and restarts, broker and database connections dropped, Marzban down a minute and
## answering 500, YooKassa 500/429/slow, webhooks duplicated/delayed/reordered/dropped), three runs
## in a row; FAULTS_RUNS=n, FAULTS_SEED=<seed> replays one. The short version runs in `make test`.
faults:
	$(CARGO) build --workspace --bins --locked
	AMQP_QUEUE_TYPE=$(AMQP_QUEUE_TYPE) FAULTS_RUNS=$${FAULTS_RUNS:-3} $(CARGO) test -p e2e --test faults --locked -- --ignored --nocapture

## make fuzz: every cargo-fuzz target in fuzz/ for FUZZ_SECONDS each (default 180), on the stable
## toolchain through RUSTC_BOOTSTRAP (installs cargo-fuzz if absent)
FUZZ_SECONDS ?= 180
fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	cd fuzz && for t in $$(RUSTC_BOOTSTRAP=1 $(CARGO) fuzz list); do \
	  RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run -s none -O $$t -- -max_total_time=$(FUZZ_SECONDS) || exit 1; done

## make run: the standalone service with your .env
run: build
	target/debug/standalone

build:
	$(CARGO) build --workspace --bins

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt:
	$(CARGO) fmt --all

check: lint test
