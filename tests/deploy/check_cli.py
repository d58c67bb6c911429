#!/usr/bin/env python3
"""Checks that every `attnscore` CLI invocation in the deployment files exists in the CLI.

  check_cli.py [--cli-bin PATH]

Invocations: the Dockerfile HEALTHCHECKs (cpu and gpu stages) and the compose server healthcheck
and load job (every compose variant, resolved by docker-compose). With the built CLI
(--cli-bin), each subcommand must be listed by `attnscore --help` and each flag used must appear
in `attnscore SUB --help`; without it (the target is not in this build), the CLI sources under
client/cli are searched for the subcommand and flag names instead. Load presets must be known.

Also: the health check runs inside the server's container, whose environment carries the
server's ATTNSCORE_* variables, and the CLI reads ATTNSCORE_* variables too: the two sets must not
overlap, or the health check would silently pick up a server setting.
"""
from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

from deploylib import (LOAD_PRESETS, ROOT, CliCall, Failures, clean_env, cli_calls_in, exec_form,
                       parse_dockerfile, run, server_env_flags)

CLI_SOURCES = ROOT / "client" / "cli"


def dockerfile_calls(dockerfile: Path) -> list[CliCall]:
    import shlex
    df = parse_dockerfile(dockerfile)
    calls = []
    for stage in df.stages:
        for args in stage.args_of("HEALTHCHECK"):
            cmd = args.split("CMD", 1)[1].strip() if "CMD" in args else ""
            argv = exec_form(cmd) or shlex.split(cmd)
            calls += cli_calls_in(argv, f"Dockerfile stage {stage.name} HEALTHCHECK")
    return calls


def compose_calls() -> list[CliCall]:
    import check_compose
    directory = ROOT / "deploy" / "compose"
    calls = []
    with tempfile.TemporaryDirectory() as models:
        env = check_compose.compose_env(Path(models))
        for name, files, _ in check_compose.variants(directory):
            code, message, config = check_compose.resolved(files, env)
            if config is None:
                raise SystemExit(f"docker-compose config failed for {name}: {message}")
            for service_name, service in config.get("services", {}).items():
                test = check_compose.as_list((service.get("healthcheck") or {}).get("test"))
                calls += cli_calls_in(test, f"compose {name} {service_name} healthcheck")
                argv = (check_compose.as_list(service.get("entrypoint"))
                        + check_compose.as_list(service.get("command")))
                calls += cli_calls_in(argv, f"compose {name} {service_name} command")
    return calls


def help_flags(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--[a-z0-9][a-z0-9-]*)", text))


def cli_env_names_from_help(cli: Path) -> set[str]:
    """ATTNSCORE_* variables the built CLI reads, from `--help` of it and every subcommand."""
    env = clean_env()
    top = run([str(cli), "--help"], env=env).stdout
    text = top
    section = top.split("Subcommands:", 1)[1] if "Subcommands:" in top else ""
    for sub in re.findall(r"(?m)^\s{2}(\w+)\b", section):
        text += run([str(cli), sub, "--help"], env=env).stdout
    return set(re.findall(r"Env:(ATTNSCORE_[A-Z0-9_]+)", text))


def cli_env_names() -> set[str]:
    names = set()
    for source in CLI_SOURCES.glob("*.cc"):
        text = source.read_text()
        names |= set(re.findall(r'envname\(\s*"(ATTNSCORE_[A-Z0-9_]+)"', text))
        # add("--flag", value, "ENV", ...) helpers that prepend "ATTNSCORE_".
        if '"ATTNSCORE_" + env' in text or "\"ATTNSCORE_\" + env" in text:
            names |= {f"ATTNSCORE_{e}" for e in re.findall(
                r'add\(\s*"[^"]*--[a-z0-9-]+"\s*,\s*[^,]+,\s*"([A-Z0-9_]+)"', text)}
    return names


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cli-bin", default="")
    parser.add_argument("--dockerfile", type=Path, default=ROOT / "Dockerfile")
    args = parser.parse_args()
    f = Failures("attnscore CLI usage in deployment files")

    calls = dockerfile_calls(args.dockerfile) + compose_calls()
    f.check(any(c.subcommand == "health" for c in calls), "no `attnscore health` healthcheck found")
    f.check(any(c.subcommand == "load" for c in calls), "no `attnscore load` job found")

    cli = Path(args.cli_bin) if args.cli_bin else None
    if cli is not None and cli.exists():
        env = clean_env()
        top = run([str(cli), "--help"], env=env)
        f.check(top.returncode == 0, f"`attnscore --help` exited {top.returncode}: {top.stderr}")
        helps: dict[str, str] = {}
        for sub in sorted({c.subcommand for c in calls}):
            f.check(re.search(rf"(?m)^\s*{re.escape(sub)}\b", top.stdout) is not None,
                    f"`attnscore --help` does not list the subcommand {sub!r}")
            proc = run([str(cli), sub, "--help"], env=env)
            f.check(proc.returncode == 0, f"`attnscore {sub} --help` exited {proc.returncode}")
            helps[sub] = proc.stdout + proc.stderr + top.stdout
        for call in calls:
            known = help_flags(helps.get(call.subcommand, ""))
            for flag in call.flags:
                f.check(flag in known, f"{call.where}: `attnscore {call.subcommand}` has no "
                        f"{flag} (per `attnscore {call.subcommand} --help`)")
        print(f"checked {len(calls)} invocations against {cli} --help")
    else:
        sources = "\n".join(p.read_text() for p in sorted(CLI_SOURCES.glob("*.cc"))
                            if p.is_file()) if CLI_SOURCES.is_dir() else ""
        if f.check(bool(sources), f"no built CLI (--cli-bin) and no CLI sources in {CLI_SOURCES}: "
                   "the healthcheck would run a command that does not exist"):
            for call in calls:
                f.check(re.search(rf'"{re.escape(call.subcommand)}"', sources) is not None,
                        f"{call.where}: subcommand {call.subcommand!r} not found in client/cli")
                for flag in call.flags:
                    f.check(re.search(rf'"(-\w,)?{re.escape(flag)}(,[^"]*)?"', sources) is not None,
                            f"{call.where}: flag {flag} not found in client/cli sources")
            print(f"checked {len(calls)} invocations against the sources in {CLI_SOURCES} "
                  "(the attnscore target is not built here)")

    client_sources = "\n".join(p.read_text() for p in (ROOT / "client").rglob("*.cc"))
    for call in calls:
        preset = call.value("--preset")
        if call.subcommand == "load":
            f.check(preset in LOAD_PRESETS, f"{call.where}: preset {preset!r} not one of "
                    f"{LOAD_PRESETS}")
            f.check(f'"{preset}"' in client_sources,
                    f"{call.where}: preset {preset!r} is not defined in the client sources")

    cli_env = (cli_env_names_from_help(cli) if cli is not None and cli.exists()
               else cli_env_names())
    print(f"environment variables the CLI reads: {sorted(cli_env)}")
    clash = sorted(set(server_env_flags()) & cli_env)
    f.check(not clash, f"the CLI and the server read the same environment variables {clash}: "
            "the health check inside the server container would pick up server settings")
    f.exit()


if __name__ == "__main__":
    main()
