# CEMA: cloud–edge model adaptation. `make help` lists the targets.
.PHONY: help setup test lint fmt

CARGO ?= cargo

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | column -t -s "$$(printf '\t')"

setup: ## install ONNX Runtime (PyPI wheel) and Fashion-MNIST (Debian) — idempotent
	bash scripts/setup.sh

test: setup ## setup, then every test of the workspace
	$(CARGO) test --workspace --locked

lint: ## formatting and clippy, warnings are errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt: ## format the code
	$(CARGO) fmt --all
