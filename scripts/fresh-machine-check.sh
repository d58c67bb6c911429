#!/usr/bin/env bash
# Tries the README's two commands on a truly fresh Debian bookworm, as a new user would: a
# `debootstrap --variant=minbase` chroot plus only what the README says a bare machine needs
# (git, make), a `git clone` of this checkout's HEAD with a read-only copy of ../shared beside it,
# then `make test` (which runs scripts/install-deps.sh, builds and runs every test). Prints a report
# (time per phase, the ctest summary and failed tests, PASS or FAIL) and exits non-zero on failure.
# Run it before changing the set-up (install-deps.sh, the Makefile, the README's opening). It is
# not part of CI: it needs root, network access to a Debian mirror and PyPI, about 10 GB of disk
# and 10+ minutes of every core.
#
# Only committed work is checked (it clones HEAD). proc, sys and dev are mounted into the chroot
# and unmounted on exit (a trap); the chroot is deleted after a pass (kept after a failure, or with
# --keep), never while anything is still mounted under it.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/fresh-machine-check.sh [OPTIONS]

Runs `make test` on a fresh debootstrap'ed Debian bookworm (minbase + git + make) from a clone
of this checkout's HEAD, and reports the result. Needs root.

Options:
  --stop-after PHASE   stop after PHASE: debootstrap, base (git and make installed), clone,
                       deps (scripts/install-deps.sh), test (the default: everything)
  --workdir DIR        where the temporary chroot directory is made (default: /var/tmp)
  --mirror URL         Debian mirror (default: http://deb.debian.org/debian)
  --security-mirror URL
                       Debian security mirror, or '' for none
                       (default: http://deb.debian.org/debian-security)
  --shared DIR         the shared reference data copied beside the clone (default: ../shared
                       of this checkout)
  --jobs N             JOBS for make (default: the Makefile's)
  --ctest-args ARGS    CTEST_ARGS for make test (e.g. '-L deploy')
  --timeout MINUTES    limit for `make test` (default: 120)
  --keep               keep the chroot after a pass too (it is always kept after a failure)
  -h, --help           this help
EOF
}

phases=(debootstrap base clone deps test)
stop_after="test"
workdir_parent=/var/tmp
mirror=http://deb.debian.org/debian
security_mirror=http://deb.debian.org/debian-security
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo=""
shared=""
jobs=""
ctest_args=""
timeout_min=120
keep=0

die() {
  echo "fresh-machine-check: $*" >&2
  exit 2
}

# need_value OPTION ARGC: an option's value must follow it.
need_value() {
  [ "$2" -ge 2 ] || die "$1 needs a value (see --help)"
}

parse_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --stop-after) need_value "$1" $#; stop_after="$2"; shift 2 ;;
      --workdir) need_value "$1" $#; workdir_parent="$2"; shift 2 ;;
      --mirror) need_value "$1" $#; mirror="$2"; shift 2 ;;
      --security-mirror) need_value "$1" $#; security_mirror="$2"; shift 2 ;;
      --shared) need_value "$1" $#; shared="$2"; shift 2 ;;
      --jobs) need_value "$1" $#; jobs="$2"; shift 2 ;;
      --ctest-args) need_value "$1" $#; ctest_args="$2"; shift 2 ;;
      --timeout) need_value "$1" $#; timeout_min="$2"; shift 2 ;;
      --keep) keep=1; shift ;;
      -h | --help) usage; exit 0 ;;
      *) die "unknown argument: $1 (see --help)" ;;
    esac
  done
  local p known=0
  for p in "${phases[@]}"; do [ "$p" = "$stop_after" ] && known=1; done
  [ "$known" = 1 ] || die "--stop-after must be one of: ${phases[*]}"
  [[ "$timeout_min" =~ ^[1-9][0-9]*$ ]] || die "--timeout must be a positive number of minutes"
  [ -z "$jobs" ] || [[ "$jobs" =~ ^[1-9][0-9]*$ ]] || die "--jobs must be a positive integer"
  [ -d "$workdir_parent" ] || die "--workdir $workdir_parent is not a directory"
}

# --- state, cleanup and report -----------------------------------------------------------------
work=""        # the temporary directory: chroot/, log files, report.txt
chroot_dir=""
started=$SECONDS
phase_times=()  # "PHASE SECONDS"
current_phase=""
result="FAIL"
summary=""

mounts_under() {
  # Mount points at or below $1 (from this process's mount table), deepest first.
  awk -v root="$1" '$5 == root || index($5, root "/") == 1 { print $5 }' /proc/self/mountinfo |
    sort -r
}

