#!/usr/bin/env python3
"""Three replicas on one host, as a Kubernetes rollout sees them, on loopback only.

Starts three attnscore-server processes on 127.0.0.1 (port 0, ports read from --port-file),
drives them with `attnscore load` through the client's round_robin over the three addresses,
SIGKILLs one replica in the middle of the run and restarts it on the same port, and checks:
  - `attnscore load` (with --max-reconnect-backoff 500ms and --retry-attempts 5: load sends each
    request once by default) reports no failed request (the client's retry policy moves calls that hit
    the dead replica to the live ones) and exits 0 with --max-error-rate 0;
  - all three replicas served traffic before the kill (their attnscore_requests_total, scraped
    from each server's /metrics), and the restarted replica served traffic again after it came
    back (round_robin reconnects to it).

  multireplica_test.py --server-bin PATH --cli-bin PATH

Bounded: a fixed-duration load run (--duration) with a fixed concurrency, every process killed
at the end whatever happens.
"""
from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from deploylib import READINESS_SERVICE, clean_env

LOAD_SECONDS = 15
KILL_AT = 3.0        # seconds into the load run
RESTART_AFTER = 1.0  # seconds after the kill
# The client tries a backend that is down again at most this often; gRPC's default backoff
# (1 s growing 1.6x, attempts near 4, 5.6, 8.2, 12.3 s of the run) could miss a replica that
# took a few seconds to start on a busy machine for the rest of the run.
MAX_RECONNECT_BACKOFF = "500ms"
# The restarted replica must be ready this long before the load ends, or the check that it
# served traffic again says nothing about the client.
MIN_SECONDS_AFTER_RESTART = 2.0


