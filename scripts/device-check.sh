#!/usr/bin/env bash
# One command for the GPU machine (issue 11): builds attnscore against the machine's PyTorch
# (LibTorch 2.x with CUDA, sm_90), runs the golden tests on cuda, starts the server with
# --device cuda for the golden end-to-end test and `attnscore load` (decode preset, c=64,
# batching on vs off, also with inputs and outputs in shared memory), runs the device benchmark,
# writes a Markdown report and prints a short table last. Exits non-zero when any step fails.
#
#   scripts/device-check.sh --fetch              here, before a device session: apt-get download
#                                                scripts/device-packages.txt into .device/debs
#   scripts/device-check.sh [REPORT_DIR]         on the GPU machine, from the repository root
#                                                (default REPORT_DIR: build-device/report)
#   scripts/device-check.sh --dry-run [REPORT_DIR]
#                                                the same steps on this CPU machine, --device cpu,
#                                                small benchmark shapes, build-device-dry (CI runs
#                                                this); built against the device's own LibTorch
#                                                (2.11 with CUDA, scripts/torch2-lib.sh) where the
#                                                CUDA 13 toolkit is, so that the CUDA build and its
#                                                kernel compile, link and pass the CPU's tests in
#                                                every CI run; else Debian's (DRY_TORCH=system
#                                                asks for it, DRY_TORCH=wheel insists on 2.11)
#
# The Debian packages travel as .deb files (.device/debs, carried by the run tool) and are
# unpacked with dpkg -x into .device/prefix, never into /. The golden cases are copied from
# ../shared/golden into .device/golden when ../shared exists (it does not travel). Both folders
# are git-ignored. Environment: JOBS (default: the number of cores), LOAD_SECONDS (default 10, 5 in a dry run),
# LOAD_CONNECTIONS (default 8, 2 in a dry run).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
MODE=device
REPORT_DIR=""
for arg in "$@"; do
  case "$arg" in
    --dry-run) MODE=dry ;;
    --fetch) MODE=fetch ;;
    -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
    -*) echo "device-check: unknown option $arg" >&2; exit 2 ;;
    *) REPORT_DIR="$arg" ;;
  esac
done

DEVICE_DIR="$ROOT/.device"
DEBS="$DEVICE_DIR/debs"
PREFIX="$DEVICE_DIR/prefix"
GOLDEN="$DEVICE_DIR/golden"
PACKAGES="$ROOT/scripts/device-packages.txt"

