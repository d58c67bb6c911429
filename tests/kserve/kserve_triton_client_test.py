"""The Open Inference Protocol (KServe v2) endpoint through Triton's own client.

Starts a real attnscore-server on port 0 with a --model-dir holding the golden relative-position
parameter sets, then uses `tritonclient.grpc` (pinned in scripts/requirements-pypi.txt, run from
the .venv-pypi virtualenv) for liveness, readiness, metadata, every golden case through `infer`
(compared with the expected outputs within |a-b| <= 1e-4 + 1e-4*|b|, -inf at exactly the same
positions, as the C++ golden tests), 16-bit inputs, raw against typed contents (through the
generated stub of Triton's own grpc_service.proto, as Triton's client always sends raw), and the
error cases. Every wait and subprocess is bounded; the server is always stopped.

Usage: kserve_triton_client_test.py --server-bin PATH --golden-dir DIR [unittest args]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path
from typing import Any, ClassVar, Optional

import ml_dtypes
import numpy as np
import tritonclient.grpc as triton
import tritonclient.utils.shared_memory as shm
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

SERVER_BIN = ""
GOLDEN_DIR = Path()
ATOL = 1e-4
RTOL = 1e-4
RPC_TIMEOUT_S = 60.0
# The server's --shm-prefix; the objects this test creates are named with it.
SHM_PREFIX = "attnscore-test-"

ST_DTYPES = {"F32": np.float32, "F16": np.float16, "I32": np.int32, "I64": np.int64}


def read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors and __metadata__ of a .safetensors file: u64 LE header length, JSON, raw bytes."""
    blob = path.read_bytes()
    (header_len,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + header_len])
    data = memoryview(blob)[8 + header_len:]
    metadata = header.pop("__metadata__", {})
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        array = np.frombuffer(data[begin:end], dtype=ST_DTYPES[info["dtype"]])
        tensors[name] = array.reshape(info["shape"])
    return tensors, metadata


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """Float32 tensors to a .safetensors file (the header padded to 8 bytes)."""
    header: dict[str, Any] = {}
    offset = 0
    for name, array in tensors.items():
        size = array.astype(np.float32).nbytes
        header[name] = {"dtype": "F32", "shape": list(array.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(text)) + text)
        for array in tensors.values():
            out.write(np.ascontiguousarray(array, dtype=np.float32).tobytes())


class Case:
    """One golden case: its inputs, expected outputs and options."""

    def __init__(self, entry: dict[str, Any]) -> None:
        self.name: str = entry["case"]
        self.model_name = Path(self.name).stem
        self.options = entry
        self.tensors, _ = read_safetensors(GOLDEN_DIR / self.name)

    @property
    def relative(self) -> bool:
        return self.options["mode"] == "relative"

    @property
    def model(self) -> str:
        return self.model_name if self.relative else "alibi"

    def parameters(self) -> dict[str, Any]:
        params: dict[str, Any] = {"causal": self.options["causal"] == "true"}
        if self.options["scale"] != "default":
            params["scale"] = float(self.options["scale"])
        return params


def compare(name: str, got: np.ndarray, want: np.ndarray) -> str:
    """'' when close (same shape, -inf at the same positions), else what differs."""
    if got.shape != want.shape:
        return f"{name}: shape {got.shape}, expected {want.shape}"
    got64 = got.astype(np.float64)
    want64 = want.astype(np.float64)
    inf_got, inf_want = np.isinf(got64), np.isinf(want64)
    if not np.array_equal(inf_got, inf_want) or not np.array_equal(
            got64[inf_got], want64[inf_want]):
        return f"{name}: infinities at {np.argwhere(inf_got ^ inf_want)[:5].tolist()} differ"
    finite = ~inf_want
    diff = np.abs(got64[finite] - want64[finite])
    bound = ATOL + RTOL * np.abs(want64[finite])
    if np.isnan(got64).any() or (diff > bound).any():
        return f"{name}: max |diff| {np.nanmax(diff) if diff.size else 0:.3g} over the tolerance"
    return ""


