#!/usr/bin/env bash
# Build lantern with --features cuda on a machine without a GPU or CUDA toolkit (CUDA 13.0, sm_90).
# Used here to build the binary run on an H100 (driver 580, CUDA 13.0; run it with LD_LIBRARY_PATH
# pointing at CUDA 13 runtime libraries: cuBLAS, cuRAND, cudart). Wheels and the toolkit go to
# benches/.work, the build to target/cuda (or CUDA_TARGET_DIR).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WT=${WT:-$ROOT}; T=${CUDA_HOME:-$ROOT/benches/.work/cuda-13.0}; DL=${DL:-$ROOT/benches/.work/cuda-dl}
if [ ! -x "$T/bin/nvcc" ]; then
  mkdir -p "$DL/x"; cd "$DL"
  nice -n 19 pip download --no-deps --only-binary=:all: --platform manylinux_2_28_x86_64 --python-version 3.11 -d . \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-runtime==13.0.96 \
    nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35
  for w in *.whl; do nice -n 19 unzip -q -o "$w" -d x; done
  cp -a x/nvidia/cu13 "$T"; cd "$T"; mv lib lib64; ln -s lib64 lib
  mkdir -p targets/x86_64-linux; ln -s ../../include targets/x86_64-linux/include; ln -s ../../lib64 targets/x86_64-linux/lib
  for f in libcublas.so.13 libcublasLt.so.13 libcudart.so.13 libcurand.so.10 libnvrtc.so.13; do ln -sf $f lib64/${f%%.so*}.so; done
  # link-only libcuda stub (soname libcuda.so.1): every cu* function cudarc's driver bindings declare
  mkdir -p lib64/stubs
  grep -oE '^pub unsafe fn cu[A-Za-z0-9_]+' ~/.cargo/registry/src/*/cudarc-0.19.10/src/driver/sys/mod.rs | awk '{print $4}' | sort -u \
    | sed 's/.*/int &(void) { return 999; }/' > lib64/stubs/libcuda_stub.c
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o lib64/stubs/libcuda.so lib64/stubs/libcuda_stub.c
fi
export CUDA_HOME="$T" PATH="$T/bin:$PATH" CUDA_COMPUTE_CAP=90 CUDAFORGE_THREADS=2 \
       CARGO_TARGET_DIR=${CUDA_TARGET_DIR:-$ROOT/target/cuda} CARGO_BUILD_JOBS=2 \
       NVCC_APPEND_FLAGS="-Xfatbin=-compress-all"   # LZ4 fatbin compression: 33 MB -> 7 MB of SASS
cd "$WT"
nice -n 19 cargo build --release --locked --features cuda --bin lantern
strip -o "${OUT_BIN:-$CARGO_TARGET_DIR/lantern-cuda}" "$CARGO_TARGET_DIR/release/lantern"
