#!/usr/bin/env bash
# The whole test suite against LibTorch 2.x on this CPU machine: the PyTorch wheel the H200 device
# machine runs (2.11.0 for CUDA 13.0, pinned in scripts/torch2-wheels.txt), unpacked for its
# LibTorch, the project configured with -DATTNSCORE_TORCH=python against it (the CUDA build: the
# project's kernel compiled by nvcc, accelerator_cuda.cc and alibi_logits_cuda.cc compiled and
# linked), and every ctest test run on the CPU. It catches what only LibTorch 2.x shows (API
# changes, its bundled headers, the fused attention that 1.13 lacks, which the batched path's
# golden tests then run) before a device session, which is short and rare.
#
#   scripts/torch2-check.sh [CTEST_ARGS...]       e.g. -R scoring_ to run a subset
#
# Needs the CUDA 13 toolkit (CUDA_HOME, default /usr/local/cuda: nvcc and the libraries that
# libtorch_cuda.so loads; nothing runs on a GPU), the build dependencies (make deps) and PyPI once:
# about 760 MB of wheels into .torch2/wheels (git-ignored), checked against their sha256, unpacked
# into .torch2/root; nothing is installed. Builds in build-torch2 (BUILD); JOBS (default 2).
# Not part of CI, which builds the device check's subset against the same LibTorch instead
# (scripts/device-check.sh --dry-run): a second full build would not fit its time.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/torch2-lib.sh
source "$ROOT/scripts/torch2-lib.sh"
BUILD="${BUILD:-$ROOT/build-torch2}"
JOBS="${JOBS:-2}"

die() { echo "torch2-check: $*" >&2; exit 1; }

torch2_available || die "no nvcc at $CUDA_HOME/bin/nvcc: the CUDA 13 toolkit is needed (CUDA_HOME)"
echo "== fetch and unpack ($TORCH2_LIST)"
torch2_prepare || die "the LibTorch 2.x wheels could not be prepared"
torch2_runtime_env || die "programs linked against $TORCH2_UNPACKED would not start here"

echo "== configure $BUILD (LibTorch from $TORCH2_CMAKE_DIR)"
cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DATTNSCORE_TORCH=python \
  -DATTNSCORE_TORCH_DIR="$TORCH2_CMAKE_DIR" -DATTNSCORE_WERROR=OFF -DTORCH_CUDA_ARCH_LIST=9.0 \
  -DCMAKE_CUDA_COMPILER="$CUDA_HOME/bin/nvcc" >"$TORCH2_DIR/configure.log" ||
  { tail -n 40 "$TORCH2_DIR/configure.log"; die "configure failed ($TORCH2_DIR/configure.log)"; }
grep -E 'LibTorch .*CUDA' "$TORCH2_DIR/configure.log" || true

echo "== build (ninja -j$JOBS)"
cmake --build "$BUILD" -j "$JOBS"

echo "== ctest on the CPU"
cd "$BUILD"
ctest --output-on-failure -j "$JOBS" "$@"