if [[ $MODE == fetch ]]; then
  mkdir -p "$DEBS" && cd "$DEBS" || exit 1
  rm -f ./*.deb
  # shellcheck disable=SC2046
  apt-get download $(grep -v '^#' "$PACKAGES" | grep -v '^$') || exit 1
  echo "device-check: $(find . -name '*.deb' | wc -l) packages, $(du -sh . | cut -f1) in $DEBS"
  exit 0
fi

NVCC="$(command -v nvcc || { [[ -x /usr/local/cuda/bin/nvcc ]] && echo /usr/local/cuda/bin/nvcc; })"
KERNEL_TARGETS=()
DRY_TORCH="${DRY_TORCH:-auto}"
if [[ $MODE == dry ]]; then
  BUILD="$ROOT/build-device-dry"
  DEVICE=cpu
  TORCH_ARGS=()
  # shellcheck source=scripts/torch2-lib.sh
  source "$ROOT/scripts/torch2-lib.sh"
  case "$DRY_TORCH" in
    auto) if torch2_available; then DRY_TORCH=wheel; else DRY_TORCH=system; fi ;;
    wheel) torch2_available || { echo "device-check: DRY_TORCH=wheel needs the CUDA 13 toolkit at $CUDA_HOME" >&2; exit 2; } ;;
    system) ;;
    *) echo "device-check: DRY_TORCH: expected auto, wheel or system, got '$DRY_TORCH'" >&2; exit 2 ;;
  esac
  if [[ $DRY_TORCH == wheel ]]; then
    # The device's LibTorch and its CUDA build, as there (the kernel compiled by nvcc and linked
    # into the scoring library); only the device is the CPU.
    TORCH_ARGS=(-DATTNSCORE_TORCH=python "-DATTNSCORE_TORCH_DIR=$TORCH2_CMAKE_DIR"
                -DATTNSCORE_WERROR=OFF -DTORCH_CUDA_ARCH_LIST=9.0 "-DCMAKE_CUDA_COMPILER=$CUDA_HOME/bin/nvcc")
  elif [[ -n $NVCC ]]; then
    # Debian's LibTorch: the project's CUDA kernels still compile where nvcc exists (nothing
    # links or runs them).
    TORCH_ARGS=(-DATTNSCORE_CUDA_KERNELS=on "-DCMAKE_CUDA_COMPILER=$NVCC")
    KERNEL_TARGETS=(attnscore_cuda_kernels)
  fi
  BENCH_ARGS=(--device cpu --small)
else
  BUILD="$ROOT/build-device"
  DEVICE=cuda
  # LibTorch 2.x headers may warn where 1.13's did not: warnings stay warnings there.
  TORCH_ARGS=(-DATTNSCORE_TORCH=python -DATTNSCORE_TORCH_PYTHON=python3 -DATTNSCORE_WERROR=OFF
              -DTORCH_CUDA_ARCH_LIST=9.0)
  if [[ -n $NVCC ]]; then TORCH_ARGS+=("-DCMAKE_CUDA_COMPILER=$NVCC"); fi
  BENCH_ARGS=(--device cuda)
fi
REPORT_DIR="${REPORT_DIR:-$BUILD/report}"
mkdir -p "$REPORT_DIR" || exit 2
REPORT_DIR="$(cd "$REPORT_DIR" && pwd)"
LOGS="$REPORT_DIR/logs"
mkdir -p "$LOGS"
JOBS="${JOBS:-$(nproc)}"
LOAD_SECONDS="${LOAD_SECONDS:-$([[ $MODE == dry ]] && echo 5 || echo 10)}"
# Each decode request carries 4 MiB of keys: one HTTP/2 connection's transport thread, not the
# device, would bound the load test, so it spreads over several.
LOAD_CONNECTIONS="${LOAD_CONNECTIONS:-$([[ $MODE == dry ]] && echo 2 || echo 8)}"
LIBDIR="$PREFIX/usr/lib/x86_64-linux-gnu"

STEPS=()    # "name|status|seconds|note"
FAILED=0
START_ALL=$(date +%s)

# step NAME NOTE COMMAND...: runs COMMAND with its output in $LOGS/NAME.log, records the result.
step() {
  local name="$1" note="$2"
  shift 2
  local start rc
  start=$(date +%s)
  echo "== $name" >&2
  "$@" >"$LOGS/$name.log" 2>&1
  rc=$?
  local seconds=$(($(date +%s) - start))
  if [[ $rc -eq 0 ]]; then
    STEPS+=("$name|ok|$seconds|$note")
  else
    STEPS+=("$name|FAILED (rc $rc, logs/$name.log)|$seconds|$note")
    FAILED=1
    tail -n 30 "$LOGS/$name.log" >&2
  fi
  return $rc
}

unpack() {
  local debs=("$DEBS"/*.deb)
  [[ -e ${debs[0]} ]] || { echo "no .deb files in $DEBS: run scripts/device-check.sh --fetch here first"; return 1; }
  local stamp
  # The package list and this function: a change to either unpacks again.
  stamp="$({ ls "$DEBS"; declare -f unpack; } | sha256sum | cut -c1-16)"
  if [[ -f $PREFIX/.stamp && $(cat "$PREFIX/.stamp") == "$stamp" ]]; then
    echo "prefix up to date ($stamp)"
    return 0
  fi
  rm -rf "$PREFIX" && mkdir -p "$PREFIX"
  for deb in "${debs[@]}"; do dpkg -x "$deb" "$PREFIX" || return 1; done
  # pkg-config files name /usr in their variables (prefix=/usr, or libdir=/usr/lib/... as re2's
  # does): point every such variable at the prefix.
  find "$PREFIX" -name '*.pc' -exec sed -i -E "s|^([A-Za-z_]+)=/usr(/\|\$)|\1=$PREFIX/usr\2|" {} +
  echo "$stamp" >"$PREFIX/.stamp"
  echo "${#debs[@]} packages, $(du -sh "$DEBS" | cut -f1) of .deb files, into $PREFIX"
}

copy_golden() {
  if [[ -d $ROOT/../shared/golden ]]; then
    rm -rf "$GOLDEN" && mkdir -p "$GOLDEN" && cp -r "$ROOT/../shared/golden/." "$GOLDEN/" || return 1
  fi
  [[ -f $GOLDEN/index.json ]] || { echo "no golden cases: neither ../shared/golden nor $GOLDEN"; return 1; }
  echo "$(ls "$GOLDEN"/*.safetensors | wc -l) cases in $GOLDEN"
}

# The prefix's tools (protoc, grpc_cpp_plugin, pkgconf) and libraries come first.
export PATH="$PREFIX/usr/bin:$PATH"
export LD_LIBRARY_PATH="$LIBDIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PKG_CONFIG_PATH="$LIBDIR/pkgconfig:$PREFIX/usr/share/pkgconfig"

configure() {
  cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$PREFIX/usr" -DATTNSCORE_GOLDEN_DIR="$GOLDEN" \
    -DPKG_CONFIG_EXECUTABLE="$PREFIX/usr/bin/pkgconf" "${TORCH_ARGS[@]}" || return 1
  # Every gRPC/protobuf/absl library the build links must come from the prefix.
  local outside
  outside=$(grep -oE '[^ ]*/lib(grpc|gpr|protobuf|absl|spdlog|fmt|benchmark|gtest|gmock|prometheus|cpp-httplib)[^ /]*\.(so|a)[^ /]*' \
    "$BUILD/build.ninja" | grep -v "^$PREFIX/" | sort -u)
  if [[ -n $outside ]]; then
    echo "libraries linked from outside the prefix:"; echo "$outside"; return 1
  fi
}

