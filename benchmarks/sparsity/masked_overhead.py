"""Masked training overhead: ``landscape.train(..., mask=m)`` against plain training.

Workload: digits training set (1437 examples), MLP 64-256-256-10 (float32, 85 k parameters),
cross-entropy, batch 64, 500 steps per run (blocks of 50 steps per compiled call), with SGD
+ momentum and with Adam; the mask prunes 80% of the kernels (global magnitude pruning of the
initialisation). Every variant is compiled and run once first (warm-up), then the variants run
interleaved (round robin) so machine noise hits them alike; medians over repeats of the whole
``train`` call (evaluation at start and end included, ``eval_every=500``).
Run: python benchmarks/sparsity/masked_overhead.py [repeats]
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time

import jax
import numpy as np

import landscape
from landscape import sparsity


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "n/a"


def main(repeats: int = 7):
    before = uptime()
    ds = landscape.load_data("digits")
    model = landscape.make_model(
        "mlp", input_shape=(64,), num_outputs=10, hidden=(256, 256), seed=0
    )
    mask = sparsity.magnitude_prune(model.params, 0.8)
    common = dict(num_steps=500, batch_size=64, eval_every=500, progress=False, seed=0)
    variants = {}
    for opt in ("momentum", "adam"):
        lr = 0.05 if opt == "momentum" else 1e-3
        variants[f"{opt} plain"] = lambda o=opt, lr=lr: landscape.train(
            model, ds.train, optimizer=o, learning_rate=lr, **common
        )
        variants[f"{opt} masked"] = lambda o=opt, lr=lr: landscape.train(
            model, ds.train, optimizer=o, learning_rate=lr, mask=mask, **common
        )
    for f in variants.values():  # warm-up: compile every program
        jax.block_until_ready(f().params)
    times = {k: [] for k in variants}
    for _ in range(repeats):
        for k, f in variants.items():
            t = time.perf_counter()
            jax.block_until_ready(f().params)
            times[k].append(time.perf_counter() - t)
    med = {k: float(np.median(v)) for k, v in times.items()}
    out = {
        "workload": "digits train (1437), MLP 64-256-256-10 float32, batch 64, 500 steps, "
        "mask 80% of kernels pruned",
        "repeats": repeats,
        "median_s": med,
        "per_step_ms": {k: 1e3 * v / 500 for k, v in med.items()},
        "overhead": {
            opt: med[f"{opt} masked"] / med[f"{opt} plain"] - 1 for opt in ("momentum", "adam")
        },
        "all_s": times,
        "machine": {
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "jax": jax.__version__,
            "devices": str(jax.devices()),
            "cpu_count": os.cpu_count(),
        },
        "uptime_before": before,
        "uptime_after": uptime(),
    }
    print(json.dumps({k: out[k] for k in ("median_s", "per_step_ms", "overhead")}, indent=1))
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "masked_overhead.json")
    with open(path, "w") as fh:
        json.dump(out, fh, indent=1)
    return out


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 7)
