"""simclr_loss.torch across processes: launches torch_mpi_worker.py (every split at 1-4 ranks, errors on one
rank), torch_mpi_errors_worker.py (input errors of one rank raised on every rank, promptly) and
torch_ddp_worker.py (DDP at 2 and 3 ranks) under mpirun with torch.distributed's gloo."""

import os
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("simclr_loss.torch")

HERE = os.path.dirname(os.path.abspath(__file__))
MPIRUN = shutil.which("mpirun")
pytestmark = pytest.mark.skipif(MPIRUN is None, reason="mpirun (Open MPI) is not installed")


def mpirun(ranks, script, tmp_path, *args, timeout=600):
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", OMP_NUM_THREADS="1")
    init = "file://" + str(tmp_path / "torch-store")  # new for every run: pytest's tmp_path
    cmd = [MPIRUN, "-np", str(ranks), "--oversubscribe", "--bind-to", "none", sys.executable,
           os.path.join(HERE, script), init, *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.mark.parametrize("ranks", [1, 2, 3, 4])
def test_every_split_errors_and_reference(ranks, tmp_path):
    out = mpirun(ranks, "torch_mpi_worker.py", tmp_path)
    assert f"torch_mpi_worker: OK, {ranks} ranks" in out


@pytest.mark.parametrize("ranks", [2, 3])
def test_input_error_on_one_rank_raises_on_every_rank_promptly(ranks, tmp_path):
    # The worker's process group times out after 20 s and each case must end in 10; a rank left
    # waiting (the bug this guards against) fails the run instead of hanging it.
    out = mpirun(ranks, "torch_mpi_errors_worker.py", tmp_path, timeout=180)
    assert f"torch_mpi_errors_worker: OK, {ranks} ranks" in out


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("ranks", [2, 3])
def test_ddp_matches_one_process(ranks, dtype, tmp_path):
    out = mpirun(ranks, "torch_ddp_worker.py", tmp_path, dtype)
    assert f"torch_ddp_worker: OK, {ranks} ranks" in out


@pytest.mark.parametrize("ranks", [2, 3])
def test_cuda_route_collectives_on_cpu(ranks, tmp_path):
    out = mpirun(ranks, "torch_cuda_glue_worker.py", tmp_path)
    assert f"torch_cuda_glue_worker: OK, {ranks} ranks" in out


@pytest.mark.parametrize("ranks", [2, 3])
def test_conformance_input_errors_over_gloo(ranks, tmp_path):
    # The conformance table's input errors (tests/conformance/cases.json) on the last rank only.
    script = os.path.join(HERE, "..", "conformance", "conformance_gloo_worker.py")
    out = mpirun(ranks, script, tmp_path)
    assert f"cases passed, 0 failed, {ranks} ranks" in out
