"""Loss-surface benchmark: a 51 x 51 filter-normalised plane over the whole data set.

Workload (issue 12, the same as benchmarks/hessian's W1): digits, all 1797 examples, MLP
64-256-256-10 (ReLU), cross-entropy, float32, trained for 20 epochs of Adam (lr 1e-3, batch
64, seed 0; not timed). The SAME weights and data are exported to the PyTorch peer.

Timed, alternating in every round (each of our variants, then loss-landscapes), medians over
rounds, after a warm-up call of each of our variants (compilation + first run reported):

* ours: ``landscape.surface.slice_2d`` (loss AND accuracy at every point): the default
  (``first_layer="auto"``: the first-layer trick, found from the traced program; ``lax.map``
  over chunks of 64 points, batches of 1024), the plain evaluation (``first_layer=None``), each
  also with one batch of 1797; and the adaptive grid (``adaptive=Adaptive(...)``, two
  tolerances), whose error against the full grid is reported;
* the peer: ``loss_landscapes.random_plane(model, Loss(CrossEntropyLoss, X, y), distance=1,
  steps=51, normalization="filter")`` (loss only), in .venv-torch (benchmarks/envs/
  make_torch_env.sh), timed inside its own process;
* the floor: 2601 x the median time of ONE jitted full-data loss call (loss only, and loss
  plus accuracy), measured in every round; the torch floor (2601 x one torch forward + loss).

The machine's load (``uptime``) is recorded before and after, and the CPU that OTHER processes
used during the timed rounds (``/proc/stat`` busy time minus this process's and its children's):
the load average also counts this benchmark's own two threads. A run that starts at load > 1.5
(on 2 cores) or shares the machine with more than half a core of other work is marked loaded,
and its ratios are not a headline.

Run: python benchmarks/surface/bench_surface.py [--rounds 5] [--steps 51] [--out results.json]
"""

from __future__ import annotations

import argparse
import datetime
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
LOADED = 1.5
QUIET = 0.1  # cores of other processes below which a round counts as quiet


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _busy_s() -> float:
    """CPU seconds spent busy on all cores since boot (``/proc/stat``)."""
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:9]]
    return (sum(vals) - vals[3] - vals[4]) / os.sysconf("SC_CLK_TCK")


