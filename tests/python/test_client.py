"""The attnscore Python package against a real attnscore-server: every golden case through
score and score_many (blocking and asyncio), layouts, dtypes, torch, errors, info, shared-memory
outputs, the README's example. Run by ctest in both environments (ATTNSCORE_PY_ENV=debian:
Debian's grpcio 1.51, protobuf 4.21 (protoc 3.21), numpy 1.24, torch 1.13; pypi: current grpcio,
protobuf, numpy and ml_dtypes)."""
from __future__ import annotations

import asyncio
import importlib
import os
import re
import tempfile
import unittest
from pathlib import Path
from typing import Any, Dict

import grpc
import numpy as np

import attnscore
import attnscore.aio
from attnscore._proto import attnscore_pb2 as pb
from attnscore._wire import Request, build_request, encode_request
from attnscore_testing import (GoldenCase, Server, compare, golden_cases, wait_ready,
                               write_golden_models)

ENV = os.environ.get("ATTNSCORE_PY_ENV", "")
README = Path(__file__).resolve().parents[2] / "client" / "python" / "README.md"
CASES: list = []
SERVER: Any = None
MODELS: Any = None
SHM_PREFIX = "attnscore-pytest-"  # the server's --shm-prefix


def setUpModule() -> None:
    global SERVER, MODELS
    CASES.extend(golden_cases())
    MODELS = tempfile.TemporaryDirectory(prefix="attnscore-py-models-")
    write_golden_models(CASES, Path(MODELS.name))
    SERVER = Server(model_dir=Path(MODELS.name), extra_args=["--shm-prefix", SHM_PREFIX])
    with attnscore.Client(SERVER.target, timeout=30) as client:
        wait_ready(client)


def tearDownModule() -> None:
    if SERVER is not None:
        SERVER.stop()
    if MODELS is not None:
        MODELS.cleanup()


def golden_diff(case: GoldenCase, result: attnscore.ScoreResult) -> str:
    out = []
    for name in case.score_kwargs()["outputs"]:
        actual = getattr(result, name)
        if actual is None:
            out.append(f"{case.name}: no {name}")
            continue
        diff = compare(actual, case.tensors[f"expected_{name}"])
        if diff:
            out.append(f"{case.name}: {name}: {diff}")
    for name in ("logits", "probs", "context"):
        if name not in case.score_kwargs()["outputs"] and getattr(result, name) is not None:
            out.append(f"{case.name}: {name} not asked for but returned")
    return "; ".join(out)


class EnvironmentTest(unittest.TestCase):
    def test_expected_environment(self) -> None:
        """The ctest registration runs each suite in the environment it names."""
        import google.protobuf
        major = int(google.protobuf.__version__.split(".")[0])
        if ENV == "debian":
            self.assertEqual(grpc.__version__.split(".")[:2], ["1", "51"])
            self.assertEqual(major, 4)
            importlib.import_module("torch")  # the torch tests run here
        elif ENV == "pypi":
            self.assertGreaterEqual(major, 5)
            importlib.import_module("ml_dtypes")  # the ml_dtypes tests run here
        else:
            self.fail(f"ATTNSCORE_PY_ENV must be debian or pypi, got {ENV!r}")
        self.assertTrue(attnscore.__file__.startswith(str(README.parent)),
                        f"testing {attnscore.__file__}, not the checkout's package")


class EncodeRequestTest(unittest.TestCase):
    """encode_request writes the inputs' Tensor fields by hand around their arrays' bytes: it must
    parse as the message build_request makes through protobuf, whatever the arrays' layout."""

    def assert_same(self, request: Request, request_id: str = "") -> pb.ScoreRequest:
        encoded = encode_request(request, request_id=request_id)
        parsed = pb.ScoreRequest.FromString(encoded)
        self.assertEqual(parsed, build_request(request, request_id=request_id))
        return parsed

    def test_inputs_of_every_layout_parse_as_protobufs(self) -> None:
        rng = np.random.default_rng(7)
        # 300 keys and 70 dims: extents and lengths of several varint bytes.
        q = rng.standard_normal((2, 3, 5, 70), dtype=np.float32)
        k = rng.standard_normal((2, 3, 300, 70), dtype=np.float32)
        v = rng.standard_normal((2, 3, 300, 70), dtype=np.float32)
        cases = {
            "contiguous": dict(query=q, key=k, value=v),
            "no value": dict(query=q, key=k),
            "transposed views": dict(query=np.swapaxes(q.copy().swapaxes(2, 3), 2, 3),
                                     key=k[:, :, ::-1, :], value=np.asfortranarray(v)),
            "big-endian": dict(query=q.astype(">f4"), key=k.astype(">f4")),
            "float16": dict(query=q.astype(np.float16), key=k.astype(np.float16)),
            "empty": dict(query=np.zeros((1, 1, 0, 4), np.float32),
                          key=np.zeros((1, 1, 0, 4), np.float32)),
        }
        for name, inputs in cases.items():
            with self.subTest(name):
                parsed = self.assert_same(
                    Request(**inputs, causal=True, scale=0.5, outputs=["logits", "probs"],
                            key_lengths=[300, 7]), request_id="r-1")
                for field in ("query", "key", "value"):
                    if field not in inputs:
                        self.assertFalse(parsed.HasField(field))
                        continue
                    expected = np.asarray(inputs[field])
                    expected = expected.astype(expected.dtype.newbyteorder("<"))
                    self.assertEqual(list(getattr(parsed, field).shape), list(expected.shape))
                    self.assertEqual(getattr(parsed, field).data, expected.tobytes(), field)

    def test_shared_inputs_stay_in_the_message(self) -> None:
        q = np.ones((1, 2, 3, 4), np.float32)
        key = attnscore.SharedTensor("in", 64, "float32", (1, 2, 3, 4))
        parsed = self.assert_same(Request(q, key, alibi=[0.5, 0.25], output_dtype="float16"))
        self.assertEqual(parsed.key.shared_memory.region, "in")
        self.assertEqual(parsed.key.data, b"")
        self.assertEqual(parsed.query.data, q.tobytes())

    @unittest.skipUnless(ENV == "debian", "torch is in the Debian environment (.venv)")
    def test_torch_tensors_parse_as_protobufs(self) -> None:
        import torch
        q = torch.arange(24, dtype=torch.float32).reshape(1, 2, 3, 4)
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            with self.subTest(str(dtype)):
                self.assert_same(Request(q.to(dtype), q.to(dtype).transpose(2, 3),
                                         as_torch=True))


