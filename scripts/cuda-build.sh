#!/usr/bin/env bash
# Builds a CUDA zlayer on a machine without a GPU or a CUDA install (DESIGN.md §6), for
# carrying to a GPU machine: the compiler and libraries come from PyPI, and the driver
# (libcuda.so.1, present wherever a GPU is) is stood in for at link time by a stub that
# defines the symbols the binary imports.
#
#   scripts/cuda-build.sh [OUT]     # OUT defaults to target/zlayer-cuda
#
# Environment: VENV (where the PyPI packages go, default target/cuda-venv), CUDA_COMPUTE_CAP
# (default 90: H100/H200). On the GPU machine, point LD_LIBRARY_PATH at its Python's
# nvidia/cu13/lib if libcublas.so.13 is not found.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/zlayer-cuda}
VENV=${VENV:-target/cuda-venv}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/cuda}

if [ ! -x "$VENV/bin/pip" ]; then python3 -m venv "$VENV"; fi
"$VENV/bin/pip" install -q "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-crt==13.0.*" "nvidia-nvvm==13.0.*" \
    "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-cccl==13.0.*" "nvidia-cublas==13.0.*" "nvidia-curand" \
    "nvidia-cuda-nvrtc==13.0.*"
C=$(cd "$VENV"/lib/python3*/site-packages/nvidia/cu13 && pwd)
export PATH=$C/bin:$PATH CUDA_ROOT=$C CUDA_PATH=$C CUDA_HOME=$C

# Unversioned names for the linker; the binary records the versioned sonames.
LINK=$CARGO_TARGET_DIR/cuda-link
mkdir -p "$LINK"
for n in cublas cublasLt cudart nvrtc; do ln -sf "$C/lib/lib$n.so.13" "$LINK/lib$n.so"; done
ln -sf "$C/lib/libcurand.so.10" "$LINK/libcurand.so"

# Everything but the final link (the kernels take minutes), then the driver symbols the
# binary needs, from a link against an empty stub.
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$LINK/libcuda.so" -x c /dev/null
cargo build --release -p zlayer --features cuda 2>/dev/null || true
link() { cargo rustc --release -p zlayer --bin zlayer --features cuda -- -L "$LINK" -C link-arg=-Wl,--error-limit=0; }
SYMS=$(link 2>&1 | grep -o 'undefined symbol: cu[A-Za-z0-9_]*' | sed 's/undefined symbol: //' | sort -u || true)
for s in $SYMS; do echo "int $s(void) { return 999; }"; done > "$LINK/stub.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$LINK/libcuda.so" "$LINK/stub.c"
link
strip --strip-all -o "$OUT" "$CARGO_TARGET_DIR/release/zlayer"
echo "wrote $OUT ($(du -m "$OUT" | cut -f1) MB; needs libcuda.so.1 and the nvidia/cu13 libraries at run time)"
