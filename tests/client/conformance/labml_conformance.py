#!/usr/bin/env python3
"""Conformance of attnscore with the reference library itself: labml-nn 0.5.1 (PyPI) over
Debian's torch, independent of our golden files.

  labml_conformance.py --server-bin PATH --cli-bin PATH [--seed N] [--random-cases N]

For a fixed list of cases plus seeded random ones, it builds labml modules with random
parameters, computes reference scores in float64, writes q/k/v (labml's [seq, batch, heads, d]
layout, SBHD) as a safetensors file, runs `attnscore score` on it against a real
attnscore-server, and compares:

- Relative (Transformer-XL): labml's `RelativeMultiHeadAttention`. Logits are
  `get_scores(q, k) * scale` with the mask applied (-inf positions must match exactly);
  probabilities and context come from the module's own forward (identity projections, so the
  module sees our q/k/v): `module.attn` and its output. Power-of-two and other head counts,
  memory (Lk > Lq), causal and bidirectional, key lengths. The parameter sets go into the
  server's --model-dir as NAME.safetensors, and one as a labml `torch.save(state_dict())` .pt.
- ALiBi: labml's `AlibiMultiHeadAttention` (causal, Lq == Lk: what the module supports) and, for
  chunked prefill / decode steps / key lengths, labml's `get_alibi_biases` with our mask. labml's
  bias is `m * cumsum(mask)`, a per-row shift of the canonical `-m * (i - j)` that softmax cannot
  tell apart, so probabilities and context are compared, not logits.

Tolerance: |ours - labml| <= 1e-4 + 1e-4 * |labml| (the golden tolerance; inputs are float32,
the reference runs in float64). Exit 0 when every case matches, 1 otherwise. Bounded: every
subprocess has a timeout and the server is always stopped.
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

import labml.tracker

# labml-nn 0.5.1's MultiHeadAttention.forward calls labml.tracker.debug('attn', ...), which the
# pinned labml 0.5.3 no longer has. It only records attention maps for labml's experiment
# tracker: a no-op keeps the module's computation exactly as published.
if not hasattr(labml.tracker, "debug"):
    labml.tracker.debug = lambda *args, **kwargs: None

from labml_nn.transformers.alibi import AlibiMultiHeadAttention, get_alibi_biases
from labml_nn.transformers.utils import subsequent_mask
from labml_nn.transformers.xl.relative_mha import RelativeMultiHeadAttention

ATOL = 1e-4
RTOL = 1e-4
READINESS = "attnscore.v1.AttentionScorer"


@dataclass
class Case:
    name: str
    mode: str            # alibi | relative
    batch: int
    heads: int
    d_k: int
    q_len: int
    k_len: int
    causal: bool
    key_lengths: list[int] = field(default_factory=list)
    P: int = 0           # relative: max relative positions
    pt_file: bool = False  # relative: serve the parameters as a labml state_dict .pt


def fixed_cases() -> list[Case]:
    return [
        Case("rel_causal_h4", "relative", 2, 4, 8, 12, 12, True, P=16),
        Case("rel_bidir_h3", "relative", 1, 3, 8, 9, 9, False, P=12),
        Case("rel_memory_h8", "relative", 2, 8, 16, 8, 24, True, P=32, pt_file=True),
        Case("rel_memory_bidir_h6", "relative", 1, 6, 4, 5, 17, False, P=20),
        Case("rel_decode_h1", "relative", 3, 1, 8, 1, 16, True, P=16),
        Case("rel_key_lengths_h5", "relative", 3, 5, 8, 6, 10, True, [10, 7, 4], P=10),
        Case("alibi_module_h8", "alibi", 2, 8, 8, 16, 16, True),
        Case("alibi_module_h12", "alibi", 1, 12, 16, 10, 10, True),
        Case("alibi_module_h3", "alibi", 2, 3, 4, 7, 7, True),
        Case("alibi_module_h1", "alibi", 1, 1, 4, 5, 5, True),
        Case("alibi_chunk_h4", "alibi", 1, 4, 8, 5, 20, True),
        Case("alibi_decode_h6", "alibi", 2, 6, 8, 1, 33, True),
        Case("alibi_key_lengths_h5", "alibi", 3, 5, 8, 6, 12, True, [12, 9, 7]),
    ]


def random_cases(rng: np.random.Generator, n: int) -> list[Case]:
    cases = []
    for i in range(n):
        mode = "relative" if i % 2 == 0 else "alibi"
        heads = int(rng.integers(1, 13))
        d_k = int(rng.choice([4, 8, 16]))
        q_len = int(rng.integers(1, 13))
        k_len = q_len + int(rng.integers(0, 12))
        batch = int(rng.integers(1, 4))
        causal = True if mode == "alibi" else bool(rng.integers(0, 2))
        key_lengths = []
        if rng.integers(0, 2):
            # >= Lk - Lq + 1 keeps every causal row non-empty (labml's softmax would give NaN).
            key_lengths = [int(rng.integers(k_len - q_len + 1, k_len + 1)) for _ in range(batch)]
        P = max(q_len, k_len) + int(rng.integers(0, 5))
        cases.append(Case(f"random{i}_{mode}_h{heads}", mode, batch, heads, d_k, q_len, k_len,
                          causal, key_lengths, P))
    return cases


def mask_for(case: Case) -> torch.Tensor:
    """[Lq, Lk, B] bool: key j visible to query i of batch item b (bottom-right alignment)."""
    i = torch.arange(case.q_len)[:, None]
    j = torch.arange(case.k_len)[None, :]
    visible = torch.ones(case.q_len, case.k_len, dtype=torch.bool)
    if case.causal:
        visible = j <= (case.k_len - case.q_len + i)
    mask = visible[:, :, None].repeat(1, 1, case.batch)
    for b, length in enumerate(case.key_lengths):
        mask[:, length:, b] = False
    return mask


def identity_projections(module: torch.nn.Module) -> None:
    """Makes labml's q/k/v/output linears the identity, so the module sees our tensors."""
    with torch.no_grad():
        for linear in (module.query.linear, module.key.linear, module.value.linear, module.output):
            linear.weight.copy_(torch.eye(linear.weight.shape[0], dtype=linear.weight.dtype))
            if linear.bias is not None:
                linear.bias.zero_()