TARGETS=(attnscore-server attnscore scoring_golden_test scoring_batched_attention_test
         scoring_alibi_logits_tile_test scoring_memory_probe scoring_properties_test
         attnscore_golden_e2e_test attnscore_bench_device "${KERNEL_TARGETS[@]}")
build() { ninja -C "$BUILD" -j "$JOBS" "${TARGETS[@]}"; }
# When the project's own CUDA kernels do not build on the device, the rest of the check still
# runs without them (the build step stays failed, so the check does too).
build_without_kernels() {
  cmake "$BUILD" -DATTNSCORE_CUDA_KERNELS=off && build
}

# The scoring and end-to-end tests compute on $ATTNSCORE_TEST_DEVICE (tests/testing/test_util.h):
# the golden test on every compute path that device has, the e2e test through --device.
scoring_tests() {
  ATTNSCORE_TEST_DEVICE=$DEVICE "$BUILD/tests/scoring/scoring_batched_attention_test" || return 1
  ATTNSCORE_TEST_DEVICE=$DEVICE "$BUILD/tests/scoring/scoring_alibi_logits_tile_test" || return 1
  ATTNSCORE_TEST_DEVICE=$DEVICE "$BUILD/tests/scoring/scoring_golden_test"
}
# The scorer's properties (batches equal separate runs, destinations, dtypes, limits) on both
# compute paths of $DEVICE; after the figures, so that a failure here delays none of them.
properties_test() {
  ATTNSCORE_TEST_DEVICE=$DEVICE "$BUILD/tests/scoring/scoring_properties_test" --gtest_brief=1
}
e2e_test() {
  ATTNSCORE_TEST_DEVICE=$DEVICE "$BUILD/tests/e2e/attnscore_golden_e2e_test"
}

