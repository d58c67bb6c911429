#!/usr/bin/env python3
"""Checks the Kubernetes manifests (deploy/k8s) offline, without a cluster.

  check_k8s.py render  [--out DIR]            kubectl kustomize renders every overlay
  check_k8s.py schema  [--out DIR]            kubernetes-validate --strict on every object
  check_k8s.py rules   [--manifest F --variant cpu|gpu]...   the project's own rules

`render` writes OUT/<overlay>.yaml; `schema` and `rules` render again unless --manifest files are
given (the negative test feeds deliberately broken manifests through --manifest).

Rules, per rendered overlay:
  - Deployment: one server container; probes are gRPC probes on the gRPC port: liveness on
    health service "", readiness on attnscore.v1.AttentionScorer, a startup probe; resources
    with CPU and memory requests and limits; ATTNSCORE_THREADS x ATTNSCORE_BATCH_WORKERS within
    the CPU limit; restricted securityContext (runAsNonRoot, non-zero runAsUser,
    allowPrivilegeEscalation false, capabilities drop ALL and add none, seccomp RuntimeDefault,
    readOnlyRootFilesystem, not privileged) with an emptyDir at /tmp; a preStop hook; and
    terminationGracePeriodSeconds above preStop + ATTNSCORE_SHUTDOWN_GRACE from the ConfigMap;
    topology spread constraints selecting the pods; image pinned to a tag (not latest).
  - ConfigMap: referenced by envFrom, present, only ATTNSCORE_* keys the server knows
    (server/main.cc), listen addresses on all interfaces with ports the container declares,
    ATTNSCORE_MODEL_DIR mounted read-only from a volume (the relative-position parameter sets).
  - Services: a ClusterIP Service and a headless one (clusterIP None) selecting the pods, both
    with the gRPC port targeting the container's gRPC port.
  - PodDisruptionBudget and HorizontalPodAutoscaler present, selecting / targeting the
    Deployment; HPA minReplicas >= 2 and the PDB leaves at least one pod.
  - NetworkPolicy selecting the pods, Ingress only, gRPC admitted only from pods with the client
    label (attnscore.io/client=true), no rule that admits everyone.
  - TLS and tokens (overlays named *tls* must have both): the files come from read-only Secret
    volumes without subPath, cert and key together, no tokens over plaintext, probes on the
    plaintext health-only listener (ATTNSCORE_HEALTH_LISTEN, container port "health").
  - GPU overlay: nvidia.com/gpu limit, a toleration for nvidia.com/gpu, a node selector for GPU
    nodes, the CUDA image (tag ending in -gpu), ATTNSCORE_DEVICE=cuda. CPU overlay: none of
    these, ATTNSCORE_DEVICE=cpu.
"""
from __future__ import annotations

import argparse
import atexit
import re
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

from deploylib import (LIVENESS_SERVICE, READINESS_SERVICE, ROOT, Failures, host_port, kubectl,
                       listens_on_all, run, server_env_flags)

K8S_DIR = ROOT / "deploy" / "k8s"
# Every overlay directory; `gpu` must exist, and any overlay whose name contains "gpu" gets the
# GPU rules.
OVERLAYS = tuple(sorted(p.name for p in (K8S_DIR / "overlays").iterdir()
                        if (p / "kustomization.yaml").exists()))
# Schema versions checked: the oldest Kubernetes these manifests support (gRPC probes are GA in
# 1.27) and the kubectl/kustomize generation on the developer machines.
SCHEMA_VERSIONS = ("1.28.0", "1.32.0")
CLIENT_LABEL = ("attnscore.io/client", "true")


def render(overlay: str) -> tuple[int, str]:
    proc = run([kubectl(), "kustomize", str(K8S_DIR / "overlays" / overlay)])
    return proc.returncode, proc.stdout if proc.returncode == 0 else proc.stderr


def cpu_cores(quantity) -> float:
    q = str(quantity)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def selects(selector: dict | None, labels: dict) -> bool:
    """Whether a matchLabels selector (the only form used here) selects these labels."""
    if not selector:
        return False
    match = selector.get("matchLabels", selector)
    if selector.get("matchExpressions"):
        return False
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


