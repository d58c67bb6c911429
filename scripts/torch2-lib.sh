# shellcheck shell=bash
# Sourced, not run: the device machine's LibTorch (PyTorch 2.11 for CUDA 13.0, pinned with the
# three CUDA libraries it loads in scripts/torch2-wheels.txt) on this CPU machine, for
# scripts/torch2-check.sh (the whole suite) and scripts/device-check.sh --dry-run (the device
# check's own build). Nothing is installed: the wheels are downloaded once, checked against their
# sha256, into .torch2/wheels and unpacked into .torch2/root (both git-ignored).
#
#   torch2_available           true where the CUDA 13 toolkit is (nvcc and the libraries that
#                              libtorch_cuda.so loads: nothing runs on a GPU, but they must load)
#   torch2_prepare             download (once) and unpack (again only when the list changed);
#                              prints what it did; non-zero on failure
#   torch2_runtime_env         exports LD_LIBRARY_PATH and LD_PRELOAD so that programs linked
#                              against it start here; non-zero when a library is still missing
#
# After torch2_prepare: TORCH2_CMAKE_DIR (TorchConfig.cmake's folder, for -DATTNSCORE_TORCH_DIR).
# Needs /usr/bin/python3 with pip (install-deps installs python3-pip) and PyPI once (about
# 760 MB). CUDA_HOME defaults to /usr/local/cuda.

TORCH2_ROOT_DIR="${TORCH2_ROOT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
TORCH2_DIR="$TORCH2_ROOT_DIR/.torch2"
TORCH2_WHEELS="$TORCH2_DIR/wheels"
TORCH2_UNPACKED="$TORCH2_DIR/root"
TORCH2_LIST="$TORCH2_ROOT_DIR/scripts/torch2-wheels.txt"
TORCH2_CMAKE_DIR="$TORCH2_UNPACKED/torch/share/cmake/Torch"
CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"

torch2_available() {
  [[ -x $CUDA_HOME/bin/nvcc && -d $CUDA_HOME/lib64 ]]
}

torch2_fetch() {
  mkdir -p "$TORCH2_WHEELS" || return 1
  /usr/bin/python3 -m pip download --disable-pip-version-check --quiet --no-deps \
    --only-binary=:all: --python-version 3.11 --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --require-hashes \
    -r "$TORCH2_LIST" -d "$TORCH2_WHEELS"
}

# The torch wheel's include, share and lib folders and the CUDA libraries' folders (Python's
# zipfile: unzip is not among the build dependencies).
torch2_unpack() {
  local stamp
  stamp="$(sha256sum "$TORCH2_LIST" | cut -c1-16)"
  if [[ -f $TORCH2_UNPACKED/.stamp && $(cat "$TORCH2_UNPACKED/.stamp") == "$stamp" ]]; then
    echo "torch2: $TORCH2_UNPACKED up to date ($stamp)"
    return 0
  fi
  rm -rf "$TORCH2_UNPACKED" && mkdir -p "$TORCH2_UNPACKED" || return 1
  /usr/bin/python3 - "$TORCH2_WHEELS" "$TORCH2_UNPACKED" <<'PY' || return 1
import glob, os, stat, sys, zipfile
wheels, out = sys.argv[1], sys.argv[2]
keep = ("torch/include/", "torch/share/", "torch/lib/", "nvidia/")
for path in sorted(glob.glob(os.path.join(wheels, "*.whl"))):
    with zipfile.ZipFile(path) as wheel:
        for info in wheel.infolist():
            if info.filename.startswith(keep) and not info.is_dir():
                wheel.extract(info, out)
                mode = info.external_attr >> 16
                if mode & stat.S_IXUSR:
                    os.chmod(os.path.join(out, info.filename), mode & 0o777)
PY
  echo "$stamp" >"$TORCH2_UNPACKED/.stamp"
  echo "torch2: unpacked $(find "$TORCH2_WHEELS" -name "*.whl" | wc -l) wheels into $TORCH2_UNPACKED ($(du -sh "$TORCH2_UNPACKED" | cut -f1))"
}

torch2_prepare() {
  torch2_fetch || { echo "torch2: pip download of $TORCH2_LIST failed" >&2; return 1; }
  torch2_unpack || { echo "torch2: unpacking into $TORCH2_UNPACKED failed" >&2; return 1; }
  [[ -f $TORCH2_CMAKE_DIR/TorchConfig.cmake ]] ||
    { echo "torch2: no TorchConfig.cmake in $TORCH2_CMAKE_DIR" >&2; return 1; }
}

torch2_runtime_env() {
  local nvidia_libs missing libstdcxx
  nvidia_libs="$(find "$TORCH2_UNPACKED/nvidia" -name '*.so*' -printf '%h\n' | sort -u | paste -sd:)"
  export LD_LIBRARY_PATH="$nvidia_libs:$CUDA_HOME/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  missing="$(ldd "$TORCH2_UNPACKED/torch/lib/libtorch_cuda.so" | grep 'not found' || true)"
  if [[ -n $missing ]]; then
    echo "torch2: libraries that libtorch_cuda.so loads are missing:"$'\n'"$missing" >&2
    return 1
  fi
  # The wheel's libtorch.so exports copies of std::filesystem's operations built against a newer
  # libstdc++ than bookworm's: its remove_all calls recursive_directory_iterator::__erase, which
  # GCC 12's lacks (a weak symbol, so a call through null). With the system's libstdc++ first in
  # the lookup, the program's own filesystem calls stay on the system's implementation. (The GPU
  # image, Ubuntu 24.04, and the device machine have a libstdc++ with it.)
  libstdcxx="$(/sbin/ldconfig -p | awk '/libstdc\+\+\.so\.6 .*x86-64/ && !found {print $NF; found = 1}')"
  [[ -n $libstdcxx ]] || { echo "torch2: no libstdc++.so.6 in the loader's cache" >&2; return 1; }
  export LD_PRELOAD="$libstdcxx"
}