def _own_s() -> float:
    """CPU seconds of this process and its finished children (the torch workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _median_call(f, n=50):
    jax.block_until_ready(f())
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        jax.block_until_ready(f())
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def workload(epochs: int = 20):
    """benchmarks/hessian's W1: digits (all 1797 examples), MLP 64-256-256-10, Adam."""
    ds = landscape.load_data("digits")
    x = np.concatenate([ds.train["x"], ds.test["x"]]).astype(np.float32)
    y = np.concatenate([ds.train["y"], ds.test["y"]]).astype(np.int32)
    data = {"x": x, "y": y}
    model = landscape.make_model(
        "mlp", input_shape=(64,), num_outputs=10, hidden=(256, 256), seed=0
    )
    run = landscape.train(
        model,
        data,
        optimizer=optax.adam(1e-3),
        num_epochs=epochs,
        batch_size=64,
        seed=0,
        progress=False,
    )
    return data, run.model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=51)
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).with_name("results.json")))
    args = ap.parse_args()
    steps = args.steps
    npts = steps * steps

    data, model = workload()
    n = data["x"].shape[0]
    p = model.params
    loss_fn = landscape.make_loss_fn(model)
    d1, d2 = surface.random_directions(jax.random.key(0), p, 2)
    ab = dict(alphas=np.linspace(-1, 1, steps), betas=np.linspace(-1, 1, steps))

    tmp = Path(tempfile.mkdtemp(prefix="bench_surface_"))
    np.savez(
        tmp / "w.npz",
        **{f"k{i}": np.asarray(p["layers"][i]["kernel"]) for i in range(3)},
        **{f"b{i}": np.asarray(p["layers"][i]["bias"]) for i in range(3)},
    )
    np.savez(tmp / "d.npz", x=data["x"], y=data["y"])

    def sl(first_layer="auto", adaptive=None, **settings):
        gs = landscape.GridSettings(**settings)
        return lambda: surface.slice_2d(
            loss_fn,
            p,
            data,
            (d1, d2),
            **ab,
            first_layer=first_layer,
            adaptive=adaptive,
            settings=gs,
        )

    variants = {
        "default (first_layer='auto': trick applied; batch 1024)": sl(),
        "first-layer trick, one batch of 1797": sl(batch_size=n),
        "plain (first_layer=None), batch 1024": sl(first_layer=None),
        "plain (first_layer=None), one batch": sl(first_layer=None, batch_size=n),
        "adaptive, tol 1e-2 (default Adaptive())": sl(adaptive=surface.Adaptive()),
        "adaptive, tol 3e-3": sl(adaptive=surface.Adaptive(tol=3e-3)),
    }
    default = next(iter(variants))
    plain = "plain (first_layer=None), batch 1024"
    full = jax.tree.map(jnp.asarray, data)
    loss_only = jax.jit(lambda q, b: loss_fn(q, b)[0])
    loss_aux = jax.jit(lambda q, b: loss_fn(q, b))

    uptime0 = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    load0 = os.getloadavg()
    results = {}
    compile_s = {}
    for k, f in variants.items():
        t = time.perf_counter()
        results[k] = f()
        compile_s[k] = time.perf_counter() - t
    busy0, own0, wall0 = _busy_s(), _own_s(), time.perf_counter()
    times = {k: [] for k in variants}
    floor = {"loss": [], "loss+acc": []}
    theirs = []
    loads = []
    others_round, others_peer = [], []

    def others_since(b, o, w):  # cores used by other processes since (busy, own, wall)
        return max(0.0, (_busy_s() - b) - (_own_s() - o)) / (time.perf_counter() - w)

    for r in range(args.rounds):
        loads.append(os.getloadavg()[0])
        mark = _busy_s(), _own_s(), time.perf_counter()
        floor["loss"].append(_median_call(lambda: loss_only(p, full)) * npts)
        floor["loss+acc"].append(_median_call(lambda: loss_aux(p, full)) * npts)
        for k, f in variants.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
        if not args.skip_torch:
            peer = _busy_s(), _own_s(), time.perf_counter()
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
            others_peer.append(others_since(*peer))
        others_round.append(others_since(*mark))
        print(
            f"round {r + 1}/{args.rounds} done (load {loads[-1]:.2f}, other processes "
            f"{others_round[-1]:.2f} cores)",
            file=sys.stderr,
            flush=True,
        )
    load1 = os.getloadavg()
    wall = time.perf_counter() - wall0
    # CPU used by other processes during the timed rounds, in cores (the load average counts
    # this benchmark's own two threads too)
    others = max(0.0, (_busy_s() - busy0) - (_own_s() - own0)) / wall
    uptime1 = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    loaded = load0[0] > LOADED or others > 0.5

    # accuracy: direct evaluation at random grid points; variants against the plain grid
    ref = results[plain]
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
        direct = landscape.evaluate(loss_fn, q, data)
        errs.append(
            abs(float(direct["loss"]) - float(ref.loss[i, j])) / abs(float(direct["loss"]))
        )
    var_err = {}
    for k, v in results.items():
        rel = np.abs(v.loss - ref.loss) / np.abs(ref.loss)
        e = {
            "max_rel_loss": float(rel.max()),
            "max_abs_loss": float(np.abs(v.loss - ref.loss).max()),
            "max_abs_accuracy": float(np.abs(v.train["accuracy"] - ref.train["accuracy"]).max()),
        }
        if v.evaluated is not None:
            info = v.settings["adaptive"]
            e.update(
                fraction_evaluated=info["fraction_evaluated"],
                num_evaluated=info["num_evaluated"],
                rounds=info["rounds"],
                atol_used=info["atol_used"],
                max_abs_over_range=e["max_abs_loss"] / float(ref.loss.max() - ref.loss.min()),
                max_rel_at_evaluated=float(rel[v.evaluated].max()),
            )
        var_err[k] = e

    ll = [t["random_plane_s"] for t in theirs]
    machine = (
        f"{_cpu()}, {os.cpu_count()} cores, {platform.platform()}; jax {jax.__version__}, "
        f"{jax.device_count()} x {jax.default_backend()}"
    )
    print(f"machine: {machine}")
    print(f"uptime before: {uptime0}")
    print(f"uptime after:  {uptime1}")
    print(
        f"load average {load0[0]:.2f} -> {load1[0]:.2f} (per round: "
        f"{', '.join(f'{x:.2f}' for x in loads)}); other processes used {others:.2f} cores "
        f"during the timed rounds{'; LOADED: ratios not a headline' if loaded else ''}"
    )
    print(
        f"workload: digits n={n}, MLP 64-256-256-10, {steps}x{steps} = {npts} points, "
        f"{args.rounds} rounds (ours, the floor and loss-landscapes alternated in each round)"
    )
    if theirs:
        print(
            f"loss at the centre: ours {float(ref.loss[steps // 2, steps // 2]):.6f}, "
            f"torch {theirs[0]['centre_loss']:.6f}; torch {theirs[0]['torch']}, "
            f"{theirs[0]['threads']} threads"
        )
    print(f"first layer (default): {results[default].settings['first_layer']}")
    print()
    quiet = [r for r, o in enumerate(others_round) if o < QUIET]
    print(
        f"quiet rounds (other processes < {QUIET} cores during the round): "
        f"{[r + 1 for r in quiet]} of {args.rounds}"
    )
    print(
        "| variant | median (s) | best (s) | ms / point | / floor | loss-landscapes / this "
        "| the same, quiet rounds only |"
    )
    print("|---|---|---|---|---|---|---|")

    rows = {}

    def row(name, ts):
        ts = np.asarray(ts)
        to_floor = float(np.median(ts / np.asarray(floor["loss"])))
        ratio = float(np.median(np.asarray(ll) / ts)) if theirs else None
        qratio = float(np.median((np.asarray(ll) / ts)[quiet])) if theirs and quiet else None
        rows[name] = {
            "times": [float(x) for x in ts],
            "median": float(np.median(ts)),
            "best": float(ts.min()),
            "to_floor": to_floor,
            "ratio": ratio,
            "ratio_quiet_rounds": qratio,
        }
        sp = f"{ratio:.2f}x" if ratio is not None else "-"
        qp = f"{qratio:.2f}x" if qratio is not None else "-"
        print(
            f"| {name} | {np.median(ts):.2f} | {ts.min():.2f} | {np.median(ts) / npts * 1e3:.2f} | "
            f"{to_floor:.2f} | {sp} | {qp} |"
        )

    for k in variants:
        row(f"ours: {k}", times[k])
    row(f"floor: {npts} x one jitted full-data loss (loss only)", floor["loss"])
    row(f"floor: {npts} x one jitted full-data loss + accuracy", floor["loss+acc"])
    if theirs:
        row("loss-landscapes random_plane, filter norm (loss only)", ll)
        row(
            f"torch floor: {npts} x one torch forward + loss", [t["torch_floor_s"] for t in theirs]
        )
    print()
    print("compile + first run (s): " + json.dumps({k: round(v, 2) for k, v in compile_s.items()}))
    print(
        f"accuracy: max relative |plain grid - direct evaluation| at 8 random points: {max(errs):.1e}"
    )
    for k, e in var_err.items():
        print(
            f"  {k}: "
            + ", ".join(
                f"{a}={b:.3g}" if isinstance(b, float) else f"{a}={b}" for a, b in e.items()
            )
        )
    out = {
        "date": datetime.date.today().isoformat(),
        "machine": machine,
        "uptime_before": uptime0,
        "uptime_after": uptime1,
        "load_before": load0,
        "load_after": load1,
        "load_per_round": loads,
        "other_processes_cores": others,
        "other_processes_cores_per_round": others_round,
        "other_processes_cores_during_peer": others_peer,
        "quiet_rounds": [r + 1 for r in quiet],
        "loaded": loaded,
        "workload": {"n": n, "steps": steps, "rounds": args.rounds},
        "torch": theirs[0]["torch"] if theirs else None,
        "first_layer": results[default].settings["first_layer"],
        "rows": rows,
        "compile_s": compile_s,
        "direct_error": max(errs),
        "variant_error": var_err,
    }
    Path(args.out).write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