class Replica:
    def __init__(self, server_bin: str, work: Path, index: int) -> None:
        self.server_bin = server_bin
        self.work = work
        self.index = index
        self.port = 0
        self.metrics_port = 0
        self.proc: subprocess.Popen | None = None
        self.log = None

    def start(self, port: int = 0) -> None:
        port_file = self.work / f"port{self.index}"
        metrics_file = self.work / f"metrics{self.index}"
        for f in (port_file, metrics_file):
            f.unlink(missing_ok=True)
        self.log = open(self.work / f"server{self.index}.log", "ab")
        self.proc = subprocess.Popen(
            [self.server_bin, "--listen", f"127.0.0.1:{port}", "--port-file", str(port_file),
             "--metrics-listen", "127.0.0.1:0", "--metrics-port-file", str(metrics_file),
             "--threads", "1", "--batch-workers", "1", "--shutdown-grace", "5",
             "--log-level", "warn"],
            stdout=self.log, stderr=subprocess.STDOUT, env=clean_env())
        deadline = time.monotonic() + 60
        while not (port_file.exists() and metrics_file.exists()):
            if self.proc.poll() is not None:
                raise SystemExit(f"replica {self.index} exited with {self.proc.returncode}: "
                                 f"{(self.work / f'server{self.index}.log').read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise SystemExit(f"replica {self.index} wrote no port file within 60 s")
            time.sleep(0.05)
        self.port = int(port_file.read_text())
        self.metrics_port = int(metrics_file.read_text())

    def requests(self) -> float:
        """Sum of attnscore_requests_total over every method and code."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=5) as response:
            text = response.read().decode()
        return sum(float(v) for v in re.findall(
            r"^attnscore_requests_total(?:\{[^}]*\})?\s+([0-9.eE+-]+)\s*$", text, flags=re.M))

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_ready(cli: str, port: int) -> None:
    proc = subprocess.run([cli, "health", "--target", f"127.0.0.1:{port}", "--service",
                           READINESS_SERVICE, "--wait", "60s", "--timeout", "5s"],
                          capture_output=True, text=True, env=clean_env(), timeout=90)
    if proc.returncode != 0:
        raise SystemExit(f"replica on port {port} never became ready: {proc.stdout}{proc.stderr}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--server-bin", required=True)
    parser.add_argument("--cli-bin", required=True)
    args = parser.parse_args()

    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="attnscore-multireplica-") as name:
        work = Path(name)
        replicas = [Replica(args.server_bin, work, i) for i in range(3)]
        load = None
        try:
            for r in replicas:
                r.start()
            for r in replicas:
                wait_ready(args.cli_bin, r.port)
            targets = ",".join(f"127.0.0.1:{r.port}" for r in replicas)
            report = work / "report.json"
            load_cmd = [args.cli_bin, "load", "--target", targets, "--lb", "round_robin",
                        "--preset", "decode", "--duration", f"{LOAD_SECONDS}s",
                        "--concurrency", "4", "--connections", "1", "--max-error-rate", "0",
                        "--timeout", "10s", "--max-reconnect-backoff", MAX_RECONNECT_BACKOFF,
                        "--retry-attempts", "5",
                        "--format", "json", "--output", str(report)]
            print("$ " + " ".join(load_cmd))
            load = subprocess.Popen(load_cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    env=clean_env())
            load_ends = time.monotonic() + LOAD_SECONDS
            time.sleep(KILL_AT)
            before = [r.requests() for r in replicas]
            print(f"requests per replica before the kill: {before}")
            for i, count in enumerate(before):
                if count <= 0:
                    failures.append(f"replica {i} (port {replicas[i].port}) served no request "
                                    "before the kill: round_robin does not spread the load")
            victim = replicas[1]
            port = victim.port
            print(f"SIGKILL replica 1 (pid {victim.proc.pid}, port {port})")
            victim.kill(signal.SIGKILL)
            time.sleep(RESTART_AFTER)
            victim.start(port)
            print(f"restarted replica 1 on port {victim.port}")
            if victim.port != port:
                failures.append(f"restarted replica listens on {victim.port}, not {port}")
            wait_ready(args.cli_bin, victim.port)
            left = load_ends - time.monotonic()
            print(f"restarted replica ready {left:.1f} s before the load ends")
            if left < MIN_SECONDS_AFTER_RESTART:
                failures.append(f"the restarted replica became ready only {left:.1f} s before "
                                f"the load ended (needs {MIN_SECONDS_AFTER_RESTART} s): the "
                                "machine is too slow for this test's timing")
            output, _ = load.communicate(timeout=LOAD_SECONDS + 60)
            print(output.decode(errors="replace")[-3000:])
            if load.returncode != 0:
                failures.append(f"attnscore load exited {load.returncode}")
            after_restart = victim.requests()
            print(f"requests served by the restarted replica: {after_restart}")
            if after_restart <= 0:
                failures.append("the restarted replica served no request after it came back")
            if report.exists():
                data = json.loads(report.read_text())
                print(f"load: count {data.get('count')}, ok {data.get('ok')}, errors "
                      f"{data.get('errors')}, status codes {data.get('status_codes')}")
                if data.get("errors", 1) != 0:
                    failures.append(f"load reported {data.get('errors')} failed requests: "
                                    f"{data.get('errors_by_message')}")
                if data.get("count", 0) <= 0 or data.get("ok") != data.get("count"):
                    failures.append(f"load count {data.get('count')} != ok {data.get('ok')}")
            else:
                failures.append("attnscore load wrote no JSON report")
        finally:
            if load is not None and load.poll() is None:
                load.kill()
                load.wait()
            for r in replicas:
                r.kill(signal.SIGTERM)
            for r in replicas:
                if r.log:
                    r.log.close()
            if failures:
                for r in replicas:
                    log = work / f"server{r.index}.log"
                    if log.exists():
                        print(f"--- server{r.index}.log (tail)\n{log.read_text()[-1500:]}")

    for f in failures:
        print(f"FAIL {f}")
    print("multi-replica: " + ("FAILED" if failures else "passed"))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
