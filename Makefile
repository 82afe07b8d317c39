# drpilot — every entry point a person or CI uses. Each target installs what it needs
# (Python tools into .venv, pinned) the first time.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV_BIN := $(CURDIR)/.venv/bin
# Every AWS call the functions make during `make test`, for the permission check.
LEDGER := $(CURDIR)/target/permission-ledger.jsonl
export PATH := $(VENV_BIN):$(PATH)

.PHONY: help setup build test lint fmt local-up local-down drill

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

setup: ## install the local AWS stack and the build tools into .venv
	scripts/ensure-venv.sh --build

build: ## build the Lambda functions for arm64 (provided.al2023) as zips under target/lambda
	scripts/ensure-venv.sh --build
	cargo lambda build --release --arm64 --output-format zip --workspace --exclude drpilot-cli --exclude drpilot-shared --exclude drpilot-testkit

test: ## run every test (unit, integration, end to end) and the template and permission checks
	scripts/ensure-venv.sh
	scripts/ensure-tools.sh
	scripts/ensure-infra-tools.sh
	# Library, binary and integration tests; the bench targets are programs for `make bench`
	# (clippy still compiles them, in `make lint`). Every AWS call a function makes is
	# recorded in the call ledger for the permission check below.
	rm -f $(LEDGER)
	DRPILOT_CALL_LEDGER=$(LEDGER) cargo test --workspace --lib --bins --tests
	.venv-infra/bin/python -m unittest infra/test_check.py infra/test_permissions.py infra/test_make_backup.py
	.venv/bin/python -m unittest infra/local/test_motoserver.py
	.venv-infra/bin/python infra/check.py
	.venv-infra/bin/python infra/permissions.py --ledger $(LEDGER)

lint: ## formatting, clippy (warnings are errors), and one feature set for every build
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	scripts/check-one-build.sh
	scripts/check-module-cycles.py
	# The benchmarks' S3 server is a workspace of its own (bench/s3mem).
	cargo fmt --manifest-path bench/s3mem/Cargo.toml --check
	cargo clippy --manifest-path bench/s3mem/Cargo.toml --target-dir target -- -D warnings

fmt: ## format the code
	cargo fmt --all
	cargo fmt --manifest-path bench/s3mem/Cargo.toml

drill: ## the main job: a full DR drill on the local stack (prompts for approval on a terminal)
	scripts/ensure-venv.sh --build
	cargo build -q -p drpilot-cli
	target/debug/drpilot local drill $$( [ -t 0 ] || echo --auto-approve ) $(DRILL_ARGS)

local-up: ## start the local AWS stack (moto + cargo lambda watch), provisioned for the demo profile
	scripts/ensure-venv.sh --build
	cargo build -q -p drpilot-cli
	target/debug/drpilot local up

local-down: ## stop the local AWS stack
	scripts/local-stack.sh down

.PHONY: bench
bench: ## benchmarks, printed as markdown tables (see bench/README.md)
	scripts/ensure-venv.sh
	scripts/ensure-tools.sh
	.venv/bin/python bench/run.py