def labml_forward(module, q, k, v, mask):
    """The module's own forward on [seq, batch, heads*d] inputs: (probs [B,H,Lq,Lk], context
    [Lq,B,H,D])."""
    lq, b, h, d = q.shape
    lk = k.shape[0]
    with torch.no_grad():
        captured = {}
        hook = module.softmax.register_forward_hook(
            lambda _m, _i, out: captured.__setitem__("attn", out))
        out = module(query=q.reshape(lq, b, h * d), key=k.reshape(lk, b, h * d),
                     value=v.reshape(lk, b, h * d), mask=mask)
        hook.remove()
    probs = captured["attn"].permute(2, 3, 0, 1)  # [Lq,Lk,B,H] -> [B,H,Lq,Lk]
    return probs, out.reshape(lq, b, h, d)


def reference(case: Case, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, models: Path):
    """Expected outputs in float64: {"logits"?, "probs", "context"} as numpy arrays."""
    h, d = case.heads, case.d_k
    mask = mask_for(case)
    expected = {}
    if case.mode == "relative":
        module = RelativeMultiHeadAttention(h, h * d, dropout_prob=0.0)
        # labml fixes P = 2**12; a smaller P keeps the parameter files small (needs P >= Lq, Lk).
        module.P = case.P
        gen = torch.Generator().manual_seed(zlib.crc32(case.name.encode()))
        module.key_pos_embeddings = torch.nn.Parameter(
            torch.randn(2 * case.P, h, d, generator=gen) * 0.5)
        module.key_pos_bias = torch.nn.Parameter(torch.randn(2 * case.P, h, generator=gen) * 0.5)
        module.query_pos_bias = torch.nn.Parameter(torch.randn(h, d, generator=gen) * 0.5)
        identity_projections(module)
        module.eval()
        if case.pt_file:
            torch.save(module.state_dict(), models / f"{case.name}.pt")
        else:
            save_file({name: getattr(module, name).detach().numpy().astype(np.float32)
                       for name in ("key_pos_embeddings", "key_pos_bias", "query_pos_bias")},
                      str(models / f"{case.name}.safetensors"),
                      metadata={"source": "labml conformance test"})
        ref = copy.deepcopy(module).double()
        with torch.no_grad():
            scores = ref.get_scores(q, k) * ref.scale  # [Lq, Lk, B, H]
            scores = scores.masked_fill(~mask[:, :, :, None], float("-inf"))
        expected["logits"] = scores.permute(2, 3, 0, 1).numpy()
        probs, context = labml_forward(ref, q, k, v, mask)
    elif case.q_len == case.k_len and not case.key_lengths:
        # The ALiBi module itself (it supports causal square masks shared by the batch).
        module = AlibiMultiHeadAttention(h, h * d, dropout_prob=0.0)
        identity_projections(module)
        module = module.double().eval()
        probs, context = labml_forward(module, q, k, v, subsequent_mask(case.q_len))
    else:
        # labml's bias function with our (bottom-right, per-item) mask.
        scale = 1.0 / math.sqrt(d)
        scores = torch.einsum("ibhd,jbhd->ijbh", q, k) * scale
        for b in range(case.batch):
            bias = get_alibi_biases(h, mask[:, :, b].to(torch.float64))  # [Lq, Lk, H]
            scores[:, :, b, :] += bias
        scores = scores.masked_fill(~mask[:, :, :, None], float("-inf"))
        attn = torch.softmax(scores, dim=1)
        context = torch.einsum("ijbh,jbhd->ibhd", attn, v)
        probs = attn.permute(2, 3, 0, 1)
    expected["probs"] = probs.numpy()
    expected["context"] = context.numpy()
    return expected


