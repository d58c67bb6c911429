"""Shared helpers for the deployment checks in tests/deploy (offline; stdlib + PyYAML).

Every checker collects rule violations as strings (`Failures`) and exits 1 listing them, so a
single run reports everything that is wrong, and a negative test can assert on the message.
"""
from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

ROOT = Path(__file__).resolve().parents[2]
# The project's own tool directory, where scripts/install-deps.sh unpacks kubectl when PATH has
# none recent enough.
TOOL_BIN = ROOT / ".tools" / "bin"
# kubectl's built-in kustomize renders deploy/k8s from this version on (1.20, Debian bookworm's
# kubernetes-client, cannot).
KUBECTL_MIN = (1, 27)
FORCE_TOOL_KUBECTL = "ATTNSCORE_FORCE_TOOL_KUBECTL"

READINESS_SERVICE = "attnscore.v1.AttentionScorer"
LIVENESS_SERVICE = ""
LOAD_PRESETS = ("decode", "prefill512", "prefill2048", "mixed")


class Failures:
    """Collects rule violations; `exit()` prints them and ends the process."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.items: list[str] = []
        self.checked = 0

    def check(self, ok: bool, message: str) -> bool:
        self.checked += 1
        if not ok:
            self.items.append(message)
        return ok

    def fail(self, message: str) -> None:
        self.check(False, message)

    def exit(self) -> None:
        if self.items:
            print(f"{self.title}: {len(self.items)} of {self.checked} checks FAILED")
            for item in self.items:
                print(f"  FAIL {item}")
            sys.exit(1)
        print(f"{self.title}: all {self.checked} checks passed")
        sys.exit(0)


def run(cmd: list[str], *, cwd: Path | None = None, env: dict | None = None,
        check: bool = False, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {shlex.join(cmd)}\n"
                         f"{proc.stdout}{proc.stderr}")
    return proc


def clean_env(**extra: str) -> dict:
    """The environment without ATTNSCORE_* / COMPOSE_* / DOCKER_* overrides, plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ATTNSCORE_", "COMPOSE_", "DOCKER_", "PROMETHEUS_"))}
    env.update(extra)
    return env


# --- kubectl ---------------------------------------------------------------------------------

def kubectl_version(exe: str) -> str | None:
    """A kubectl client's gitVersion (v1.32.3), from `kubectl version --client -o json`."""
    try:
        proc = run([exe, "version", "--client", "-o", "json"], timeout=30)
        return str(json.loads(proc.stdout)["clientVersion"]["gitVersion"])
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, TypeError):
        return None


def recent_enough(git_version: str | None) -> bool:
    """Whether a gitVersion is at least KUBECTL_MIN."""
    m = re.match(r"v(\d+)\.(\d+)\.", git_version or "")
    return m is not None and (int(m.group(1)), int(m.group(2))) >= KUBECTL_MIN


def _path_kubectl() -> str | None:
    """The first kubectl on PATH outside the project's tool directory."""
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep)
            if d and Path(d).resolve() != TOOL_BIN.resolve()]
    return shutil.which("kubectl", path=os.pathsep.join(dirs))


@functools.lru_cache(maxsize=None)
def kubectl() -> str:
    """The kubectl the deploy checks run: the first on PATH when it is >= KUBECTL_MIN, otherwise
    the project's copy in .tools/bin (scripts/install-deps.sh); ATTNSCORE_FORCE_TOOL_KUBECTL=1
    selects the project's copy. Prints which one (once per process); exits when neither will do.
    """
    forced = os.environ.get(FORCE_TOOL_KUBECTL) == "1"
    rejected = [f"{FORCE_TOOL_KUBECTL}=1 (PATH not searched)"] if forced else []
    on_path = None if forced else _path_kubectl()
    if on_path is not None:
        version = kubectl_version(on_path)
        if recent_enough(version):
            print(f"kubectl: {on_path} ({version}, from PATH)")
            return on_path
        rejected.append(f"{on_path} on PATH is {version or 'of unknown version'}")
    elif not forced:
        rejected.append("no kubectl on PATH")
    tool = TOOL_BIN / "kubectl"
    version = kubectl_version(str(tool)) if tool.is_file() else None
    if recent_enough(version):
        print(f"kubectl: {tool} ({version}, the project's tool directory)")
        return str(tool)
    rejected.append(f"{tool} is {version or 'unusable' if tool.is_file() else 'missing'}")
    need = ".".join(map(str, KUBECTL_MIN))
    raise SystemExit(f"kubectl >= {need} not found: {'; '.join(rejected)}. Run "
                     f"scripts/install-deps.sh (with {FORCE_TOOL_KUBECTL}=1 if it was set here).")


# --- the server's flags ---------------------------------------------------------------------

def server_env_flags(main_cc: Path = ROOT / "server" / "main.cc") -> dict[str, str]:
    """{ENV_NAME: --flag} for every flag server/main.cc registers with an ATTNSCORE_ variable.

    main.cc registers flags through a helper, add("--listen", flags.listen, "LISTEN", ...) or
    AddFlag(app, "--listen", flags.listen, "LISTEN", ...), that prefixes "ATTNSCORE_" to the
    environment name following the flag and its variable.
    """
    text = main_cc.read_text()
    found = dict((f"ATTNSCORE_{env}", flag) for flag, env in re.findall(
        r'\b(?:add|AddFlag)\(\s*(?:\w+\s*,\s*)?"(--[a-z0-9-]+)"\s*,\s*[^,]+,\s*"([A-Z0-9_]+)"',
        text))
    # Boolean flags: app.add_flag("--reflection", ...)->envname("ATTNSCORE_REFLECTION").
    found.update((env, flag) for flag, env in re.findall(
        r'\badd_flag\(\s*"(--[a-z0-9-]+)"[^;]*?envname\(\s*"(ATTNSCORE_[A-Z0-9_]+)"\)', text))
    if not found:
        raise SystemExit(f"no ATTNSCORE_* flags found in {main_cc}: has its registration changed?")
    return found


