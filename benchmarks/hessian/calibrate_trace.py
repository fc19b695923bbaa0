"""Trace accuracy against the exact float64 trace, over seeds (no timing): ours (Hutch++ and
Hutchinson at several product budgets) and PyHessian's ``trace()`` (Hutchinson, its own
stopping rule). Same workload and weights as bench_pyhessian.py.

    python benchmarks/hessian/calibrate_trace.py --seeds 20
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from bench_pyhessian import Torch, exact_trace_relu, workload  # noqa: E402

import landscape
from landscape import engine, hessian


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=20)
    args = ap.parse_args()
    data, run, loss_fn = workload(args.epochs)
    x, y = data["x"], data["y"]
    batched = engine.batch(data, 1797)
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), run.params)
        ref = exact_trace_relu(run.model.apply_fn, run.model.state, p64, x.astype(np.float64))
    out = {"reference": ref}
    for est in ("hutch++", "hutchinson"):
        for budget in (20, 30, 45, 60, 100):
            errs, ses = [], []
            for s in range(args.seeds):
                r = hessian.trace(loss_fn, run.params, batched, key=jax.random.key(1000 + s), estimator=est,
                                  max_hvps=budget, rtol=0.0, chunk_size=budget)
                errs.append(float(r.estimate) / ref - 1)
                ses.append(float(r.std_error) / ref)
            out[f"{est}/{budget}"] = {"rms_rel_error": float(np.sqrt(np.mean(np.square(errs)))),
                                      "median_abs_rel_error": float(np.median(np.abs(errs))),
                                      "mean_rel_se": float(np.mean(ses))}
            print(est, budget, out[f"{est}/{budget}"], flush=True)
    tmp = tempfile.mkdtemp()
    npz = os.path.join(tmp, "w.npz")
    np.savez(npz, x=x, y=y, **{k: np.asarray(v) for k, v in landscape.tree.flatten_dict_paths(run.params).items()})
    t = Torch(npz)
    errs, probes = [], []
    for s in range(args.seeds):
        r = t(task="trace", seed=1000 + s)
        errs.append(r["trace"] / ref - 1)
        probes.append(r["probes"])
    t.close()
    out["pyhessian"] = {"rms_rel_error": float(np.sqrt(np.mean(np.square(errs)))),
                        "median_abs_rel_error": float(np.median(np.abs(errs))), "probes_median": float(np.median(probes)),
                        "probes": probes}
    print("pyhessian", out["pyhessian"], flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
