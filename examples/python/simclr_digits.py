#!/usr/bin/env python3
"""SimCLR on real images: scikit-learn's bundled 8x8 handwritten digits (1797 images, no download),
trained with DistributedDataParallel and simclr_loss.torch's global-batch loss.

    mpirun -np 2 python3 examples/python/simclr_digits.py [--out out/digits] [--epochs 60]
    python3 examples/python/simclr_digits.py                 # one process

Each rank embeds its slice of every global batch with a small conv encoder and a projection head;
the loss contrasts every embedding with the whole global batch across the ranks (torch.distributed,
gloo), and DDP averages the parameter gradients (gradient_reduction="mean" makes that the gradient
of one process on the whole batch). Two views of each image: a random shift of up to one pixel,
a random intensity scale, Gaussian noise and a randomly erased patch. No labels are used in training.

At the end the representation (the encoder's output) is evaluated by k-nearest neighbours (cosine,
k = 5) on held-out digits, fit on the training digits' labels, next to the same classifier on the
raw pixels. The dataset's digits are centred and size-normalised, which keeps raw-pixel k-NN at about
0.99 on them; moved by one pixel (up, down, left or right: the variation the augmentations teach the
encoder to ignore) raw pixels fall to about 0.63. knn_accuracy / raw_knn_accuracy are on the moved
held-out digits, knn_accuracy_centered / raw_knn_accuracy_centered on them as they are, and
knn_accuracy_untrained is the moved digits through the encoder before training. Rank and size come from Open MPI's environment (OMPI_COMM_WORLD_RANK / _SIZE) or from
torchrun's (RANK / WORLD_SIZE, MASTER_ADDR / MASTER_PORT). The last line is one JSON object.
"""

import argparse
import datetime
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

import simclr_loss.torch as simclr_torch