def compare(name: str, got: np.ndarray, want: np.ndarray) -> str:
    if got.shape != want.shape:
        return f"{name}: shape {got.shape}, expected {want.shape}"
    got = got.astype(np.float64)
    inf_got, inf_want = np.isinf(got), np.isinf(want)
    if not np.array_equal(inf_got, inf_want) or not np.array_equal(got[inf_got], want[inf_want]):
        return f"{name}: -inf positions differ ({inf_got.sum()} vs {inf_want.sum()})"
    finite = ~inf_want
    if np.isnan(got).any():
        return f"{name}: NaN in attnscore's output"
    diff = np.abs(got[finite] - want[finite])
    bound = ATOL + RTOL * np.abs(want[finite])
    bad = diff > bound
    if bad.any():
        return (f"{name}: {bad.sum()} of {bad.size} elements differ, max |diff| "
                f"{diff.max():.3g}")
    return ""


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ATTNSCORE_")}


def start_server(server_bin: str, models: Path, work: Path) -> tuple[subprocess.Popen, int]:
    port_file = work / "port"
    log = open(work / "server.log", "wb")
    proc = subprocess.Popen(
        [server_bin, "--listen", "127.0.0.1:0", "--port-file", str(port_file),
         "--metrics-listen", "", "--model-dir", str(models), "--threads", "1",
         "--log-level", "warn"],
        stdout=log, stderr=subprocess.STDOUT, env=clean_env())
    deadline = time.monotonic() + 60
    while not port_file.exists() or not port_file.read_text().strip():
        if proc.poll() is not None:
            raise SystemExit(f"attnscore-server exited with {proc.returncode}:\n"
                             f"{(work / 'server.log').read_text()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("attnscore-server wrote no port file within 60 s")
        time.sleep(0.05)
    return proc, int(port_file.read_text())


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server-bin", required=True)
    parser.add_argument("--cli-bin", required=True)
    parser.add_argument("--seed", type=int, default=20240501)
    parser.add_argument("--random-cases", type=int, default=8)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    cases = fixed_cases() + random_cases(rng, args.random_cases)
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="attnscore-conformance-") as name:
        work = Path(name)
        models = work / "models"
        models.mkdir()
        inputs = {}
        expectations = {}
        for case in cases:
            # float32 values (what goes on the wire), the reference computed in float64.
            shape_q = (case.q_len, case.batch, case.heads, case.d_k)
            shape_k = (case.k_len, case.batch, case.heads, case.d_k)
            q = rng.standard_normal(shape_q).astype(np.float32)
            k = rng.standard_normal(shape_k).astype(np.float32)
            v = rng.standard_normal(shape_k).astype(np.float32)
            expectations[case.name] = reference(
                case, torch.from_numpy(q).double(), torch.from_numpy(k).double(),
                torch.from_numpy(v).double(), models)
            metadata = {"mode": case.mode, "causal": "true" if case.causal else "false",
                        "scale": "default", "layout": "SBHD",
                        "outputs": "logits,probs,context"}
            if case.mode == "relative":
                metadata["model"] = case.name
            if case.key_lengths:
                metadata["key_lengths"] = ",".join(str(x) for x in case.key_lengths)
            path = work / f"{case.name}.in.safetensors"
            save_file({"q": q, "k": k, "v": v}, str(path), metadata=metadata)
            inputs[case.name] = path

        server, port = start_server(args.server_bin, models, work)
        try:
            target = f"127.0.0.1:{port}"
            ready = subprocess.run([args.cli_bin, "health", "--target", target, "--wait", "60s"],
                                   capture_output=True, text=True, env=clean_env(), timeout=90)
            if ready.returncode != 0:
                raise SystemExit(f"server not ready: {ready.stdout}{ready.stderr}\n"
                                 f"{(work / 'server.log').read_text()[-3000:]}")
            for case in cases:
                out = work / f"{case.name}.out.safetensors"
                run = subprocess.run([args.cli_bin, "score", str(inputs[case.name]), "--target",
                                      target, "-o", str(out), "-q"],
                                     capture_output=True, text=True, env=clean_env(), timeout=60)
                if run.returncode != 0:
                    failures.append(f"{case.name}: attnscore score exited {run.returncode}: "
                                    f"{run.stdout}{run.stderr}")
                    continue
                got = load_file(str(out))
                want = expectations[case.name]
                problems = [compare(key, got[key], want[key]) for key in sorted(want)]
                problems = [p for p in problems if p]
                compared = "logits, probs, context" if "logits" in want else "probs, context"
                if problems:
                    failures.append(f"{case.name}: " + "; ".join(problems))
                    print(f"FAIL {case.name}: " + "; ".join(problems))
                else:
                    print(f"ok   {case.name} (B{case.batch} H{case.heads} Lq{case.q_len} "
                          f"Lk{case.k_len} D{case.d_k}, {'causal' if case.causal else 'bidir'}"
                          f"{', key_lengths' if case.key_lengths else ''}): {compared}")
        finally:
            stop_server(server)
            if failures:
                print("--- server.log (tail)\n" + (work / "server.log").read_text()[-3000:])

    print(f"labml conformance: {len(cases) - len(failures)} of {len(cases)} cases match")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
