"""The PyTorch demo (examples/python/simclr_digits.py) in a short form on 2 ranks: it runs, writes its
outputs, the loss falls, and the learned representation beats raw pixels on the moved held-out digits."""

import json
import os
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytest.importorskip("simclr_loss.torch")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(ROOT, "examples", "python", "simclr_digits.py")


def test_demo_short_on_two_ranks(tmp_path):
    mpirun = shutil.which("mpirun")
    cmd = [sys.executable, DEMO, "--epochs", "12", "--out", str(tmp_path)]
    ranks = 1
    if mpirun:
        ranks = 2
        cmd = [mpirun, "-np", "2", "--oversubscribe", "--bind-to", "none"] + cmd
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", MPLBACKEND="Agg")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("world_size", "steps", "initial_loss", "final_loss", "knn_accuracy", "raw_knn_accuracy",
                "knn_accuracy_centered", "raw_knn_accuracy_centered", "knn_accuracy_untrained", "chance", "seconds"):
        assert key in result, key
    assert result["world_size"] == ranks
    assert result["steps"] == 12 * 5  # 1257 training digits in global batches of 256
    assert result["final_loss"] < result["initial_loss"] - 1.0
    assert result["knn_accuracy"] > result["raw_knn_accuracy"]
    assert result["knn_accuracy"] > result["knn_accuracy_untrained"]
    assert result["knn_accuracy_centered"] > 0.9
    with open(tmp_path / "summary.json") as f:
        assert json.load(f) == result
    lines = (tmp_path / "loss_curve.csv").read_text().splitlines()
    assert lines[0] == "step,epoch,global_batch,loss,seconds" and len(lines) == 1 + result["steps"]
    assert (tmp_path / "loss_curve.png").stat().st_size > 1000