def one(objects: list[dict], kind: str, f: Failures, where: str) -> dict | None:
    found = [o for o in objects if o.get("kind") == kind]
    f.check(len(found) == 1, f"[{where}] expected one {kind}, found {len(found)}")
    return found[0] if found else None


SECRET_FILE_FLAGS = ("ATTNSCORE_TLS_CERT", "ATTNSCORE_TLS_KEY", "ATTNSCORE_TLS_CLIENT_CA",
                     "ATTNSCORE_AUTH_TOKEN_FILE")


def check_security(env: dict[str, str], mounts: dict, volumes: dict, variant: str,
                   f: Failures) -> None:
    """TLS and tokens: files from read-only Secret volumes (no subPath: those never update),
    cert and key together, never tokens over plaintext; overlays named *tls* must use both."""
    w = variant
    for key in SECRET_FILE_FLAGS:
        path = env.get(key)
        if not path:
            continue
        mount = next((m for p, m in mounts.items() if path.startswith(p.rstrip("/") + "/")), None)
        if not f.check(mount is not None, f"[{w}] {key}={path} is not under a volume mount"):
            continue
        volume = volumes.get(mount["name"], {})
        f.check("secret" in volume or "projected" in volume,
                f"[{w}] {key}={path} must come from a Secret volume, comes from {volume}")
        f.check(mount.get("readOnly") is True, f"[{w}] the mount of {key} must be read-only")
        f.check(not mount.get("subPath"),
                f"[{w}] the mount of {key} uses subPath, which the kubelet never updates "
                f"(certificate rotation and token changes would not arrive)")
    tls = bool(env.get("ATTNSCORE_TLS_CERT"))
    f.check(tls == bool(env.get("ATTNSCORE_TLS_KEY")),
            f"[{w}] ATTNSCORE_TLS_CERT and ATTNSCORE_TLS_KEY go together")
    f.check(not env.get("ATTNSCORE_AUTH_TOKEN_FILE") or tls,
            f"[{w}] bearer tokens without TLS travel in cleartext")
    f.check(env.get("ATTNSCORE_ALLOW_PLAINTEXT_TOKENS", "false").lower() in ("", "false", "0"),
            f"[{w}] ATTNSCORE_ALLOW_PLAINTEXT_TOKENS has no place in a deployment")
    if "tls" in variant:
        f.check(tls and bool(env.get("ATTNSCORE_AUTH_TOKEN_FILE")),
                f"[{w}] the TLS overlay must set ATTNSCORE_TLS_CERT/KEY and "
                f"ATTNSCORE_AUTH_TOKEN_FILE")


