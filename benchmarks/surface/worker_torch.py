"""loss-landscapes (PyTorch) side of the surface benchmark; run with .venv-torch's python.

Usage: worker_torch.py WEIGHTS.npz DATA.npz STEPS
Loads the MLP 64-256-256-10 weights exported by bench_surface.py (Flax kernels are (in, out),
PyTorch's Linear weights (out, in): transposed here), builds the same network, and times
``loss_landscapes.random_plane(model, Loss(CrossEntropyLoss, X, y), distance=1, steps=STEPS,
normalization="filter")`` over the full training set, plus the torch floor: STEPS^2 times one
forward pass + loss (median of 50 calls). Prints one JSON line.
"""

import json
import sys
import time

import numpy as np
import torch
from loss_landscapes import random_plane
from loss_landscapes.metrics import Loss


def main():
    weights, data, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    w = np.load(weights)
    d = np.load(data)
    torch.manual_seed(0)
    layers = []
    for i in range(3):
        lin = torch.nn.Linear(*w[f"k{i}"].shape)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w[f"k{i}"].T.copy()))
            lin.bias.copy_(torch.from_numpy(w[f"b{i}"]))
        layers += [lin, torch.nn.ReLU()] if i < 2 else [lin]
    model = torch.nn.Sequential(*layers).eval()
    x = torch.from_numpy(d["x"])
    y = torch.from_numpy(d["y"].astype(np.int64))
    crit = torch.nn.CrossEntropyLoss()
    metric = Loss(crit, x, y)
    with torch.no_grad():
        centre = float(crit(model(x), y))
        for _ in range(5):
            crit(model(x), y)
        ts = []
        for _ in range(50):
            t = time.perf_counter()
            crit(model(x), y).item()
            ts.append(time.perf_counter() - t)
    t = time.perf_counter()
    grid = random_plane(
        model, metric, distance=1, steps=steps, normalization="filter", deepcopy_model=True
    )
    elapsed = time.perf_counter() - t
    print(
        json.dumps(
            {
                "random_plane_s": elapsed,
                "torch_floor_s": float(np.median(ts)) * steps * steps,
                "torch_call_ms": float(np.median(ts)) * 1e3,
                "centre_loss": centre,
                "grid_shape": list(grid.shape),
                "grid_finite": bool(np.all(np.isfinite(grid))),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