unmount_all() {
  [ -n "$chroot_dir" ] || return 0
  # Processes still running inside the chroot (a daemon a package started, a stuck test) were
  # started by this script; stop them so the mounts can go.
  local link pid
  for link in /proc/[0-9]*/root; do
    pid="${link#/proc/}"
    pid="${pid%/root}"
    if [ "$(readlink "$link" 2>/dev/null)" = "$chroot_dir" ]; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  local m
  for m in $(mounts_under "$chroot_dir"); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
}

cleanup() {
  local rc=$?
  unmount_all
  if [ -n "$work" ]; then
    if [ -n "$(mounts_under "$chroot_dir")" ]; then
      echo "fresh-machine-check: still mounted under $chroot_dir, NOT deleting $work:" >&2
      mounts_under "$chroot_dir" >&2
    elif [ "$result" = PASS ] && [ "$keep" = 0 ]; then
      rm -rf --one-file-system "$work"
    else
      echo "fresh-machine-check: kept $work (logs: $work/*.log)"
    fi
  fi
  exit "$rc"
}

report() {
  local total=$((SECONDS - started)) entry
  {
    echo
    echo "=== fresh-machine-check report ==="
    echo "checkout:  $repo @ $(git -C "$repo" rev-parse --short HEAD)"
    echo "system:    debootstrap --variant=minbase bookworm ($mirror) + git, make"
    echo "phases:    up to ${stop_after} (--stop-after)"
    for entry in "${phase_times[@]}"; do
      printf '  %-12s %6ss\n' "${entry% *}" "${entry##* }"
    done
    printf '  %-12s %6ss (%dm%02ds)\n' total "$total" $((total / 60)) $((total % 60))
    [ -z "$summary" ] || printf '%s\n' "$summary"
    echo "result:    $result${current_phase:+ (in phase $current_phase)}"
  } | tee -a "${work:-/dev/null}/report.txt"
}

# run_phase NAME: runs phase_NAME with its output in $work/NAME.log (and on the terminal) and
# records its duration; on failure, reports and exits. The phase runs in a subshell outside any
# condition, so `set -e` stops it at its first failing command.
run_phase() {
  local name="$1" t0=$SECONDS rc
  current_phase="$name"
  echo "--- $name"
  set +e
  (
    set -e
    "phase_$name"
  ) 2>&1 | tee "$work/$name.log"
  rc=${PIPESTATUS[0]}
  set -e
  phase_times+=("$name $((SECONDS - t0))")
  if [ "$rc" -ne 0 ]; then
    echo "fresh-machine-check: phase $name failed (exit $rc)"
    ctest_summary
    report
    exit 1
  fi
  current_phase=""
}

in_chroot() {
  chroot "$chroot_dir" /usr/bin/env -i HOME=/root TERM="${TERM:-dumb}" LANG=C.UTF-8 \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"
}

# --- phases ------------------------------------------------------------------------------------
phase_debootstrap() {
  debootstrap --variant=minbase bookworm "$chroot_dir" "$mirror"
}

