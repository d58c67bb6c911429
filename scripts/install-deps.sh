#!/usr/bin/env bash
# Installs everything the build and the tests need, from Debian's packages and PyPI only.
# Idempotent: installs only what is missing, and runs `apt-get update` once before doing so.
# The Python tools for tests go into the project virtualenv .venv (Debian's python with system
# site packages, so Debian's python3-torch and python3-grpcio are visible), pinned in
# scripts/requirements.txt.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"

packages=(
  # Toolchain.
  build-essential cmake ninja-build pkg-config ccache
  # Lint (make lint): clang-tidy; lizard is pinned in requirements.txt.
  clang-tidy
  # Scoring core. libopenblas0-openmp: without it LibTorch falls back to reference BLAS (~25x slower).
  libtorch-dev libopenblas0-openmp
  # RPC and the rest of the server.
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  libspdlog-dev libfmt-dev libcli11-dev nlohmann-json3-dev libcpp-httplib-dev
  # Tests and benchmarks.
  libgtest-dev libgmock-dev libbenchmark-dev
  # Python test tools: Debian's interpreter, torch and grpc, plus the venv module.
  python3 python3-venv python3-pip python3-torch python3-grpcio python3-numpy
  # The API contract test (tests/proto) reads descriptor sets with Debian's protobuf.
  python3-protobuf
  # Integration tests against real tools.
  prometheus docker-compose
)

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
else
  echo "install-deps: Debian packages present"
fi

# Project virtualenv for the Python test tools. Re-synced only when the requirements change.
venv="$root/.venv"
req="$here/requirements.txt"
stamp="$venv/.requirements.sha256"
if [ ! -x "$venv/bin/python" ]; then
  /usr/bin/python3 -m venv --system-site-packages "$venv"
fi
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  "$venv/bin/python" -m pip install --disable-pip-version-check -q --no-deps -r "$req"
  echo "$want" >"$stamp"
else
  echo "install-deps: virtualenv up to date"
fi
