# Anomaly Connect Payments — developer and CI entry points.
SHELL := /bin/bash
CARGO ?= cargo
PSQL_ADMIN ?= psql -h 127.0.0.1 -U postgres -d postgres -qAt

.PHONY: demo test build lint fmt check run clean-test-dbs services

## make demo: the embedded default — one process, SQLite, in-process bus (see README)
demo:
	$(CARGO) build --workspace --bins
	bash scripts/demo.sh

## make test: the whole test suite against real PostgreSQL and RabbitMQ on 127.0.0.1
test: clean-test-dbs
	$(CARGO) test --workspace --locked --no-fail-fast

## make run: the standalone service with your .env
run:
	$(CARGO) run --bin standalone

build:
	$(CARGO) build --workspace --bins

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt:
	$(CARGO) fmt --all

check: lint test

## Drop the per-test databases earlier runs left behind (each test clones its own).
clean-test-dbs:
	@command -v psql >/dev/null 2>&1 || exit 0; \
	for db in $$($(PSQL_ADMIN) -c "select datname from pg_database where datname like 'acp_t\_%'" 2>/dev/null); do \
		$(PSQL_ADMIN) -c "drop database if exists \"$$db\" with (force)" >/dev/null 2>&1 || true; \
	done