class GoldenTest(unittest.TestCase):
    def setUp(self) -> None:
        self.client = attnscore.Client(SERVER.target, timeout=60)

    def tearDown(self) -> None:
        self.client.close()

    def test_every_golden_case_through_score(self) -> None:
        self.assertGreaterEqual(len(CASES), 18)
        for case in CASES:
            with self.subTest(case=case.name):
                result = self.client.score(**case.score_kwargs())
                self.assertEqual(golden_diff(case, result), "")
                self.assertGreaterEqual(result.timing.batch_size, case.options["batch"])

    def test_every_golden_case_through_score_many(self) -> None:
        requests = [case.score_kwargs() for case in CASES] * 2
        results = self.client.score_many(requests)
        self.assertEqual(len(results), len(requests))
        for i, result in enumerate(results):
            self.assertEqual(result.request_id, str(i))
            self.assertEqual(golden_diff(CASES[i % len(CASES)], result), "")

    def test_outputs_are_read_only_views_of_the_response(self) -> None:
        case = CASES[0]
        result = self.client.score(**case.score_kwargs())
        responses = set()
        for name in ("logits", "probs", "context"):
            array = getattr(result, name)
            self.assertIsInstance(array, np.ndarray)
            self.assertFalse(array.flags.writeable)
            base = array
            while isinstance(base, np.ndarray):
                base = base.base
            if isinstance(base, memoryview):
                base = base.obj
            self.assertIsInstance(base, bytes, f"{name} is not a view of the response bytes")
            responses.add(id(base))
            with self.assertRaises(ValueError):
                array[0, 0, 0, 0] = 1.0
        # One buffer, the response as grpcio received it: no tensor was copied out of it.
        self.assertEqual(len(responses), 1)

    def test_every_golden_case_through_chunked_replies(self) -> None:
        """chunked_reply_bytes=1: every reply through ScoreChunked, assembled as it arrives; the
        same results, read-only as ever."""
        with attnscore.Client(SERVER.target, timeout=60, chunked_reply_bytes=1) as client:
            for case in CASES:
                with self.subTest(case=case.name):
                    result = client.score(**case.score_kwargs())
                    self.assertEqual(golden_diff(case, result), "")
                    for name in case.score_kwargs()["outputs"]:
                        self.assertFalse(getattr(result, name).flags.writeable)
            # With shared memory off here, a placement still fails as with Score.
            q = np.zeros((1, 2, 3, 4), dtype=np.float32)
            with self.assertRaises(attnscore.AttnscoreError) as raised:
                client.score(q[0], q)
            self.assertEqual(raised.exception.code, grpc.StatusCode.INVALID_ARGUMENT)

    def test_chunked_and_whole_replies_are_the_same_bytes(self) -> None:
        rng = np.random.default_rng(3)
        q = rng.standard_normal((2, 4, 96, 16), dtype=np.float32)
        k = rng.standard_normal((2, 4, 200, 16), dtype=np.float32)
        v = rng.standard_normal((2, 4, 200, 24), dtype=np.float32)
        whole = attnscore.Client(SERVER.target, timeout=60, chunked_reply_bytes=0)
        chunked = attnscore.Client(SERVER.target, timeout=60, chunked_reply_bytes=1)
        with whole, chunked:
            for dtype in (None, "float16"):
                kwargs = dict(outputs=("logits", "probs", "context"), causal=True,
                              output_dtype=dtype)
                a, b = chunked.score(q, k, v, **kwargs), whole.score(q, k, v, **kwargs)
                for name in ("logits", "probs", "context"):
                    self.assertEqual(getattr(a, name).dtype, getattr(b, name).dtype)
                    self.assertEqual(getattr(a, name).shape, getattr(b, name).shape)
                    self.assertEqual(getattr(a, name).tobytes(), getattr(b, name).tobytes(),
                                     name)
                self.assertEqual(a.timing.batch_size, 2)
        with self.assertRaises(ValueError):
            attnscore.Client(SERVER.target, chunked_reply_bytes=-1)

    def test_only_the_outputs_asked_for(self) -> None:
        kwargs = CASES[0].score_kwargs()
        kwargs["outputs"] = "probs"
        result = self.client.score(**kwargs)
        self.assertIsNone(result.logits)
        self.assertIsNone(result.context)
        self.assertEqual(compare(result.probs, CASES[0].tensors["expected_probs"]), "")

    def test_layouts(self) -> None:
        case = next(c for c in CASES if c.name == "alibi_cross_bidirectional")
        kwargs = case.score_kwargs()
        permutations = {"BSHD": (0, 2, 1, 3), "SBHD": (2, 0, 1, 3)}
        for layout, axes in permutations.items():
            with self.subTest(layout=layout):
                moved = dict(kwargs, layout=layout,
                             **{n: np.ascontiguousarray(kwargs[n].transpose(axes))
                                for n in ("query", "key", "value")})
                result = self.client.score(**moved)
                self.assertEqual(compare(result.logits, case.tensors["expected_logits"]), "")
                expected = case.tensors["expected_context"].transpose(axes)
                self.assertEqual(compare(result.context, expected), "")

    def test_alibi_slopes_given_explicitly(self) -> None:
        case = next(c for c in CASES if c.name == "alibi_causal_h8")
        kwargs = case.score_kwargs()
        result = self.client.score(**kwargs, alibi=case.tensors["expected_slopes"].tolist())
        self.assertEqual(golden_diff(case, result), "")
        doubled = self.client.score(**kwargs, alibi=(2 * case.tensors["expected_slopes"]))
        self.assertNotEqual(compare(doubled.logits, case.tensors["expected_logits"]), "")

    def test_float16_inputs_and_output_dtype(self) -> None:
        case = next(c for c in CASES if c.name == "alibi_key_lengths")
        kwargs = case.score_kwargs()
        half = dict(kwargs, **{n: kwargs[n].astype(np.float16) for n in ("query", "key", "value")})
        result = self.client.score(**half)
        self.assertEqual(result.logits.dtype, np.float16)
        self.assertEqual(golden_diff_loose(case, result), "")
        as_float = self.client.score(**half, output_dtype="float32")
        self.assertEqual(as_float.probs.dtype, np.float32)
        self.assertEqual(golden_diff_loose(case, as_float), "")

    def test_info_models_health(self) -> None:
        info = self.client.info()
        self.assertRegex(info.version, r"^\d+\.\d+\.\d+")
        self.assertEqual(info.device, "cpu")
        self.assertGreater(info.limits.max_seq_len, 0)
        self.assertGreater(info.batching.max_batch_size, 0)
        models = self.client.models()
        self.assertEqual([m.name for m in models], sorted(c.name for c in CASES if c.relative))
        by_name = {m.name: m for m in models}
        for case in (c for c in CASES if c.relative):
            model = by_name[case.name]
            self.assertEqual((model.heads, model.head_dim, model.max_relative_positions),
                             (case.options["heads"], case.options["head_dim"],
                              case.options["max_relative_positions"]))
        self.assertEqual(self.client.health(), "SERVING")
        self.assertEqual(self.client.health(""), "SERVING")
        self.assertEqual(self.client.health("no.such.Service"), "SERVICE_UNKNOWN")


