"""Timings of landscape.connect: curve training, profile evaluation, weight matching.

Workload: digits (1437 training / 360 test examples), MLP 64-256-256-10 (the benchmark network),
float32, two networks trained from seeds 1 and 2 (1000 Adam steps each, not timed).

* fit_curve: steps per second of Bezier curve training (batch 128) with 1 value of t per step
  (Garipov et al.'s setting) and with 4 (vectorised), after a warm-up call that compiles;
* profile: a 61-point profile plus 3 refinement rounds, train and test sets (the engine's
  many-point evaluation), after a warm-up call;
* align: weight matching (tracing, assignment sweeps, permuting), median of repeats.

The peers (timgaripov/dnn-mode-connectivity, samuela/git-re-basin) are script repositories,
not installable packages, so there is no peer column here (see RESULTS.md).

Run: python benchmarks/connect/bench_connect.py
"""

from __future__ import annotations

import os
import platform
import time

# compile seconds are part of the results: measured cold, without the default on-disk cache
os.environ.setdefault("LANDSCAPE_COMPILATION_CACHE", "0")

import jax
import numpy as np
import optax

import landscape
import landscape.connect as lc


def _median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        jax.block_until_ready(jax.tree.leaves(out))
        times.append(time.perf_counter() - t)
    return float(np.median(times)), float(np.min(times))


def main(repeats: int = 5):
    d = landscape.load_data("digits")
    runs = []
    for seed in (1, 2):
        m = landscape.make_model("mlp", input_shape=(64,), num_outputs=10, seed=seed)
        runs.append(landscape.train(m, d.train, optimizer=optax.adam(1e-3), num_steps=1000,
                                    batch_size=64, seed=seed, progress=False))
    loss_fn = landscape.make_loss_fn(runs[0].model)
    a, b = runs[0].params, runs[1].params
    rows = []
    for num_ts in (1, 4):
        opt = optax.adam(1e-3)
        steps = 200

        def fit(num_ts=num_ts, opt=opt, steps=steps):
            return lc.fit_curve(loss_fn, a, b, d.train, num_steps=steps, optimizer=opt,
                                batch_size=128, num_ts=num_ts, key=jax.random.key(0),
                                progress=False).controls

        fit()  # compile
        med, best = _median_time(fit, repeats)
        rows.append((f"fit_curve, Bezier, batch 128, {num_ts} t per step", f"{steps / med:.0f} steps/s",
                     f"{med:.3f} s per {steps} steps (best {best:.3f})"))
    path = lc.linear_path(a, b)

    def prof():
        pr = lc.profile(loss_fn, path, d.train, test_data=d.test)
        return pr.train["loss"]

    prof()
    med, best = _median_time(prof, repeats)
    n = lc.profile(loss_fn, path, d.train, test_data=d.test).ts.size
    rows.append((f"profile, 61 t + refinement ({n} points), train + test", f"{n * 1797 / med:.3g} example-evaluations/s",
                 f"{med:.3f} s (best {best:.3f})"))

    def al():
        return lc.align(runs[0].model, a, b, key=jax.random.key(0)).params

    al()
    med, best = _median_time(al, repeats)
    rows.append(("align, weight matching (2 groups of 256)", "", f"{med:.3f} s (best {best:.3f})"))
    print(f"machine: {platform.machine()}, {jax.device_count()} x {jax.default_backend()}, "
          f"{platform.platform()}, jax {jax.__version__}; median of {repeats} after a warm-up call")
    print("| workload | throughput | time |")
    print("|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
