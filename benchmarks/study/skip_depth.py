"""Skip connections against depth on digits: Li et al. (2018), Figure 1, at demo scale.

Li et al. show the 2-D filter-normalised loss surface of ResNet-56 staying convex-looking with
skip connections and turning chaotic without them. This study asks at which depth removing the
skips starts to matter on the embedded ``digits`` images (8 x 8 x 1, 1437 training examples),
and what the four-variant comparison (skip x batch norm) costs on a small CPU.

For each ``blocks`` value (``widths`` stages of ``blocks`` basic blocks, about
``2 * len(widths) * blocks + 2`` layers) and each variant, the SAME training budget (optimiser,
learning rate, schedule, epochs, batch size, seeds) is used, then measured on the training set:

* final train loss / accuracy and test accuracy (the last exact evaluation of ``train``);
* the top Hessian eigenvalue of the full-data loss (at the trained point, batch norm in
  evaluation mode);
* a ``grid x grid`` slice ``alpha, beta in [-1, 1]`` along two filter-normalised random
  directions (``surface.random_directions``, key 1; ``bn="fixed"``: the trained running
  statistics, as Li et al.'s ``net.eval()``), and from it
  - ``nonconvex``: the fraction of grid points in the disc ``r <= 0.5`` whose discrete 2-D
    Hessian (central differences) has ``lambda_min < -0.01 |lambda_max|``: the surface analogue
    of Li et al.'s ``|lambda_min / lambda_max|`` non-convexity maps, restricted to the region
    where a well-trained convex-looking surface should be a bowl;
  - ``minima``: the number of strict local minima among the interior grid points (8
    neighbours): 1 for a bowl, many for a chaotic surface;
  - the loss at the centre, on the ``r = 0.5`` circle (mean of the nearest grid points) and on
    the grid edge (mean of the boundary ring), i.e. how steep the basin walls are.

The top eigenvalue is ``hessian.eigenvalues(k=1, tol=--eig-tol)``. ``--eigen host`` computes it
instead by a host-side Lanczos (full reorthogonalisation, float64 Rayleigh-Ritz, stopped when
the Ritz residual is below ``--eig-tol`` times the value, at most ``--eig-products`` products)
over the products of ``hessian.make_hvp`` called from Python: the workaround for trees without
``engine.canonical_convs``, where XLA:CPU ran the convolutions inside the compiled Lanczos loop
about 30x slower (5-10 s per product against 0.3 s; B=1: 50 s for ``hessian.eigenvalues``).

Compilation is part of every timing (the persistent compilation cache is off unless
``--warm-cache``), as a first run of the demo would see it. The load average is recorded
before and after each variant: the machine may be shared.

Run: python benchmarks/study/skip_depth.py --blocks 1 2 4 --epochs 20 --grid 15
Results are merged into benchmarks/study/skip_depth.json (an entry per depth, variant and
setting; a rerun of the same setting replaces its entry).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

if "--warm-cache" not in sys.argv:
    os.environ.setdefault("LANDSCAPE_COMPILATION_CACHE", "0")

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import landscape
from landscape import hessian, surface

OUT = Path(__file__).resolve().with_suffix(".json")
VARIANTS = ((True, True), (False, True), (True, False), (False, False))  # (skip, batch_norm)
NAMES = {
    (True, True): "skip+BN",
    (False, True): "noskip+BN",
    (True, False): "skip",
    (False, False): "plain",
}


# --------------------------------------------------------------------------------------------
# Measures
# --------------------------------------------------------------------------------------------
def top_eigenvalue(loss_fn, params, data, *, key, max_products: int, tol: float) -> dict:
    """Largest Hessian eigenvalue by Lanczos on the host over ``make_hvp`` products."""
    op = hessian.make_hvp(loss_fn, params, data)
    flat0, unravel = ravel_pytree(params)
    dtype = flat0.dtype
    q = np.asarray(jax.random.normal(key, flat0.shape, dtype), np.float64)
    q /= np.linalg.norm(q)
    basis, alphas, betas = [], [], []
    value, residual = float("nan"), float("inf")
    for _ in range(min(max_products, flat0.size)):
        basis.append(q)
        w = np.asarray(ravel_pytree(op(unravel(jnp.asarray(q, dtype))))[0], np.float64)
        alphas.append(float(q @ w))
        Q = np.stack(basis)
        for _ in range(2):  # full reorthogonalisation, twice is enough
            w -= Q.T @ (Q @ w)
        b = float(np.linalg.norm(w))
        t = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        theta, y = np.linalg.eigh(t)
        value, residual = float(theta[-1]), abs(b * y[-1, -1])
        if residual <= tol * abs(value) or b == 0.0:
            break
        betas.append(b)
        q = w / b
    return {"value": value, "residual": residual, "num_products": len(basis)}


def roughness(alphas, betas, loss, *, radius: float = 0.5, rel: float = 0.01) -> dict:
    """Non-convex fraction in the ``r <= radius`` disc, local minima, centre/ring/edge loss
    (the measures of ``landscape.study.surface_roughness``, under this script's JSON keys)."""
    from landscape.study import surface_roughness

    L = np.asarray(loss, np.float64)
    m = surface_roughness(L, alphas, betas, radius=radius, rel=rel)
    A, B = np.meshgrid(alphas, betas, indexing="ij")
    r = np.hypot(A, B)
    return {
        "nonconvex": m["nonconvex_fraction"],
        "disc_points": int(np.sum(r[1:-1, 1:-1] <= radius + 1e-9)),
        "minima": m["local_minima"],
        "loss_centre": float(L[np.unravel_index(np.argmin(r), r.shape)]),
        "loss_ring": m["loss_ring"],
        "loss_edge": m["loss_edge"],
        "loss_min": float(np.nanmin(L)),
        "loss_max": float(np.nanmax(L)),
    }


# --------------------------------------------------------------------------------------------
# One variant
# --------------------------------------------------------------------------------------------
def run_variant(ds, args, blocks: int, skip: bool, batch_norm: bool) -> dict:
    setting = {
        "widths": list(args.widths),
        "blocks": blocks,
        "layers": 2 * len(args.widths) * blocks + 2,
        "skip": skip,
        "batch_norm": batch_norm,
        "optimizer": args.optimizer,
        "learning_rate": args.lr,
        "schedule": args.schedule,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "weight_decay": args.weight_decay,
        "grid": args.grid,
    }
    method = {"eigen": args.eigen, "eig_tol": args.eig_tol}
    out = {
        "setting": setting,
        "method": method,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "load_before": os.getloadavg()[0],
    }
    model = landscape.make_model(
        "resnet",
        input_shape=ds.input_shape,
        num_outputs=ds.num_outputs,
        widths=tuple(args.widths),
        blocks=blocks,
        skip=skip,
        batch_norm=batch_norm,
        seed=0,
    )
    out["num_params"] = int(ravel_pytree(model.params)[0].size)
    t0 = time.perf_counter()
    try:
        res = landscape.train(
            model,
            ds.train,
            test_data=ds.test,
            optimizer=args.optimizer,
            learning_rate=args.lr,
            schedule=args.schedule,
            num_epochs=args.epochs,
            batch_size=args.batch_size,
            weight_decay=args.weight_decay,
            seed=0,
            progress=False,
        )
    except landscape.TrainingDivergedError as e:
        out.update(
            status="diverged", error=str(e).splitlines()[0], time_train=time.perf_counter() - t0
        )
        out["load_after"] = os.getloadavg()[0]
        return out
    out["time_train"] = time.perf_counter() - t0
    h = res.history
    out.update(
        status="ok",
        train_loss=float(h["train_loss"][-1]),
        train_accuracy=float(h["train_accuracy"][-1]),
        test_accuracy=float(h["test_accuracy"][-1]),
    )
    loss_fn = landscape.make_loss_fn(res.model)
    params = res.model.params

    t0 = time.perf_counter()
    if args.eigen == "library":
        ev = hessian.eigenvalues(
            loss_fn, params, ds.train, k=1, key=jax.random.key(0), tol=args.eig_tol
        )
        eig = {
            "value": float(ev.values[0]),
            "residual": float(ev.residuals[0]),
            "num_products": ev.num_hvps,
        }
    else:
        eig = top_eigenvalue(
            loss_fn,
            params,
            ds.train,
            key=jax.random.key(0),
            max_products=args.eig_products,
            tol=args.eig_tol,
        )
    out["time_eigen"] = time.perf_counter() - t0
    out["top_eigenvalue"] = eig

    t0 = time.perf_counter()
    coords = np.linspace(-1.0, 1.0, args.grid)
    dirs = surface.random_directions(jax.random.key(1), params, 2)
    sl = surface.slice_2d(loss_fn, params, ds.train, dirs, alphas=coords, betas=coords)
    out["time_surface"] = time.perf_counter() - t0
    loss = np.asarray(sl.train["loss"], np.float64)
    out["surface"] = roughness(coords, coords, loss)
    out["surface"]["num_nonfinite"] = sl.num_nonfinite
    out["surface_loss"] = np.round(loss, 6).tolist()
    out["time_total"] = out["time_train"] + out["time_eigen"] + out["time_surface"]
    out["load_after"] = os.getloadavg()[0]
    return out


# --------------------------------------------------------------------------------------------
# Table, JSON
# --------------------------------------------------------------------------------------------
HEADER = (
    f"{'L':>3} {'B':>2} {'variant':<10} {'ep':>3} {'trLoss':>7} {'trAcc':>6} {'teAcc':>6} "
    f"{'lam1':>8} {'ncvx':>5} {'mins':>4} {'L0':>7} {'L(.5)':>7} {'Ledge':>7} "
    f"{'train':>6} {'eig':>5} {'surf':>5} {'load':>9}"
)


def row(r: dict) -> str:
    s = r["setting"]
    head = f"{s['layers']:>3} {s['blocks']:>2} {NAMES[(s['skip'], s['batch_norm'])]:<10} {s['epochs']:>3}"
    load = f"{r['load_before']:.1f}-{r['load_after']:.1f}"
    if r["status"] != "ok":
        return f"{head} {r['status']} after {r['time_train']:.1f}s: {r.get('error', '')[:60]}  load {load}"
    g = r["surface"]
    return (
        f"{head} {r['train_loss']:7.4f} {r['train_accuracy']:6.3f} {r['test_accuracy']:6.3f} "
        f"{r['top_eigenvalue']['value']:8.2f} {g['nonconvex']:5.2f} {g['minima']:4d} "
        f"{g['loss_centre']:7.3f} {g['loss_ring']:7.3f} {g['loss_edge']:7.2f} "
        f"{r['time_train']:6.1f} {r['time_eigen']:5.1f} {r['time_surface']:5.1f} {load:>9}"
    )


def _key(r: dict) -> str:
    return json.dumps(r["setting"], sort_keys=True)


def save(results: list, meta: dict) -> None:
    old = json.loads(OUT.read_text()) if OUT.exists() else {"runs": []}
    merged = {_key(r): r for r in old.get("runs", [])}
    merged.update({_key(r): r for r in results})
    runs = sorted(
        merged.values(), key=lambda r: (r["setting"]["widths"], r["setting"]["blocks"], _key(r))
    )
    OUT.write_text(json.dumps({"machine": meta, "runs": runs}, indent=1) + "\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--blocks", type=int, nargs="+", default=[1, 2, 4], help="basic blocks per stage"
    )
    p.add_argument("--widths", type=int, nargs="+", default=[16, 32], help="stage widths")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--optimizer", default="momentum", help="landscape.make_optimizer name")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--schedule", default="cosine")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--grid", type=int, default=15, help="grid points per axis on [-1, 1]")
    p.add_argument(
        "--variants", nargs="+", default=list(NAMES.values()), choices=list(NAMES.values())
    )
    p.add_argument(
        "--eigen",
        choices=("library", "host"),
        default="library",
        help="hessian.eigenvalues, or a host Lanczos over make_hvp products",
    )
    p.add_argument(
        "--eig-products", type=int, default=30, help="host Lanczos: at most this many HVPs"
    )
    p.add_argument("--eig-tol", type=float, default=1e-3, help="relative eigenvalue tolerance")
    p.add_argument("--warm-cache", action="store_true", help="keep the persistent compile cache")
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args(argv)

    meta = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "jax": jax.__version__,
        "devices": [str(d) for d in jax.devices()],
        "compilation_cache": "on" if args.warm_cache else "off",
        "command": " ".join(["python", "benchmarks/study/skip_depth.py", *sys.argv[1:]]),
    }
    ds = landscape.load_data("digits", flat=False)
    by_name = {v: k for k, v in NAMES.items()}
    print(f"load {os.getloadavg()}  jax {jax.__version__}  {jax.devices()}", flush=True)
    print(HEADER, flush=True)
    results = []
    for blocks in args.blocks:
        t0 = time.perf_counter()
        for name in args.variants:
            skip, bn = by_name[name]
            r = run_variant(ds, args, blocks, skip, bn)
            results.append(r)
            print(row(r), flush=True)
            if not args.no_save:
                save(results, meta)
        print(
            f"    blocks={blocks}: {time.perf_counter() - t0:.1f} s for {len(args.variants)} variants",
            flush=True,
        )
    print(f"load {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
