#!/usr/bin/env bash
# Prints, one per line and sorted, the Debian/Ubuntu packages that hold the shared libraries the
# given ELF binaries link directly (their DT_NEEDED entries, resolved with ldd), so that a runtime
# image installs exactly those and apt brings in the rest. Libraries under an --exclude PREFIX
# (e.g. a LibTorch unpacked into /opt/libtorch, copied into the image as is) are left out.
#
# Used by the Dockerfile's GPU builder stage (the runtime stage installs this list) and by
# tests/deploy, which checks the CPU runtime stage's package list against the binaries built here.
#
# Usage: runtime-packages.sh [--exclude PREFIX]... BINARY...
set -euo pipefail

excludes=()
while [ $# -gt 0 ]; do
  case "$1" in
    --exclude) excludes+=("$2"); shift 2 ;;
    --) shift; break ;;
    -*) echo "runtime-packages.sh: unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
if [ $# -eq 0 ]; then
  echo "usage: runtime-packages.sh [--exclude PREFIX]... BINARY..." >&2
  exit 2
fi

for bin in "$@"; do
  resolved="$(ldd "$bin")"
  if grep -q 'not found' <<<"$resolved"; then
    echo "runtime-packages.sh: $bin has unresolved libraries:" >&2
    grep 'not found' <<<"$resolved" >&2
    exit 1
  fi
  readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | while read -r soname; do
    path="$(awk -v n="$soname" '$1 == n && $2 == "=>" { print $3 }' <<<"$resolved")"
    [ -n "$path" ] || continue  # the dynamic loader itself, vdso
    skip=0
    for prefix in "${excludes[@]+"${excludes[@]}"}"; do
      case "$path" in "$prefix"/*) skip=1 ;; esac
    done
    [ "$skip" -eq 0 ] || continue
    # dpkg knows a library by the path its package installed: try the resolved file, then the
    # name ldd printed (usrmerge: /lib and /usr/lib hold the same files under two names).
    real="$(readlink -f "$path")"
    owner=""
    for candidate in "$real" "$path" "${real/#\/usr\/lib\//\/lib\/}" "${path/#\/usr\/lib\//\/lib\/}"; do
      owner="$(dpkg-query -S "$candidate" 2>/dev/null | head -n1 | cut -d: -f1)" && [ -n "$owner" ] && break
    done
    if [ -z "$owner" ]; then
      echo "runtime-packages.sh: no package owns $path ($soname, needed by $bin)" >&2
      exit 1
    fi
    echo "$owner"
  done
done | sort -u
