#!/usr/bin/env bash
# A virtual environment for benches/embed_compare.py: sentence-transformers (PyTorch, CPU) and
# httpx, from PyPI (PyTorch's CPU-only index first where it is reachable: a tenth of the size).
# Idempotent; prints the python to run the benchmark with.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$ROOT/benches/.work/st-venv"
if [[ ! -f "$VENV/.installed" ]]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --retries 0 --timeout 15 --index-url https://download.pytorch.org/whl/cpu torch 2>/dev/null \
    || echo "PyTorch's CPU index is unreachable: torch comes from PyPI" >&2
  "$VENV/bin/pip" install -q sentence-transformers httpx
  touch "$VENV/.installed"
fi
echo "$VENV/bin/python"
