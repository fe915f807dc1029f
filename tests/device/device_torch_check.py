"""The PyTorch CUDA route on a GPU, for scripts/device_check.sh (docs/gpu.md).

    python3 tests/device/device_torch_check.py parity     # the CUDA route against the CPU path
    python3 tests/device/device_torch_check.py distributed  # process_group on a 1-rank NCCL group
    python3 tests/device/device_torch_check.py memory     # peak memory at large G with the API's workspace
    python3 tests/device/device_torch_check.py peer       # against the PyTorch peer formulation

Each prints one JSON line. Needs torch with CUDA and simclr built with SIMCLR_WITH_CUDA=ON on
PYTHONPATH (simclr_loss._core, simclr_loss._device).
"""

import json
import sys
import time


def emit(record):
    print(json.dumps(record), flush=True)


def inputs(g, d, dtype, device, seed=0):
    import torch

    gen = torch.Generator(device="cpu").manual_seed(seed)
    za = torch.randn(g, d, generator=gen).to(device=device, dtype=dtype)
    zb = torch.randn(g, d, generator=gen).to(device=device, dtype=dtype)
    return za, zb


def parity():
    """The CUDA route in float32/bfloat16 against the library's CPU path in float64."""
    import numpy as np
    import torch

    import simclr_loss
    from simclr_loss import _torch_cuda

    out = {"check": "parity", "cases": []}
    ok = True
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 5e-2)):
        for reduction in ("sum_over_batch_size", "none"):
            za, zb = inputs(1000, 64, dtype, "cuda", seed=3)
            za.requires_grad_(True)
            zb.requires_grad_(True)
            value = _torch_cuda.simclr_loss_cuda(za, zb, temperature=0.1, reduction=reduction)
            value.sum().backward()
            torch.cuda.synchronize()
            status = _torch_cuda.last_status().cpu().tolist()
            ha = za.detach().float().cpu().numpy().astype(np.float64)
            hb = zb.detach().float().cpu().numpy().astype(np.float64)
            ref = simclr_loss.SimCLRLoss(temperature=0.1, reduction=reduction)
            rv, rga, rgb = ref.value_and_gradient(ha, hb)
            rv = np.asarray(rv, dtype=np.float64).reshape(-1)
            v = value.detach().float().cpu().numpy().reshape(-1)
            if reduction == "none":
                rv_scale = np.abs(rv).max()
            else:
                rv_scale = abs(rv[0])
            loss_err = float(np.abs(v - rv).max() / max(rv_scale, 1e-30))
            g = np.concatenate([za.grad.float().cpu().numpy(), zb.grad.float().cpu().numpy()])
            rg = np.concatenate([np.asarray(rga), np.asarray(rgb)])
            grad_err = float(np.abs(g - rg).max() / max(np.abs(rg).max(), 1e-30))
            clean = all(s == -1 for s in status)
            passed = loss_err <= tol and grad_err <= tol and clean
            ok = ok and passed
            out["cases"].append(
                {"dtype": str(dtype), "reduction": reduction, "loss_rel_err": loss_err,
                 "grad_rel_err": grad_err, "status_clean": clean, "passed": passed}
            )
    # A NaN is recorded in the status array, not raised.
    za, zb = inputs(64, 16, torch.float32, "cuda", seed=4)
    za[5, 7] = float("nan")
    _torch_cuda.simclr_loss_cuda(za, zb)
    torch.cuda.synchronize()
    status = _torch_cuda.last_status().cpu().tolist()
    out["nan_status"] = status
    ok = ok and status[0] == 5 * 16 + 7
    out["compile"] = compile_on_cuda()
    ok = ok and out["compile"].get("passed", True)
    out["passed"] = ok
    emit(out)
    return 0 if ok else 1


