"""Test support for the Python client suites: a real attnscore-server process, the golden cases
(read with a small safetensors reader: .venv-pypi has no safetensors package) and the golden
comparison of the C++ tests (|a-b| <= 1e-4 + 1e-4|b|, -inf positions exact).

Environment (set by tests/python/CMakeLists.txt): ATTNSCORE_SERVER_BIN, ATTNSCORE_GOLDEN_DIR.
Every wait and subprocess is bounded; the server is always stopped.
"""
from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

ATOL = 1e-4
RTOL = 1e-4
_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "I32": np.int32, "I64": np.int64}


def env_path(name: str) -> Path:
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"{name} is not set (run through ctest -L python)")
    return Path(value)


def read_safetensors(path: Path) -> Dict[str, np.ndarray]:
    """name -> array; the format: u64 little-endian header length, JSON header, raw bytes."""
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    body = data[8 + header_len:]
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        dtype = np.dtype(_ST_DTYPES[entry["dtype"]]).newbyteorder("<")
        tensors[name] = np.frombuffer(body[begin:end], dtype=dtype).reshape(entry["shape"])
    return tensors


def write_safetensors(path: Path, tensors: Dict[str, np.ndarray], metadata: Dict[str, str]) -> None:
    header: Dict[str, Any] = {"__metadata__": metadata}
    blobs, offset = [], 0
    for name, array in tensors.items():
        blob = np.ascontiguousarray(array, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"".join(blobs))


@dataclass
class GoldenCase:
    name: str  # file stem; the model name of a relative case
    options: Dict[str, Any]
    tensors: Dict[str, np.ndarray]

    @property
    def relative(self) -> bool:
        return self.options["mode"] == "relative"

    def score_kwargs(self) -> Dict[str, Any]:
        """Client.score's arguments for the case, asking for every expected output."""
        t = self.tensors
        kwargs: Dict[str, Any] = {"query": t["q"], "key": t["k"],
                                  "causal": self.options["causal"] == "true"}
        if "v" in t:
            kwargs["value"] = t["v"]
        if self.relative:
            kwargs["model"] = self.name
        elif "slopes" in t:
            kwargs["alibi"] = t["slopes"].tolist()
        if self.options["scale"] != "default":
            kwargs["scale"] = float(self.options["scale"])
        if "key_lengths" in t:
            kwargs["key_lengths"] = [int(x) for x in t["key_lengths"]]
        kwargs["outputs"] = tuple(name for name in ("logits", "probs", "context")
                                  if f"expected_{name}" in t and (name != "context" or "v" in t))
        return kwargs


def golden_cases() -> List[GoldenCase]:
    """Every case of index.json (fails, never skips, when the golden files are missing)."""
    root = env_path("ATTNSCORE_GOLDEN_DIR")
    index = json.loads((root / "index.json").read_text())
    if not index:
        raise RuntimeError(f"{root}/index.json lists no cases")
    return [GoldenCase(entry["case"].removesuffix(".safetensors"), entry,
                       read_safetensors(root / entry["case"])) for entry in index]


def write_golden_models(cases: List[GoldenCase], model_dir: Path) -> None:
    """NAME.safetensors with each relative case's parameter set, served as model NAME."""
    for case in cases:
        if case.relative:
            params = {n: case.tensors[n]
                      for n in ("key_pos_embeddings", "key_pos_bias", "query_pos_bias")}
            write_safetensors(model_dir / f"{case.name}.safetensors", params,
                              {"source": f"golden case {case.name}"})


def compare(actual: Any, expected: np.ndarray, atol: float = ATOL, rtol: float = RTOL) -> str:
    """"" when shapes match, -inf positions match exactly and finite values are within
    atol + rtol*|expected|; otherwise what differs."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        return f"shape {actual.shape}, expected {expected.shape}"
    inf = np.isinf(actual) | np.isinf(expected)
    bad = inf & (actual != expected)
    finite = ~inf
    with np.errstate(invalid="ignore"):  # inf - inf where the positions differ
        bad |= finite & ~(np.abs(actual - expected) <= atol + rtol * np.abs(expected))
    if not bad.any():
        return ""
    where = np.argwhere(bad)[:5]
    samples = "; ".join(f"{tuple(i)} got {actual[tuple(i)]} expected {expected[tuple(i)]}"
                        for i in where)
    return f"{int(bad.sum())} of {bad.size} elements differ: {samples}"


class Server:
    """A real attnscore-server on 127.0.0.1 port 0 (metrics off), stopped by stop()."""

    def __init__(self, model_dir: Optional[Path] = None, extra_args: Optional[List[str]] = None):
        self._work = tempfile.TemporaryDirectory(prefix="attnscore-py-")
        work = Path(self._work.name)
        self.log_path = work / "server.log"
        port_file = work / "port"
        args = [str(env_path("ATTNSCORE_SERVER_BIN")), "--listen", "127.0.0.1:0",
                "--port-file", str(port_file), "--metrics-listen", "off", "--threads", "1",
                "--log-level", "warn"]
        if model_dir is not None:
            args += ["--model-dir", str(model_dir)]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(args + (extra_args or []), stdout=log,
                                            stderr=subprocess.STDOUT)
        self.port = self._wait_for_port(port_file)
        self.target = f"127.0.0.1:{self.port}"

    def _wait_for_port(self, port_file: Path) -> int:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"attnscore-server exited with {self.process.returncode}:\n"
                                   f"{self.log()}")
            text = port_file.read_text().strip() if port_file.exists() else ""
            if text:
                return int(text)
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"attnscore-server wrote no port within 60 s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._work.cleanup()


def wait_ready(client: Any, timeout_s: float = 60) -> None:
    """Until the server's readiness is SERVING (after its warm-up)."""
    deadline = time.monotonic() + timeout_s
    status = ""
    while time.monotonic() < deadline:
        try:
            status = client.health()
        except Exception as error:  # noqa: BLE001 - any failure means "not yet"
            status = repr(error)
        if status == "SERVING":
            return
        time.sleep(0.1)
    raise RuntimeError(f"server not ready within {timeout_s} s: {status}")
