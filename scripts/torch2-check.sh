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
# Not part of CI: the download and a second full build would not fit its time.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DIR="$ROOT/.torch2"
WHEELS="$DIR/wheels"
UNPACKED="$DIR/root"
BUILD="${BUILD:-$ROOT/build-torch2}"
JOBS="${JOBS:-2}"
CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
LIST="$ROOT/scripts/torch2-wheels.txt"

die() { echo "torch2-check: $*" >&2; exit 1; }

[[ -x $CUDA_HOME/bin/nvcc ]] || die "no nvcc at $CUDA_HOME/bin/nvcc: the CUDA 13 toolkit is needed (CUDA_HOME)"

fetch() {
  mkdir -p "$WHEELS"
  /usr/bin/python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --require-hashes -r "$LIST" -d "$WHEELS"
}

# The torch wheel's include, share and lib folders and the CUDA libraries' lib folders; again only
# when the wheel list changed.
unpack() {
  local stamp
  stamp="$(sha256sum "$LIST" | cut -c1-16)"
  [[ -f $UNPACKED/.stamp && $(cat "$UNPACKED/.stamp") == "$stamp" ]] && return 0
  rm -rf "$UNPACKED" && mkdir -p "$UNPACKED"
  unzip -q "$WHEELS"/torch-*.whl 'torch/include/*' 'torch/share/*' 'torch/lib/*' -d "$UNPACKED"
  local wheel
  for wheel in "$WHEELS"/nvidia_*.whl; do unzip -q "$wheel" 'nvidia/*' -d "$UNPACKED"; done
  echo "$stamp" >"$UNPACKED/.stamp"
}

echo "== fetch and unpack ($LIST)"
fetch
unpack
TORCH_DIR="$UNPACKED/torch/share/cmake/Torch"
NVIDIA_LIBS="$(find "$UNPACKED/nvidia" -name '*.so*' -printf '%h\n' | sort -u | paste -sd:)"
export LD_LIBRARY_PATH="$NVIDIA_LIBS:$CUDA_HOME/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
missing="$(ldd "$UNPACKED/torch/lib/libtorch_cuda.so" | grep 'not found' || true)"
[[ -z $missing ]] || die "libraries that libtorch_cuda.so loads are missing:"$'\n'"$missing"
# The wheel's libtorch.so exports copies of std::filesystem's operations built against a newer
# libstdc++ than bookworm's: its remove_all calls recursive_directory_iterator::__erase, which GCC
# 12's lacks (a weak symbol, so a call through null). With the system's libstdc++ first in the
# lookup, the program's own filesystem calls stay on the system's implementation. (The GPU image,
# Ubuntu 24.04, has a libstdc++ with it.)
LIBSTDCXX="$(/sbin/ldconfig -p | awk '/libstdc\+\+\.so\.6 .*x86-64/ && !found {print $NF; found = 1}')"
[[ -n $LIBSTDCXX ]] || die "no libstdc++.so.6 in the loader's cache"
export LD_PRELOAD="$LIBSTDCXX"

echo "== configure $BUILD (LibTorch from $TORCH_DIR)"
cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DATTNSCORE_TORCH=python \
  -DATTNSCORE_TORCH_DIR="$TORCH_DIR" -DATTNSCORE_WERROR=OFF -DTORCH_CUDA_ARCH_LIST=9.0 \
  -DCMAKE_CUDA_COMPILER="$CUDA_HOME/bin/nvcc" >"$DIR/configure.log" ||
  { tail -n 40 "$DIR/configure.log"; die "configure failed ($DIR/configure.log)"; }
grep -E 'LibTorch .*CUDA' "$DIR/configure.log" || true

echo "== build (ninja -j$JOBS)"
cmake --build "$BUILD" -j "$JOBS"

echo "== ctest on the CPU"
cd "$BUILD"
ctest --output-on-failure -j "$JOBS" "$@"
