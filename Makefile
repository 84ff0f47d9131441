# The two quick-start commands:
#   make run    fetch the default models, build, and serve the default model at
#               http://127.0.0.1:8080/v1 (OpenAI-compatible)
#   make test   fetch the models, build, and run every check and test
# Both are idempotent: nothing already fetched or built is done again.

CARGO ?= cargo
MODEL ?= smollm2
PROMPT ?= Why is the sky blue?
# Respect a shared target directory (CARGO_TARGET_DIR) as cargo does.
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
LANTERN := $(TARGET_DIR)/release/lantern

.PHONY: run ask test models build lint bench clients

models:
	python3 models/fetch

build:
	$(CARGO) build --release --locked

# The main job: the OpenAI-compatible server on the default model.
run: models build
	$(LANTERN) serve $(MODEL)

# One answer in the terminal.
ask: models build
	$(LANTERN) run $(MODEL) "$(PROMPT)"

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --locked --all-targets -- -D warnings

test: models lint
	$(CARGO) test --release --locked
	$(MAKE) clients

# The official OpenAI SDK (from PyPI, in a virtual environment) against the real server.
clients: build .venv/.installed
	LANTERN_BIN=$(LANTERN) .venv/bin/python -m pytest -q tests/clients

.venv/.installed: tests/clients/requirements.txt
	python3 -m venv .venv
	.venv/bin/pip install -q -r tests/clients/requirements.txt
	touch $@

# Lantern against llama.cpp (built from the llama-cpp-python sdist) on the same GGUF: the
# engine against llama-bench, then the server against llama-server under 1..32 clients; and
# /v1/embeddings against sentence-transformers.
bench: models build .venv/.installed
	python3 benches/compare.py
	LANTERN_BIN=$(LANTERN) .venv/bin/python benches/serve_compare.py --wait-quiet 120
	LANTERN_BIN=$(LANTERN) $$(benches/embeddings/setup.sh) benches/embed_compare.py --wait-quiet 60