def make_input(name: str, array: np.ndarray, datatype: str) -> triton.InferInput:
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def case_inputs(case: Case, dtype: Any = np.float32, datatype: str = "FP32"
                ) -> list[triton.InferInput]:
    t = case.tensors
    inputs = [make_input("query", t["q"].astype(dtype), datatype),
              make_input("key", t["k"].astype(dtype), datatype)]
    if "v" in t:
        inputs.append(make_input("value", t["v"].astype(dtype), datatype))
    if "key_lengths" in t:
        inputs.append(make_input("key_lengths", t["key_lengths"].astype(np.int32), "INT32"))
    if "slopes" in t:
        inputs.append(make_input("slopes", t["slopes"].astype(np.float32), "FP32"))
    return inputs


def case_outputs(case: Case) -> list[str]:
    return ["logits", "probs"] + (["context"] if "v" in case.tensors else [])


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ATTNSCORE_")}


class ServerProcess:
    """A real attnscore-server on 127.0.0.1, port 0 (read back from --port-file)."""

    def __init__(self, model_dir: Path, work: Path) -> None:
        port_file = work / "port"
        self.log_path = work / "server.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [SERVER_BIN, "--listen", "127.0.0.1:0", "--port-file", str(port_file),
                 "--metrics-listen", "", "--model-dir", str(model_dir), "--threads", "2",
                 "--log-level", "warn", "--shm-prefix", SHM_PREFIX],
                stdout=log, stderr=subprocess.STDOUT, env=clean_env())
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            if self.proc.poll() is not None:
                raise RuntimeError(f"attnscore-server exited with {self.proc.returncode}:\n"
                                   f"{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("attnscore-server wrote no port file within 60 s")
            time.sleep(0.05)
        self.port = int(port_file.read_text())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)


