# Anomaly Connect Payments — developer and CI entry points.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: demo test bench bench-tests build lint fmt check run

## make demo: the embedded default — one process, SQLite, in-process bus, sandbox emulators;
## three scripted customers and a refund (KEEP=1 keeps it running until Ctrl-C)
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
