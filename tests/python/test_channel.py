"""The client's channel behaviour against small in-process gRPC servers (the real server checks
no tokens and has no TLS yet): the bearer token on every call, TLS and mutual TLS options, round
robin over a target list and retries of UNAVAILABLE (the service config), the health messages,
and the golden comparison itself."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import threading
import unittest
from concurrent import futures
from pathlib import Path
from typing import List, Optional

import grpc
import numpy as np

import attnscore
import attnscore.aio
from attnscore import _channel
from attnscore._proto import attnscore_pb2 as pb
from attnscore._proto import attnscore_pb2_grpc as pb_grpc
from attnscore_testing import compare

SERVER_NAME = "attnscore-test"


class FakeScorer(pb_grpc.AttentionScorerServicer):
    """Answers Score with a [1,1,1,1] float32 logits tensor; records each call's metadata.
    The first `fail_first` calls fail with UNAVAILABLE."""

    def __init__(self, fail_first: int = 0) -> None:
        self.lock = threading.Lock()
        self.metadata: List[dict] = []
        self.fail_first = fail_first

    def Score(self, request: pb.ScoreRequest, context: grpc.ServicerContext) -> pb.ScoreResponse:
        with self.lock:
            self.metadata.append(dict(context.invocation_metadata()))
            fail = len(self.metadata) <= self.fail_first
        if fail:
            context.abort(grpc.StatusCode.UNAVAILABLE, "queue full, retry later")
        logits = pb.Tensor(dtype=pb.FLOAT32, shape=[1, 1, 1, 1],
                           data=np.float32([0.5]).tobytes())
        return pb.ScoreResponse(request_id=request.request_id, logits=logits)


def start_fake(scorer: FakeScorer, credentials: Optional[grpc.ServerCredentials] = None):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_AttentionScorerServicer_to_server(scorer, server)
    address = "127.0.0.1:0"
    port = (server.add_secure_port(address, credentials) if credentials
            else server.add_insecure_port(address))
    server.start()
    return server, port


def make_certificate(directory: Path) -> tuple:
    """A self-signed certificate for SERVER_NAME (used as CA, server and client certificate)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={SERVER_NAME}",
                    "-addext", f"subjectAltName=DNS:{SERVER_NAME}"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


Q = np.zeros((1, 1, 1, 4), dtype=np.float32)


class TokenTest(unittest.TestCase):
    def test_bearer_token_sent_on_every_call_plaintext(self) -> None:
        scorer = FakeScorer()
        server, port = start_fake(scorer)
        try:
            with attnscore.Client(f"127.0.0.1:{port}", token="s3cret", timeout=10,
                                  allow_insecure_token=True) as client:
                self.assertEqual(client.score(Q, Q).logits.tolist(), [[[[0.5]]]])
                client.score(Q, Q)
            asyncio.run(self._aio_call(port))
        finally:
            server.stop(None)
        self.assertEqual([m.get("authorization") for m in scorer.metadata],
                         ["Bearer s3cret"] * 3)

    async def _aio_call(self, port: int) -> None:
        async with attnscore.aio.Client(f"127.0.0.1:{port}", token="s3cret", timeout=10,
                                        allow_insecure_token=True) as client:
            await client.score(Q, Q)

    def test_no_token_no_authorization(self) -> None:
        scorer = FakeScorer()
        server, port = start_fake(scorer)
        try:
            with attnscore.Client(f"127.0.0.1:{port}", timeout=10) as client:
                client.score(Q, Q)
        finally:
            server.stop(None)
        self.assertNotIn("authorization", scorer.metadata[0])

    def test_metadata_builder(self) -> None:
        self.assertEqual(_channel.bearer_metadata("t"), (("authorization", "Bearer t"),))
        self.assertEqual(_channel.bearer_metadata(None), ())
        with self.assertRaises(ValueError):
            _channel.bearer_metadata("a\nb")


