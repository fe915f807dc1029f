"""Every ```python block of README.md and docs/*.md is a complete program: each runs in a fresh
interpreter. A block whose first line is `# snippet: mpi N` runs under mpirun on N ranks (on one
process when mpirun or mpi4py is missing). Blocks whose first line is `# snippet: tensorflow` need
TensorFlow, which this environment has not: tests/tensorflow/test_tf_docs.py runs them."""

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))


def _blocks():
    for doc in DOCS:
        text = doc.read_text()
        for i, m in enumerate(re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M), 1):
            if m.group(1).startswith("# snippet: tensorflow"):
                continue
            yield pytest.param(m.group(1), id=f"{doc.relative_to(ROOT)}#{i}")


def _mpi_available():
    if shutil.which("mpirun") is None:
        return False
    return subprocess.run([sys.executable, "-c", "import mpi4py"]).returncode == 0


@pytest.mark.parametrize("code", list(_blocks()))
def test_python_block_runs(code, tmp_path):
    script = tmp_path / "snippet.py"
    script.write_text(code)
    cmd = [sys.executable, str(script)]
    m = re.match(r"# snippet: mpi (\d+)", code)
    if m and _mpi_available():
        env_flags = ["--oversubscribe", "--bind-to", "none"] if b"Open MPI" in subprocess.run(
            ["mpirun", "--version"], capture_output=True).stdout else []
        cmd = ["mpirun", "-np", m.group(1)] + env_flags + cmd
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