def host_port(address: str) -> tuple[str, int]:
    """'0.0.0.0:50051' / '[::]:50051' -> (host, port)."""
    m = re.fullmatch(r"(\[[^\]]*\]|[^:]*):(\d+)", address.strip())
    if not m:
        raise ValueError(f"not HOST:PORT: {address!r}")
    return m.group(1), int(m.group(2))


def listens_on_all(host: str) -> bool:
    return host in ("0.0.0.0", "[::]", "::", "")


def duration_seconds(value) -> float:
    """Compose / Go durations ('40s', '1m30s', '2m') or plain numbers -> seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    total, rest = 0.0, str(value).strip()
    units = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}
    for number, unit in re.findall(r"([\d.]+)(ms|us|h|m|s)", rest):
        total += float(number) * units[unit]
    if not re.fullmatch(r"([\d.]+(ms|us|h|m|s))+", rest):
        raise ValueError(f"not a duration: {value!r}")
    return total


# --- Makefile and README ----------------------------------------------------------------------

def makefile_vars(text: str) -> dict[str, str]:
    return dict(re.findall(r"^([A-Z_]+)\s*\?=\s*(.*?)\s*$", text, flags=re.M))


def makefile_recipe(text: str, target: str) -> tuple[list[str], list[str]]:
    """(prerequisites, recipe lines with continuations joined) of a Makefile target."""
    m = re.search(rf"^{re.escape(target)}:([^\n]*)\n((?:\t[^\n]*\n?)*)", text, flags=re.M)
    if not m:
        return [], []
    prereqs = m.group(1).split()
    body = m.group(2).replace("\\\n", " ")
    lines = [re.sub(r"\s+", " ", line.strip().lstrip("@")) for line in body.split("\n")
             if line.strip()]
    return prereqs, lines


def expand_make(line: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\(([A-Z_]+)\)", lambda m: variables.get(m.group(1), m.group(0)), line)


# --- Dockerfile -------------------------------------------------------------------------------

@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    base: str              # as written (may contain ${ARG})
    name: str | None
    line: int
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def args_of(self, keyword: str) -> list[str]:
        return [i.args for i in self.all(keyword)]


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage | None:
        return next((s for s in self.stages if s.name == name), None)

    def resolved_base(self, stage: Stage) -> str:
        return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?",
                      lambda m: self.global_args.get(m.group(1), m.group(0)), stage.base)


def parse_dockerfile(path: Path) -> Dockerfile:
    """A small Dockerfile parser: continuation lines, comments, ARGs before FROM, stages."""
    logical: list[tuple[int, str]] = []
    buf, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        logical.append((start, buf))
        buf = ""
    if buf:
        logical.append((start, buf))

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for number, text in logical:
        keyword, _, args = text.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            parts = args.split()
            parts = [p for p in parts if not p.startswith("--platform")]
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=parts[0], name=name, line=number))
        elif not stages:
            if keyword == "ARG":
                key, _, value = args.partition("=")
                global_args[key.strip()] = value.strip().strip('"')
        else:
            stages[-1].instructions.append(Instruction(keyword, args, number))
    return Dockerfile(global_args, stages)


def exec_form(args: str) -> list[str] | None:
    """A JSON-array (exec form) argument list, or None for shell form."""
    import json
    args = args.strip()
    if not args.startswith("["):
        return None
    try:
        value = json.loads(args)
    except ValueError:
        return None
    return value if isinstance(value, list) else None


def env_assignments(stage: Stage) -> dict[str, str]:
    """ENV k=v pairs of a stage (later wins)."""
    out: dict[str, str] = {}
    for args in stage.args_of("ENV"):
        for token in shlex.split(args):
            if "=" in token:
                key, _, value = token.partition("=")
                out[key] = value
    return out


# --- CLI invocations in the deployment files ---------------------------------------------------

@dataclass
class CliCall:
    where: str
    argv: list[str]      # starting with the subcommand

    @property
    def subcommand(self) -> str:
        return self.argv[0] if self.argv else ""

    @property
    def flags(self) -> list[str]:
        return [a.split("=", 1)[0] for a in self.argv[1:] if a.startswith("--")]

    def value(self, flag: str) -> str | None:
        for i, a in enumerate(self.argv):
            if a == flag and i + 1 < len(self.argv):
                return self.argv[i + 1]
            if a.startswith(flag + "="):
                return a.split("=", 1)[1]
        return None


def cli_calls_in(argv: Iterable[str], where: str, program: str = "attnscore") -> list[CliCall]:
    """Every `attnscore SUB ...` inside an argv (also inside `sh -c "..."` strings)."""
    calls: list[CliCall] = []
    argv = list(argv)
    for i, token in enumerate(argv):
        if os.path.basename(token) == program and i + 1 < len(argv):
            calls.append(CliCall(where, argv[i + 1:]))
        elif " " in token and program in token:
            try:
                inner = shlex.split(token)
            except ValueError:
                continue
            calls.extend(cli_calls_in(inner, where, program))
    return calls


def load_yaml_documents(text: str) -> list[dict]:
    import yaml
    return [d for d in yaml.safe_load_all(text) if d]
