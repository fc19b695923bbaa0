"""Products, errors and times of ``hessian.eigenvalues`` under the solver policy before and after
issue 12 (stopping on an eigenvalue error bound, checks every product or two, a 7-product
fresh-vector check, true residuals from the stored products), on the benchmark workload
(digits, 1797 examples, MLP 64-256-256-10, one batch, float32).

The old policy is the solver at ``OLD_COMMIT``, loaded from git beside the current one (with the
projected-matrix symmetrisation of that commit), so both run in one process on the same
operator, alternating. Errors are against the float64 ARPACK references of
``bench_pyhessian.py`` (``max_i |theta_i - lambda_i| / lambda_1``). Product counts do not
depend on the load; times do (the machine is shared: the load average is printed before and
after). ``--arpack`` adds float64 ARPACK ``eigsh`` product counts at the same tolerances (its
``tol`` is on the Ritz estimate relative to ``|theta|``) next to ours in float64.

    python benchmarks/hessian/eigen_policy.py --repeats 5 [--arpack]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

os.environ.setdefault("LANDSCAPE_COMPILATION_CACHE", "0")

import jax
import jax.numpy as jnp
import numpy as np
from bench_pyhessian import workload  # this directory is on sys.path
from jax import lax

from landscape import engine, hessian
from landscape.hessian import _lanczos

REPO = Path(__file__).resolve().parents[2]
OLD_COMMIT = "f6618755d9f81ac275bdc7927c21a28786aa8fb9"
# float64 ARPACK (eigsh, tol=0) on the float64 product of the same weights: the values of
# bench_pyhessian.py (0.380581, 0.293355, 0.221996, 0.169554, 0.145208) to more digits, which the
# 1e-6 errors need
REF = np.array(
    [
        0.38058126080159405,
        0.2933549367535694,
        0.2219964224024979,
        0.16955406576883322,
        0.14520795637458284,
    ]
)
TOLS = (1e-3, None, 1e-6)  # None: the default (1e-6 in both policies)


def old_projected_eigh(H, e):
    T = np.asarray(H[:e, :e], np.float64)
    return np.linalg.eigh(0.5 * (T + T.T))


def load_old_eigen():
    """The eigensolver module at OLD_COMMIT, importable beside the current one."""
    src = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{OLD_COMMIT}:landscape/hessian/_eigen.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    mod = types.ModuleType("landscape.hessian._eigen_before")
    mod.__file__ = f"<{OLD_COMMIT[:8]}:landscape/hessian/_eigen.py>"
    sys.modules[mod.__name__] = mod
    exec(compile(src, mod.__file__, "exec"), mod.__dict__)
    lz = types.SimpleNamespace(**vars(_lanczos))
    lz.projected_eigh = old_projected_eigh  # that commit's symmetrisation
    mod.lz = lz
    return mod


def rel_error(values, k):
    return float(np.max(np.abs(np.asarray(values)[:k] - REF[:k])) / REF[0])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--arpack", action="store_true")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "hessian" / "eigen_policy.json"))
    args = ap.parse_args()
    load0 = os.getloadavg()
    data, run, loss_fn = workload(20)
    params = run.params
    batched = engine.batch(data, 1797)
    old = load_old_eigen()
    policies = {"old": old.eigenvalues, "new": hessian.eigenvalues}

    # ---------------- products / error / time, alternating old and new ----------------
    rows = {}
    for k in (1, 5):
        for tol in TOLS:
            kw = {} if tol is None else {"tol": tol}
            for fn in policies.values():  # warm-up: compilation
                fn(loss_fn, params, batched, k=k, key=jax.random.key(99), **kw)
            for r in range(args.repeats):
                for name, fn in policies.items():
                    t = time.perf_counter()
                    res = fn(loss_fn, params, batched, k=k, key=jax.random.key(r), **kw)
                    dt = time.perf_counter() - t
                    d = rows.setdefault((k, "default" if tol is None else f"{tol:g}", name), [])
                    d.append(
                        {
                            "hvps": res.num_hvps,
                            "error": rel_error(res.values, k),
                            "time": dt,
                            "max_residual": float(np.max(res.residuals) / res.norm_estimate),
                            "checks": res.num_checks,
                            "restarts": res.num_restarts,
                        }
                    )
    load1 = os.getloadavg()

    # ---------------- cost of one product: methods, floors, the solver's time per product ----------------
    ops_by = {
        m: hessian.make_hvp(loss_fn, params, batched, method=m)
        for m in ("linearize", "forward_over_reverse")
    }
    v = jax.tree.map(jnp.ones_like, params)
    floors = {}
    for m, op in ops_by.items():
        prep = op.host_prepared()
        ps, pd = engine.split_fn(prep)

        @jax.jit
        def products(pd, v, n, ps=ps):
            pr = engine.merge_fn(ps, pd)
            return lax.fori_loop(
                0,
                n,
                lambda i, v: jax.tree.map(lambda a: a / (1.0 + jnp.abs(a).max()), pr(v)[0]),
                v,
            )

        floors[m] = (products, pd)
        jax.block_until_ready(products(pd, v, 2))

    def bare(m, n=20):
        products, pd = floors[m]
        t = time.perf_counter()
        jax.block_until_ready(products(pd, v, n))
        return (time.perf_counter() - t) / n

    cost = {}
    for _ in range(args.repeats):
        for m in ("linearize", "forward_over_reverse"):
            cost.setdefault(f"bare_{m}", []).append(bare(m))
            for k in (1, 5):
                hessian.eigenvalues(
                    loss_fn, params, batched, k=k, key=jax.random.key(0), method=m
                )  # warm
                t = time.perf_counter()
                res = hessian.eigenvalues(
                    loss_fn, params, batched, k=k, key=jax.random.key(0), method=m
                )
                dt = time.perf_counter() - t
                cost.setdefault(f"top{k}_{m}", []).append(dt)
                cost.setdefault(f"top{k}_{m}_hvps", []).append(res.num_hvps)
        # the linearisation itself (paid once per operator, so once per one-shot call)
        op = hessian.make_hvp(loss_fn, params, batched, method="linearize")
        t = time.perf_counter()
        jax.block_until_ready(jax.tree.leaves(op.host_prepared()))
        cost.setdefault("linearize_once", []).append(time.perf_counter() - t)
    med = {key: float(np.median(val)) for key, val in cost.items()}
    load2 = os.getloadavg()

    # ---------------- float64: ours against ARPACK at the same tolerances ----------------
    f64 = {}
    if args.arpack:
        import scipy.sparse.linalg as sla
        from jax.flatten_util import ravel_pytree

        with jax.enable_x64(True):
            p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
            d64 = {"x": data["x"].astype(np.float64), "y": data["y"]}
            op64 = hessian.make_hvp(loss_fn, p64, d64, batch_size=1797, method="linearize")
            flat, unravel = ravel_pytree(p64)
            n = flat.size
            count = [0]

            def mv(x):
                count[0] += 1
                return np.asarray(ravel_pytree(op64(unravel(jnp.asarray(x))))[0])

            L = sla.LinearOperator((n, n), matvec=mv, dtype=np.float64)
            for k in (1, 5):
                for tol in (1e-3, 1e-6, 1e-10, 0.0):
                    count[0] = 0
                    vals = np.sort(sla.eigsh(L, k=k, which="LA", tol=tol, v0=np.ones(n))[0])[::-1]
                    ours = hessian.eigenvalues(
                        op64, k=k, key=jax.random.key(0), tol=max(tol, 1e-14)
                    )
                    f64[f"k{k}_tol{tol:g}"] = {
                        "arpack_hvps": count[0],
                        "arpack_error": rel_error(vals, k),
                        "ours_tol": max(tol, 1e-14),
                        "ours_hvps": ours.num_hvps,
                        "ours_error": rel_error(ours.values, k),
                        "ours_max_error_bound": float(
                            np.max(ours.error_bounds) / ours.norm_estimate
                        ),
                    }
                    print("float64", k, tol, f64[f"k{k}_tol{tol:g}"], flush=True)

    # ---------------- report ----------------
    summary = {}
    print(
        f"\nload average: {load0} at start, {load1} after the policy runs, {os.getloadavg()} at the end\n"
    )
    print(
        "| k | tol | policy | products (median [min, max]) | max rel. error (median / max) | time (s, median) |"
    )
    print("|---|---|---|---|---|---|")
    for (k, tol, name), d in rows.items():
        h = [x["hvps"] for x in d]
        e = [x["error"] for x in d]
        tm = float(np.median([x["time"] for x in d]))
        summary[f"top{k}/{tol}/{name}"] = {
            "hvps_median": float(np.median(h)),
            "hvps_min": min(h),
            "hvps_max": max(h),
            "error_median": float(np.median(e)),
            "error_max": float(np.max(e)),
            "time_median": tm,
            "runs": d,
        }
        print(
            f"| {k} | {tol} | {name} | {np.median(h):.0f} [{min(h)}, {max(h)}] | "
            f"{np.median(e):.1e} / {np.max(e):.1e} | {tm:.3f} |"
        )
    print("\nproducts and solver time per method (new policy, default tol, key 0):")
    for k in (1, 5):
        for m in ("linearize", "forward_over_reverse"):
            t, h = med[f"top{k}_{m}"], med[f"top{k}_{m}_hvps"]
            print(
                f"  top-{k} {m}: {t:.3f} s, {h:.0f} products, {1e3 * t / h:.2f} ms per product "
                f"(bare floor {1e3 * med[f'bare_{m}']:.2f} ms: {t / h / med[f'bare_{m}']:.2f}x)"
            )
    print(f"  linearisation (once per operator): {1e3 * med['linearize_once']:.2f} ms")
    out = {
        "load": [load0, load1, load2, os.getloadavg()],
        "summary": summary,
        "cost_median_s": med,
        "float64": f64,
        "old_commit": OLD_COMMIT,
        "repeats": args.repeats,
    }
    Path(args.out).write_text(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
