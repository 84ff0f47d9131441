# The two quick-start commands:
#   make run    fetch the default models, build (the web UI too), and serve the default model
#               at http://127.0.0.1:8080 (the UI) and http://127.0.0.1:8080/v1 (OpenAI-compatible)
#   make test   fetch the models, build, and run every check and test
# Both are idempotent: nothing already fetched or built is done again.

CARGO ?= cargo
MODEL ?= smollm2
PROMPT ?= Why is the sky blue?
# Respect a shared target directory (CARGO_TARGET_DIR) as cargo does.
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
LANTERN := $(TARGET_DIR)/release/lantern

.PHONY: run ask test models build lint bench clients ui e2e

models:
	python3 models/fetch

# The web UI, built once into ui/dist and embedded in the binary (served at /).
UI_SOURCES := $(shell find ui/src ui/public -type f 2>/dev/null) ui/index.html ui/vite.config.ts
ui: ui/dist/index.html
ui/node_modules/.installed: ui/package-lock.json
	cd ui && npm ci --no-audit --no-fund
	touch $@
ui/dist/index.html: ui/node_modules/.installed $(UI_SOURCES)
	cd ui && npm run build

build: ui
	$(CARGO) build --release --locked

# The main job: the OpenAI-compatible server on the default model.
run: models build
	$(LANTERN) serve $(MODEL)

# One answer in the terminal.
ask: models build
	$(LANTERN) run $(MODEL) "$(PROMPT)"

lint: ui
	cd ui && npx svelte-check --tsconfig ./tsconfig.json --fail-on-warnings
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --locked --all-targets -- -D warnings

test: models lint
	$(CARGO) test --release --locked
	$(MAKE) clients
	$(MAKE) e2e

# The official OpenAI SDK (from PyPI, in a virtual environment) against the real server.
clients: build .venv/.installed
	LANTERN_BIN=$(LANTERN) .venv/bin/python -m pytest -q tests/clients

# The UI in Debian's chromium (installed here when missing), driven by Playwright, against a
# real server on the default model; screenshots land in ui/test-results/screenshots.
e2e: build ui/node_modules/.installed
	@test -x /usr/bin/chromium || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium fonts-dejavu-core; }
	cd ui && LANTERN_BIN=$(abspath $(LANTERN)) npx playwright test

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