class KServeEndpointTest(unittest.TestCase):
    work: ClassVar[tempfile.TemporaryDirectory]
    server: ClassVar[ServerProcess]
    client: ClassVar[triton.InferenceServerClient]
    cases: ClassVar[list[Case]]

    @classmethod
    def setUpClass(cls) -> None:
        index = GOLDEN_DIR / "index.json"
        if not index.exists():
            raise RuntimeError(f"golden cases are required: {index} is missing")
        cls.cases = [Case(entry) for entry in json.loads(index.read_text())]
        cls.work = tempfile.TemporaryDirectory(prefix="attnscore-kserve-")
        work = Path(cls.work.name)
        models = work / "models"
        models.mkdir()
        for case in cls.cases:
            if case.relative:
                write_safetensors(models / f"{case.model_name}.safetensors", {
                    n: case.tensors[n]
                    for n in ("key_pos_embeddings", "key_pos_bias", "query_pos_bias")})
        cls.server = ServerProcess(models, work)
        cls.client = triton.InferenceServerClient(f"127.0.0.1:{cls.server.port}")
        deadline = time.monotonic() + 60
        while not cls.client.is_server_ready(client_timeout=5):
            if time.monotonic() > deadline:
                cls.tearDownClass()
                raise RuntimeError("server not ready within 60 s")
            time.sleep(0.1)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.client.close()
        cls.server.stop()
        cls.work.cleanup()

    def case(self, name: str) -> Case:
        return next(c for c in self.cases if c.name == name)

    def infer(self, model: str, inputs: list[triton.InferInput], outputs: list[str],
              parameters: Optional[dict[str, Any]] = None) -> triton.InferResult:
        return self.client.infer(
            model, inputs, outputs=[triton.InferRequestedOutput(o) for o in outputs],
            parameters=parameters, client_timeout=RPC_TIMEOUT_S)

    def assert_error(self, code: str, needle: str, call: Any) -> None:
        with self.assertRaises(InferenceServerException) as caught:
            call()
        self.assertEqual(caught.exception.status(), f"StatusCode.{code}",
                         caught.exception.message())
        self.assertIn(needle, caught.exception.message())

    def test_server_live_and_ready(self) -> None:
        self.assertTrue(self.client.is_server_live(client_timeout=RPC_TIMEOUT_S))
        self.assertTrue(self.client.is_server_ready(client_timeout=RPC_TIMEOUT_S))

    def test_model_ready(self) -> None:
        self.assertTrue(self.client.is_model_ready("alibi", client_timeout=RPC_TIMEOUT_S))
        self.assertTrue(self.client.is_model_ready("relative_causal", client_timeout=RPC_TIMEOUT_S))
        self.assertTrue(self.client.is_model_ready("alibi", "1", client_timeout=RPC_TIMEOUT_S))
        self.assertFalse(self.client.is_model_ready("no_such_model", client_timeout=RPC_TIMEOUT_S))
        self.assertFalse(self.client.is_model_ready("alibi", "2", client_timeout=RPC_TIMEOUT_S))

    def test_server_metadata(self) -> None:
        metadata = self.client.get_server_metadata(as_json=True, client_timeout=RPC_TIMEOUT_S)
        self.assertEqual(metadata["name"], "attnscore")
        self.assertRegex(metadata["version"], r"^\d+\.\d+")
        self.assertIn("system_shared_memory", metadata["extensions"])

    def test_system_shared_memory_outputs(self) -> None:
        """Triton's system shared memory through Triton's own client: register a region, place
        logits and probs in it (probs right after the logits), and read there exactly the bytes the reply
        carries in band; status, unregister, and the errors."""
        case = self.case("alibi_causal_h8.safetensors")
        in_band = self.infer("alibi", case_inputs(case), ["logits", "probs"], case.parameters())
        logits, probs = in_band.as_numpy("logits"), in_band.as_numpy("probs")
        size = logits.nbytes
        key = f"/{SHM_PREFIX}{os.getpid()}-kserve"
        handle = shm.create_shared_memory_region("scores", key, 2 * size)
        try:
            self.client.register_system_shared_memory("scores", key, 2 * size,
                                                      client_timeout=RPC_TIMEOUT_S)
            status = self.client.get_system_shared_memory_status(as_json=True,
                                                                 client_timeout=RPC_TIMEOUT_S)
            self.assertEqual(status["regions"]["scores"]["key"], key)
            self.assertEqual(int(status["regions"]["scores"]["byte_size"]), 2 * size)

            outputs = [triton.InferRequestedOutput("logits"), triton.InferRequestedOutput("probs")]
            outputs[0].set_shared_memory("scores", size)
            outputs[1].set_shared_memory("scores", size, offset=size)
            placed = self.client.infer("alibi", case_inputs(case), outputs=outputs,
                                       parameters=case.parameters(), client_timeout=RPC_TIMEOUT_S)
            for name, want, offset in (("logits", logits, 0), ("probs", probs, size)):
                output = placed.get_output(name)
                self.assertEqual(list(output.shape), list(want.shape))
                self.assertEqual(output.parameters["shared_memory_region"].string_param, "scores")
                self.assertEqual(output.parameters["shared_memory_offset"].int64_param, offset)
                got = shm.get_contents_as_numpy(handle, np.float32, list(output.shape),
                                                offset=offset)
                self.assertEqual(got.tobytes(), want.tobytes(), name)
            self.assertEqual(len(placed.get_response().raw_output_contents[0]), 0)

            short = [triton.InferRequestedOutput("logits")]
            short[0].set_shared_memory("scores", size - 4)
            self.assert_error("INVALID_ARGUMENT",
                              "outputs[0].parameters.shared_memory_byte_size: expected at least",
                              lambda: self.client.infer("alibi", case_inputs(case), outputs=short,
                                                        client_timeout=RPC_TIMEOUT_S))
            self.client.unregister_system_shared_memory("scores", client_timeout=RPC_TIMEOUT_S)
            self.assert_error("NOT_FOUND", "outputs[0].parameters.shared_memory_region",
                              lambda: self.client.infer("alibi", case_inputs(case),
                                                        outputs=outputs[:1],
                                                        client_timeout=RPC_TIMEOUT_S))
            self.assert_error("NOT_FOUND", '"scores"',
                              lambda: self.client.get_system_shared_memory_status(
                                  "scores", client_timeout=RPC_TIMEOUT_S))
            outside = f"/other-app-{os.getpid()}"
            self.assert_error("INVALID_ARGUMENT", "--shm-prefix",
                              lambda: self.client.register_system_shared_memory(
                                  "x", outside, 4096, client_timeout=RPC_TIMEOUT_S))
        finally:
            self.client.unregister_system_shared_memory(client_timeout=RPC_TIMEOUT_S)
            shm.destroy_shared_memory_region(handle)
        status = self.client.get_system_shared_memory_status(as_json=True,
                                                             client_timeout=RPC_TIMEOUT_S)
        self.assertEqual(status.get("regions", {}), {})

    def test_system_shared_memory_inputs(self) -> None:
        """Query and key read from a registered region (Triton's InferInput.set_shared_memory),
        alone or beside in-band inputs: the same logits as all in band, bit for bit; a range of
        the wrong size is refused naming where the bytes were."""
        case = self.case("alibi_causal_h8.safetensors")
        in_band = self.infer("alibi", case_inputs(case), ["logits"], case.parameters())
        want = in_band.as_numpy("logits").tobytes()
        q = np.ascontiguousarray(case.tensors["q"], np.float32)
        k = np.ascontiguousarray(case.tensors["k"], np.float32)
        rest = case_inputs(case)[2:]
        key = f"/{SHM_PREFIX}{os.getpid()}-inputs"
        handle = shm.create_shared_memory_region("inputs", key, q.nbytes + k.nbytes)
        try:
            shm.set_shared_memory_region(handle, [q, k])
            self.client.register_system_shared_memory("inputs", key, q.nbytes + k.nbytes,
                                                      client_timeout=RPC_TIMEOUT_S)
            query = triton.InferInput("query", list(q.shape), "FP32")
            query.set_shared_memory("inputs", q.nbytes)
            keys = triton.InferInput("key", list(k.shape), "FP32")
            keys.set_shared_memory("inputs", k.nbytes, offset=q.nbytes)
            for inputs in ([query, keys] + rest, [make_input("query", q, "FP32"), keys] + rest):
                result = self.infer("alibi", inputs, ["logits"], case.parameters())
                self.assertEqual(result.as_numpy("logits").tobytes(), want)
            short = triton.InferInput("key", list(k.shape), "FP32")
            short.set_shared_memory("inputs", k.nbytes - 4, offset=q.nbytes)
            self.assert_error("INVALID_ARGUMENT", "in inputs[1]'s shared-memory range",
                              lambda: self.infer("alibi", [query, short] + rest, ["logits"]))
        finally:
            self.client.unregister_system_shared_memory("inputs", client_timeout=RPC_TIMEOUT_S)
            shm.destroy_shared_memory_region(handle)

    def test_model_metadata(self) -> None:
        alibi = self.client.get_model_metadata("alibi", as_json=True,
                                               client_timeout=RPC_TIMEOUT_S)
        self.assertEqual(alibi["name"], "alibi")
        self.assertEqual(alibi["versions"], ["1"])
        inputs = {t["name"]: t for t in alibi["inputs"]}
        self.assertEqual(sorted(inputs), ["key", "key_lengths", "query", "slopes", "value"])
        self.assertEqual(inputs["query"]["shape"], ["-1", "-1", "-1", "-1"])
        self.assertEqual(inputs["key_lengths"]["datatype"], "INT32")
        self.assertEqual([t["name"] for t in alibi["outputs"]], ["logits", "probs", "context"])

        case = self.case("relative_causal.safetensors")
        heads, dim = str(case.options["heads"]), str(case.options["head_dim"])
        relative = self.client.get_model_metadata("relative_causal", as_json=True,
                                                  client_timeout=RPC_TIMEOUT_S)
        inputs = {t["name"]: t for t in relative["inputs"]}
        self.assertNotIn("slopes", inputs)
        self.assertEqual(inputs["query"]["shape"], ["-1", heads, "-1", dim])
        self.assertEqual(relative["outputs"][0]["shape"], ["-1", heads, "-1", "-1"])
        self.assert_error("NOT_FOUND", "no_such_model", lambda: self.client.get_model_metadata(
            "no_such_model", client_timeout=RPC_TIMEOUT_S))

    def test_every_golden_case(self) -> None:
        self.assertGreaterEqual(len(self.cases), 1)
        kinds = {c.relative for c in self.cases}
        self.assertEqual(kinds, {True, False}, "golden cases of both kinds are required")
        for case in self.cases:
            with self.subTest(case=case.name):
                result = self.infer(case.model, case_inputs(case), case_outputs(case),
                                    case.parameters())
                for output in case_outputs(case):
                    got = result.as_numpy(output)
                    self.assertEqual(got.dtype, np.float32)
                    self.assertEqual(compare(output, got, case.tensors[f"expected_{output}"]), "")

    def test_default_output_is_logits_and_id_is_echoed(self) -> None:
        case = self.case("alibi_causal_h8.safetensors")
        result = self.client.infer("alibi", case_inputs(case), request_id="req-7",
                                   parameters=case.parameters(), client_timeout=RPC_TIMEOUT_S)
        response = result.get_response()
        self.assertEqual(response.id, "req-7")
        self.assertEqual([o.name for o in response.outputs], ["logits"])
        self.assertEqual(compare("logits", result.as_numpy("logits"),
                                 case.tensors["expected_logits"]), "")

    def test_16_bit_inputs(self) -> None:
        """FP16/BF16 inputs equal FP32 inputs of the same (rounded) values; outputs follow."""
        case = self.case("relative_causal.safetensors")
        for np_dtype, datatype in ((np.float16, "FP16"), (ml_dtypes.bfloat16, "BF16")):
            with self.subTest(datatype=datatype):
                rounded = case_inputs(case, np_dtype, datatype)
                as_fp32 = [make_input(i.name(), case.tensors[k].astype(np_dtype).astype(
                    np.float32), "FP32") for i, k in zip(rounded[:3], ("q", "k", "v"))]
                params = dict(case.parameters(), output_dtype="FP32")
                got = self.infer(case.model, rounded, ["probs", "context"], params)
                want = self.infer(case.model, as_fp32, ["probs", "context"], params)
                for output in ("probs", "context"):
                    self.assertEqual(compare(output, got.as_numpy(output),
                                             want.as_numpy(output)), "")
                native = self.infer(case.model, rounded, ["probs"], case.parameters())
                self.assertEqual(native.get_response().outputs[0].datatype, datatype)

    def test_layout_bshd(self) -> None:
        case = self.case("alibi_causal_h8.safetensors")
        t = case.tensors
        inputs = [make_input(n, np.ascontiguousarray(t[k].transpose(0, 2, 1, 3)), "FP32")
                  for n, k in (("query", "q"), ("key", "k"), ("value", "v"))]
        result = self.infer("alibi", inputs, ["logits", "context"],
                            dict(case.parameters(), layout="BSHD"))
        self.assertEqual(compare("logits", result.as_numpy("logits"), t["expected_logits"]), "")
        self.assertEqual(compare("context", result.as_numpy("context"),
                                 t["expected_context"].transpose(0, 2, 1, 3)), "")

    def test_typed_contents_equal_raw(self) -> None:
        """fp32_contents / int_contents give the same bytes back as raw_input_contents."""
        case = self.case("alibi_key_lengths.safetensors")
        stub = service_pb2_grpc.GRPCInferenceServiceStub(self.client._channel)
        replies = []
        for raw in (True, False):
            request = service_pb2.ModelInferRequest(model_name="alibi")
            request.parameters["causal"].bool_param = case.parameters()["causal"]
            for name, key in (("query", "q"), ("key", "k"), ("key_lengths", "key_lengths")):
                array = case.tensors[key]
                tensor = request.inputs.add(name=name, shape=list(array.shape))
                if name == "key_lengths":
                    tensor.datatype, array = "INT32", array.astype(np.int32)
                else:
                    tensor.datatype = "FP32"
                if raw:
                    request.raw_input_contents.append(array.tobytes())
                elif name == "key_lengths":
                    tensor.contents.int_contents.extend(array.tolist())
                else:
                    tensor.contents.fp32_contents.extend(array.ravel().tolist())
            request.outputs.add(name="logits")
            replies.append(stub.ModelInfer(request, timeout=RPC_TIMEOUT_S))
        self.assertEqual(len(replies[0].raw_output_contents), 1)
        self.assertEqual(replies[0].raw_output_contents[0], replies[1].raw_output_contents[0])
        logits = np.frombuffer(replies[1].raw_output_contents[0], np.float32).reshape(
            replies[1].outputs[0].shape)
        self.assertEqual(compare("logits", logits, case.tensors["expected_logits"]), "")

    def test_errors_name_what_is_wrong(self) -> None:
        case = self.case("alibi_causal_h8.safetensors")
        q, k = case.tensors["q"], case.tensors["k"]
        bad_name = [make_input("query", q, "FP32"), make_input("keys", k, "FP32")]
        self.assert_error("INVALID_ARGUMENT", '"keys"',
                          lambda: self.infer("alibi", bad_name, ["logits"]))
        wrong_dtype = [make_input("query", q, "FP32"), make_input("key", k.astype(np.float64),
                                                                  "FP64")]
        self.assert_error("INVALID_ARGUMENT", "key: expected datatype FP32, FP16 or BF16",
                          lambda: self.infer("alibi", wrong_dtype, ["logits"]))
        lengths = make_input("key_lengths", np.full([q.shape[0]], 3, np.float32), "FP32")
        self.assert_error("INVALID_ARGUMENT", "key_lengths: expected datatype INT32",
                          lambda: self.infer("alibi", [make_input("query", q, "FP32"),
                                                       make_input("key", k, "FP32"), lengths],
                                             ["logits"]))
        wrong_shape = [make_input("query", q.reshape(q.shape[0], -1), "FP32"),
                       make_input("key", k, "FP32")]
        self.assert_error("INVALID_ARGUMENT", "query: expected a shape of rank 4",
                          lambda: self.infer("alibi", wrong_shape, ["logits"]))
        mismatched = [make_input("query", q, "FP32"), make_input("key", k[:, :2], "FP32")]
        self.assert_error("INVALID_ARGUMENT", "key",
                          lambda: self.infer("alibi", mismatched, ["logits"]))
        good = [make_input("query", q, "FP32"), make_input("key", k, "FP32")]
        self.assert_error("NOT_FOUND", '"no_such_model"',
                          lambda: self.infer("no_such_model", good, ["logits"]))
        self.assert_error("INVALID_ARGUMENT", '"attention"',
                          lambda: self.infer("alibi", good, ["attention"]))
        self.assert_error("INVALID_ARGUMENT", '"causl"',
                          lambda: self.infer("alibi", good, ["logits"], {"causl": True}))
        self.assert_error("INVALID_ARGUMENT", "parameters.scale: expected a double, got a string",
                          lambda: self.infer("alibi", good, ["logits"], {"scale": "0.5"}))
        self.assert_error("INVALID_ARGUMENT", "slopes: only model \"alibi\" takes slopes",
                          lambda: self.infer("relative_causal", good + [make_input(
                              "slopes", np.ones([q.shape[1]], np.float32), "FP32")], ["logits"]))
        self.assert_error("INVALID_ARGUMENT", "value: required for the CONTEXT output",
                          lambda: self.infer("alibi", good, ["context"]))


def main() -> None:
    global SERVER_BIN, GOLDEN_DIR
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server-bin", required=True)
    parser.add_argument("--golden-dir", required=True, type=Path)
    args, rest = parser.parse_known_args()
    SERVER_BIN, GOLDEN_DIR = args.server_bin, args.golden_dir
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)


if __name__ == "__main__":
    main()
