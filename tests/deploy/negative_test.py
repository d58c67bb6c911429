#!/usr/bin/env python3
"""Every deployment check can fail: deliberately broken copies of the artefacts, in a temporary
directory, must be rejected by the check that guards them, with the rule's message.

Cases: the project's Kubernetes rules (one broken manifest per rule family), kubernetes-validate
--strict (an unknown field), kubectl kustomize (a missing resource), hadolint (a bad
Dockerfile), the Dockerfile rules (root user; a build step the README does not use; a GPU wheel
without its hash; GPU images of another CUDA release than the wheels'), and the
compose checks (an invalid file; a server without its health check), the .dockerignore
(dropping a file the build needs) and the CLI usage check (a health check flag the CLI lacks). Positive controls: the
unbroken manifests pass the rules checker from the same temporary copies.
"""
from __future__ import annotations

import copy
import re
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

from deploylib import ROOT, kubectl, run

HERE = Path(__file__).resolve().parent
PY = sys.executable
results: list[tuple[str, bool, str]] = []
CLI_BIN = ""  # the built attnscore CLI (--cli-bin), when this tree builds it


def expect(name: str, cmd: list[str], *, fails: bool, message: str = "", env=None) -> None:
    proc = run(cmd, env=env)
    output = proc.stdout + proc.stderr
    ok = (proc.returncode != 0) == fails and (not message or re.search(message, output) is not None)
    detail = "" if ok else f"exit {proc.returncode}, wanted {'failure' if fails else 'success'}" + (
        f" mentioning /{message}/" if message else "") + f"; output:\n{output[-2000:]}"
    results.append((name, ok, detail))


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def write(path: Path, objects: list[dict]) -> Path:
    path.write_text(yaml.safe_dump_all(objects, sort_keys=False))
    return path


def find(objects: list[dict], kind: str, name: str | None = None) -> dict:
    return next(o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name))


