"""A fresh virtualenv (Debian's python, --system-site-packages for grpcio, protobuf and numpy)
gets the package from the repository path with pip, offline, and scores once against a real
attnscore-server from outside the checkout. The installed package has no `attnscore` command."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import unittest
from pathlib import Path

from attnscore_testing import Server

SOURCE = Path(__file__).resolve().parents[2] / "client" / "python"
BASE_PYTHON = os.environ.get("ATTNSCORE_BASE_PYTHON", "/usr/bin/python3")
SCORE_ONCE = """
import sys, numpy as np, attnscore
assert attnscore.__file__.startswith(sys.prefix), attnscore.__file__
q = np.ones((1, 2, 4, 8), dtype=np.float32)
with attnscore.Client(sys.argv[1], timeout=30) as client:
    result = client.score(q, q, q, causal=True, outputs=("probs", "context"))
assert result.logits is None and result.probs.shape == (1, 2, 4, 4)
print("scored", result.context.shape)
"""


def run(args: list, cwd: Path, env: dict) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise AssertionError(f"{args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done.stdout


class InstallTest(unittest.TestCase):
    def test_fresh_venv_install_from_the_repository_path(self) -> None:
        with tempfile.TemporaryDirectory(prefix="attnscore-py-venv-") as tmp:
            venv, work = Path(tmp) / "venv", Path(tmp) / "work"
            work.mkdir()
            # Offline: no index, and a proxy that goes nowhere.
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tmp}
            offline = dict(env, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
                           https_proxy="http://127.0.0.1:9", http_proxy="http://127.0.0.1:9")
            run([BASE_PYTHON, "-m", "venv", "--system-site-packages", str(venv)], work, env)
            python = venv / "bin" / "python"
            try:
                run([str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                     str(SOURCE)], work, offline)
            finally:
                # setuptools builds in the source tree (ignored by client/python/.gitignore);
                # a stale build/lib would carry deleted modules into the next install.
                shutil.rmtree(SOURCE / "build", ignore_errors=True)
                shutil.rmtree(SOURCE / "attnscore.egg-info", ignore_errors=True)
            self.assertFalse((venv / "bin" / "attnscore").exists(),
                             "the package must not install an `attnscore` command")
            files = run([str(python), "-m", "pip", "show", "-f", "attnscore"], work, env)
            self.assertIn("attnscore/py.typed", files)
            self.assertIn("attnscore/_proto/attnscore_pb2.py", files)
            server = Server()
            try:
                out = run([str(python), "-c", SCORE_ONCE, server.target], work, env)
            finally:
                server.stop()
            self.assertIn("scored (1, 2, 4, 8)", out)


if __name__ == "__main__":
    unittest.main()
