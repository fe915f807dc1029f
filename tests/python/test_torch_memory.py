"""Peak memory of a G = 8192, d = 128 float32 forward+backward through simclr_loss.torch, measured in a
fresh process so nothing earlier counts: it must raise the peak RSS by less than 10 % of 1 GiB (the
[2G, 2G] logits alone would be 1 GiB in float32)."""

import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("simclr_loss.torch")

CHILD = r'''
import json, torch, simclr_loss.torch as st

def hwm_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])

torch.set_num_threads(2)
torch.manual_seed(0)
G, d = 8192, 128
za = torch.randn(G, d, requires_grad=True)
zb = torch.randn(G, d, requires_grad=True)
warm = st.simclr_loss(za[:64], zb[:64], temperature=0.1)   # load everything the call needs
warm.backward()
za.grad = zb.grad = None
before = hwm_kib()
loss = st.simclr_loss(za, zb, temperature=0.1)
loss.backward()
after = hwm_kib()
print(json.dumps({"before_kib": before, "after_kib": after, "loss": float(loss),
                  "grad_finite": bool(torch.isfinite(za.grad).all() and torch.isfinite(zb.grad).all())}))
'''


def test_peak_rss_of_g8192_forward_backward():
    import json
    env = dict(os.environ, OMP_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True,
                         check=True, timeout=600).stdout
    r = json.loads(out.strip().splitlines()[-1])
    assert r["grad_finite"]
    grown_mib = (r["after_kib"] - r["before_kib"]) / 1024.0
    print(f"peak RSS grew by {grown_mib:.1f} MiB")
    assert grown_mib < 0.1 * 1024, f"peak RSS grew by {grown_mib:.1f} MiB (limit 102.4 MiB)"
