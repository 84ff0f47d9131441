# The two quick-start commands:
#   make run    fetch the default models, build, and chat with the default model
#   make test   fetch the models, build, and run every check and test
# Both are idempotent: nothing already fetched or built is done again.

CARGO ?= cargo
MODEL ?= smollm2
PROMPT ?= Why is the sky blue?
LANTERN := target/release/lantern

.PHONY: run test models build lint bench clean-bench

models:
	python3 models/fetch

build:
	$(CARGO) build --release --locked

run: models build
	$(LANTERN) run $(MODEL) "$(PROMPT)"

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --locked --all-targets -- -D warnings

test: models lint
	$(CARGO) test --release --locked

# Lantern against llama.cpp (built from the llama-cpp-python sdist) on the same GGUF.
bench: models build
	python3 benches/compare.py
