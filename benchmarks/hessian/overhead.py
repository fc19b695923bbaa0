"""Cost of one product against one gradient, and the time a Lanczos run spends outside the
products, on the benchmark workload (digits, 1797 examples, MLP 64-256-256-10, one batch).

Alternates (a) 100 bare products in one compiled loop, (b) 100 Lanczos steps with full
reorthogonalisation, (c) 100 streaming Lanczos steps, (d) top-5 eigenvalues against
``num_hvps`` bare products, many times, and reports medians.

    python benchmarks/hessian/overhead.py --repeats 10
"""

from __future__ import annotations

import argparse
import json
import os
import time

# compile seconds are part of the results: measured cold, without the default on-disk cache
os.environ.setdefault("LANDSCAPE_COMPILATION_CACHE", "0")

import jax
import jax.numpy as jnp
import numpy as np
from bench_pyhessian import workload  # this directory is on sys.path
from jax import lax
from jax.tree_util import Partial

from landscape import engine, hessian


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    data, run, loss_fn = workload(20)
    params = run.params
    batched = engine.batch(data, 1797)
    op = hessian.make_hvp(loss_fn, params, batched, method="linearize")
    op_fr = hessian.make_hvp(loss_fn, params, batched, method="forward_over_reverse")
    prep = op.host_prepared()
    ps, pd = engine.split_fn(prep)
    gs, gd = engine.split_fn(Partial(engine._value_and_grad, loss_fn))
    v = jax.tree.map(jnp.ones_like, params)

    @jax.jit
    def products(pd, v, n):
        pr = engine.merge_fn(ps, pd)
        return lax.fori_loop(0, n, lambda i, v: jax.tree.map(lambda a: a / (1.0 + jnp.abs(a).max()), pr(v)[0]), v)

    def t(f):
        a = time.perf_counter()
        jax.block_until_ready(f())
        return time.perf_counter() - a

    tasks = {
        "grad": lambda: engine._mean_jit(gs, gd, params, batched, ()),
        "hvp_linearized": lambda: op(v),
        "hvp_fwd_over_rev": lambda: op_fr(v),
        "products100": lambda: products(pd, v, 100),
        "lanczos100_full": lambda: hessian.lanczos(op, v, 100, key=jax.random.key(0)).alphas,
        "lanczos100_stream": lambda: hessian.lanczos(op, v, 100, key=jax.random.key(0), reorthogonalize=False).alphas,
        "top5": lambda: hessian.eigenvalues(loss_fn, params, batched, k=5, key=jax.random.key(0)).values,
    }
    for f in tasks.values():  # warm up
        t(f)
    n5 = hessian.eigenvalues(loss_fn, params, batched, k=5, key=jax.random.key(0)).num_hvps
    tasks["products_top5"] = lambda: products(pd, v, n5)
    t(tasks["products_top5"])
    times = {k: [] for k in tasks}
    load0 = os.getloadavg()
    for _ in range(args.repeats):
        for k, f in tasks.items():
            times[k].append(t(f))
    med = {k: float(np.median(v)) for k, v in times.items()}
    out = {
        "median_s": med,
        "hvp_over_grad_linearized": med["hvp_linearized"] / med["grad"],
        "hvp_over_grad_fwd_over_rev": med["hvp_fwd_over_rev"] / med["grad"],
        "outside_products_lanczos100_full": 1 - med["products100"] / med["lanczos100_full"],
        "outside_products_lanczos100_stream": 1 - med["products100"] / med["lanczos100_stream"],
        "outside_products_top5": 1 - med["products_top5"] / med["top5"],
        "top5_hvps": n5,
        "loadavg": [load0, os.getloadavg()],
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