def container(objects: list[dict]) -> dict:
    return find(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def k8s_cases(tmp: Path) -> None:
    rendered = {}
    for overlay in ("cpu", "gpu", "tls"):
        proc = run([kubectl(), "kustomize", str(ROOT / "deploy" / "k8s" / "overlays" / overlay)],
                   check=True)
        rendered[overlay] = [d for d in yaml.safe_load_all(proc.stdout) if d]

    def rules(name, overlay, mutate, message):
        objects = copy.deepcopy(rendered[overlay])
        mutate(objects)
        path = write(tmp / f"{name}.yaml", objects)
        expect(f"k8s rules reject: {name}",
               [PY, str(HERE / "check_k8s.py"), "rules", "--manifest", str(path),
                "--variant", overlay], fails=True, message=message)

    # Positive controls: the same checker on unmodified copies passes.
    for overlay in ("cpu", "gpu", "tls"):
        path = write(tmp / f"control-{overlay}.yaml", rendered[overlay])
        expect(f"k8s rules accept the unmodified {overlay} overlay",
               [PY, str(HERE / "check_k8s.py"), "rules", "--manifest", str(path),
                "--variant", overlay], fails=False)

    def readiness_on_liveness_service(o):
        container(o)["readinessProbe"]["grpc"]["service"] = ""
    rules("readiness-probe-service", "cpu", readiness_on_liveness_service,
          r"readinessProbe service is ''")

    def writable_root(o):
        container(o)["securityContext"]["readOnlyRootFilesystem"] = False
    rules("writable-root-filesystem", "cpu", writable_root, r"readOnlyRootFilesystem must be true")

    def escalation(o):
        del container(o)["securityContext"]["allowPrivilegeEscalation"]
        container(o)["securityContext"]["capabilities"] = {"add": ["NET_ADMIN"]}
    rules("privilege-escalation", "cpu", escalation, r"allowPrivilegeEscalation must be false")

    def short_grace(o):
        find(o, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 30
    rules("grace-not-above-shutdown-grace", "cpu", short_grace,
          r"terminationGracePeriodSeconds 30 must exceed ATTNSCORE_SHUTDOWN_GRACE 30")

    def longer_server_grace(o):
        find(o, "ConfigMap")["data"]["ATTNSCORE_SHUTDOWN_GRACE"] = "120"
    rules("configmap-grace-above-pod-grace", "cpu", longer_server_grace,
          r"must exceed ATTNSCORE_SHUTDOWN_GRACE 120")

    def not_headless(o):
        del find(o, "Service", "attnscore-headless")["spec"]["clusterIP"]
    rules("headless-service-with-cluster-ip", "cpu", not_headless, r"no headless Service")

    def no_pdb(o):
        o.remove(find(o, "PodDisruptionBudget"))
    rules("missing-pdb", "cpu", no_pdb, r"expected one PodDisruptionBudget, found 0")

    def no_hpa(o):
        o.remove(find(o, "HorizontalPodAutoscaler"))
    rules("missing-hpa", "cpu", no_hpa, r"expected one HorizontalPodAutoscaler, found 0")

    def open_network(o):
        find(o, "NetworkPolicy")["spec"]["ingress"][0]["from"] = [{"namespaceSelector": {}}]
    rules("networkpolicy-admits-namespaces", "cpu", open_network,
          r"gRPC must be admitted only from pods labelled attnscore.io/client=true")

    def typo_flag(o):
        find(o, "ConfigMap")["data"]["ATTNSCORE_SHUTDOWN_GRACE_SECONDS"] = "10"
    rules("configmap-unknown-flag", "cpu", typo_flag, r"variables the server does not read")

    def loopback(o):
        find(o, "ConfigMap")["data"]["ATTNSCORE_LISTEN"] = "127.0.0.1:50051"
    rules("listen-on-loopback", "cpu", loopback, r"unreachable from other pods")

    def no_gpu_limit(o):
        del container(o)["resources"]["limits"]["nvidia.com/gpu"]
    rules("gpu-without-gpu-limit", "gpu", no_gpu_limit, r"no nvidia.com/gpu limit")

    def no_toleration(o):
        del find(o, "Deployment")["spec"]["template"]["spec"]["tolerations"]
    rules("gpu-without-toleration", "gpu", no_toleration, r"no toleration")

    def cpu_image_on_gpu(o):
        container(o)["image"] = "attnscore:0.1.0-cpu"
    rules("gpu-with-cpu-image", "gpu", cpu_image_on_gpu, r"not the CUDA \(-gpu\) image")

    def tls_probe_on_grpc_port(o):
        container(o)["readinessProbe"]["grpc"]["port"] = 50051
    rules("tls-probe-on-tls-port", "tls", tls_probe_on_grpc_port,
          r"readinessProbe port 50051 is not the health listener port 50052")

    def tls_without_health_listener(o):
        del find(o, "ConfigMap")["data"]["ATTNSCORE_HEALTH_LISTEN"]
    rules("tls-without-health-listener", "tls", tls_without_health_listener,
          r"kubelet gRPC probes cannot speak TLS")

    def tokens_over_plaintext(o):
        data = find(o, "ConfigMap")["data"]
        del data["ATTNSCORE_TLS_CERT"], data["ATTNSCORE_TLS_KEY"]
    rules("tokens-over-plaintext", "tls", tokens_over_plaintext,
          r"bearer tokens without TLS travel in cleartext")

    def secret_by_subpath(o):
        mount = next(m for m in container(o)["volumeMounts"] if m["name"] == "tls")
        mount["subPath"] = "tls.crt"
    rules("tls-secret-subpath", "tls", secret_by_subpath, r"uses subPath")

    def key_from_configmap(o):
        volumes = find(o, "Deployment")["spec"]["template"]["spec"]["volumes"]
        tls = next(v for v in volumes if v["name"] == "tls")
        tls.pop("secret")
        tls["configMap"] = {"name": "attnscore-tls"}
        find(o, "ConfigMap")["data"]["ATTNSCORE_ALLOW_PLAINTEXT_TOKENS"] = "true"
    rules("tls-key-from-configmap", "tls", key_from_configmap,
          r"(?s)must come from a Secret volume.*ALLOW_PLAINTEXT_TOKENS has no place")

    # kubernetes-validate --strict: an unknown field.
    objects = copy.deepcopy(rendered["cpu"])
    container(objects)["readinessProbes"] = container(objects).pop("readinessProbe")
    path = write(tmp / "unknown-field.yaml", objects)
    exe = str(Path(PY).parent / "kubernetes-validate")
    expect("kubernetes-validate --strict rejects an unknown field",
           [exe, "--strict", "--quiet", "-k", "1.32.0", str(path)], fails=True,
           message=r"readinessProbes' was unexpected")

    # kubectl kustomize: an overlay naming a missing resource.
    broken = tmp / "k8s" / "overlays" / "broken"
    shutil.copytree(ROOT / "deploy" / "k8s" / "base", tmp / "k8s" / "base")
    broken.mkdir(parents=True)
    (broken / "kustomization.yaml").write_text(
        "resources:\n  - ../../base\n  - does-not-exist.yaml\n")
    expect("kubectl kustomize rejects a broken overlay", [kubectl(), "kustomize", str(broken)],
           fails=True, message=r"does-not-exist")


def dockerfile_cases(tmp: Path) -> None:
    good = (ROOT / "Dockerfile").read_text()
    d = tmp / "docker"
    d.mkdir()
    shutil.copy(ROOT / ".dockerignore", d / ".dockerignore")
    # The GPU builder's pinned wheels, which the rules read from the build context.
    requirements = d / "deploy" / "docker" / "requirements-gpu.txt"
    requirements.parent.mkdir(parents=True)
    good_requirements = (ROOT / "deploy" / "docker" / "requirements-gpu.txt").read_text()
    requirements.write_text(good_requirements)

    bad = d / "Dockerfile.lint"
    bad.write_text("FROM debian:latest\nRUN apt-get update && apt-get install -y curl\n"
                   "CMD curl localhost\n")
    expect("hadolint rejects a bad Dockerfile",
           [PY, str(HERE / "check_dockerfile.py"), "hadolint", "--dockerfile", str(bad)],
           fails=True, message=r"DL3007|DL3008|DL3015")

    root_user = d / "Dockerfile"
    root_user.write_text(good.replace("USER 10001:10001\nWORKDIR /tmp\nEXPOSE 50051 9090\n"
                                      "HEALTHCHECK --interval=10s --timeout=5s --start-period=60s",
                                      "USER root\nWORKDIR /tmp\nEXPOSE 50051 9090\n"
                                      "HEALTHCHECK --interval=10s --timeout=5s --start-period=60s"))
    assert root_user.read_text() != good, "Dockerfile mutation did not apply (USER)"
    expect("Dockerfile rules reject a root runtime user",
           [PY, str(HERE / "check_dockerfile.py"), "rules", "--dockerfile", str(root_user)],
           fails=True, message=r"cpu: USER 'root' must be a numeric non-root uid")

    own_build = d / "Dockerfile"
    own_build.write_text(good.replace('RUN make build JOBS="${JOBS}"',
                                      'RUN cmake -S . -B build -G Ninja && cmake --build build'))
    assert own_build.read_text() != good, "Dockerfile mutation did not apply (make build)"
    expect("Dockerfile rules reject a build that is not the README's",
           [PY, str(HERE / "check_dockerfile.py"), "rules", "--dockerfile", str(own_build)],
           fails=True, message=r"builder must build with `make build`")

    (d / "Dockerfile").write_text(good)
    (d / ".dockerignore").write_text((ROOT / ".dockerignore").read_text() + "/scripts\n")
    expect("Dockerfile rules reject a .dockerignore that drops what the build needs",
           [PY, str(HERE / "check_dockerfile.py"), "rules", "--dockerfile", str(d / "Dockerfile")],
           fails=True, message=r"excludes scripts/install-deps.sh")
    shutil.copy(ROOT / ".dockerignore", d / ".dockerignore")

    typo = d / "Dockerfile"
    typo.write_text(good.replace("--timeout 3s", "--time-out 3s"))
    assert typo.read_text() != good, "Dockerfile mutation did not apply (--timeout)"
    cli_args = ["--cli-bin", CLI_BIN] if CLI_BIN else []
    expect("CLI usage check rejects a healthcheck flag the CLI does not have",
           [PY, str(HERE / "check_cli.py"), "--dockerfile", str(typo), *cli_args],
           fails=True, message=r"(has no|flag) --time-out")

    wrong_service = d / "Dockerfile"
    wrong_service.write_text(good.replace("--service attnscore.v1.AttentionScorer", "--service x", 1))
    expect("Dockerfile rules reject a healthcheck on the wrong service",
           [PY, str(HERE / "check_dockerfile.py"), "rules", "--dockerfile", str(wrong_service)],
           fails=True, message=r"HEALTHCHECK must ask for attnscore.v1.AttentionScorer")

    (d / "Dockerfile").write_text(good)
    unhashed = re.sub(r"(?m)^(torch==\S+) \\\n(?:\s+--hash=\S+(?: \\\n)?)+", r"\1",
                      good_requirements, count=1)
    requirements.write_text(unhashed)
    assert unhashed != good_requirements, "requirements-gpu.txt mutation did not apply (hash)"
    expect("Dockerfile rules reject a GPU wheel pinned without its sha256",
           [PY, str(HERE / "check_dockerfile.py"), "rules", "--dockerfile", str(d / "Dockerfile")],
           fails=True,
           message=r"requirements-gpu\.txt: not `name==version --hash=sha256:\.\.\.`: 'torch==")
    requirements.write_text(good_requirements)

    other_cuda = re.sub(r"(ARG CUDA_IMAGE=nvidia/cuda:)\d+\.\d+\.\d+", r"\g<1>12.6.3", good, count=1)
    assert other_cuda != good, "Dockerfile mutation did not apply (CUDA_IMAGE)"
    (d / "Dockerfile").write_text(other_cuda)
    expect("Dockerfile rules reject a GPU runtime image of another CUDA release than the wheels'",
           [PY, str(HERE / "check_dockerfile.py"), "rules", "--dockerfile", str(d / "Dockerfile")],
           fails=True, message=r"CUDA releases differ")
    (d / "Dockerfile").write_text(good)


def compose_cases(tmp: Path) -> None:
    src = ROOT / "deploy" / "compose"
    invalid = tmp / "compose-invalid"
    shutil.copytree(src, invalid)
    text = (invalid / "compose.yaml").read_text()
    (invalid / "compose.yaml").write_text(text.replace("    stop_grace_period: 40s",
                                                       "    stop_grace_periods: 40s"))
    expect("docker-compose config -q rejects an invalid compose file",
           [PY, str(HERE / "check_compose.py"), "--dir", str(invalid)], fails=True,
           message=r"(?s)config -q failed.*stop_grace_periods")

    no_health = tmp / "compose-no-health"
    shutil.copytree(src, no_health)
    text = (no_health / "compose.yaml").read_text()
    start = text.index("    healthcheck:\n      # Readiness")
    end = text.index("    # Above ATTNSCORE_SHUTDOWN_GRACE")
    (no_health / "compose.yaml").write_text(text[:start] + text[end:])
    expect("compose rules reject a server without a health check",
           [PY, str(HERE / "check_compose.py"), "--dir", str(no_health)], fails=True,
           message=r"\[cpu\] server healthcheck must run `attnscore health`")

    plaintext_tokens = tmp / "compose-plaintext-tokens"
    shutil.copytree(src, plaintext_tokens)
    text = (plaintext_tokens / "compose.tls.yaml").read_text()
    text = text.replace("      ATTNSCORE_TLS_CERT: /run/secrets/attnscore-server-cert\n", "")
    (plaintext_tokens / "compose.tls.yaml").write_text(
        text.replace("      ATTNSCORE_TLS_KEY: /run/secrets/attnscore-server-key\n", ""))
    expect("compose rules reject bearer tokens without TLS",
           [PY, str(HERE / "check_compose.py"), "--dir", str(plaintext_tokens)], fails=True,
           message=r"\[cpu\+tls\] bearer tokens without TLS travel in cleartext")


def main() -> None:
    global CLI_BIN
    import argparse
    parser = argparse.ArgumentParser()
    parser.add_argument("--cli-bin", default="")
    CLI_BIN = parser.parse_args().cli_bin
    with tempfile.TemporaryDirectory(prefix="attnscore-deploy-negative-") as name:
        tmp = Path(name)
        k8s_cases(tmp)
        dockerfile_cases(tmp)
        compose_cases(tmp)
    failed = [r for r in results if not r[1]]
    for name, ok, detail in results:
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
        if not ok:
            print("     " + detail.replace("\n", "\n     "))
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
