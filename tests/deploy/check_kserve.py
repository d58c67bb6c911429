"""Offline checks of deploy/kserve/inferenceservice.yaml (no KServe CRD schema is available).

The KServe InferenceService must parse, be a serving.kserve.io/v1beta1 InferenceService with a
custom predictor container named `kserve-container`, declare the gRPC port as `h2c` on the port
the server listens on (ATTNSCORE_LISTEN) and the Dockerfile EXPOSEs, use the image name of the
Kubernetes overlays, set only ATTNSCORE_* variables that attnscore-server has, and probe
liveness and readiness with grpc.health.v1 on that port, as deploy/k8s does.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deploylib import (LIVENESS_SERVICE, READINESS_SERVICE, ROOT, Failures,  # noqa: E402
                       host_port, server_env_flags)

MANIFEST = ROOT / "deploy" / "kserve" / "inferenceservice.yaml"


def dockerfile_ports() -> set[int]:
    text = (ROOT / "Dockerfile").read_text()
    return {int(p) for line in re.findall(r"^EXPOSE\s+(.+)$", text, re.M) for p in line.split()}


def overlay_images() -> set[str]:
    names = set()
    for kustomization in (ROOT / "deploy" / "k8s" / "overlays").glob("*/kustomization.yaml"):
        for image in yaml.safe_load(kustomization.read_text()).get("images", []):
            names.add(f"{image.get('newName', image['name'])}:{image['newTag']}")
    return names


def check_container(container: dict, f: Failures) -> None:
    f.check(container.get("name") == "kserve-container",
            f"container name: expected kserve-container, got {container.get('name')!r}")
    f.check(container.get("image") in overlay_images(),
            f"image {container.get('image')!r}: expected one of the overlays' {overlay_images()}")
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    known = server_env_flags()
    for name in env:
        if name.startswith("ATTNSCORE_"):
            f.check(name in known, f"env {name}: attnscore-server has no such variable")
    listen = env.get("ATTNSCORE_LISTEN")
    if not f.check(listen is not None, "env ATTNSCORE_LISTEN: required (the gRPC port)"):
        return
    host, port = host_port(listen)
    f.check(host == "0.0.0.0", f"ATTNSCORE_LISTEN {listen}: expected 0.0.0.0 (all interfaces)")
    f.check(port in dockerfile_ports(), f"port {port}: the Dockerfile EXPOSEs {dockerfile_ports()}")
    ports = container.get("ports", [])
    f.check([p.get("name") for p in ports] == ["h2c"],
            f"ports: expected exactly one, named h2c (gRPC), got {ports}")
    f.check(all(p.get("containerPort") == port for p in ports),
            f"ports: containerPort must be the listen port {port}, got {ports}")
    for probe, service in (("readinessProbe", READINESS_SERVICE),
                           ("livenessProbe", LIVENESS_SERVICE),
                           ("startupProbe", LIVENESS_SERVICE)):
        grpc = (container.get(probe) or {}).get("grpc", {})
        f.check(grpc.get("port") == port and grpc.get("service") == service,
                f"{probe}: expected grpc port {port} service {service!r}, got {grpc}")


def check_drain(predictor: dict, container: dict, f: Failures) -> None:
    """The kubelet's SIGKILL must come after the preStop pause and the server's drain."""
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    drain = float(env.get("ATTNSCORE_SHUTDOWN_GRACE") or 30)
    command = (((container.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get(
        "command", [])
    pause = float(command[1]) if len(command) == 2 and command[0] == "sleep" else 0.0
    grace = predictor.get("terminationGracePeriodSeconds", 30)
    f.check(grace > pause + drain,
            f"terminationGracePeriodSeconds {grace}: expected more than preStop {pause:g} s + "
            f"ATTNSCORE_SHUTDOWN_GRACE {drain:g} s")


def main() -> None:
    f = Failures("deploy/kserve")
    documents = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    f.check(len(documents) == 1, f"expected one document, got {len(documents)}")
    isvc = documents[0]
    f.check(isvc.get("apiVersion") == "serving.kserve.io/v1beta1",
            f"apiVersion: expected serving.kserve.io/v1beta1, got {isvc.get('apiVersion')!r}")
    f.check(isvc.get("kind") == "InferenceService",
            f"kind: expected InferenceService, got {isvc.get('kind')!r}")
    f.check(bool(isvc.get("metadata", {}).get("name")), "metadata.name: required")
    predictor = isvc.get("spec", {}).get("predictor", {})
    containers = predictor.get("containers", [])
    if f.check(len(containers) == 1, f"spec.predictor.containers: expected one, got {containers}"):
        check_container(containers[0], f)
        check_drain(predictor, containers[0], f)
    f.exit()


if __name__ == "__main__":
    main()