def check_rules(objects: list[dict], variant: str, f: Failures) -> None:
    w = variant
    known_env = server_env_flags()
    deployment = one(objects, "Deployment", f, w)
    if deployment is None:
        return
    pod = deployment["spec"]["template"]
    pod_labels = pod.get("metadata", {}).get("labels", {})
    spec = pod["spec"]
    f.check(selects(deployment["spec"].get("selector"), pod_labels),
            f"[{w}] Deployment selector does not select its pod template")
    containers = spec.get("containers", [])
    if not f.check(len(containers) == 1, f"[{w}] expected one container, found {len(containers)}"):
        return
    c = containers[0]

    # --- ConfigMap: the server flags -----------------------------------------------------------
    config_names = [e["configMapRef"]["name"] for e in c.get("envFrom", []) if "configMapRef" in e]
    configmaps = {o["metadata"]["name"]: o for o in objects if o.get("kind") == "ConfigMap"}
    env: dict[str, str] = {}
    if f.check(len(config_names) == 1 and config_names[0] in configmaps,
               f"[{w}] container must take its flags from one ConfigMap (envFrom), has {config_names}"):
        env = {k: str(v) for k, v in (configmaps[config_names[0]].get("data") or {}).items()}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = str(e["value"])
    unknown = sorted(k for k in env if k.startswith("ATTNSCORE_") and k not in known_env)
    f.check(not unknown, f"[{w}] ConfigMap sets variables the server does not read: {unknown}")
    stray = sorted(k for k in env if not k.startswith("ATTNSCORE_"))
    f.check(not stray, f"[{w}] ConfigMap keys must be ATTNSCORE_* server flags: {stray}")

    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    grpc_port = metrics_port = None
    for key, port_name in (("ATTNSCORE_LISTEN", "grpc"), ("ATTNSCORE_METRICS_LISTEN", "metrics")):
        value = env.get(key)
        if not f.check(value is not None, f"[{w}] {key} not set: the server default is loopback"):
            continue
        host, port = host_port(value)
        f.check(listens_on_all(host), f"[{w}] {key}={value} is unreachable from other pods")
        f.check(ports.get(port_name) == port,
                f"[{w}] container port {port_name!r} is {ports.get(port_name)}, {key} uses {port}")
        if port_name == "grpc":
            grpc_port = port
        else:
            metrics_port = port

    # --- probes --------------------------------------------------------------------------------
    # Kubelet gRPC probes speak plaintext only: with TLS they must use the plaintext health-only
    # listener (ATTNSCORE_HEALTH_LISTEN, a container port named "health").
    probe_port = grpc_port
    health_listen = env.get("ATTNSCORE_HEALTH_LISTEN")
    if health_listen:
        host, health_port = host_port(health_listen)
        f.check(listens_on_all(host),
                f"[{w}] ATTNSCORE_HEALTH_LISTEN={health_listen} is unreachable for the kubelet")
        f.check(ports.get("health") == health_port,
                f"[{w}] container port 'health' is {ports.get('health')}, "
                f"ATTNSCORE_HEALTH_LISTEN uses {health_port}")
        probe_port = health_port
    elif env.get("ATTNSCORE_TLS_CERT"):
        f.fail(f"[{w}] TLS without ATTNSCORE_HEALTH_LISTEN: kubelet gRPC probes cannot speak TLS")

    def grpc_probe(kind: str) -> dict | None:
        probe = c.get(kind)
        if not f.check(probe is not None, f"[{w}] no {kind}"):
            return None
        g = probe.get("grpc")
        if not f.check(g is not None, f"[{w}] {kind} must be a gRPC probe (grpc.health.v1)"):
            return None
        f.check(g.get("port") == probe_port,
                f"[{w}] {kind} port {g.get('port')} is not the "
                f"{'health listener' if health_listen else 'gRPC'} port {probe_port}")
        return g

    live = grpc_probe("livenessProbe")
    ready = grpc_probe("readinessProbe")
    grpc_probe("startupProbe")
    if live is not None:
        f.check(live.get("service", "") == LIVENESS_SERVICE,
                f"[{w}] livenessProbe service is {live.get('service')!r}, expected \"\" (liveness)")
    if ready is not None:
        f.check(ready.get("service") == READINESS_SERVICE,
                f"[{w}] readinessProbe service is {ready.get('service')!r}, expected "
                f"{READINESS_SERVICE!r}")

    # --- resources -----------------------------------------------------------------------------
    res = c.get("resources", {})
    for section in ("requests", "limits"):
        for key in ("cpu", "memory"):
            f.check(key in (res.get(section) or {}), f"[{w}] resources.{section}.{key} missing")
    cpu_limit = (res.get("limits") or {}).get("cpu")
    if cpu_limit is not None and "ATTNSCORE_THREADS" in env:
        threads = int(env["ATTNSCORE_THREADS"]) * int(env.get("ATTNSCORE_BATCH_WORKERS", "1"))
        f.check(threads <= cpu_cores(cpu_limit),
                f"[{w}] ATTNSCORE_THREADS x BATCH_WORKERS = {threads} exceeds the CPU limit "
                f"{cpu_limit} (oversubscribed intra-op threads)")
    else:
        f.check("ATTNSCORE_THREADS" in env,
                f"[{w}] set ATTNSCORE_THREADS: the default is the node's core count")

    # --- security ------------------------------------------------------------------------------
    psc = spec.get("securityContext") or {}
    csc = c.get("securityContext") or {}

    def effective(key):
        return csc.get(key, psc.get(key))

    f.check(effective("runAsNonRoot") is True, f"[{w}] runAsNonRoot must be true")
    f.check(effective("runAsUser") not in (None, 0), f"[{w}] runAsUser must be a non-zero uid")
    f.check(csc.get("allowPrivilegeEscalation") is False,
            f"[{w}] allowPrivilegeEscalation must be false")
    caps = csc.get("capabilities") or {}
    f.check("ALL" in (caps.get("drop") or []), f"[{w}] capabilities must drop ALL")
    f.check(not caps.get("add"), f"[{w}] capabilities must add none, adds {caps.get('add')}")
    f.check((effective("seccompProfile") or {}).get("type") == "RuntimeDefault",
            f"[{w}] seccompProfile must be RuntimeDefault")
    f.check(csc.get("readOnlyRootFilesystem") is True, f"[{w}] readOnlyRootFilesystem must be true")
    f.check(csc.get("privileged") in (None, False), f"[{w}] container must not be privileged")
    f.check(not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"),
            f"[{w}] no host namespaces")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    tmp = mounts.get("/tmp")
    f.check(tmp is not None and "emptyDir" in volumes.get(tmp["name"], {}),
            f"[{w}] /tmp must be an emptyDir (the root filesystem is read-only)")

    check_security(env, mounts, volumes, variant, f)

    # --- relative-position parameter sets --------------------------------------------------------
    model_dir = env.get("ATTNSCORE_MODEL_DIR")
    if f.check(bool(model_dir), f"[{w}] ATTNSCORE_MODEL_DIR not set"):
        m = mounts.get(model_dir)
        f.check(m is not None and m.get("readOnly") is True and m["name"] in volumes,
                f"[{w}] ATTNSCORE_MODEL_DIR {model_dir} must be a read-only volume mount")
        if m is not None and m["name"] in volumes:
            volume = volumes[m["name"]]
            claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
            if claim:
                f.check(any(o.get("kind") == "PersistentVolumeClaim" and
                            o["metadata"]["name"] == claim for o in objects),
                        f"[{w}] models volume claims {claim}, which is not in the manifests")

    # --- termination ---------------------------------------------------------------------------
    grace = float(env.get("ATTNSCORE_SHUTDOWN_GRACE", "30"))
    pre_stop = ((c.get("lifecycle") or {}).get("preStop") or {})
    pre_stop_seconds = 0.0
    if f.check(bool(pre_stop), f"[{w}] no preStop hook (drain before SIGTERM)"):
        if "sleep" in pre_stop and isinstance(pre_stop["sleep"], dict):
            pre_stop_seconds = float(pre_stop["sleep"].get("seconds", 0))
        else:
            command = (pre_stop.get("exec") or {}).get("command") or []
            numbers = [float(x) for x in command if re.fullmatch(r"\d+(\.\d+)?", str(x))]
            pre_stop_seconds = max(numbers, default=0.0)
    period = spec.get("terminationGracePeriodSeconds", 30)
    f.check(period > grace, f"[{w}] terminationGracePeriodSeconds {period} must exceed "
            f"ATTNSCORE_SHUTDOWN_GRACE {grace:g}")
    f.check(period > grace + pre_stop_seconds,
            f"[{w}] terminationGracePeriodSeconds {period} must exceed preStop "
            f"{pre_stop_seconds:g} s + ATTNSCORE_SHUTDOWN_GRACE {grace:g} s")

    spread = spec.get("topologySpreadConstraints") or []
    f.check(bool(spread) and all(selects(t.get("labelSelector"), pod_labels) for t in spread),
            f"[{w}] topologySpreadConstraints must exist and select the pods")
    f.check(any(t.get("topologyKey") == "kubernetes.io/hostname" for t in spread),
            f"[{w}] spread replicas across nodes (topologyKey kubernetes.io/hostname)")

    image = c.get("image", "")
    name_part = image.rsplit("/", 1)[-1]
    tag = name_part.split(":", 1)[1] if ":" in name_part else ""
    f.check(tag not in ("", "latest") or "@sha256:" in image,
            f"[{w}] image {image!r} must be pinned to a tag or digest")

    # --- Services --------------------------------------------------------------------------------
    services = [o for o in objects if o.get("kind") == "Service"]
    def serves(s):
        return selects(s["spec"].get("selector"), pod_labels) and any(
            p.get("port") == grpc_port and p.get("targetPort") in (grpc_port, "grpc")
            for p in s["spec"].get("ports", []))
    cluster_ip = [s for s in services if s["spec"].get("clusterIP") != "None"
                  and s["spec"].get("type", "ClusterIP") == "ClusterIP" and serves(s)]
    headless = [s for s in services if s["spec"].get("clusterIP") == "None" and serves(s)]
    f.check(len(cluster_ip) >= 1, f"[{w}] no ClusterIP Service for gRPC selecting the pods")
    f.check(len(headless) >= 1, f"[{w}] no headless Service (clusterIP: None) for gRPC selecting "
            f"the pods (client-side round_robin needs one)")
    for s in headless:
        f.check(not s["spec"].get("publishNotReadyAddresses"),
                f"[{w}] headless Service must not publish unready pods")
    if metrics_port is not None:
        f.check(any(p.get("port") == metrics_port for s in cluster_ip for p in s["spec"]["ports"]),
                f"[{w}] the ClusterIP Service does not expose metrics port {metrics_port}")

    # --- PDB, HPA ------------------------------------------------------------------------------
    name = deployment["metadata"]["name"]
    hpa = one(objects, "HorizontalPodAutoscaler", f, w)
    pdb = one(objects, "PodDisruptionBudget", f, w)
    min_replicas = None
    if hpa is not None:
        ref = hpa["spec"].get("scaleTargetRef", {})
        f.check(ref.get("kind") == "Deployment" and ref.get("name") == name,
                f"[{w}] HPA targets {ref}, not Deployment/{name}")
        min_replicas = hpa["spec"].get("minReplicas", 1)
        f.check(min_replicas >= 2, f"[{w}] HPA minReplicas {min_replicas} < 2: no redundancy")
        f.check(hpa["spec"].get("maxReplicas", 0) >= min_replicas, f"[{w}] HPA max < min")
        f.check("replicas" not in deployment["spec"],
                f"[{w}] Deployment sets replicas, which fights the HPA on every apply")
    if pdb is not None:
        f.check(selects(pdb["spec"].get("selector"), pod_labels), f"[{w}] PDB does not select the pods")
        min_available = pdb["spec"].get("minAvailable")
        max_unavailable = pdb["spec"].get("maxUnavailable")
        f.check((max_unavailable not in (None, 0, "0", "0%")) or
                (isinstance(min_available, int) and min_replicas is not None
                 and min_available < min_replicas),
                f"[{w}] PDB blocks every eviction (minAvailable {min_available}, "
                f"maxUnavailable {max_unavailable})")

    # --- NetworkPolicy ---------------------------------------------------------------------------
    policies = [o for o in objects if o.get("kind") == "NetworkPolicy"
                and selects(o["spec"].get("podSelector"), pod_labels)]
    if f.check(len(policies) == 1, f"[{w}] expected one NetworkPolicy selecting the pods, "
               f"found {len(policies)}"):
        np = policies[0]["spec"]
        f.check("Ingress" in (np.get("policyTypes") or []), f"[{w}] NetworkPolicy must police Ingress")
        grpc_ok = False
        for rule in np.get("ingress") or []:
            sources = rule.get("from") or []
            f.check(bool(sources), f"[{w}] NetworkPolicy ingress rule without `from` admits everyone")
            for src in sources:
                f.check("ipBlock" not in src, f"[{w}] NetworkPolicy admits an ipBlock")
                f.check(bool((src.get("podSelector") or {}).get("matchLabels")),
                        f"[{w}] NetworkPolicy source without a pod label selector admits whole "
                        f"namespaces: {src}")
            rule_ports = {p.get("port") for p in rule.get("ports") or []}
            if not rule_ports or rule_ports & {grpc_port, "grpc"}:
                f.check(all((s.get("podSelector") or {}).get("matchLabels") ==
                            {CLIENT_LABEL[0]: CLIENT_LABEL[1]} for s in sources),
                        f"[{w}] gRPC must be admitted only from pods labelled "
                        f"{CLIENT_LABEL[0]}={CLIENT_LABEL[1]}, rule admits {sources}")
                grpc_ok = grpc_ok or bool(sources)
        f.check(grpc_ok, f"[{w}] NetworkPolicy admits no client to gRPC")

    # --- CPU / GPU -------------------------------------------------------------------------------
    limits = res.get("limits") or {}
    tolerations = spec.get("tolerations") or []
    selector = spec.get("nodeSelector") or {}
    device = env.get("ATTNSCORE_DEVICE", "cpu")
    if "gpu" in variant:
        f.check(int(limits.get("nvidia.com/gpu", 0)) >= 1, "[gpu] no nvidia.com/gpu limit")
        f.check(any(t.get("key") == "nvidia.com/gpu" for t in tolerations),
                "[gpu] no toleration for the nvidia.com/gpu taint")
        f.check(any("nvidia.com" in k or "accelerator" in k or "gpu" in k for k in selector),
                f"[gpu] no node selector for GPU nodes: {selector}")
        f.check(tag.endswith("-gpu"), f"[gpu] image {image!r} is not the CUDA (-gpu) image")
        f.check(device.startswith("cuda"), f"[gpu] ATTNSCORE_DEVICE is {device!r}, expected cuda")
    else:
        f.check("nvidia.com/gpu" not in limits and not tolerations and not selector,
                f"[{w}] the CPU variant must not ask for GPUs or GPU nodes")
        f.check(not tag.endswith("-gpu"), f"[{w}] the CPU variant uses the GPU image {image!r}")
        f.check(device == "cpu", f"[{w}] ATTNSCORE_DEVICE is {device!r}, expected cpu")


