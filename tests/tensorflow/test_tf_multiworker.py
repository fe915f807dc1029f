"""simclr_loss.keras.SimCLRLoss under tf.distribute.MultiWorkerMirroredStrategy: two worker processes on
localhost (multiworker_worker.py), each with its rows of a golden case of golden_distributed.json,
evenly and unevenly split; the rows' losses and gradients, concatenated, are TF Similarity's."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import max_rel

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multiworker_worker.py")


def _free_ports(k):
    socks = [socket.socket() for _ in range(k)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [str(s.getsockname()[1]) for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("split", ["even", "uneven"])
def test_two_workers(golden_distributed, tmp_path, dtype, split):
    case = next(c for c in golden_distributed["cases"]
                if c["replicas"] == 2 and c["dtype"] == dtype)
    g = len(case["za"])
    starts = [0, g // 2, g] if split == "even" else [0, 3, g]
    case_file = tmp_path / "case.json"
    case_file.write_text(json.dumps({k: case[k] for k in ("za", "zb", "dtype", "temperature")}))
    ports = _free_ports(2)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    procs = [subprocess.Popen([sys.executable, WORKER, str(i), ",".join(ports), str(case_file),
                               ",".join(map(str, starts))],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for i in range(2)]
    results = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    tol = 1e-12 if dtype == "float64" else 5e-6
    za = np.asarray(case["za"])
    zb = np.asarray(case["zb"])
    scale = 1.0 / (case["temperature"] * max(np.max(np.linalg.norm(za, axis=1)),
                                             np.max(np.linalg.norm(zb, axis=1))))
    for key, floor in (("loss", 1.0), ("grad_za", scale), ("grad_zb", scale)):
        shape = (-1,) if key == "loss" else (-1, za.shape[1])
        got = np.concatenate([np.asarray(r[key], np.float64).reshape(shape) for r in results])
        want = np.concatenate([r[key] for r in case["per_replica"]])
        assert max_rel(got, want, floor) <= tol, key