class TlsTest(unittest.TestCase):
    def test_mutual_tls_with_server_name_and_token(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = make_certificate(Path(tmp))
            credentials = grpc.ssl_server_credentials(
                [(key.read_bytes(), cert.read_bytes())], root_certificates=cert.read_bytes(),
                require_client_auth=True)
            scorer = FakeScorer()
            server, port = start_fake(scorer, credentials)
            try:
                # Paths, and PEM bytes.
                with attnscore.Client(f"127.0.0.1:{port}", tls=True, ca=cert, cert=str(cert),
                                      key=key.read_bytes(), server_name=SERVER_NAME,
                                      token="tls-token", timeout=10) as client:
                    self.assertEqual(client.score(Q, Q).logits.shape, (1, 1, 1, 1))
                # No client certificate: the server refuses the handshake.
                with attnscore.Client(f"127.0.0.1:{port}", tls=True, ca=cert,
                                      server_name=SERVER_NAME, timeout=5) as client:
                    with self.assertRaises(attnscore.AttnscoreError) as raised:
                        client.score(Q, Q)
                    self.assertEqual(raised.exception.code, grpc.StatusCode.UNAVAILABLE)
            finally:
                server.stop(None)
        self.assertEqual(scorer.metadata[0].get("authorization"), "Bearer tls-token")

    def test_tls_argument_checks(self) -> None:
        with self.assertRaisesRegex(ValueError, "both cert and key"):
            attnscore.Client("127.0.0.1:1", tls=True, cert=b"-----BEGIN CERTIFICATE-----")
        with self.assertRaisesRegex(ValueError, "cannot read"):
            attnscore.Client("127.0.0.1:1", tls=True, ca="/no/such/ca.pem")


class ServiceConfigTest(unittest.TestCase):
    def test_round_robin_over_a_target_list(self) -> None:
        scorers = [FakeScorer(), FakeScorer()]
        servers = [start_fake(s) for s in scorers]
        try:
            target = ",".join(f"127.0.0.1:{port}" for _, port in servers)
            with attnscore.Client(target, timeout=10) as client:
                self.assertTrue(client._config.target.startswith("ipv4:127.0.0.1:"))
                for _ in range(20):
                    client.score(Q, Q)
        finally:
            for server, _ in servers:
                server.stop(None)
        counts = [len(s.metadata) for s in scorers]
        # round_robin picks among the connected addresses: the first calls may all go to the
        # first one up; after that they alternate.
        self.assertEqual(sum(counts), 20)
        self.assertGreaterEqual(min(counts), 5, counts)

    def test_unavailable_is_retried(self) -> None:
        scorer = FakeScorer(fail_first=2)
        server, port = start_fake(scorer)
        try:
            with attnscore.Client(f"ipv4:127.0.0.1:{port}", timeout=10) as client:
                self.assertEqual(client.score(Q, Q).logits.shape, (1, 1, 1, 1))
        finally:
            server.stop(None)
        self.assertEqual(len(scorer.metadata), 3)

    def test_service_config_matches_the_cpp_clients(self) -> None:
        import json
        config = json.loads(_channel.service_config())
        self.assertEqual(config["loadBalancingConfig"], [{"round_robin": {}}])
        policy = config["methodConfig"][0]["retryPolicy"]
        self.assertEqual(policy["retryableStatusCodes"], ["UNAVAILABLE"])
        self.assertEqual(policy["maxAttempts"], 5)
        self.assertEqual([n["service"] for n in config["methodConfig"][0]["name"]],
                         ["attnscore.v1.AttentionScorer", "grpc.health.v1.Health"])


def python_output(code: str, env: dict) -> str:
    """What `code` prints, run by a fresh interpreter (whose gRPC has not started) with `env`."""
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                         capture_output=True, text=True, timeout=60)
    return out.stdout.strip()


class SocketReadTest(unittest.TestCase):
    """Reads over TCP are bounded (as in the C++ client); prefer_bounded_socket_reads turns off
    the gRPC experiment that would ignore the bound, unless the process chose experiments."""

    @staticmethod
    def options(target: str) -> dict:
        config = _channel.channel_config(target, tls=False, ca=None, cert=None, key=None,
                                         server_name=None, token=None, timeout=None,
                                         allow_insecure_token=False)
        return dict(config.options)

    def test_bounded_over_tcp_not_over_a_unix_socket(self) -> None:
        name = "grpc.experimental.tcp_max_read_chunk_size"
        self.assertEqual(self.options("127.0.0.1:50051")[name], 64 << 10)
        self.assertNotIn(name, self.options("unix:/tmp/attnscore.sock"))

    @staticmethod
    def experiments(env: dict) -> str:
        return python_output("import os, attnscore; attnscore.prefer_bounded_socket_reads(); "
                             "print(repr(os.environ.get('GRPC_EXPERIMENTS')))", env)

    def test_experiment_off_unless_the_process_chose(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
        self.assertEqual(self.experiments(env), "'-tcp_read_chunks'")
        env["GRPC_EXPERIMENTS"] = "tcp_read_chunks"
        self.assertEqual(self.experiments(env), "'tcp_read_chunks'")

    def test_importing_changes_nothing(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
        self.assertEqual(python_output(
            "import os, attnscore; print(repr(os.environ.get('GRPC_EXPERIMENTS')))", env), "None")


class BackupPollTest(unittest.TestCase):
    """Importing the client sets gRPC's backup poll to 100 ms unless the process chose one."""

    def poll_interval(self, env: dict) -> str:
        return python_output(
            "import os, attnscore; "
            "print(os.environ['GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS'])", env)

    def test_default_and_the_process_choice(self) -> None:
        env = {k: v for k, v in os.environ.items()
               if k != "GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS"}
        self.assertEqual(self.poll_interval(env), "100")
        env["GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS"] = "2500"
        self.assertEqual(self.poll_interval(env), "2500")


class WireTest(unittest.TestCase):
    def test_health_messages(self) -> None:
        self.assertEqual(_channel.encode_health_request(""), b"")
        self.assertEqual(_channel.encode_health_request("a.B"), b"\x0a\x03a.B")
        self.assertEqual(_channel.decode_health_response(b"\x08\x01"), "SERVING")
        self.assertEqual(_channel.decode_health_response(b""), "UNKNOWN")
        # Unknown fields are skipped.
        self.assertEqual(_channel.decode_health_response(b"\x12\x02ab\x08\x02"), "NOT_SERVING")

    def test_golden_comparison_can_fail(self) -> None:
        expected = np.array([[1.0, -np.inf]], dtype=np.float32)
        self.assertEqual(compare(expected, expected), "")
        self.assertNotEqual(compare(expected + 1e-3, expected), "")
        self.assertNotEqual(compare(np.array([[1.0, 0.0]]), expected), "")
        self.assertNotEqual(compare(np.array([[np.nan, -np.inf]]), expected), "")
        self.assertNotEqual(compare(expected[:, :1], expected), "")


if __name__ == "__main__":
    unittest.main()
