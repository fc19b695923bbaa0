"""Loss-surface benchmark: a 51 x 51 filter-normalised plane over the full training set.

Workload: digits (the 1437 training examples), MLP 64-256-256-10 (ReLU), cross-entropy, float32,
weights from 1000 Adam steps (lr 1e-3, batch 64, seed 0; not timed). The SAME weights are
exported to the PyTorch peer.

Timed, interleaved round robin (ours, then loss-landscapes, each round), medians over rounds,
after a warm-up call of each of our variants (compilation reported separately):

* ours: ``landscape.surface.slice_2d`` (loss AND accuracy at every point), in several settings:
  the default (``lax.map`` over chunks of 64 points, batches of 1024), one batch of 1437, the
  first-layer trick (``first_layer=affine_first_layer(model)``), ``vmap`` chunks, ``map_batch``;
* the peer: ``loss_landscapes.random_plane(model, Loss(CrossEntropyLoss, X, y), distance=1,
  steps=51, normalization="filter")`` (loss only), in .venv-torch (benchmarks/envs/
  make_torch_env.sh), timed inside its process;
* the floor: 2601 x the median time of ONE jitted full-data-set loss call (loss only, and loss
  plus accuracy), measured in the same run; and the torch floor (2601 x one torch forward).

Accuracy: our grid against direct evaluation (``landscape.evaluate`` at params + a d1 + b d2)
at random grid points, and every variant against the default.

Run: python benchmarks/surface/bench_surface.py [--rounds 3] [--steps 51]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# compile seconds are part of the results: measured cold, without the default on-disk cache
os.environ.setdefault("LANDSCAPE_COMPILATION_CACHE", "0")

import jax
import jax.numpy as jnp
import numpy as np
import optax

import landscape
from landscape import surface

ROOT = Path(__file__).resolve().parents[2]
TORCH_PY = ROOT / ".venv-torch" / "bin" / "python"


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _median_call(f, n=50):
    jax.block_until_ready(f())
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        jax.block_until_ready(f())
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=51)
    ap.add_argument("--skip-torch", action="store_true")
    args = ap.parse_args()
    steps = args.steps
    npts = steps * steps

    d = landscape.load_data("digits")
    train = d.train
    n = train["x"].shape[0]
    model0 = landscape.make_model("mlp", input_shape=(64,), num_outputs=10, seed=0)
    run = landscape.train(
        model0,
        train,
        optimizer=optax.adam(1e-3),
        num_steps=1000,
        batch_size=64,
        seed=0,
        progress=False,
    )
    model = run.model
    p = model.params
    loss_fn = landscape.make_loss_fn(model)
    fl = surface.affine_first_layer(model)
    d1, d2 = surface.random_directions(jax.random.key(0), p, 2)
    ab = dict(alphas=np.linspace(-1, 1, steps), betas=np.linspace(-1, 1, steps))

    tmp = Path(tempfile.mkdtemp(prefix="bench_surface_"))
    np.savez(
        tmp / "w.npz",
        **{f"k{i}": np.asarray(p["layers"][i]["kernel"]) for i in range(3)},
        **{f"b{i}": np.asarray(p["layers"][i]["bias"]) for i in range(3)},
    )
    np.savez(tmp / "d.npz", x=np.asarray(train["x"], np.float32), y=np.asarray(train["y"]))

    def sl(first_layer=None, **settings):
        gs = landscape.GridSettings(**settings)
        return lambda: surface.slice_2d(loss_fn, p, train, (d1, d2), **ab, first_layer=first_layer,
                                        settings=gs)

    variants = {
        "slice_2d default (map, chunk 64, batch 1024)": sl(),
        "slice_2d, one batch of 1437": sl(batch_size=n),
        "slice_2d + first-layer trick (batch 1024)": sl(first_layer=fl),
        "slice_2d + first-layer trick, one batch": sl(first_layer=fl, batch_size=n),
        "slice_2d map_batch=4, one batch": sl(batch_size=n, map_batch=4),
        "slice_2d vmap, chunk 64, one batch": sl(batch_size=n, strategy="vmap", chunk_size=64),
    }
    full = jax.tree.map(jnp.asarray, train)
    loss_only = jax.jit(lambda q, b: loss_fn(q, b)[0])
    loss_aux = jax.jit(lambda q, b: loss_fn(q, b))

    load0 = os.getloadavg()
    results = {}
    compile_s = {}
    for k, f in variants.items():
        t = time.perf_counter()
        results[k] = f()
        compile_s[k] = time.perf_counter() - t
    times = {k: [] for k in variants}
    floor = {"loss": [], "loss+acc": []}
    theirs = []
    for r in range(args.rounds):
        floor["loss"].append(_median_call(lambda: loss_only(p, full)) * npts)
        floor["loss+acc"].append(_median_call(lambda: loss_aux(p, full)) * npts)
        for k, f in variants.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
        if not args.skip_torch:
            out = subprocess.run(
                [
                    str(TORCH_PY),
                    str(Path(__file__).with_name("worker_torch.py")),
                    str(tmp / "w.npz"),
                    str(tmp / "d.npz"),
                    str(steps),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            theirs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    load1 = os.getloadavg()

    # accuracy: direct evaluation at random grid points; variants against the default
    ref = results["slice_2d default (map, chunk 64, batch 1024)"]
    rng = np.random.default_rng(0)
    errs = []
    for i, j in rng.integers(0, steps, size=(8, 2)):
        q = jax.tree.map(
            lambda x, u, v, i=i, j=j: (
                x + np.float32(ab["alphas"][i]) * u + np.float32(ab["betas"][j]) * v
            ),
            p,
            d1.vector,
            d2.vector,
        )
        direct = landscape.evaluate(loss_fn, q, train)
        errs.append(
            abs(float(direct["loss"]) - float(ref.loss[i, j])) / abs(float(direct["loss"]))
        )
    var_err = {
        k: float(np.max(np.abs(v.loss - ref.loss) / np.abs(ref.loss))) for k, v in results.items()
    }

    ll = [t["random_plane_s"] for t in theirs]
    print(
        f"machine: {_cpu()}, {os.cpu_count()} cores, {platform.platform()}; "
        f"jax {jax.__version__}, {jax.device_count()} x {jax.default_backend()}; "
        f"load average {load0[0]:.1f} -> {load1[0]:.1f} (shared machine)"
    )
    print(
        f"workload: digits train n={n}, MLP 64-256-256-10, {steps}x{steps} = {npts} points, "
        f"{args.rounds} rounds (ours, the floor and loss-landscapes interleaved in each round)"
    )
    if theirs:
        print(
            f"loss at the centre: ours {float(ref.loss[steps // 2, steps // 2]):.6f}, "
            f"torch {theirs[0]['centre_loss']:.6f}; torch {theirs[0]['torch']}, "
            f"{theirs[0]['threads']} threads"
        )
    print()
    print("Ratios are taken per round (same machine state), then the median over rounds.")
    print()
    print("| variant | median (s) | best (s) | ms / point | / floor | loss-landscapes / this |")
    print("|---|---|---|---|---|---|")

    def row(name, ts):
        ts = np.asarray(ts)
        to_floor = np.median(ts / np.asarray(floor["loss"]))
        sp = f"{np.median(np.asarray(ll) / ts):.1f}x" if theirs else "-"
        print(
            f"| {name} | {np.median(ts):.2f} | {ts.min():.2f} | "
            f"{np.median(ts) / npts * 1e3:.2f} | {to_floor:.2f} | {sp} |"
        )

    for k in variants:
        row(f"ours: {k} (compile + first run {compile_s[k]:.1f} s)", times[k])
    row(f"floor: {npts} x one jitted full-data loss (loss only)", floor["loss"])
    row(f"floor: {npts} x one jitted full-data loss + accuracy", floor["loss+acc"])
    if theirs:
        row("loss-landscapes random_plane, filter norm (loss only)", ll)
        row(
            f"torch floor: {npts} x one torch forward + loss", [t["torch_floor_s"] for t in theirs]
        )
    print()
    print(
        "accuracy: max relative |grid - direct evaluation| at 8 random points: "
        f"{max(errs):.1e} (float32)"
    )
    for k, e in var_err.items():
        print(f"  variant {k}: max relative difference to the default {e:.1e}")
    print("raw times (s): " + json.dumps({k: [round(x, 2) for x in v] for k, v in times.items()}))
    print("floor (s): " + json.dumps({k: [round(x, 2) for x in v] for k, v in floor.items()}))
    if theirs:
        print("loss-landscapes (s): " + json.dumps([round(t, 2) for t in ll]))


if __name__ == "__main__":
    main()