def world():
    """(rank, size, init_method) from torchrun's or Open MPI's environment; (0, 1, None) alone."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), "env://"
    if "OMPI_COMM_WORLD_RANK" in os.environ:
        size = int(os.environ["OMPI_COMM_WORLD_SIZE"])
        # A file every rank of this job names alike (Open MPI's job id) and no other job does.
        job = os.environ.get("OMPI_MCA_ess_base_jobid") or os.environ.get("OMPI_MCA_orte_ess_jobid") or "0"
        path = os.path.join(tempfile.gettempdir(), f"simclr-digits-{os.getuid()}-{job}-{size}")
        return int(os.environ["OMPI_COMM_WORLD_RANK"]), size, "file://" + path
    return 0, 1, None


class Encoder(nn.Module):
    """[B, 1, 8, 8] -> [B, 128] representation; the projection head maps it to [B, 64] for the loss."""

    def __init__(self, width=16, dim=128, proj=64):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, stride=2), nn.ReLU(),  # 4 x 4
            nn.Flatten(), nn.Linear(2 * width * 16, dim))
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, proj))

    def forward(self, x):
        h = self.features(x)
        return h, self.head(h)


def augment(x, gen):
    """Two-view augmentation of [B, 1, 8, 8] images in [0, 1], drawn from the generator gen."""
    b = x.shape[0]
    if b == 0:
        return x.clone()
    # A shift of -1, 0 or +1 pixels each way: pad by one, crop 8 x 8 at a random offset.
    padded = F.pad(x, (1, 1, 1, 1))
    dy = torch.randint(0, 3, (b,), generator=gen)
    dx = torch.randint(0, 3, (b,), generator=gen)
    rows = (dy[:, None] + torch.arange(8)[None, :])[:, None, :, None].expand(b, 1, 8, 10)
    shifted = torch.gather(padded, 2, rows)
    cols = (dx[:, None] + torch.arange(8)[None, :])[:, None, None, :].expand(b, 1, 8, 8)
    out = torch.gather(shifted, 3, cols)
    out = out * (0.7 + 0.6 * torch.rand(b, 1, 1, 1, generator=gen))
    out = out + 0.1 * torch.randn(out.shape, generator=gen)
    # Erase a random 3 x 3 patch from half of the images.
    erase = torch.rand(b, generator=gen) < 0.5
    ey = torch.randint(0, 6, (b,), generator=gen)
    ex = torch.randint(0, 6, (b,), generator=gen)
    grid_y = torch.arange(8)[None, :, None]
    grid_x = torch.arange(8)[None, None, :]
    patch = ((grid_y >= ey[:, None, None]) & (grid_y < ey[:, None, None] + 3) &
             (grid_x >= ex[:, None, None]) & (grid_x < ex[:, None, None] + 3) & erase[:, None, None])
    return out.masked_fill(patch[:, None], 0.0)


def knn_accuracy(train, train_y, test, test_y, k=5):
    """k-NN (cosine similarity, majority vote, ties to the nearest) accuracy of test against train."""
    a = F.normalize(torch.as_tensor(train, dtype=torch.float64), dim=1)
    b = F.normalize(torch.as_tensor(test, dtype=torch.float64), dim=1)
    nearest = (b @ a.T).topk(k, dim=1).indices
    labels = torch.as_tensor(train_y)[nearest]
    votes = F.one_hot(labels, 10).sum(1).double()
    votes += F.one_hot(labels[:, 0], 10) * 0.5  # ties go to the nearest neighbour's class
    return float((votes.argmax(1) == torch.as_tensor(test_y)).double().mean())


def split_rows(n, size):
    """Rows of each rank for a global batch of n (the first n % size ranks get one more)."""
    return [n // size + (1 if r < n % size else 0) for r in range(size)]


_last_draw = [0.0]


def progress(rank, text, tty, end=False):
    """On a terminal a line redrawn at most 5 times a second; otherwise plain lines."""
    if rank != 0:
        return
    if tty:
        now = time.perf_counter()
        if not end and now - _last_draw[0] < 0.2:
            return
        _last_draw[0] = now
        sys.stdout.write("\r\033[K" + text + ("\n" if end else ""))
    else:
        sys.stdout.write(text + "\n")
    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=80)
    ap.add_argument("--batch", type=int, default=256, help="global batch (all ranks together)")
    ap.add_argument("--temperature", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads per rank (0: cores / ranks)")
    ap.add_argument("--out", default="out/digits")
    args = ap.parse_args()

    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    rank, size, init = world()
    if init is not None:
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=size,
                                timeout=datetime.timedelta(seconds=300))
    threads = args.threads or max(1, (os.cpu_count() or 1) // size)
    torch.set_num_threads(threads)
    t_start = time.perf_counter()

    digits = load_digits()
    x_all = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    y_all = torch.tensor(digits.target)
    # The same seeded split on every rank: 70 % for (unlabelled) training, 30 % held out.
    split = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(12345))
    n_train = int(0.7 * len(x_all))
    train_idx, test_idx = split[:n_train], split[n_train:]
    x_train, y_train = x_all[train_idx], y_all[train_idx]
    x_test, y_test = x_all[test_idx], y_all[test_idx]

    torch.manual_seed(args.seed)  # the same initial weights everywhere (DDP broadcasts rank 0's anyway)
    model = Encoder()
    ddp = nn.parallel.DistributedDataParallel(model) if init is not None else model
    opt = torch.optim.Adam(ddp.parameters(), lr=args.lr)
    group = dist.group.WORLD if init is not None else None

    shifted_test = augment_shift_only(x_test, torch.Generator().manual_seed(777))
    if rank == 0:  # the same classifier on the untrained encoder, to show what training adds
        with torch.no_grad():
            knn_init = knn_accuracy(model(x_train)[0], y_train, model(shifted_test)[0], y_test)

    # Progress redraws only on a real terminal: under mpirun a rank's stdout can be a terminal that
    # Open MPI forwards into a piped log, so a launcher's rank is treated as a pipe.
    tty = sys.stdout.isatty() and "OMPI_COMM_WORLD_RANK" not in os.environ and size == 1
    if rank == 0:
        os.makedirs(args.out, exist_ok=True)
    steps_per_epoch = (n_train + args.batch - 1) // args.batch
    total_steps = steps_per_epoch * args.epochs
    if rank == 0:
        params = sum(p.numel() for p in model.parameters())
        print(f"simclr_digits: {size} rank{'s' if size > 1 else ''} x {threads} thread{'s' if threads > 1 else ''}, "
              f"{n_train} training / {len(test_idx)} held-out digits (8x8), global batch {args.batch} "
              f"({steps_per_epoch} steps/epoch, last batch {n_train - (steps_per_epoch - 1) * args.batch}), "
              f"temperature {args.temperature}, {params} parameters", flush=True)
    log = []
    step = 0
    initial_loss = None
    aug_gen = torch.Generator().manual_seed(1000 * args.seed + rank)  # each rank augments its own rows
    for epoch in range(1, args.epochs + 1):
        order = torch.randperm(n_train, generator=torch.Generator().manual_seed(args.seed * 7919 + epoch))
        epoch_losses = []
        t_epoch = time.perf_counter()
        for start in range(0, n_train, args.batch):
            batch = order[start:start + args.batch]
            g = len(batch)
            rows = split_rows(g, size)
            mine = batch[sum(rows[:rank]):sum(rows[:rank + 1])]
            x = x_train[mine]
            _, za = ddp(augment(x, aug_gen))
            _, zb = ddp(augment(x, aug_gen))
            # This rank's share of the global-batch mean: sum over its rows / g. The ranks' shares add
            # up to the loss of one process on the whole batch.
            loss = simclr_torch.simclr_loss(za, zb, temperature=args.temperature, process_group=group,
                                            global_batch_size=g, gradient_reduction="mean")
            opt.zero_grad()
            loss.backward()
            opt.step()
            value = loss.detach().double()
            if group is not None:
                dist.all_reduce(value, group=group)
            value = float(value)
            step += 1
            initial_loss = value if initial_loss is None else initial_loss
            epoch_losses.append(value)
            log.append((step, epoch, g, value, time.perf_counter() - t_start))
            rate = sum(len(order[s:s + args.batch]) for s in range(0, start + 1, args.batch)) / (time.perf_counter() - t_epoch)
            progress(rank, f"epoch {epoch}/{args.epochs}  step {step}/{total_steps}  loss {value:.4f}  "
                           f"images/s {rate:.0f}", tty)
        if not tty or epoch == args.epochs or epoch % 10 == 0:
            progress(rank, f"epoch {epoch}/{args.epochs}  step {step}/{total_steps}  "
                           f"loss {np.mean(epoch_losses):.4f} (epoch mean)", tty, end=True)
    final_loss = float(np.mean(epoch_losses))
    train_seconds = time.perf_counter() - t_start

    result = None
    if rank == 0:
        model.eval()
        with torch.no_grad():
            rep_train, _ = model(x_train)
            rep_test, _ = model(x_test)
        knn = knn_accuracy(rep_train, y_train, rep_test, y_test)
        raw = knn_accuracy(x_train.flatten(1), y_train, x_test.flatten(1), y_test)
        # Evaluation under the training augmentation's shifts alone: what the representation learned
        # to ignore, and raw pixels cannot.
        shifted = shifted_test
        with torch.no_grad():
            rep_shift, _ = model(shifted)
        knn_shift = knn_accuracy(rep_train, y_train, rep_shift, y_test)
        raw_shift = knn_accuracy(x_train.flatten(1), y_train, shifted.flatten(1), y_test)
        print(f"loss {initial_loss:.4f} -> {final_loss:.4f} (last epoch mean) in {step} steps, "
              f"{train_seconds:.1f} s", flush=True)
        print(f"5-NN accuracy on {len(test_idx)} held-out digits moved by one pixel: representation "
              f"{knn_shift:.3f} (untrained encoder {knn_init:.3f}), raw pixels {raw_shift:.3f}; as they are: "
              f"representation {knn:.3f}, raw pixels {raw:.3f} (chance 0.1)", flush=True)
        csv = os.path.join(args.out, "loss_curve.csv")
        with open(csv, "w") as f:
            f.write("step,epoch,global_batch,loss,seconds\n")
            for s, e, g, v, t in log:
                f.write(f"{s},{e},{g},{v:.9g},{t:.4f}\n")
        print(f"wrote {csv}")
        png = os.path.join(args.out, "loss_curve.png")
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
            fig, ax = plt.subplots(figsize=(7, 3.5), dpi=120)
            steps = [r[0] for r in log]
            ax.plot(steps, [r[3] for r in log], lw=0.8, label="loss (global batch)")
            window = max(1, steps_per_epoch)
            smooth = np.convolve([r[3] for r in log], np.ones(window) / window, mode="valid")
            ax.plot(steps[window - 1:], smooth, lw=1.6, label=f"mean of {window} steps")
            ax.set_xlabel("step")
            ax.set_ylabel("SimCLR loss")
            ax.set_title(f"SimCLR on 8x8 digits, {size} rank{'s' if size > 1 else ''}: 5-NN on moved "
                         f"held-out digits {knn_shift:.3f} (raw pixels {raw_shift:.3f})", fontsize=9)
            ax.legend()
            fig.tight_layout()
            fig.savefig(png)
            print(f"wrote {png}")
        except ImportError:
            print("matplotlib is not installed: no loss_curve.png")
        result = {"world_size": size, "steps": step, "initial_loss": initial_loss, "final_loss": final_loss,
                  "knn_accuracy": knn_shift, "raw_knn_accuracy": raw_shift, "knn_accuracy_centered": knn,
                  "raw_knn_accuracy_centered": raw, "knn_accuracy_untrained": knn_init, "chance": 0.1,
                  "seconds": round(time.perf_counter() - t_start, 3)}
        with open(os.path.join(args.out, "summary.json"), "w") as f:
            json.dump(result, f)
            f.write("\n")
    if init is not None:
        dist.barrier()
        dist.destroy_process_group()
    if rank == 0:
        print(json.dumps(result), flush=True)


def augment_shift_only(x, gen):
    """Each image shifted by one pixel in a random direction (no noise, no erasing)."""
    b = x.shape[0]
    padded = F.pad(x, (1, 1, 1, 1))
    direction = torch.randint(0, 4, (b,), generator=gen)
    dy = torch.tensor([0, 2, 1, 1])[direction]
    dx = torch.tensor([1, 1, 0, 2])[direction]
    rows = (dy[:, None] + torch.arange(8)[None, :])[:, None, :, None].expand(b, 1, 8, 10)
    shifted = torch.gather(padded, 2, rows)
    cols = (dx[:, None] + torch.arange(8)[None, :])[:, None, None, :].expand(b, 1, 8, 8)
    return torch.gather(shifted, 3, cols)


if __name__ == "__main__":
    main()
