# CEMA: cloud–edge model adaptation. `make help` lists the targets.
.PHONY: help setup demo eval bench test lint fmt

CARGO ?= cargo

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | column -t -s "$$(printf '\t')"

setup: ## install ONNX Runtime (PyPI wheel) and Fashion-MNIST (Debian) — idempotent
	bash scripts/setup.sh

demo: setup ## the main job: a real cloud and 3 edge agents on the built-in models (runs/demo-*/)
	$(CARGO) build --release --locked --bins
	ORT_DYLIB_PATH=$(CURDIR)/.ort/lib/libonnxruntime.so ./target/release/cema-sim demo

eval: setup ## methods compared on severity-5 streams (runs/eval-*/; about 14 minutes)
	$(CARGO) build --release --locked --bins
	ORT_DYLIB_PATH=$(CURDIR)/.ort/lib/libonnxruntime.so ./target/release/cema-sim eval

bench: setup ## the system's figures: edge overhead, update latency, step time, accuracy per byte
	$(CARGO) build --release --locked --bins
	ORT_DYLIB_PATH=$(CURDIR)/.ort/lib/libonnxruntime.so ./target/release/cema-sim bench

test: setup ## setup, then every test of the workspace
	$(CARGO) test --workspace --locked

lint: ## formatting and clippy, warnings are errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt: ## format the code
	$(CARGO) fmt --all