# A sources list as a fresh installation has it, the host's DNS, and no service starts (a package's
# daemon would outlive the run and pin the mounts); then git and make, nothing else.
phase_base() {
  {
    echo "deb $mirror bookworm main"
    echo "deb $mirror bookworm-updates main"
    [ -z "$security_mirror" ] || echo "deb $security_mirror bookworm-security main"
  } >"$chroot_dir/etc/apt/sources.list"
  cp -L /etc/resolv.conf "$chroot_dir/etc/resolv.conf"
  # debootstrap writes no /etc/hosts; every installed Debian has one that names localhost.
  printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' \
    >"$chroot_dir/etc/hosts"
  # The host's local certificate authorities (e.g. an egress proxy's, which PyPI traffic may pass
  # through): in place before ca-certificates is installed, whose postinst then trusts them, as it
  # would on the host. A machine with none copies nothing.
  local ca
  for ca in /usr/local/share/ca-certificates/*.crt; do
    [ -f "$ca" ] || continue
    mkdir -p "$chroot_dir/usr/local/share/ca-certificates"
    cp "$ca" "$chroot_dir/usr/local/share/ca-certificates/"
  done
  printf '#!/bin/sh\nexit 101\n' >"$chroot_dir/usr/sbin/policy-rc.d"
  chmod 0755 "$chroot_dir/usr/sbin/policy-rc.d"
  mount -t proc proc "$chroot_dir/proc"
  mount -t sysfs sysfs "$chroot_dir/sys"
  mount --rbind /dev "$chroot_dir/dev"
  mount --make-rslave "$chroot_dir/dev"
  in_chroot apt-get update
  in_chroot env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends git make
  in_chroot git --version
  in_chroot make --version | sed -n 1p
}

# The checkout is bind-mounted read-only and cloned with the chroot's own git; ../shared is copied
# beside the clone and mounted read-only over itself (tests read it in place, never write it).
phase_clone() {
  local origin="$chroot_dir/mnt/origin"
  mkdir -p "$origin" "$chroot_dir/src/shared"
  mount --bind "$repo" "$origin"
  mount -o remount,bind,ro "$origin"
  in_chroot git -c safe.directory='*' clone /mnt/origin /src/attnscore
  in_chroot git -C /src/attnscore -c advice.detachedHead=false checkout --detach \
    "$(git -C "$repo" rev-parse HEAD)"
  umount "$origin"
  cp -a "$shared/." "$chroot_dir/src/shared/"
  mount --bind "$chroot_dir/src/shared" "$chroot_dir/src/shared"
  mount -o remount,bind,ro "$chroot_dir/src/shared"
  in_chroot git -C /src/attnscore log -1 --format='cloned %h %s'
}

phase_deps() {
  in_chroot sh -c 'cd /src/attnscore && ./scripts/install-deps.sh'
}

phase_test() {
  local args=(test)
  [ -z "$jobs" ] || args+=("JOBS=$jobs")
  [ -z "$ctest_args" ] || args+=("CTEST_ARGS=$ctest_args")
  timeout --kill-after=60 "$((timeout_min * 60))" \
    chroot "$chroot_dir" /usr/bin/env -i HOME=/root TERM="${TERM:-dumb}" LANG=C.UTF-8 \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    make -C /src/attnscore "${args[@]}"
}

# The ctest summary and the failed tests, from the test phase's log.
ctest_summary() {
  local log="$work/test.log"
  [ -f "$log" ] || return 0
  summary="$(grep -E '^[0-9]+% tests passed|^Total Test time' "$log" || true)"
  local failed
  failed="$(sed -n '/^The following tests FAILED:/,/^Errors while running CTest/p' "$log")"
  [ -z "$failed" ] || summary+=$'\n'"$failed"
  [ -n "$summary" ] || summary="no ctest summary in $log (the build or install-deps.sh failed?)"
}

main() {
  parse_args "$@"
  [ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, chroot, mount)"
  [ "$(uname -s)" = Linux ] || die "needs Linux"
  repo="$(git -C "$here/.." rev-parse --show-toplevel)"
  shared="${shared:-$repo/../shared}"
  [ -d "$shared/golden" ] || die "no $shared/golden: pass --shared DIR"
  shared="$(cd "$shared" && pwd)"
  if [ -n "$(git -C "$repo" status --porcelain --untracked-files=no)" ]; then
    echo "fresh-machine-check: NOTE: uncommitted changes in $repo are not checked (it clones HEAD)"
  fi
  if ! command -v debootstrap >/dev/null; then
    echo "fresh-machine-check: installing debootstrap"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends debootstrap \
      debian-archive-keyring
  fi
  local free_kb
  free_kb="$(df -Pk "$workdir_parent" | awk 'NR == 2 { print $4 }')"
  [ "$free_kb" -ge $((10 * 1024 * 1024)) ] ||
    echo "fresh-machine-check: WARNING: under 10 GB free in $workdir_parent"

  # Canonical, so that it compares equal to mount points and to a process's /proc/PID/root.
  work="$(cd "$(mktemp -d "$workdir_parent/attnscore-fresh.XXXXXX")" && pwd -P)"
  chroot_dir="$work/chroot"
  mkdir "$chroot_dir"
  trap cleanup EXIT
  trap 'echo "fresh-machine-check: interrupted" >&2; exit 130' INT TERM
  echo "fresh-machine-check: working in $work"

  local p
  for p in "${phases[@]}"; do
    run_phase "$p"
    [ "$p" != "$stop_after" ] || break
  done
  ctest_summary
  if [ "$stop_after" = test ]; then
    # make test's own exit status decided the phase; a summary with failures cannot pass.
    grep -q '^100% tests passed' "$work/test.log" || { result=FAIL; report; exit 1; }
  else
    summary=""
  fi
  result=PASS
  report
}

main "$@"
