"""The ```python blocks of README.md and docs/*.md whose first line is `# snippet: tensorflow`: each
runs in a fresh interpreter of this environment (tests/python/test_docs.py runs the others)."""

import os
import pathlib
import re
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
                yield pytest.param(m.group(1), id=f"{doc.relative_to(ROOT)}#{i}")


BLOCKS = list(_blocks())


def test_there_are_tensorflow_blocks():
    assert len(BLOCKS) >= 1


@pytest.mark.parametrize("code", BLOCKS)
def test_tensorflow_block_runs(code, tmp_path):
    script = tmp_path / "snippet.py"
    script.write_text(code)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