def compile_on_cuda():
    """torch.compile(fullgraph=True) on CUDA tensors (the custom ops over the CUDA route) against
    eager, and whether the loss op can be captured in a CUDA graph and replayed (recorded, not
    required: the route's host reads of its status array would break a capture)."""
    import torch

    import simclr_loss.torch as st
    from simclr_loss import _args

    if not st._HAS_OPS:
        return {"skipped": "torch " + torch.__version__ + " has no torch.library.custom_op"}
    out = {}
    try:
        crit = st.SimCLRLoss(temperature=0.1)
        za, zb = inputs(512, 64, torch.float32, "cuda", seed=5)
        a1, b1 = za.clone().requires_grad_(True), zb.clone().requires_grad_(True)
        a2, b2 = za.clone().requires_grad_(True), zb.clone().requires_grad_(True)
        want = crit(a1, b1)
        want.backward()
        got = torch.compile(crit, fullgraph=True, backend="aot_eager")(a2, b2)
        got.backward()
        torch.cuda.synchronize()
        err = max(float((got - want).abs()) / max(float(want.abs()), 1e-30),
                  float((a2.grad - a1.grad).abs().max() / a1.grad.abs().max()),
                  float((b2.grad - b1.grad).abs().max() / b1.grad.abs().max()))
        out.update(fullgraph_rel_err=err, passed=err <= 1e-5)
    except Exception as exc:  # noqa: BLE001 - reported in the record
        out.update(passed=False, error=f"{type(exc).__name__}: {exc}"[:500])
    try:
        za, zb = inputs(512, 64, torch.float32, "cuda", seed=6)
        args = (za, zb, None, 0.1, "sum", _args.GLOBAL_BATCH_NONE, _args.GRADIENT_REDUCTIONS["sum"],
                "", False)
        eager = torch.ops.simclr_loss.loss(*args)[0].clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            torch.ops.simclr_loss.loss(*args)  # warm-up on a side stream, as capture wants
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = torch.ops.simclr_loss.loss(*args)[0]
        graph.replay()
        torch.cuda.synchronize()
        out["cuda_graph"] = {"captured": True,
                             "replay_rel_err": float((captured - eager).abs() / eager.abs())}
    except Exception as exc:  # noqa: BLE001 - reported in the record
        out["cuda_graph"] = {"captured": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
    return out


def distributed():
    """The distributed CUDA route (process_group) on one GPU: a process group of one rank, with
    NCCL for the rows, against the local CUDA call and the CPU route. NCCL refuses two ranks on one
    GPU (a duplicate GPU error), so the uneven splits and the cross-rank errors of more ranks are
    left to a machine with several GPUs; on one GPU this checks the route end to end (the NCCL
    all-gathers on torch's current stream, the agreement records, the workspace sized for the
    global batch, the gradient convention, the sample weight). Two groups: "cpu:gloo,cuda:nccl"
    (records on the CPU; the call must then make no synchronising torch call, checked with
    torch.cuda.set_sync_debug_mode) and NCCL alone (records read back with .cpu())."""
    import os
    import tempfile

    import torch
    import warnings

    import torch.distributed as dist

    import simclr_loss.torch as st
    from simclr_loss import _torch_cuda

    os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")
    out = {"check": "distributed", "groups": []}
    ok = True
    store_dir = tempfile.mkdtemp(prefix="simclr-store-")
    store = dist.FileStore(os.path.join(store_dir, "store"), 1)
    dist.init_process_group("nccl", store=store, rank=0, world_size=1)
    groups = [("nccl", dist.group.WORLD)]
    try:
        groups.insert(0, ("cpu:gloo,cuda:nccl", dist.new_group([0], backend="cpu:gloo,cuda:nccl")))
    except Exception as exc:  # noqa: BLE001 - an older torch: reported, the NCCL group still runs
        out["mixed_group_error"] = f"{type(exc).__name__}: {exc}"[:200]
    weight = torch.linspace(0.5, 1.5, 300, device="cuda")
    for name, group in groups:
        entry = {"backend": name, "cases": []}
        for reduction, w in (("sum_over_batch_size", None), ("none", weight), ("sum", weight)):
            za, zb = inputs(300, 32, torch.float32, "cuda", seed=5)
            results = {}
            for route in ("distributed", "local", "cpu"):
                a = (za.cpu() if route == "cpu" else za).clone().requires_grad_(True)
                b = (zb.cpu() if route == "cpu" else zb).clone().requires_grad_(True)
                sw = None if w is None else (w.cpu() if route == "cpu" else w)
                kwargs = {"temperature": 0.1, "reduction": reduction, "sample_weight": sw}
                if route == "distributed":
                    torch.cuda.synchronize()
                    mode = torch.cuda.get_sync_debug_mode()
                    if name != "nccl":
                        torch.cuda.set_sync_debug_mode("error")
                    else:  # count them: 3 a step expected (docs/gpu.md, the route's host syncs)
                        torch.cuda.set_sync_debug_mode("warn")
                    try:
                        with warnings.catch_warnings(record=True) as caught:
                            warnings.simplefilter("always")
                            v = st.simclr_loss(a, b, process_group=group,
                                               global_batch_size="infer",
                                               gradient_reduction="sum", **kwargs)
                            v.sum().backward()
                        if name == "nccl":
                            entry.setdefault("host_syncs_per_step", []).append(
                                sum("synchroniz" in str(c.message) for c in caught))
                        sync_free = True
                    except RuntimeError as exc:
                        if "synchroniz" not in str(exc):
                            raise
                        sync_free = False
                        torch.cuda.set_sync_debug_mode(mode)
                        v = st.simclr_loss(a, b, process_group=group, global_batch_size="infer",
                                           gradient_reduction="sum", **kwargs)
                        v.sum().backward()
                    finally:
                        torch.cuda.set_sync_debug_mode(mode)
                    entry["sync_free"] = entry.get("sync_free", True) and sync_free
                else:
                    v = st.simclr_loss(a, b, **kwargs)
                    v.sum().backward()
                torch.cuda.synchronize()
                results[route] = (v.detach().double().cpu(), a.grad.double().cpu(),
                                  b.grad.double().cpu())
            errs = {}
            for other in ("local", "cpu"):
                errs[other] = max(
                    float(((x - y).abs().max() / y.abs().max().clamp_min(1e-30)).item())
                    for x, y in zip(results["distributed"], results[other]))
            passed = all(e <= 1e-5 for e in errs.values())
            ok = ok and passed
            entry["cases"].append({"reduction": reduction, "weighted": w is not None,
                                   "rel_err_vs_local": errs["local"],
                                   "rel_err_vs_cpu": errs["cpu"], "passed": passed})
        if name != "nccl" and not entry.get("sync_free", False):
            ok = False
        out["groups"].append(entry)
    # "mean" (the default) is "sum" times the group size: 1 here, so the same gradients.
    za, zb = inputs(64, 16, torch.float32, "cuda", seed=6)
    a = za.clone().requires_grad_(True)
    st.simclr_loss(a, zb, process_group=groups[0][1], global_batch_size="infer").backward()
    b = za.clone().requires_grad_(True)
    _torch_cuda.simclr_loss_cuda(b, zb, reduction="auto", global_batch_size=None).backward()
    torch.cuda.synchronize()
    out["mean_vs_local_grad_err"] = float((a.grad - b.grad).abs().max().item())
    ok = ok and out["mean_vs_local_grad_err"] <= 1e-5 * float(b.grad.abs().max().item()) + 1e-12
    dist.destroy_process_group()
    out["passed"] = ok
    emit(out)
    return 0 if ok else 1


def memory():
    """Peak device memory of one forward+backward at large G, workspace from torch's allocator."""
    import torch

    from simclr_loss import _device, _torch_cuda

    out = {"check": "memory", "dim": 256, "dtype": "bfloat16", "runs": []}
    for g in (262144, 1048576):
        fwd, bwd = _device.workspace_size(g, g, 256, _device.BFLOAT16, 0, True)
        entry = {"G": g, "forward_workspace_bytes": fwd, "backward_workspace_bytes": bwd,
                 "forward_saved_bytes": _device.saved_size(g, g, 256, _device.BFLOAT16, 0, True)}
        try:
            za, zb = inputs(g, 256, torch.bfloat16, "cuda")
            za.requires_grad_(True)
            zb.requires_grad_(True)
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            _torch_cuda.simclr_loss_cuda(za, zb, temperature=0.1).backward()
            torch.cuda.synchronize()
            entry["seconds"] = time.perf_counter() - t0
            entry["peak_bytes_above_inputs"] = torch.cuda.max_memory_allocated() - base
            # What the step leaves allocated: the two gradients only (nothing in module state).
            entry["bytes_left_after_step"] = torch.cuda.memory_allocated() - base
            entry["gradient_bytes"] = 2 * za.numel() * za.element_size()
            entry["logits_bytes_fp32"] = (2 * g) ** 2 * 4
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            entry["error"] = f"{type(exc).__name__}: {exc}"[:300]
        out["runs"].append(entry)
        del entry
        torch.cuda.empty_cache()
    emit(out)
    return 0


def peer_loss(za, zb, temperature):
    """NT-Xent as a PyTorch user writes it: the [2G, 2G] logits, cross-entropy, autograd."""
    import torch
    import torch.nn.functional as F

    z = F.normalize(torch.cat([za, zb]), dim=1)
    s = z @ z.t() / temperature
    n = za.shape[0]
    s = s.float().masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(s, target, reduction="sum") / n


def timed(fn, repeat=3):
    import torch

    times = []
    for _ in range(repeat):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def peer():
    """simclr's CUDA route against the peer (bf16 autocast), same G and d, up to the peer's OOM."""
    import torch

    from simclr_loss import _torch_cuda

    d = 256
    out = {"check": "peer", "dim": d, "runs": [], "peer_oom_at": None}
    g = 4096
    while g <= 65536:
        entry = {"G": g}
        za, zb = inputs(g, d, torch.float32, "cuda")
        za.requires_grad_(True)
        zb.requires_grad_(True)

        def run_peer():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                peer_loss(za, zb, 0.1).backward()

        za16 = za.detach().to(torch.bfloat16).requires_grad_(True)
        zb16 = zb.detach().to(torch.bfloat16).requires_grad_(True)

        def run_simclr():
            _torch_cuda.simclr_loss_cuda(za16, zb16, temperature=0.1).backward()

        try:
            torch.cuda.reset_peak_memory_stats()
            entry["simclr_seconds"] = timed(run_simclr)
            entry["simclr_peak_bytes"] = torch.cuda.max_memory_allocated()
        except Exception as exc:  # noqa: BLE001
            entry["simclr_error"] = f"{type(exc).__name__}: {exc}"[:300]
        try:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            entry["peer_seconds"] = timed(run_peer)
            entry["peer_peak_bytes"] = torch.cuda.max_memory_allocated()
        except torch.cuda.OutOfMemoryError:
            out["peer_oom_at"] = g
            entry["peer_error"] = "out of memory"
        if "peer_seconds" in entry and "simclr_seconds" in entry:
            entry["speed_ratio_peer_over_simclr"] = entry["peer_seconds"] / entry["simclr_seconds"]
            entry["memory_ratio_peer_over_simclr"] = (
                entry["peer_peak_bytes"] / max(entry["simclr_peak_bytes"], 1)
            )
        out["runs"].append(entry)
        za = zb = za16 = zb16 = None
        torch.cuda.empty_cache()
        if out["peer_oom_at"] is not None:
            break
        g *= 2
    emit(out)
    return 0


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "parity"
    fn = {"parity": parity, "distributed": distributed, "memory": memory, "peer": peer}.get(what)
    if fn is None:
        print(f"usage: {sys.argv[0]} parity|distributed|memory|peer", file=sys.stderr)
        sys.exit(2)
    sys.exit(fn())
