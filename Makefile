# The two quick-start commands:
#   make run    fetch the default models, build (the web UI too), and serve the default model
#               at http://127.0.0.1:8080 (the UI) and http://127.0.0.1:8080/v1 (OpenAI-compatible)
#   make test   fetch the models, build, and run every check and test
# Both are idempotent: nothing already fetched or built is done again.

CARGO ?= cargo
# Empty: the server's saved default model (settings.toml; smollm2 until changed).
MODEL ?=
PROMPT ?= Why is the sky blue?
# Respect a shared target directory (CARGO_TARGET_DIR) as cargo does.
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
LANTERN := $(TARGET_DIR)/release/lantern
DESKTOP := $(TARGET_DIR)/release/lantern-desktop
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_INSTALL := $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq

.PHONY: run ask test models build lint bench clients ui e2e desktop desktop-deps desktop-test desktop-run

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
	$(LANTERN) run $(or $(MODEL),smollm2) "$(PROMPT)"

lint: ui desktop-deps
	cd ui && npx svelte-check --tsconfig ./tsconfig.json --fail-on-warnings
	$(CARGO) fmt --all -- --check
	python3 tests/structure/import_cycles.py src
	$(CARGO) clippy --release --locked --workspace --all-targets -- -D warnings

test: models lint .venv/.installed
	LANTERN_PYTHON=$(abspath .venv/bin/python) $(CARGO) test --release --locked
	$(MAKE) clients
	$(MAKE) e2e
	$(MAKE) desktop-test

# The desktop app (src-tauri/): the same server in-process, its UI in a window, a tray icon.
# Built with plain cargo (no tauri-cli); Debian's webkit2gtk-4.1 packages are installed when missing.
desktop: ui desktop-deps
	$(CARGO) build --release --locked -p lantern-desktop --features lantern-desktop/custom-protocol

desktop-deps:
	@{ pkg-config --exists webkit2gtk-4.1 ayatana-appindicator3-0.1 librsvg-2.0 && test -f /usr/include/xdo.h; } 2>/dev/null || { \
	  $(APT_INSTALL) libwebkit2gtk-4.1-dev build-essential pkg-config file libxdo-dev libssl-dev \
	    libayatana-appindicator3-dev librsvg2-dev libgtk-3-dev libsoup-3.0-dev libjavascriptcoregtk-4.1-dev; }

desktop-run: models desktop
	$(DESKTOP)

# The desktop app under Xvfb: its window shows the UI (screenshot in ui/test-results/desktop),
# the page reaches the app, and quitting flushes the request log.
desktop-test: desktop
	@command -v xvfb-run >/dev/null && command -v dbus-run-session >/dev/null && command -v xdotool >/dev/null && test -x /usr/bin/import || { \
	  $(APT_INSTALL) xvfb xauth dbus xdotool imagemagick fonts-dejavu-core; }
	tests/desktop/run.sh $(DESKTOP)

# The official OpenAI and Anthropic SDKs, LangChain and the ollama client (from PyPI, in a virtual environment)
# against the real server. The same environment has the `gguf` writer tests/architectures.rs uses.
clients: build .venv/.installed
	LANTERN_BIN=$(LANTERN) .venv/bin/python -m pytest -q tests/clients

# The UI in Debian's chromium (installed here when missing), driven by Playwright, against a
# real server on the default model; screenshots land in ui/test-results/screenshots.
e2e: build ui/node_modules/.installed
	@test -x /usr/bin/chromium || { $(APT_INSTALL) chromium fonts-dejavu-core; }
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
