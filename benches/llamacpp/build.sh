#!/usr/bin/env bash
# Build llama.cpp's `llama-bench` (default) or `llama-server` from the llama.cpp
# sources vendored in the llama-cpp-python sdist on PyPI. Idempotent; prints
# the binary path last.
#
#   benches/llamacpp/build.sh                  # llama-bench
#   benches/llamacpp/build.sh llama-server     # or TARGET=llama-server
#   JOBS=1 benches/llamacpp/build.sh llama-server
#   benches/llamacpp/build.sh llama-eval-callback   # prints every tensor of one pass
#
# Both targets share one build tree. The server needs LLAMA_BUILD_SERVER=ON; once
# a tree has been configured with it, it stays ON (so alternating targets never
# flips the cache back and forth and rebuilds the world).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
LLAMACPP_VERSION="${LLAMACPP_VERSION:-0.3.36}"
WORK="${LLAMACPP_WORKDIR:-$ROOT/benches/.work/llamacpp}"
JOBS="${JOBS:-2}"
TARGET="${1:-${TARGET:-llama-bench}}"
case "$TARGET" in
  llama-bench|llama-server|llama-eval-callback) ;;
  *) echo "unsupported target '$TARGET' (llama-bench | llama-server | llama-eval-callback)" >&2; exit 2 ;;
esac
SRC_DIR="$WORK/llama_cpp_python-$LLAMACPP_VERSION"
# AMX: -march=native enables ggml's AMX kernels when the CPU advertises AMX, but
# on some VMs (e.g. Firecracker) the first `ldtilecfg` SIGSEGVs even though
# CPUID lists amx_*. Candle does not use AMX either, so disable it by default
# (LLAMACPP_AMX=1 keeps it).
LLAMACPP_AMX="${LLAMACPP_AMX:-0}"
EXTRA_FLAGS=""
TAG=""
if [[ "$LLAMACPP_AMX" != "1" ]]; then
  EXTRA_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  TAG="-noamx"
fi
BUILD_DIR="$WORK/build-$LLAMACPP_VERSION$TAG"
BIN="$BUILD_DIR/bin/$TARGET"

if [[ -x "$BIN" ]]; then
  echo "$BIN"
  exit 0
fi

mkdir -p "$WORK"

if ! command -v cmake >/dev/null 2>&1; then
  echo "cmake not found; installing via apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y --no-install-recommends cmake >&2; then
    apt-get update >&2
    apt-get install -y --no-install-recommends cmake >&2
  fi
fi

if [[ ! -d "$SRC_DIR" ]]; then
  sdist="$(ls "$WORK"/llama_cpp_python-"$LLAMACPP_VERSION".tar.gz 2>/dev/null || true)"
  if [[ -z "$sdist" ]]; then
    python3 -m pip download --no-binary :all: --no-deps \
      "llama-cpp-python==$LLAMACPP_VERSION" -d "$WORK" >&2
    sdist="$(ls "$WORK"/llama_cpp_python-"$LLAMACPP_VERSION".tar.gz)"
  fi
  tar -xzf "$sdist" -C "$WORK"
fi

LLAMA_DIR="$SRC_DIR/vendor/llama.cpp"
if [[ ! -f "$LLAMA_DIR/CMakeLists.txt" ]]; then
  LLAMA_DIR="$(dirname "$(find "$SRC_DIR" -path '*llama.cpp/CMakeLists.txt' -print -quit)")"
fi
[[ -f "$LLAMA_DIR/CMakeLists.txt" ]] || { echo "vendored llama.cpp not found in $SRC_DIR" >&2; exit 1; }

BUILD_SERVER=OFF
if [[ "$TARGET" == "llama-server" ]] || \
   grep -q '^LLAMA_BUILD_SERVER:BOOL=ON' "$BUILD_DIR/CMakeCache.txt" 2>/dev/null; then
  BUILD_SERVER=ON
fi

# The examples (llama-eval-callback) stay on once asked for, as the server does.
BUILD_EXAMPLES=OFF
if [[ "$TARGET" == "llama-eval-callback" ]] || \
   grep -q '^LLAMA_BUILD_EXAMPLES:BOOL=ON' "$BUILD_DIR/CMakeCache.txt" 2>/dev/null; then
  BUILD_EXAMPLES=ON
fi

# Server extras: no web UI (neither npm nor a Hugging Face download of prebuilt
# assets at build time; the benchmark only needs the HTTP API).
cmake -S "$LLAMA_DIR" -B "$BUILD_DIR" \
  -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=ON \
  -DLLAMA_CURL=OFF \
  -DBUILD_SHARED_LIBS=OFF \
  -DGGML_CCACHE=OFF \
  -DCMAKE_C_FLAGS="$EXTRA_FLAGS" \
  -DCMAKE_CXX_FLAGS="$EXTRA_FLAGS" \
  -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES="$BUILD_EXAMPLES" \
  -DLLAMA_BUILD_SERVER="$BUILD_SERVER" \
  -DLLAMA_BUILD_UI=OFF \
  -DLLAMA_USE_PREBUILT_UI=OFF \
  -DLLAMA_BUILD_TOOLS=ON >&2
cmake --build "$BUILD_DIR" --config Release --target "$TARGET" -j "$JOBS" >&2

[[ -x "$BIN" ]] || { echo "build finished but $BIN is missing" >&2; exit 1; }
echo "$BIN"
