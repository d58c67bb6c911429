#!/usr/bin/env bash
# Builds the libFuzzer targets with clang in BUILD_DIR (default build-fuzz) and runs each from its
# committed seed corpus (fuzz/corpus/<target>) for FUZZ_SECONDS (default 30) seconds, JOBS
# (default 2) targets at a time. Any crash, sanitizer report, leak, timeout or out-of-memory
# fails: libFuzzer exits nonzero and leaves the input as crash-*/leak-*/timeout-*/oom-* in
# BUILD_DIR/fuzz-artifacts/<target>/ (reproduce with `BUILD_DIR/fuzz/attnscore_fuzz_<target>
# FILE`). New inputs go to a scratch copy of the corpus, never into the committed one.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
build_dir="${BUILD_DIR:-build-fuzz}"
jobs="${JOBS:-2}"
seconds="${FUZZ_SECONDS:-30}"
targets=(request kserve safetensors state_dict)

if [ ! -f "$build_dir/build.ninja" ]; then
  # -Werror stays with the GCC build (the gate); clang may warn differently on the same code.
  # Line tables only: a crash's stack needs no more, and full debug info slows the build.
  CC=clang CXX=clang++ cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Debug \
    "-DCMAKE_CXX_FLAGS_DEBUG=-O1 -gline-tables-only" -DATTNSCORE_FUZZ=ON -DATTNSCORE_WERROR=OFF
fi
start=$SECONDS
cmake --build "$build_dir" -j "$jobs" --target attnscore_fuzzers
echo "fuzz: build took $((SECONDS - start)) s"

export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:suppressions=$root/tools/sanitizers/asan.supp"
export LSAN_OPTIONS="suppressions=$root/tools/sanitizers/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:suppressions=$root/tools/sanitizers/ubsan.supp"
# One target's run; its summary goes to BUILD_DIR/fuzz-<target>.summary, a finding to
# BUILD_DIR/fuzz-<target>.failed.
run_target() {
  local target="$1"
  local work="$build_dir/fuzz-work/$target"
  local artifacts="$build_dir/fuzz-artifacts/$target"
  local summary="$build_dir/fuzz-$target.summary"
  local start=$SECONDS
  rm -rf "$work" "$build_dir/fuzz-$target.failed" "$summary"
  mkdir -p "$work" "$artifacts"
  cp "fuzz/corpus/$target/"* "$work/"
  # -rss_limit_mb / -malloc_limit_mb: an input that makes the parser allocate more than 2 GiB is a
  # finding (the model-file limits must hold). -timeout: one input may take at most 10 s.
  if ! "$build_dir/fuzz/attnscore_fuzz_$target" -max_total_time="$seconds" -timeout=10 \
      -rss_limit_mb=2560 -malloc_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="$artifacts/" "$work" 2>"$build_dir/fuzz-$target.log"; then
    tail -n 60 "$build_dir/fuzz-$target.log" > "$build_dir/fuzz-$target.failed"
  fi
  { grep -E "^stat::number_of_executed_units|^stat::new_units_added" \
      "$build_dir/fuzz-$target.log" | sed "s/^/fuzz $target: /" || true
    echo "fuzz $target: $((SECONDS - start)) s"; } > "$summary"
}

# Each fuzzer is one process on one core: run JOBS of them at a time (CI's wall time).
start=$SECONDS
running=0
for target in "${targets[@]}"; do
  if [ "$running" -ge "$jobs" ]; then
    wait -n || true  # a target's failure is in its .failed file
    running=$((running - 1))
  fi
  run_target "$target" &
  running=$((running + 1))
done
wait || true
failed=()
for target in "${targets[@]}"; do
  cat "$build_dir/fuzz-$target.summary" 2>/dev/null || true
  if [ -f "$build_dir/fuzz-$target.failed" ] || [ ! -f "$build_dir/fuzz-$target.summary" ]; then
    cat "$build_dir/fuzz-$target.failed"
    failed+=("$target")
  fi
done
echo "fuzz: ${#targets[@]} targets, $jobs at a time, took $((SECONDS - start)) s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]} (inputs in $build_dir/fuzz-artifacts/)" >&2
  exit 1
fi
echo "fuzz: all targets ran ${seconds} s each without a finding"