def load(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def rendered(out: Path | None, f: Failures) -> list[tuple[str, Path]]:
    if out is None:
        out = Path(tempfile.mkdtemp(prefix="attnscore-k8s-"))
        atexit.register(shutil.rmtree, out, True)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for overlay in OVERLAYS:
        code, text = render(overlay)
        if f.check(code == 0, f"[{overlay}] kubectl kustomize failed: {text.strip()}"):
            path = out / f"{overlay}.yaml"
            path.write_text(text)
            files.append((overlay, path))
            kinds = sorted(d.get("kind", "?") for d in load(path))
            print(f"[{overlay}] kubectl kustomize: {len(kinds)} objects: {', '.join(kinds)}")
    f.check({"cpu", "gpu"} <= set(OVERLAYS), f"overlays cpu and gpu must exist, have {OVERLAYS}")
    return files


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["render", "schema", "rules"])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--manifest", type=Path, action="append", default=[])
    parser.add_argument("--variant", action="append", default=[])
    args = parser.parse_args()

    f = Failures(f"k8s {args.mode}")
    if args.manifest:
        variants = args.variant or [p.stem for p in args.manifest]
        files = list(zip(variants, args.manifest))
    else:
        files = rendered(args.out, f)

    if args.mode == "schema":
        exe = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent))
        if f.check(exe is not None, "kubernetes-validate not found: run scripts/install-deps.sh"):
            for variant, path in files:
                for version in SCHEMA_VERSIONS:
                    proc = run([exe, "--strict", "--quiet", "-k", version, str(path)])
                    f.check(proc.returncode == 0,
                            f"[{variant}] kubernetes-validate --strict -k {version}: "
                            f"{(proc.stdout + proc.stderr).strip()}")
                    print(f"[{variant}] kubernetes-validate --strict -k {version} "
                          f"({len(load(path))} objects): "
                          f"{'ok' if proc.returncode == 0 else 'FAILED'}")
    elif args.mode == "rules":
        for variant, path in files:
            check_rules(load(path), variant, f)
    f.exit()


if __name__ == "__main__":
    main()