def golden_diff_loose(case: GoldenCase, result: attnscore.ScoreResult) -> str:
    """Half-precision inputs/outputs against the float32 golden: -inf positions exact, values
    within 2e-2 + 2e-2|expected| (bfloat16 keeps 8 bits of mantissa)."""
    out = []
    for name in case.score_kwargs()["outputs"]:
        diff = compare(np.asarray(getattr(result, name), dtype=np.float32),
                       case.tensors[f"expected_{name}"], atol=2e-2, rtol=2e-2)
        if diff:
            out.append(f"{name}: {diff}")
    return "; ".join(out)


class ErrorTest(unittest.TestCase):
    def setUp(self) -> None:
        self.client = attnscore.Client(SERVER.target, timeout=30)
        self.q = np.zeros((1, 2, 3, 4), dtype=np.float32)

    def tearDown(self) -> None:
        self.client.close()

    def test_bad_shape_is_invalid_argument_with_the_servers_message(self) -> None:
        with self.assertRaises(attnscore.AttnscoreError) as raised:
            self.client.score(self.q[0], self.q)
        self.assertEqual(raised.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("query.shape", raised.exception.message)
        self.assertIn("[2,3,4]", raised.exception.message)
        self.assertIsInstance(raised.exception, Exception)

    def test_unknown_model_is_not_found(self) -> None:
        with self.assertRaises(attnscore.AttnscoreError) as raised:
            self.client.score(self.q, self.q, model="no_such_model")
        self.assertEqual(raised.exception.code, grpc.StatusCode.NOT_FOUND)
        self.assertIn("no_such_model", raised.exception.message)

    def test_refusals_keep_their_code_through_score_chunked(self) -> None:
        """chunked_reply_bytes=1 (every reply through ScoreChunked): a refusal before any chunk is
        the server's status, not a reply cut short."""
        with attnscore.Client(SERVER.target, timeout=30, chunked_reply_bytes=1) as client:
            with self.assertRaises(attnscore.AttnscoreError) as raised:
                client.score(self.q, self.q, model="no_such_model")
        self.assertEqual(raised.exception.code, grpc.StatusCode.NOT_FOUND)
        self.assertIn("no_such_model", raised.exception.message)

        async def run() -> None:
            async with attnscore.aio.Client(SERVER.target, timeout=30,
                                            chunked_reply_bytes=1) as client:
                with self.assertRaises(attnscore.AttnscoreError) as raised:
                    await client.score(self.q, self.q, model="no_such_model")
                self.assertEqual(raised.exception.code, grpc.StatusCode.NOT_FOUND)
        asyncio.run(run())

    def test_alibi_and_model_together_is_a_value_error(self) -> None:
        with self.assertRaisesRegex(ValueError, "not both"):
            self.client.score(self.q, self.q, alibi=[1.0, 0.5], model="relative_causal")

    def test_client_side_argument_errors(self) -> None:
        with self.assertRaisesRegex(TypeError, "float64"):
            self.client.score(self.q.astype(np.float64), self.q)
        with self.assertRaisesRegex(ValueError, "layout"):
            self.client.score(self.q, self.q, layout="BHDS")
        with self.assertRaisesRegex(ValueError, "outputs"):
            self.client.score(self.q, self.q, outputs=("logit",))
        with self.assertRaisesRegex(ValueError, "token over plaintext"):
            attnscore.Client(SERVER.target, token="secret")
        with self.assertRaisesRegex(ValueError, "tls=True"):
            attnscore.Client(SERVER.target, ca=b"-----BEGIN CERTIFICATE-----")

    def test_score_many_reports_the_failed_request(self) -> None:
        requests = [{"query": self.q, "key": self.q}, {"query": self.q[0], "key": self.q},
                    attnscore.Request(self.q, self.q, outputs=("probs",))]
        with self.assertRaises(attnscore.AttnscoreError) as raised:
            self.client.score_many(requests)
        self.assertEqual(raised.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        results = self.client.score_many(requests, return_exceptions=True)
        self.assertEqual(results[0].logits.shape, (1, 2, 3, 3))
        self.assertIsInstance(results[1], attnscore.AttnscoreError)
        self.assertIn("query.shape", results[1].message)
        self.assertEqual(results[2].probs.shape, (1, 2, 3, 3))
        self.assertEqual(self.client.score_many([]), [])

    def test_unreachable_server_is_unavailable(self) -> None:
        with attnscore.Client("127.0.0.1:1", timeout=10) as dead:
            with self.assertRaises(attnscore.AttnscoreError) as raised:
                dead.score(self.q, self.q)
        self.assertEqual(raised.exception.code, grpc.StatusCode.UNAVAILABLE)


class UnixSocketTest(unittest.TestCase):
    """A real server with --listen-unix and bearer tokens: the client reaches it at "unix:/path"
    and sends its token there without TLS or allow_insecure_token (the bytes stay on the host),
    blocking and asyncio alike; without the token the server refuses the call."""

    def test_token_over_the_unix_socket(self) -> None:
        work = tempfile.TemporaryDirectory(prefix="attnscore-py-unix-")
        self.addCleanup(work.cleanup)
        tokens = Path(work.name) / "tokens"
        tokens.write_text("py:unix-socket-token-0123456789\n")
        target = f"unix:{work.name}/attnscore.sock"
        server = Server(extra_args=["--listen-unix", f"{work.name}/attnscore.sock",
                                    "--auth-token-file", str(tokens),
                                    "--allow-plaintext-tokens"])
        self.addCleanup(server.stop)
        q = np.ones((1, 2, 3, 4), dtype=np.float32)
        with attnscore.Client(target, token="unix-socket-token-0123456789", timeout=30) as client:
            self.assertEqual(client.score(q, q).logits.shape, (1, 2, 3, 3))
        asyncio.run(self._aio_score(target, q))
        with attnscore.Client(target, timeout=30) as anonymous:
            with self.assertRaises(attnscore.AttnscoreError) as raised:
                anonymous.score(q, q)
        self.assertEqual(raised.exception.code, grpc.StatusCode.UNAUTHENTICATED)

    async def _aio_score(self, target: str, q: np.ndarray) -> None:
        async with attnscore.aio.Client(target, token="unix-socket-token-0123456789",
                                        timeout=30) as client:
            self.assertEqual((await client.score(q, q)).logits.shape, (1, 2, 3, 3))


class AsyncioTest(unittest.TestCase):
    def test_asyncio_client(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        async with attnscore.aio.Client(SERVER.target, timeout=60) as client:
            self.assertEqual(await client.health(), "SERVING")
            self.assertEqual(len(await client.models()), sum(c.relative for c in CASES))
            self.assertEqual((await client.info()).device, "cpu")
            results = await asyncio.gather(*(client.score(**c.score_kwargs()) for c in CASES))
            for case, result in zip(CASES, results):
                self.assertEqual(golden_diff(case, result), "")
            many = await client.score_many([c.score_kwargs() for c in CASES])
            for case, result in zip(CASES, many):
                self.assertEqual(golden_diff(case, result), "")
            q = np.zeros((1, 2, 3, 4), dtype=np.float32)
            with self.assertRaises(attnscore.AttnscoreError) as raised:
                await client.score(q[0], q)
            self.assertEqual(raised.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
            with self.assertRaises(ValueError):
                await client.score(q, q, alibi=[1.0, 1.0], model="relative_causal")
            failed = await client.score_many([{"query": q[0], "key": q}], return_exceptions=True)
            self.assertIsInstance(failed[0], attnscore.AttnscoreError)
        async with attnscore.aio.Client(SERVER.target, timeout=60,
                                        chunked_reply_bytes=1) as chunked:
            results = await asyncio.gather(*(chunked.score(**c.score_kwargs()) for c in CASES))
            for case, result in zip(CASES, results):
                self.assertEqual(golden_diff(case, result), "")


class ScoreOnlyServer:
    """A gRPC server with Score alone (a server from before ScoreChunked): every Score call is
    answered with logits [1, 1, 2, 3] of 0..5. With `chunks`, ScoreChunked too, answering with
    those messages."""

    def __init__(self, chunks: Any = None) -> None:
        from concurrent import futures
        self.calls: Dict[str, int] = {}
        reply = pb.ScoreResponse(logits=pb.Tensor(
            dtype=pb.FLOAT32, shape=[1, 1, 2, 3],
            data=np.arange(6, dtype=np.float32).tobytes())).SerializeToString()

        def score(request: bytes, context: Any) -> bytes:
            self.calls["Score"] = self.calls.get("Score", 0) + 1
            return reply

        def score_chunked(request: bytes, context: Any) -> Any:
            self.calls["ScoreChunked"] = self.calls.get("ScoreChunked", 0) + 1
            yield from chunks

        methods = {"Score": grpc.unary_unary_rpc_method_handler(score)}
        if chunks is not None:
            methods["ScoreChunked"] = grpc.unary_stream_rpc_method_handler(score_chunked)
        handler = grpc.method_handlers_generic_handler("attnscore.v1.AttentionScorer", methods)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def stop(self) -> None:
        self.server.stop(None)


class ChunkedFallbackTest(unittest.TestCase):
    def test_a_server_without_score_chunked_is_asked_with_score(self) -> None:
        server = ScoreOnlyServer()
        self.addCleanup(server.stop)
        q = np.zeros((1, 1, 2, 4), dtype=np.float32)
        k = np.zeros((1, 1, 3, 4), dtype=np.float32)
        with attnscore.Client(f"127.0.0.1:{server.port}", timeout=20,
                              chunked_reply_bytes=1) as client:
            for _ in range(3):
                result = client.score(q, k)
                self.assertEqual(result.logits.tolist(), [[[[0, 1, 2], [3, 4, 5]]]])
        self.assertEqual(server.calls, {"Score": 3})

        async def run() -> None:
            async with attnscore.aio.Client(f"127.0.0.1:{server.port}", timeout=20,
                                            chunked_reply_bytes=1) as client:
                for _ in range(2):
                    result = await client.score(q, k)
                    self.assertEqual(result.logits.shape, (1, 1, 2, 3))
        asyncio.run(run())
        self.assertEqual(server.calls, {"Score": 5})

    def test_a_malformed_reply_is_data_loss(self) -> None:
        gap = [pb.ScoreChunk(output=pb.LOGITS, dtype=pb.FLOAT32, shape=[1, 1, 2, 3], offset=o,
                             data=bytes(12)).SerializeToString() for o in (0, 16)]
        server = ScoreOnlyServer(chunks=gap)
        self.addCleanup(server.stop)
        q = np.zeros((1, 1, 2, 4), dtype=np.float32)
        k = np.zeros((1, 1, 3, 4), dtype=np.float32)
        with attnscore.Client(f"127.0.0.1:{server.port}", timeout=20,
                              chunked_reply_bytes=1) as client:
            with self.assertRaises(attnscore.AttnscoreError) as raised:
                client.score(q, k)
        self.assertEqual(raised.exception.code, grpc.StatusCode.DATA_LOSS)
        self.assertIn("offset 16", raised.exception.message)

        async def run() -> None:
            async with attnscore.aio.Client(f"127.0.0.1:{server.port}", timeout=20,
                                            chunked_reply_bytes=1) as client:
                with self.assertRaises(attnscore.AttnscoreError) as raised:
                    await client.score(q, k)
                self.assertEqual(raised.exception.code, grpc.StatusCode.DATA_LOSS)
        asyncio.run(run())
        self.assertEqual(server.calls, {"ScoreChunked": 2})


@unittest.skipUnless(ENV == "debian", "torch is in the Debian environment (.venv)")
class TorchTest(unittest.TestCase):
    def setUp(self) -> None:
        self.client = attnscore.Client(SERVER.target, timeout=60)

    def tearDown(self) -> None:
        self.client.close()

    def test_torch_in_torch_out(self) -> None:
        import torch
        case = next(c for c in CASES if c.name == "relative_key_lengths")
        kwargs = case.score_kwargs()
        tensors = {n: torch.from_numpy(kwargs[n].copy()).requires_grad_()
                   for n in ("query", "key", "value")}
        tensors["key_lengths"] = torch.tensor(kwargs["key_lengths"])
        result = self.client.score(**dict(kwargs, **tensors), as_torch=True)
        for name in ("logits", "probs", "context"):
            tensor = getattr(result, name)
            self.assertIsInstance(tensor, torch.Tensor)
            self.assertEqual(tensor.dtype, torch.float32)
            self.assertEqual(compare(tensor.numpy(), case.tensors[f"expected_{name}"]), "")

    def test_bfloat16_torch_tensors(self) -> None:
        import torch
        case = next(c for c in CASES if c.name == "alibi_bidirectional")
        kwargs = case.score_kwargs()
        bf16 = {n: torch.from_numpy(kwargs[n].copy()).to(torch.bfloat16)
                for n in ("query", "key", "value")}
        result = self.client.score(**dict(kwargs, **bf16), as_torch=True)
        self.assertEqual(result.logits.dtype, torch.bfloat16)
        as_numpy = attnscore.ScoreResult(*(getattr(result, n).float().numpy()
                                           for n in ("logits", "probs", "context")),
                                         timing=result.timing)
        self.assertEqual(golden_diff_loose(case, as_numpy), "")
        # Without ml_dtypes (not in this environment) bfloat16 numpy outputs cannot exist: a
        # clear ImportError before the call; float32 outputs work.
        with self.assertRaisesRegex(ImportError, "ml_dtypes"):
            self.client.score(**dict(kwargs, **bf16))
        as_float = self.client.score(**dict(kwargs, **bf16), output_dtype=torch.float32)
        self.assertEqual(as_float.logits.dtype, np.float32)
        self.assertEqual(golden_diff_loose(case, as_float), "")


@unittest.skipUnless(ENV == "pypi", "ml_dtypes is in the PyPI environment (.venv-pypi)")
class MlDtypesTest(unittest.TestCase):
    def test_bfloat16_numpy_arrays(self) -> None:
        import ml_dtypes
        case = next(c for c in CASES if c.name == "relative_causal")
        kwargs = case.score_kwargs()
        bf16 = {n: kwargs[n].astype(ml_dtypes.bfloat16) for n in ("query", "key", "value")}
        with attnscore.Client(SERVER.target, timeout=60) as client:
            result = client.score(**dict(kwargs, **bf16))
            self.assertEqual(result.logits.dtype, np.dtype(ml_dtypes.bfloat16))
            self.assertFalse(result.probs.flags.writeable)
            self.assertEqual(golden_diff_loose(case, result), "")
            f32 = dict(kwargs, output_dtype="bfloat16")
            self.assertEqual(client.score(**f32).context.dtype, np.dtype(ml_dtypes.bfloat16))
            with self.assertRaisesRegex(ImportError, "torch"):
                client.score(**kwargs, as_torch=True)


def shm_key(what: str) -> str:
    """A POSIX shared-memory object name of this process (both environments run at once)."""
    return f"{SHM_PREFIX}{ENV}-{os.getpid()}-{what}"


class SharedMemoryTest(unittest.TestCase):
    def setUp(self) -> None:
        self.client = attnscore.Client(SERVER.target, timeout=60)
        self.region = attnscore.SharedMemoryRegion(shm_key(self.id().rsplit(".", 1)[-1]),
                                                   4 << 20)

    def tearDown(self) -> None:
        for registered in self.client.shared_memory_status():
            self.client.unregister_shared_memory(registered.name)
        self.client.close()
        self.region.close()

    def test_placed_outputs_equal_the_in_band_ones(self) -> None:
        case = next(c for c in CASES if c.name == "alibi_causal_h8")
        kwargs = case.score_kwargs()
        self.assertEqual(set(kwargs["outputs"]), {"logits", "probs", "context"})
        self.assertEqual(self.client.info().limits.shm_prefix, SHM_PREFIX)
        # Registered from 4096 on: placements count from there.
        self.client.register_shared_memory("out", self.region.key, 2 << 20, offset=4096)
        self.assertEqual(self.client.shared_memory_status(), [attnscore.SharedMemoryRegistration(
            name="out", key=self.region.key, offset=4096, byte_size=2 << 20)])
        in_band = self.client.score(**kwargs)
        self.assertTrue(np.isneginf(in_band.logits).any())
        placed = self.client.score(**kwargs, placements={
            "logits": ("out", 0, 1 << 20), "probs": attnscore.Placement("out", 1 << 20, 1 << 20)})
        self.assertIsNone(placed.logits)
        self.assertIsNone(placed.probs)
        self.assertEqual(compare(placed.context, case.tensors["expected_context"]), "")
        self.assertEqual(sorted(placed.placed), ["logits", "probs"])
        logits = placed.placed["logits"]
        self.assertEqual((logits.dtype, logits.shape, logits.region, logits.offset),
                         ("float32", in_band.logits.shape, "out", 0))
        self.assertEqual(logits.byte_size, in_band.logits.nbytes)
        self.assertEqual(placed.placed["probs"].offset, 1 << 20)
        for name in ("logits", "probs"):
            view = self.region.view(placed.placed[name], region_offset=4096)
            self.assertEqual(view.dtype, np.float32)
            self.assertTrue(np.array_equal(view, getattr(in_band, name)), name)
            del view  # close() needs the region's views gone
        # The bytes are at 4096 + offset of the object.
        raw = np.frombuffer(self.region.buf, np.float32, in_band.logits.size, 4096)
        self.assertTrue(np.array_equal(raw.reshape(in_band.logits.shape), in_band.logits))
        del raw

        self.client.unregister_shared_memory("out")
        self.assertEqual(self.client.shared_memory_status(), [])
        with self.assertRaises(attnscore.AttnscoreError) as raised:
            self.client.score(**kwargs, placements={"logits": ("out", 0, 1 << 20)})
        self.assertEqual(raised.exception.code, grpc.StatusCode.NOT_FOUND)
        self.assertIn("out", raised.exception.message)
        with self.assertRaises(attnscore.AttnscoreError) as raised:
            self.client.unregister_shared_memory("out")
        self.assertEqual(raised.exception.code, grpc.StatusCode.NOT_FOUND)

    def test_inputs_read_in_place(self) -> None:
        """query, key and value as SharedTensors: the same outputs as in band, bit for bit, with
        no input bytes in the request; inputs filled through view() in place; mixed with in-band
        inputs and placed outputs."""
        case = next(c for c in CASES if c.name == "alibi_causal_h8")
        kwargs = case.score_kwargs()
        q, k, v = kwargs["query"], kwargs["key"], kwargs["value"]
        # Registered from 4096 on: shared inputs count from there, like placements.
        self.client.register_shared_memory("in", self.region.key, 2 << 20, offset=4096)
        shared = {}
        offset = 0
        for name, array in (("query", q), ("key", k), ("value", v)):
            shared[name] = self.region.put("in", offset, array, region_offset=4096)
            self.assertEqual(shared[name], attnscore.SharedTensor("in", offset, "float32",
                                                                  array.shape))
            offset += array.nbytes
        message = build_request(Request(**dict(kwargs, **shared)))
        for name in ("query", "key", "value"):
            tensor = getattr(message, name)
            self.assertEqual(tensor.data, b"", name)
            self.assertEqual((tensor.shared_memory.region, tensor.shared_memory.offset,
                              tensor.shared_memory.byte_size),
                             ("in", shared[name].offset, shared[name].byte_size), name)

        in_band = self.client.score(**kwargs)
        from_shm = self.client.score(**dict(kwargs, **shared))
        for name in kwargs["outputs"]:
            self.assertEqual(getattr(from_shm, name).tobytes(),
                             getattr(in_band, name).tobytes(), name)
        self.assertEqual(compare(from_shm.context, case.tensors["expected_context"]), "")
        mixed = self.client.score(**dict(kwargs, key=shared["key"]))
        self.assertEqual(mixed.logits.tobytes(), in_band.logits.tobytes())

        # Filled in place: the server reads what the region holds at the call.
        view = self.region.view(shared["query"], region_offset=4096)
        self.assertTrue(np.array_equal(view, q))
        view[...] = 2 * q
        del view
        doubled = self.client.score(**dict(kwargs, **shared))
        expected = self.client.score(**dict(kwargs, query=2 * q))
        self.assertEqual(doubled.probs.tobytes(), expected.probs.tobytes())

        # An output placed over an input of the region is refused.
        with self.assertRaises(attnscore.AttnscoreError) as raised:
            self.client.score(**dict(kwargs, **shared),
                              placements={"logits": ("in", 0, 1 << 20)})
        self.assertEqual(raised.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        # A range past the registered one names the field.
        past = attnscore.SharedTensor("in", (2 << 20) - 64, "float32", q.shape)
        with self.assertRaises(attnscore.AttnscoreError) as raised:
            self.client.score(**dict(kwargs, query=past))
        self.assertEqual(raised.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("query", raised.exception.message)

    def test_shared_input_checks(self) -> None:
        """What the client judges itself, before any call."""
        q = np.zeros((1, 2, 3, 4), dtype=np.float32)
        with self.assertRaisesRegex(ValueError, "query: expected offset >= 0"):
            self.client.score(attnscore.SharedTensor("in", -1, "float32", q.shape), q)
        with self.assertRaisesRegex(ValueError, "key: region"):
            self.client.score(q, attnscore.SharedTensor("", 0, "float32", q.shape))
        with self.assertRaisesRegex(TypeError, "int8"):
            self.client.score(q, attnscore.SharedTensor("in", 0, "int8", q.shape))
        with self.assertRaisesRegex(ValueError, "do not fit"):
            self.region.put("in", self.region.byte_size - 8, q)
        with self.assertRaisesRegex(TypeError, "array: dtype int32"):
            self.region.put("in", 0, q.astype(np.int32))
        half = self.region.put("in", 64, q.astype(np.float16))
        self.assertEqual((half.dtype, half.byte_size), ("float16", q.size * 2))
        self.assertEqual(np.frombuffer(self.region.buf, np.float16, q.size, 64).tolist(),
                         q.astype(np.float16).reshape(-1).tolist())

    def test_float16_and_score_many(self) -> None:
        self.client.register_shared_memory("many", self.region, self.region.byte_size)
        case = next(c for c in CASES if c.name == "alibi_key_lengths")
        kwargs = dict(case.score_kwargs(), output_dtype="float16", outputs=("logits", "probs"))
        requests = [attnscore.Request(**kwargs, placements={"logits": ("many", i << 20, 1 << 20)})
                    for i in range(3)]
        results = self.client.score_many(requests)
        in_band = self.client.score(**kwargs)
        for i, result in enumerate(results):
            self.assertIsNone(result.logits)
            self.assertEqual(result.placed["logits"].dtype, "float16")
            self.assertEqual(result.placed["logits"].offset, i << 20)
            view = self.region.view(result.placed["logits"])
            self.assertEqual(view.dtype, np.float16)
            self.assertTrue(np.array_equal(view, in_band.logits))
            self.assertTrue(np.array_equal(result.probs, in_band.probs))
            del view

    def test_registration_errors(self) -> None:
        self.client.register_shared_memory("dup", self.region.key, 4096)
        with self.assertRaises(attnscore.AttnscoreError) as raised:
            self.client.register_shared_memory("dup", self.region.key, 4096)
        self.assertEqual(raised.exception.code, grpc.StatusCode.ALREADY_EXISTS)
        with self.assertRaises(attnscore.AttnscoreError) as raised:
            self.client.register_shared_memory("missing", shm_key("no-such-object"), 4096)
        self.assertEqual(raised.exception.code, grpc.StatusCode.NOT_FOUND)
        with self.assertRaises(attnscore.AttnscoreError) as raised:
            self.client.register_shared_memory("big", self.region.key, 8 << 20)
        self.assertEqual(raised.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        q = np.zeros((1, 2, 3, 4), dtype=np.float32)
        with self.assertRaisesRegex(ValueError, "placements"):
            self.client.score(q, q, placements={"logit": ("dup", 0, 4096)})
        with self.assertRaisesRegex(TypeError, "placements"):
            self.client.score(q, q, placements={"logits": ("dup", 0)})

    def test_open_an_existing_object(self) -> None:
        """create=False maps the object and leaves it in place; the creator removes it."""
        with attnscore.SharedMemoryRegion(self.region.key, create=False) as opened:
            self.assertEqual(opened.byte_size, self.region.byte_size)
            opened.buf[5] = 42
        self.assertEqual(self.region.buf[5], 42)
        self.assertTrue(Path("/dev/shm", self.region.key).exists())
        with self.assertRaises(FileNotFoundError):
            attnscore.SharedMemoryRegion(shm_key("no-such-object"), create=False)

    def test_asyncio_client(self) -> None:
        asyncio.run(self._run_async())

    async def _run_async(self) -> None:
        q = np.random.default_rng(1).standard_normal((1, 2, 3, 4), dtype=np.float32)
        async with attnscore.aio.Client(SERVER.target, timeout=60) as client:
            await client.register_shared_memory("aio", self.region.key, 4096)
            self.assertEqual([r.name for r in await client.shared_memory_status()], ["aio"])
            placed = await client.score(q, q, causal=True, placements={"logits": ("aio", 0, 4096)})
            in_band = await client.score(q, q, causal=True)
            self.assertIsNone(placed.logits)
            view = self.region.view(placed.placed["logits"])
            self.assertTrue(np.array_equal(view, in_band.logits))
            del view
            await client.register_shared_memory("aio-in", self.region.key, 4096, offset=4096)
            shared_q = self.region.put("aio-in", 0, q, region_offset=4096)
            from_shm = await client.score(shared_q, q, causal=True)
            self.assertEqual(from_shm.logits.tobytes(), in_band.logits.tobytes())
            await client.unregister_shared_memory("aio-in")
            await client.unregister_shared_memory("aio")
            self.assertEqual(await client.shared_memory_status(), [])

    @unittest.skipUnless(ENV == "pypi", "ml_dtypes is in the PyPI environment (.venv-pypi)")
    def test_bfloat16_view(self) -> None:
        import ml_dtypes
        self.client.register_shared_memory("bf16", self.region.key, 4096)
        q = np.random.default_rng(2).standard_normal((1, 2, 3, 4), dtype=np.float32)
        placed = self.client.score(q, q, output_dtype="bfloat16",
                                   placements={"logits": ("bf16", 0, 4096)})
        in_band = self.client.score(q, q, output_dtype="bfloat16")
        view = self.region.view(placed.placed["logits"])
        self.assertEqual(view.dtype, np.dtype(ml_dtypes.bfloat16))
        self.assertEqual(view.tobytes(), in_band.logits.tobytes())
        del view


class SharedMemoryOffTest(unittest.TestCase):
    def test_off_without_shm_prefix_is_failed_precondition(self) -> None:
        server = Server()
        try:
            with attnscore.Client(server.target, timeout=30) as client, \
                    attnscore.SharedMemoryRegion(shm_key("off"), 4096) as region:
                wait_ready(client)
                self.assertEqual(client.info().limits.shm_prefix, "")
                with self.assertRaises(attnscore.AttnscoreError) as raised:
                    client.register_shared_memory("off", region.key, 4096)
                self.assertEqual(raised.exception.code, grpc.StatusCode.FAILED_PRECONDITION)
                with self.assertRaises(attnscore.AttnscoreError) as raised:
                    client.shared_memory_status()
                self.assertEqual(raised.exception.code, grpc.StatusCode.FAILED_PRECONDITION)
        finally:
            server.stop()


class ReadmeTest(unittest.TestCase):
    def test_readme_examples_run(self) -> None:
        """Every ```python block of client/python/README.md, in order, against the server."""
        blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
        self.assertGreaterEqual(len(blocks), 2)
        namespace: Dict[str, Any] = {"__name__": "readme_example"}
        for block in blocks:
            self.assertIn("127.0.0.1:50051", block)
            code = block.replace("127.0.0.1:50051", SERVER.target)
            exec(compile(code, str(README), "exec"), namespace)  # noqa: S102
        self.assertEqual(len(namespace["results"]), 16)


if __name__ == "__main__":
    unittest.main()
