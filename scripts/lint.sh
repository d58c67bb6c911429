#!/usr/bin/env bash
# `make lint`: the two checks of issue 8, each failing (exit 1) on any finding.
#   1. lizard: no function over 100 lines or cyclomatic complexity 30 in server, client, common
#      and proto (lizard pinned in scripts/requirements.txt, installed into .venv).
#   2. clang-tidy with the repository's .clang-tidy and --warnings-as-errors='*' over the
#      project's translation units, as the build compiles them (BUILD_DIR's
#      compile_commands.json; `make lint` builds first so that generated headers exist).
#      Headers are checked through the translation units that include them (HeaderFilterRegex).
#
# Environment: BUILD_DIR (default build), JOBS (default 2), CLANG_TIDY (default clang-tidy).
#
# clang-tidy runs on every translation unit, the LibTorch ones included: measured at about four
# minutes for all 69 on two cores (issue 8's budget is eight; the LibTorch files take ~20 s each).
# Should it outgrow the budget, restrict it to the targets that do not link LibTorch: their
# compile commands lack attnscore_libtorch's -D_GLIBCXX_USE_CXX11_ABI=1.
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
build_dir="${BUILD_DIR:-build}"
jobs="${JOBS:-2}"
clang_tidy="${CLANG_TIDY:-clang-tidy}"
lizard="$root/.venv/bin/lizard"

status=0

echo "== lizard -l cpp -L 100 -C 30 -w server client common proto"
if ! "$lizard" -l cpp -L 100 -C 30 -w server client common proto; then
  echo "lizard: functions above are over 100 lines or cyclomatic complexity 30"
  status=1
fi

if [ ! -f "$build_dir/compile_commands.json" ]; then
  echo "clang-tidy: no $build_dir/compile_commands.json (configure and build first: make build)"
  exit 1
fi

# The project's own translation units, repository-relative, from the compilation database:
# generated code (under the build tree) is not ours.
mapfile -t sources < <(
  python3 - "$build_dir" "$root" <<'EOF'
import json, os, sys
build, root = os.path.realpath(sys.argv[1]), sys.argv[2]
files = set()
for entry in json.load(open(os.path.join(build, "compile_commands.json"))):
    absolute = os.path.realpath(os.path.join(entry["directory"], entry["file"]))
    path = os.path.relpath(absolute, root)
    outside = path.startswith("..") or absolute.startswith(build + os.sep)
    if outside or not path.endswith(".cc"):
        continue
    files.add(path)
print("\n".join(sorted(files)))
EOF
)
echo "== clang-tidy --warnings-as-errors='*' on ${#sources[@]} translation units (-j$jobs)"
start=$SECONDS
# stderr is filtered of clang-tidy's "N warnings generated." (the system-header warnings it
# suppressed); findings and errors pass through.
if ! printf '%s\n' "${sources[@]}" |
    xargs -P "$jobs" -n 1 "$clang_tidy" -p "$build_dir" --quiet --warnings-as-errors='*' \
      2> >(grep -v -E '^[0-9]+ warnings? generated\.$' >&2); then
  echo "clang-tidy: findings above"
  status=1
fi
echo "clang-tidy took $((SECONDS - start)) s"
exit $status
