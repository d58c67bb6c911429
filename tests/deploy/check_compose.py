#!/usr/bin/env python3
"""Checks the docker compose deployment (deploy/compose) offline, without a Docker engine.

  check_compose.py [--dir DIR]

For every variant (CPU; GPU = + compose.gpu.yaml; each also with compose.models.yaml, and all
with the `load` profile active):
  - `docker-compose config -q` (Debian's docker-compose parses and validates without an engine);
  - project rules on the resolved configuration (`docker-compose config`): the server is built
    from a Dockerfile stage that exists (cpu / gpu), runs as a non-root user, listens on all
    interfaces, is health-checked with `attnscore health` on the readiness service at its gRPC
    port, stops with a grace period above ATTNSCORE_SHUTDOWN_GRACE; Prometheus is the official
    image at a pinned version with the repo's scrape config mounted; the scrape target is the
    server's metrics port; the one-shot load job runs `attnscore load --preset P` against the
    server once it is healthy; the GPU variant reserves NVIDIA GPUs and runs --device cuda,
    the CPU one reserves none;
  - the TLS variants (+ compose.tls.yaml): certificate, key and tokens are file secrets under
    /run/secrets, never tokens over plaintext nor ATTNSCORE_ALLOW_PLAINTEXT_TOKENS, the health
    check asks the loopback health-only listener, the load job passes --tls-ca and --token;
  - `promtool check config` on the Prometheus configuration.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import yaml

from deploylib import (LOAD_PRESETS, READINESS_SERVICE, ROOT, Failures, cli_calls_in, clean_env,
                       duration_seconds, host_port, listens_on_all, parse_dockerfile, run)


def compose_exe() -> str:
    exe = shutil.which("docker-compose")
    if exe is None:
        raise SystemExit("docker-compose not found: run scripts/install-deps.sh (Debian package)")
    return exe


def variants(directory: Path) -> list[tuple[str, list[Path], bool]]:
    """(name, files, gpu?) for every supported combination of compose files."""
    base = directory / "compose.yaml"
    gpu = directory / "compose.gpu.yaml"
    models = directory / "compose.models.yaml"
    tls = directory / "compose.tls.yaml"
    return [
        ("cpu", [base], False),
        ("gpu", [base, gpu], True),
        ("cpu+models", [base, models], False),
        ("gpu+models", [base, gpu, models], True),
        ("cpu+tls", [base, tls], False),
        ("gpu+models+tls", [base, gpu, models, tls], True),
    ]


def compose_env(models_dir: Path) -> dict:
    # The TLS variant's secrets directory: compose only names the files, so any directory does.
    return clean_env(ATTNSCORE_MODELS=str(models_dir), ATTNSCORE_TLS_DIR=str(models_dir))


def compose_args(files: list[Path]) -> list[str]:
    args = []
    for file in files:
        args += ["-f", str(file)]
    # Profiles: the load job is only started on request; validate it too.
    return args + ["--profile", "load"]


def resolved(files: list[Path], env: dict) -> tuple[int, str, dict | None]:
    proc = run([compose_exe(), *compose_args(files), "config"], env=env, cwd=files[0].parent)
    if proc.returncode != 0:
        return proc.returncode, proc.stdout + proc.stderr, None
    return 0, proc.stderr, yaml.safe_load(proc.stdout)


def as_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        import shlex
        return shlex.split(value)
    return [str(v) for v in value]


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def check_variant(name: str, config: dict, gpu: bool, directory: Path, f: Failures) -> None:
    services = config.get("services", {})
    server = services.get("server")
    if not f.check(server is not None, f"[{name}] no `server` service"):
        return
    stages = {s.name for s in parse_dockerfile(ROOT / "Dockerfile").stages}
    build = server.get("build") or {}
    want_target = "gpu" if gpu else "cpu"
    f.check(build.get("target") == want_target and want_target in stages,
            f"[{name}] server builds target {build.get('target')!r}, expected the Dockerfile "
            f"stage {want_target!r}")
    context = Path(build.get("context", ""))
    f.check(context.resolve() == ROOT and (context / build.get("dockerfile", "Dockerfile")).exists(),
            f"[{name}] server build context {context} is not the repository root")

    user = str(server.get("user", ""))
    f.check(user != "" and user.split(":")[0] not in ("0", "root"),
            f"[{name}] server user {user!r} must be non-root")
    f.check(server.get("read_only") is True, f"[{name}] server root filesystem must be read-only")
    f.check("ALL" in (server.get("cap_drop") or []), f"[{name}] server must drop all capabilities")

    env = env_of(server)
    grpc_host, grpc_port = host_port(env.get("ATTNSCORE_LISTEN", "0.0.0.0:50051"))
    metrics_host, metrics_port = host_port(env.get("ATTNSCORE_METRICS_LISTEN", "0.0.0.0:9090"))
    f.check(listens_on_all(grpc_host) and listens_on_all(metrics_host),
            f"[{name}] server must listen on all interfaces: {env.get('ATTNSCORE_LISTEN')}, "
            f"{env.get('ATTNSCORE_METRICS_LISTEN')}")
    f.check(env.get("ATTNSCORE_DEVICE", "cpu").startswith("cuda" if gpu else "cpu"),
            f"[{name}] ATTNSCORE_DEVICE is {env.get('ATTNSCORE_DEVICE')!r}")
    model_dir = env.get("ATTNSCORE_MODEL_DIR", "")
    mounts = {v.get("target"): v for v in server.get("volumes", []) if isinstance(v, dict)}
    f.check(model_dir.startswith("/opt/attnscore/") or
            (model_dir in mounts and mounts[model_dir].get("read_only") is True),
            f"[{name}] ATTNSCORE_MODEL_DIR={model_dir!r} is neither the image's example set nor a "
            f"read-only mount")
    targets = {int(p.get("target", 0)) for p in server.get("ports", []) if isinstance(p, dict)}
    f.check({grpc_port, metrics_port} <= targets,
            f"[{name}] server publishes {sorted(targets)}, not its gRPC and metrics ports")

    health = server.get("healthcheck") or {}
    test = as_list(health.get("test"))
    calls = cli_calls_in(test, f"compose {name} server healthcheck")
    # With TLS the health check asks the plaintext health-only listener on loopback.
    health_targets = {f"127.0.0.1:{grpc_port}"}
    if env.get("ATTNSCORE_HEALTH_LISTEN"):
        health_host, health_port = host_port(env["ATTNSCORE_HEALTH_LISTEN"])
        f.check(health_host == "127.0.0.1",
                f"[{name}] ATTNSCORE_HEALTH_LISTEN must stay on the container's loopback")
        health_targets = {f"127.0.0.1:{health_port}"}
    if f.check(len(calls) == 1 and calls[0].subcommand == "health",
               f"[{name}] server healthcheck must run `attnscore health`, runs {test}"):
        f.check(calls[0].value("--service") == READINESS_SERVICE,
                f"[{name}] healthcheck must ask for {READINESS_SERVICE}")
        f.check(calls[0].value("--target") in health_targets,
                f"[{name}] healthcheck target {calls[0].value('--target')} is not "
                f"{' or '.join(sorted(health_targets))}")
    check_security(name, server, services.get("load"), config, env, f)
    grace = float(env.get("ATTNSCORE_SHUTDOWN_GRACE", "30"))
    stop = duration_seconds(server.get("stop_grace_period", "10s"))
    f.check(stop > grace, f"[{name}] stop_grace_period {stop:g}s must exceed "
            f"ATTNSCORE_SHUTDOWN_GRACE {grace:g}s (else Docker kills a draining server)")

    reservations = (((server.get("deploy") or {}).get("resources") or {})
                    .get("reservations") or {}).get("devices") or []
    if gpu:
        f.check(any(d.get("driver") == "nvidia" and "gpu" in (d.get("capabilities") or [])
                    and (d.get("count") or d.get("device_ids")) for d in reservations),
                f"[{name}] GPU server must reserve NVIDIA GPUs (driver nvidia, capabilities gpu)")
    else:
        f.check(not reservations, f"[{name}] CPU server must not reserve devices")

    prometheus = services.get("prometheus")
    if f.check(prometheus is not None, f"[{name}] no `prometheus` service"):
        image = prometheus.get("image", "")
        repo, _, tag = image.partition(":")
        f.check(repo in ("prom/prometheus", "docker.io/prom/prometheus", "quay.io/prometheus/prometheus")
                and tag not in ("", "latest"),
                f"[{name}] prometheus must be the official image at a pinned version, is {image!r}")
        mounts = [v for v in prometheus.get("volumes", []) if isinstance(v, dict)]
        config_mount = next((v for v in mounts if v.get("target") == "/etc/prometheus/prometheus.yml"),
                            None)
        if f.check(config_mount is not None and Path(config_mount.get("source", "")).resolve()
                   == (directory / "prometheus.yml").resolve(),
                   f"[{name}] prometheus must mount the repo's {directory / 'prometheus.yml'}"):
            scrape = yaml.safe_load((directory / "prometheus.yml").read_text())
            targets = [t for job in scrape.get("scrape_configs", [])
                       for sc in job.get("static_configs", []) for t in sc.get("targets", [])]
            f.check(f"server:{metrics_port}" in targets,
                    f"[{name}] Prometheus scrapes {targets}, not server:{metrics_port}")
        f.check((prometheus.get("depends_on") or {}).get("server", {}).get("condition")
                == "service_healthy", f"[{name}] prometheus should wait for a healthy server")

    load = services.get("load")
    if f.check(load is not None, f"[{name}] no one-shot `load` service"):
        argv = as_list(load.get("entrypoint")) + as_list(load.get("command"))
        calls = cli_calls_in(argv, f"compose {name} load")
        if f.check(len(calls) == 1 and calls[0].subcommand == "load",
                   f"[{name}] load must run `attnscore load`, runs {argv}"):
            f.check(calls[0].value("--preset") in LOAD_PRESETS,
                    f"[{name}] load preset {calls[0].value('--preset')!r} not one of {LOAD_PRESETS}")
            f.check(calls[0].value("--target") == f"server:{grpc_port}",
                    f"[{name}] load target {calls[0].value('--target')!r} is not server:{grpc_port}")
        f.check(str(load.get("restart", "no")) == "no", f"[{name}] load must be one-shot (restart: no)")
        f.check((load.get("depends_on") or {}).get("server", {}).get("condition") == "service_healthy",
                f"[{name}] load must wait for a healthy server")
        f.check("load" in (load.get("profiles") or []),
                f"[{name}] load must be in the `load` profile (not started by `up`)")


def check_security(name: str, server: dict, load: dict | None, config: dict, env: dict,
                   f: Failures) -> None:
    """The TLS variants: certificate, key and tokens are compose secrets (files, not variables),
    no tokens over plaintext, and the load job verifies the server and sends a token."""
    tls = "tls" in name
    secret_paths = set()
    for secret in server.get("secrets") or []:
        if isinstance(secret, dict):
            secret_paths.add(f"/run/secrets/{secret.get('target') or secret.get('source')}")
        else:
            secret_paths.add(f"/run/secrets/{secret}")
    for key in ("ATTNSCORE_TLS_CERT", "ATTNSCORE_TLS_KEY", "ATTNSCORE_AUTH_TOKEN_FILE"):
        path = env.get(key)
        f.check(bool(path) == tls, f"[{name}] {key} is {path!r}: the *tls variants set it, "
                f"others do not")
        if path:
            f.check(path in secret_paths,
                    f"[{name}] {key}={path} is not one of the server's secrets {sorted(secret_paths)}")
    f.check(not env.get("ATTNSCORE_AUTH_TOKEN_FILE") or bool(env.get("ATTNSCORE_TLS_CERT")),
            f"[{name}] bearer tokens without TLS travel in cleartext")
    f.check("ATTNSCORE_ALLOW_PLAINTEXT_TOKENS" not in env,
            f"[{name}] ATTNSCORE_ALLOW_PLAINTEXT_TOKENS has no place in a deployment")
    declared = config.get("secrets") or {}
    for secret in server.get("secrets") or []:
        source = secret.get("source") if isinstance(secret, dict) else secret
        f.check(source in declared and "file" in declared[source],
                f"[{name}] server secret {source!r} is not declared as a file secret")
    if tls and load is not None:
        argv = as_list(load.get("entrypoint")) + as_list(load.get("command"))
        calls = cli_calls_in(argv, f"compose {name} load")
        if calls:
            f.check(calls[0].value("--tls-ca") is not None and calls[0].value("--token") is not None,
                    f"[{name}] the load job must verify the server (--tls-ca) and send a --token")


def check(directory: Path, f: Failures) -> None:
    with tempfile.TemporaryDirectory() as models:
        env = compose_env(Path(models))
        for name, files, gpu in variants(directory):
            missing = [p for p in files if not p.exists()]
            if not f.check(not missing, f"[{name}] missing {missing}"):
                continue
            proc = run([compose_exe(), *compose_args(files), "config", "-q"], env=env,
                       cwd=directory)
            f.check(proc.returncode == 0,
                    f"[{name}] docker-compose config -q failed: {(proc.stdout + proc.stderr).strip()}")
            print(f"[{name}] docker-compose {' '.join(compose_args(files))} config -q: "
                  f"{'ok' if proc.returncode == 0 else 'FAILED'}")
            code, message, config = resolved(files, env)
            if f.check(config is not None, f"[{name}] docker-compose config failed: {message}"):
                check_variant(name, config, gpu, directory, f)

    promtool = shutil.which("promtool")
    if f.check(promtool is not None, "promtool not found (Debian's prometheus package)"):
        proc = run([promtool, "check", "config", str(directory / "prometheus.yml")])
        f.check(proc.returncode == 0, f"promtool check config failed: {proc.stdout}{proc.stderr}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=Path, default=ROOT / "deploy" / "compose")
    args = parser.parse_args()
    f = Failures(f"compose ({args.dir})")
    check(args.dir.resolve(), f)
    f.exit()


if __name__ == "__main__":
    main()
