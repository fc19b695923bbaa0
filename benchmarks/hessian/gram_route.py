"""The GGN top-k and full spectrum through the output Gram (``solver="gram"``) against Lanczos
(``solver="lanczos"``, the default for an int ``k``) on a small-N problem.

Workload: scikit-learn digits, MLP 64-32-10 (2442 parameters), trained 150 Adam steps
(lr 1e-2, batch 64, seed 0) on the first N training examples, float32, cross-entropy; the GGN of
those N examples (N = 100 and 300: N*C = 1000 and 3000). Per setting:

* warm: the median over ``--repeats`` calls in one process after one warm-up call (compiled
  programs reused: a second call of either solver compiles nothing);
* fresh: the median over ``--fresh`` new Python processes of the first call's time (tracing and
  compilation included) and of the whole process (imports included).

Agreement: ``max_i |gram_i - lanczos_i| / lambda_1`` of the top-k values. Times depend on the
load (2 shared cores): ``uptime`` is recorded before and after.

    python benchmarks/hessian/gram_route.py --repeats 5 --fresh 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("LANDSCAPE_COMPILATION_CACHE", "0")

HERE = Path(__file__).resolve().parent
SIZES = (100, 300)
KS = (1, 5)
HIDDEN = 32


def _setup(n, params_file):
    import jax
    import numpy as np

    import landscape

    ds = landscape.load_data("digits")
    data = {
        "x": np.asarray(ds.train["x"][:n], np.float32),
        "y": np.asarray(ds.train["y"][:n], np.int32),
    }
    model = landscape.make_model(
        "mlp", input_shape=(64,), num_outputs=10, hidden=(HIDDEN,), seed=0
    )
    leaves = list(np.load(params_file).values())
    params = jax.tree.unflatten(jax.tree.structure(model.params), leaves)
    model = model.replace(params=params) if hasattr(model, "replace") else model
    return landscape.make_loss_fn(model), params, data


def _call(loss, params, data, solver, k):
    import jax

    from landscape import hessian

    t = time.perf_counter()
    res = hessian.eigenvalues(
        loss, params, data, curvature="ggn", solver=solver, k=k, key=jax.random.key(0)
    )
    return time.perf_counter() - t, res


def worker(n, solver, k, params_file):
    t0 = time.perf_counter()
    loss, params, data = _setup(n, params_file)
    dt, res = _call(loss, params, data, solver, k)
    print(
        json.dumps(
            {"first_call_s": dt, "process_s": time.perf_counter() - t0, "num_hvps": res.num_hvps}
        )
    )


def train_params(path):
    import jax
    import numpy as np
    import optax

    import landscape

    ds = landscape.load_data("digits")
    data = {
        "x": np.asarray(ds.train["x"][: max(SIZES)], np.float32),
        "y": np.asarray(ds.train["y"][: max(SIZES)], np.int32),
    }
    model = landscape.make_model(
        "mlp", input_shape=(64,), num_outputs=10, hidden=(HIDDEN,), seed=0
    )
    run = landscape.train(
        model,
        data,
        optimizer=optax.adam(1e-2),
        num_steps=150,
        batch_size=64,
        seed=0,
        progress=False,
    )
    np.savez(path, *[np.asarray(a) for a in jax.tree.leaves(run.model.params)])


def uptime():
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--fresh", type=int, default=3)
    ap.add_argument("--worker", nargs=4, metavar=("N", "SOLVER", "K", "PARAMS"))
    args = ap.parse_args()
    if args.worker:
        n, solver, k, pf = args.worker
        worker(int(n), solver, k if k == "all" else int(k), pf)
        return
    import jax
    import numpy as np

    out = {"uptime_before": uptime(), "workload": __doc__.split("\n\n")[1], "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        pf = str(Path(tmp) / "params.npz")
        train_params(pf)
        for n in SIZES:
            loss, params, data = _setup(n, pf)
            for k in (*KS, "all"):
                solvers = ("gram",) if k == "all" else ("gram", "lanczos")
                vals = {}
                for solver in solvers:
                    _call(loss, params, data, solver, k)  # warm-up (compiles)
                    times, res = [], None
                    for _ in range(args.repeats):
                        dt, res = _call(loss, params, data, solver, k)
                        times.append(dt)
                    vals[solver] = res.values
                    fresh = []
                    if k == 5 or k == "all":
                        for _ in range(args.fresh):
                            p = subprocess.run(
                                [sys.executable, __file__, "--worker", str(n), solver, str(k), pf],
                                capture_output=True,
                                text=True,
                                check=True,
                            )
                            fresh.append(json.loads(p.stdout.strip().splitlines()[-1]))
                    row = {
                        "N": n,
                        "NC": n * 10,
                        "k": k,
                        "solver": solver,
                        "warm_median_s": float(np.median(times)),
                        "warm_s": times,
                        "num_hvps": res.num_hvps,
                        "num_values": len(res.values),
                        "rank": res.rank,
                        "num_zero": res.num_zero,
                        "top_values": [float(v) for v in res.values[:5]],
                    }
                    if fresh:
                        row["fresh_first_call_median_s"] = float(
                            np.median([f["first_call_s"] for f in fresh])
                        )
                        row["fresh_process_median_s"] = float(
                            np.median([f["process_s"] for f in fresh])
                        )
                    print(json.dumps(row), flush=True)
                    out["rows"].append(row)
                if len(vals) == 2:
                    err = float(np.max(np.abs(vals["gram"] - vals["lanczos"])) / vals["gram"][0])
                    out["rows"][-1]["gram_vs_lanczos_rel_err"] = err
                    out["rows"][-2]["gram_vs_lanczos_rel_err"] = err
    out["uptime_after"] = uptime()
    out["jax"] = jax.__version__
    out["repeats"], out["fresh"] = args.repeats, args.fresh
    (HERE / "gram_route.json").write_text(json.dumps(out, indent=1))
    print(out["uptime_before"], "|", out["uptime_after"])


if __name__ == "__main__":
    main()
