#!/usr/bin/env python3
"""Prints deploy/docker/requirements-gpu.txt: the PyPI wheels the GPU image installs, pinned by
exact version and sha256, for one torch release. Only prints; it changes nothing.

  python3 deploy/docker/pin-gpu-wheels.py [TORCH_VERSION] > deploy/docker/requirements-gpu.txt

(default TORCH_VERSION: 2.11.0). Method, all from PyPI's simple index (JSON, PEP 691) and the
wheels' own metadata (PEP 658, read without downloading the wheels):
  1. the torch wheel for CPython 3.12 (Ubuntu 24.04's python3), manylinux, x86_64, and its
     Requires-Dist for Linux;
  2. of those, the CUDA shared libraries: the `cuda-toolkit[...]==X` metapackage resolved through
     its own metadata to one nvidia-* package per extra, and the `nvidia-*` pins. Left out, on
     purpose: triton and cuda-bindings (Python-only uses: torch.compile, CUDA Python) and the
     pure-Python dependencies (sympy, networkx, jinja2, ...). The C++ server needs only the
     shared libraries; the image installs with `pip install --no-deps`;
  3. for each pin (`==X` or `==X.*`), the newest matching version that has a manylinux x86_64
     wheel, and the sha256 digests of its wheels for that platform.
The header comment of the requirements file is this script's; check `git diff` before
committing: any change of version is a change of the image.
"""
from __future__ import annotations

import json
import re
import sys
import urllib.request

INDEX = "https://pypi.org/simple"
PYTHON_TAGS = ("cp312", "py3", "py2.py3")
# Python-only dependencies of the torch wheel that the C++ build and server do not load.
PYTHON_ONLY = {"triton", "cuda-bindings"}

HEADER = """\
# The GPU image's LibTorch: PyTorch {torch} for CUDA {cuda} from PyPI, as wheels pinned by exact
# version and sha256. Generated, do not edit by hand: to change it, run
#   python3 deploy/docker/pin-gpu-wheels.py {torch} > deploy/docker/requirements-gpu.txt
# (with the new version) and review the diff.
#
# The Dockerfile's gpu-builder installs it with
#   python3 -m pip install --no-deps --require-hashes --only-binary :all: --target /opt/torch -r ...
# Every requirement carries its wheel's sha256, so pip runs in hash-checking mode and refuses any
# other file. The list is the torch wheel (cp312, Ubuntu 24.04's python3; manylinux x86_64) plus
# exactly the CUDA runtime libraries its metadata pins (cuda-toolkit[...] resolved to its nvidia-*
# packages; cuDNN, cuSPARSELt, NCCL, NVSHMEM). triton, cuda-bindings and the pure-Python
# dependencies (sympy, networkx, jinja2, ...) are left out on purpose, hence --no-deps: the C++
# server loads only LibTorch's shared libraries, which find these CUDA libraries through their
# RPATH ($ORIGIN/../../nvidia/*/lib).
"""


def fetch(url: str, accept: str = "application/vnd.pypi.simple.v1+json") -> bytes:
    request = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.read()


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def version_key(version: str) -> list[int]:
    return [int(p) if p.isdigit() else -1 for p in version.split(".")]


def platform_wheels(name: str) -> dict[str, list[dict]]:
    """Wheels of `name` for CPython 3.12 / any Python on manylinux x86_64, by version."""
    files = json.loads(fetch(f"{INDEX}/{normalise(name)}/"))["files"]
    by_version: dict[str, list[dict]] = {}
    for f in files:
        filename = f["filename"]
        if not filename.endswith(".whl") or f.get("yanked"):
            continue
        parts = filename[:-len(".whl")].split("-")
        python, _abi, platform = parts[-3:]
        if python not in PYTHON_TAGS or "manylinux" not in platform or "x86_64" not in platform:
            continue
        by_version.setdefault(parts[1], []).append(f)
    return by_version


def requires_dist(wheel: dict) -> list[str]:
    """Requires-Dist lines of a wheel, from its PEP 658 metadata file (PyPI serves one for
    every wheel uploaded since 2023, though a mirror's index may not announce it)."""
    try:
        metadata = fetch(wheel["url"] + ".metadata", accept="*/*").decode()
    except OSError as e:
        sys.exit(f"{wheel['filename']}: no metadata file on the index ({e})")
    return [line.split(":", 1)[1].strip() for line in metadata.splitlines()
            if line.startswith("Requires-Dist:")]