SERVER_PID=""
stop_server() {
  [[ -n $SERVER_PID ]] || return 0
  kill -TERM "$SERVER_PID" 2>/dev/null
  for _ in $(seq 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$SERVER_PID" 2>/dev/null
  wait "$SERVER_PID" 2>/dev/null
  SERVER_PID=""
}
trap stop_server EXIT

# load NAME SERVER_ARGS...: a server on a free port, then attnscore load (decode, c=64); with
# SHARED=1 the inputs come from shared memory and the outputs go there (the server's --shm-prefix,
# load --shared-memory --shared-outputs): the server's DMAs from and to page-locked regions.
load() {
  local name="$1"
  shift
  local port_file="$REPORT_DIR/$name.port"
  rm -f "$port_file"
  "$BUILD/server/attnscore-server" --listen 127.0.0.1:0 --port-file "$port_file" \
    --metrics-listen 127.0.0.1:0 --device "$DEVICE" ${SHARED:+--shm-prefix attnscore-devcheck-} \
    "$@" >"$LOGS/$name-server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 300); do [[ -s $port_file ]] && break; sleep 0.1; done
  [[ -s $port_file ]] || { echo "server did not start"; cat "$LOGS/$name-server.log"; stop_server; return 1; }
  "$BUILD/client/attnscore" load --target "127.0.0.1:$(cat "$port_file")" --preset decode \
    -c 64 --connections "$LOAD_CONNECTIONS" -z "${LOAD_SECONDS}s" --warmup 64 --format json \
    ${SHARED:+--shared-memory --shared-outputs} -o "$REPORT_DIR/$name.json"
  local rc=$?
  stop_server
  [[ $rc -eq 0 ]] && cat "$REPORT_DIR/$name.json"
  return $rc
}

rps() { python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["rps"], 1))' "$1" 2>/dev/null || echo "n/a"; }
# One Markdown row of a load report: throughput, client latency, and the server's own view (batch
# size, queue and compute time per request), which says whether compute or transport bounds it.
load_row() {
  python3 - "$1" "$2" <<'PY' 2>/dev/null || echo "| $1 | n/a | | | | | | |"
import json, sys
d = json.load(open(sys.argv[2]))
k = d["kinds"][0]
lat, srv = k["latency_ms"], k.get("server", {})
def p(section, key):
    v = srv.get(section, {}).get(key)
    return "n/a" if v is None else f"{v:.3g}"
print(f"| {sys.argv[1]} | {d['rps']:.1f} | {lat['p50']:.3g} | {lat['p99']:.3g} | "
      f"{p('batch_size', 'mean')} | {p('queue_ms', 'p50')} | {p('compute_ms', 'p50')} | "
      f"{p('overhead_ms', 'p50')} |")
PY
}