def for_linux(marker: str, extras: set[str]) -> bool:
    """Whether a requirement's environment marker holds on Linux with the given extras (the
    markers these wheels use: platform_system / sys_platform tests and `extra == ...`)."""
    if not marker:
        return True
    wanted = re.findall(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
    if wanted and not set(wanted) & extras:
        return False
    platforms = re.findall(r"(?:platform_system|sys_platform)\s*==\s*['\"]([^'\"]+)['\"]", marker)
    return not platforms or any(p.lower() == "linux" for p in platforms)


def parse(requirement: str) -> tuple[str, set[str], str, str]:
    """(name, extras, exact version or prefix, marker) of `name[extras]==version; marker`."""
    spec, _, marker = requirement.partition(";")
    m = re.fullmatch(r"\s*([A-Za-z0-9._-]+)\s*(?:\[([^\]]*)\])?\s*(.*?)\s*", spec)
    if m is None:
        sys.exit(f"cannot parse requirement {requirement!r}")
    name, extras, constraint = m.group(1), m.group(2) or "", m.group(3)
    pin = re.fullmatch(r"==\s*([0-9][0-9A-Za-z.]*(?:\.\*)?)", constraint)
    return (normalise(name), {e.strip() for e in extras.split(",") if e.strip()},
            pin.group(1) if pin else "", marker.strip())


def pick(name: str, pin: str) -> tuple[str, list[dict]]:
    """The newest version matching `pin` (X or X.*) with platform wheels, and those wheels."""
    prefix = pin[:-2] if pin.endswith(".*") else None
    def matches(v: str) -> bool:
        return v == pin or (prefix is not None and (v == prefix or v.startswith(prefix + ".")))
    candidates = {v: files for v, files in platform_wheels(name).items() if matches(v)}
    if not candidates:
        sys.exit(f"{name}=={pin}: no manylinux x86_64 wheel on PyPI")
    version = max(candidates, key=version_key)
    return version, candidates[version]


def main() -> None:
    torch_version = sys.argv[1] if len(sys.argv) > 1 else "2.11.0"
    torch_wheels = [w for w in platform_wheels("torch").get(torch_version, [])
                    if "-cp312-cp312-" in w["filename"]]
    if not torch_wheels:
        sys.exit(f"torch {torch_version}: no cp312 manylinux x86_64 wheel on PyPI")

    pins: list[tuple[str, str]] = []
    for requirement in requires_dist(torch_wheels[0]):
        name, extras, pin, marker = parse(requirement)
        if not for_linux(marker, set()) or not pin or name in PYTHON_ONLY:
            continue  # Python-only or pure-Python (these are the unpinned ones: sympy, ...)
        if name == "cuda-toolkit":
            files = json.loads(fetch(f"{INDEX}/cuda-toolkit/"))["files"]
            meta = [f for f in files if f["filename"].startswith(f"cuda_toolkit-{pin}-")
                    and f["filename"].endswith(".whl")]
            if not meta:
                sys.exit(f"cuda-toolkit=={pin}: no wheel on PyPI")
            for sub in requires_dist(meta[0]):
                sub_name, _, sub_pin, sub_marker = parse(sub)
                if sub_pin and "extra" in sub_marker and for_linux(sub_marker, extras):
                    pins.append((sub_name, sub_pin))
        elif name.startswith("nvidia-"):
            pins.append((name, pin))

    lines = [("torch", torch_version, torch_wheels)]
    seen = set()
    for name, pin in pins:
        if name not in seen:
            seen.add(name)
            lines.append((name, *pick(name, pin)))
    runtime = next((v for n, v, _ in lines if n == "nvidia-cuda-runtime"), None)
    if runtime is None:
        sys.exit(f"torch {torch_version}: its metadata pins no nvidia-cuda-runtime (not a CUDA 13 "
                 "wheel?); the Dockerfile expects one")
    print(HEADER.format(torch=torch_version, cuda=".".join(runtime.split(".")[:2])))
    for name, version, wheels in lines:
        hashes = [f"    --hash=sha256:{w['hashes']['sha256']}" for w in wheels]
        print(f"{name}=={version} \\")
        print(" \\\n".join(hashes) + "  # " + ", ".join(w["filename"] for w in wheels))


if __name__ == "__main__":
    main()