# The issue's targets from this run's figures (Markdown rows): batching's throughput ratio in each
# load pair, the ALiBi logits case against the device-memory floor and the context case against
# PyTorch's attention (the benchmark's rows), and whether the golden tests passed ($1: that
# step's result).
targets() {
  python3 - "$REPORT_DIR" "$1" <<'PY'
import json, os, sys
report, golden = sys.argv[1], sys.argv[2]
def rps(name):
    try:
        return json.load(open(os.path.join(report, name + ".json")))["rps"]
    except (OSError, ValueError, KeyError):
        return None
def num(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None
rows = {}
try:
    for text in open(os.path.join(report, "bench.md")):
        cells = [c.strip() for c in text.strip().strip("|").split("|")]
        if len(cells) >= 10:
            rows.setdefault(cells[0], cells)
except OSError:
    pass
def row(what, value, target, ok):
    shown = "n/a" if value is None else f"{value:.2f}x"
    met = "n/a" if value is None else ("yes" if ok(value) else "NO")
    print(f"| {what} | {shown} | {target} | {met} |")
print("| target (issue 11) | measured | target | met |")
print("|---|---|---|---|")
print(f"| golden cases (batched path and golden tests on the device) | {golden} | ok | "
      f"{'yes' if golden == 'ok' else 'NO'} |")
for what, on, off in (("", "load_batching", "load_no_batching"),
                      (", 4 batch workers", "load_batching_w4", "load_no_batching_w4"),
                      (", inputs and outputs in shared memory", "load_batching_shm",
                       "load_no_batching_shm")):
    a, b = rps(on), rps(off)
    row(f"decode c=64 throughput, batching on / off{what}",
        a / b if a and b else None, ">= 3x", lambda v: v >= 3)
logits = rows.get("alibi logits")
row(f"ALiBi logits {logits[1] if logits else ''}: time / device-memory floor",
    num(logits[7]) if logits else None, "<= 2x", lambda v: v <= 2)
alone = rows.get("alibi logits, kernel alone")
if alone:
    # Computing and writing alone (the target's definition), without the host's work per call.
    row(f"ALiBi logits {alone[1]}, the kernel alone: time / device-memory floor",
        num(alone[7]), "<= 2x", lambda v: v <= 2)
library = rows.get("alibi logits, library products")
if logits and library and num(logits[2]) and num(library[2]):
    # The project's kernel against the library's products (where the build has the kernel).
    print(f"| ALiBi logits: the library's products / the batched path (its kernel on CUDA) | "
          f"{num(library[2]) / num(logits[2]):.2f}x | - | - |")
context = rows.get("alibi context")
speedup = num(context[5]) if context else None  # PyTorch's time / ours
row(f"context {context[1] if context else ''}: time / PyTorch's SDPA with the bias",
    1 / speedup if speedup else None, "<= 1.5x", lambda v: v <= 1.5)
PY
}

bench() { "$BUILD/bench/attnscore_bench_device" "${BENCH_ARGS[@]}" | tee "$REPORT_DIR/bench.md"; }

# The device's LibTorch for a dry run: fetched and unpacked, and its libraries found by the
# programs that link it (the environment stays set for the steps after it).
torch2() { torch2_prepare && torch2_runtime_env; }

# --- the steps (each after its prerequisites) ---
ok=1
step unpack "Debian packages into .device/prefix (dpkg -x)" unpack || ok=0
step golden "golden cases into .device/golden" copy_golden || ok=0
if [[ $MODE == dry && $DRY_TORCH == wheel ]]; then
  step torch2 "the device's LibTorch 2.11 (scripts/torch2-wheels.txt) into .torch2" torch2 || ok=0
fi
if [[ $ok == 1 ]] && ! step configure "cmake, LibTorch: ${TORCH_ARGS[*]:-system (Debian)}" configure; then
  ok=0
  # The project's CUDA kernels need CMake's CUDA language: where it cannot be enabled there, the
  # rest of the check still runs without them (the configure step stays failed).
  if [[ $MODE == device ]]; then
    TORCH_ARGS+=(-DATTNSCORE_CUDA_KERNELS=off)
    rm -rf "$BUILD/CMakeCache.txt" "$BUILD/CMakeFiles"
    step configure_without_kernels "cmake again with -DATTNSCORE_CUDA_KERNELS=off" configure && ok=1
  fi
fi
if [[ $ok == 1 ]] && ! step build "ninja -j$JOBS: ${TARGETS[*]}" build; then
  ok=0
  [[ $MODE == device ]] && step build_without_kernels \
    "the build again with -DATTNSCORE_CUDA_KERNELS=off (the library's products)" \
    build_without_kernels && ok=1
fi
if [[ $ok == 1 ]]; then
  step scoring_tests "batched path, ALiBi logits kernel + golden tests on $DEVICE" scoring_tests
  step golden_e2e "golden end-to-end test, server --device $DEVICE" e2e_test
  step load_batching "attnscore load decode c=64, batching on" load load_batching
  step load_no_batching "attnscore load decode c=64, --max-batch-size=1" load load_no_batching --max-batch-size=1
  # The host side of a batch (staging megabytes of keys per item) is CPU work: several batch
  # workers, each on its own stream, overlap it.
  step load_batching_w4 "attnscore load decode c=64, batching on, --batch-workers=4" \
    load load_batching_w4 --batch-workers=4
  step load_no_batching_w4 "attnscore load decode c=64, --max-batch-size=1 --batch-workers=4" \
    load load_no_batching_w4 --max-batch-size=1 --batch-workers=4
  # Without the 4 MiB of keys per request (nor the 64 KiB of logits per reply) on the socket,
  # which bounded both sides on the H200.
  SHARED=1 step load_batching_shm \
    "attnscore load decode c=64, batching on, inputs and outputs in shared memory" \
    load load_batching_shm
  SHARED=1 step load_no_batching_shm \
    "attnscore load decode c=64, --max-batch-size=1, inputs and outputs in shared memory" \
    load load_no_batching_shm --max-batch-size=1
  step bench "attnscore_bench_device ${BENCH_ARGS[*]}" bench
  step properties "scorer property tests on $DEVICE" properties_test
fi
TOTAL=$(($(date +%s) - START_ALL))

# --- the report ---
GOLDEN_RESULT="not run"
for s in "${STEPS[@]}"; do
  IFS='|' read -r n r _ _ <<<"$s"
  [[ $n == scoring_tests ]] && GOLDEN_RESULT=$r
done
# What the server said computes (device, path, kernels), from the first load run's log.
SCORER_LINE=$(grep -ho 'scorer: .*' "$LOGS/load_batching-server.log" 2>/dev/null | head -1)
ON=$(rps "$REPORT_DIR/load_batching.json")
OFF=$(rps "$REPORT_DIR/load_no_batching.json")
{
  echo "# attnscore device check ($MODE run, device $DEVICE)"
  echo
  echo "$(date -u +%FT%TZ), $(uname -n), commit $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo "?")"
  echo "$(python3 -c 'import torch; print("python torch", torch.__version__, "cuda", torch.version.cuda)' 2>/dev/null || echo 'python torch: none')"
  grep -ho 'LibTorch [0-9.]* (.*' "$LOGS/configure.log" "$LOGS/configure_without_kernels.log" 2>/dev/null | tail -1
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  echo "$SCORER_LINE"
  echo
  echo "| step | result | seconds | what |"
  echo "|---|---|---|---|"
  for s in "${STEPS[@]}"; do IFS='|' read -r n r t w <<<"$s"; echo "| $n | $r | $t | $w |"; done
  echo
  echo "Total: ${TOTAL} s."
  echo
  echo "## Targets"
  echo
  targets "$GOLDEN_RESULT"
  echo
  echo "## Memory: one request's peak against the estimate (batched path on $DEVICE)"
  echo
  echo "From the scoring tests (BatchedMemoryTest: the allocator's peak on a GPU, resident memory"
  echo "on the CPU; the estimate is what --max-request-memory is checked against):"
  echo
  echo '```'
  grep -E '^(alibi|relative) .*: growth .* estimate ' "$LOGS/scoring_tests.log" 2>/dev/null ||
    echo "not run"
  echo '```'
  echo
  echo "## Load: decode preset, c=64, ${LOAD_SECONDS} s"
  echo
  echo "| batching | requests/s | p50 ms | p99 ms | batch mean | server queue p50 ms | server compute p50 ms | transport and client p50 ms |"
  echo "|---|---|---|---|---|---|---|---|"
  load_row on "$REPORT_DIR/load_batching.json"
  load_row "off (--max-batch-size=1)" "$REPORT_DIR/load_no_batching.json"
  load_row "on, 4 batch workers" "$REPORT_DIR/load_batching_w4.json"
  load_row "off, 4 batch workers" "$REPORT_DIR/load_no_batching_w4.json"
  load_row "on, inputs and outputs in shared memory" "$REPORT_DIR/load_batching_shm.json"
  load_row "off, inputs and outputs in shared memory" "$REPORT_DIR/load_no_batching_shm.json"
  echo
  echo "## Benchmark"
  echo
  [[ -f $REPORT_DIR/bench.md ]] && cat "$REPORT_DIR/bench.md"
} >"$REPORT_DIR/report.md"

# The short table, last.
echo
echo "device-check ($MODE, $DEVICE): report in $REPORT_DIR/report.md"
echo "$SCORER_LINE"
printf '%-18s %-40s %s\n' step result seconds
for s in "${STEPS[@]}"; do IFS='|' read -r n r t _ <<<"$s"; printf '%-18s %-40s %s\n' "$n" "$r" "$t"; done
echo "load decode c=64: batching on $ON rps, off $OFF rps; 4 workers: on $(rps "$REPORT_DIR/load_batching_w4.json"), off $(rps "$REPORT_DIR/load_no_batching_w4.json"); inputs and outputs in shared memory: on $(rps "$REPORT_DIR/load_batching_shm.json"), off $(rps "$REPORT_DIR/load_no_batching_shm.json")"
[[ -f $REPORT_DIR/bench.md ]] && grep -E '^\| (alibi|copy|mm|decode|staging|scorer)' "$REPORT_DIR/bench.md"
targets "$GOLDEN_RESULT"
echo "total ${TOTAL} s"
exit $FAILED
