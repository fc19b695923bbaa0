"""Convolutional networks in compiled loops on XLA:CPU, with the convolution rewrite off
(``engine.CANONICAL_CONVS = "never"``: the code before it) and on (``"cpu"``, the default).

XLA:CPU gives a convolution its library kernel only in the form NHWC/HWIO/NHWC, and rewrites
other forms (the backward pass's) into it only in a program's entry computation; inside a
``while`` body they run a naive loop nest (jax-ml/jax#12868). ``engine.canonical_convs``
rewrites them in the jaxpr. Each (workload, mode) runs in its own process with the switch set
by the environment (``LANDSCAPE_CANONICAL_CONVS=never`` or ``cpu``), persistent compilation
cache off:

* ``hvp_standalone``: one Hessian-vector product as its own program (``make_hvp(...)(v)``;
  the default batch size: 1024, one full batch and the remainder);
* ``hvp_in_loop``: products inside a compiled ``lax.fori_loop`` with a traced trip count, as
  the Krylov solvers run them (``prepared`` operator; seconds per product, ``--loop`` products);
* ``eigenvalues_k1``: ``hessian.eigenvalues(k=1)`` (Lanczos), first call and warm;
* ``train_50_steps``: ``landscape.train``, 50 steps of batch 64 in one compiled block;
* ``trace_s``: tracing and lowering the loop program alone (caches cleared first; median of 5):
  the rewrite's cost where there is nothing to rewrite (the MLP);
* ``end_to_end_s`` (measured by the parent): a fresh ``python`` process that imports
  ``landscape``, builds the model and data and runs ``eigenvalues(k=1)`` (imports, tracing,
  compilation and the solve: what a script waits for).

``first_s``: the first call (tracing, compilation, run); ``warm_s``: median of ``--repeats``
further calls (``--slow-repeats`` for the slow mode's eigensolves, which take minutes).
Workloads: digits 8x8x1 (1437 training examples, float32); ``resnet1``: ResNet widths (16, 32),
one block per stage, batch norm (19,642 parameters); ``cnn``: the default CNN; ``mlp``: the MLP
64-256-256-10 of ``bench_pyhessian.py`` at initialisation (85,002 parameters, no convolutions:
must not move). The load average is recorded at the start and end of every process.

    python benchmarks/hessian/conv_loops.py [--workloads resnet1,mlp,cnn] [--modes cpu,never]
        [--append] [--out benchmarks/hessian/conv_loops.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
WORKLOADS = ("resnet1", "mlp", "cnn")


def load() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3])


def setup(workload: str):
    """``(model, loss_fn, data)`` of a workload (float32)."""
    import numpy as np

    import landscape

    if workload == "mlp":
        ds = landscape.load_data("digits")
        data = {
            "x": np.concatenate([ds.train["x"], ds.test["x"]]).astype(np.float32),
            "y": np.concatenate([ds.train["y"], ds.test["y"]]).astype(np.int32),
        }
        model = landscape.make_model(
            "mlp", input_shape=(64,), num_outputs=10, hidden=(256, 256), seed=0
        )
    else:
        ds = landscape.load_data("digits", flat=False)
        data = ds.train
        if workload == "resnet1":
            model = landscape.make_model(
                "resnet", input_shape=ds.input_shape, num_outputs=10, widths=(16, 32),
                blocks=1, skip=True, batch_norm=True, seed=0,
            )  # fmt: skip
        else:
            model = landscape.make_model("cnn", input_shape=ds.input_shape, num_outputs=10, seed=0)
    return model, landscape.make_loss_fn(model), data


END_TO_END = r"""
import sys, time
t0 = time.perf_counter()
sys.path.insert(0, sys.argv[3])
import jax
import landscape
from landscape import engine, hessian
from conv_loops import setup
assert engine.CANONICAL_CONVS == sys.argv[2]  # the environment's switch
model, loss_fn, data = setup(sys.argv[1])
r = hessian.eigenvalues(loss_fn, model.params, data, k=1, key=jax.random.key(0))
print("RESULT", r.largest[0], r.num_hvps, time.perf_counter() - t0)
"""


def child(workload: str, mode: str, repeats: int, slow_repeats: int, loop: int) -> dict:
    os.environ["LANDSCAPE_COMPILATION_CACHE"] = "0"
    os.environ["LANDSCAPE_CANONICAL_CONVS"] = mode  # the switch, read when engine is imported
    import jax
    import numpy as np
    from jax import lax

    import landscape
    from landscape import engine, hessian

    if mode != engine.CANONICAL_CONVS:
        raise SystemExit(f"the switch did not take: {engine.CANONICAL_CONVS!r}")
    model, loss_fn, data = setup(workload)
    params = model.params
    out: dict = {
        "workload": workload,
        "mode": mode,
        "num_params": landscape.tree.size(params),
        "load_start": load(),
    }

    def timed(fn):
        t = time.perf_counter()
        r = fn()
        jax.block_until_ready(jax.tree.leaves(r))
        return time.perf_counter() - t, r

    def series(fn, n=repeats):
        first, r = timed(fn)
        warm = [timed(fn)[0] for _ in range(n)]
        return {"first_s": first, "warm_s": float(np.median(warm)) if warm else None}, r

    v = jax.tree.map(lambda a: np.ones(np.shape(a), np.asarray(a).dtype), params)
    op = hessian.make_hvp(loss_fn, params, data)
    res, hv = series(lambda: op(v))
    out["hvp_standalone"] = {**res, "method": op.method}
    print(workload, mode, "hvp_standalone", out["hvp_standalone"], flush=True)

    prep = op.host_prepared()
    scale = 1.0 / max(float(np.max(np.abs(x))) for x in jax.tree.leaves(hv))

    def body(i, w):
        return jax.tree.map(lambda x: x * scale, prep(w)[0])

    looped = jax.jit(lambda p, n, w: lax.fori_loop(0, n, lambda i, u: body(i, u), w))
    # the trace of the loop program alone (every cache cleared: what a first call traces)
    traces = []
    for _ in range(5):
        jax.clear_caches()
        t = time.perf_counter()
        jax.jit(lambda p, n, w: lax.fori_loop(0, n, lambda i, u: body(i, u), w)).trace(
            prep, loop, v
        ).lower()
        traces.append(time.perf_counter() - t)
    out["trace_s"] = float(np.median(traces))
    first, _ = timed(lambda: looped(prep, loop, v))
    n = slow_repeats if mode == "never" and workload != "mlp" else repeats
    warm = [timed(lambda: looped(prep, loop, v))[0] / loop for _ in range(n)]
    out["hvp_in_loop"] = {
        "first_s": first,
        "per_product_s": float(np.median(warm)),
        "products": loop,
    }
    print(workload, mode, "hvp_in_loop", out["hvp_in_loop"], "trace", out["trace_s"], flush=True)

    res, r = series(
        lambda: hessian.eigenvalues(loss_fn, params, data, k=1, key=jax.random.key(0)),
        slow_repeats if mode == "never" and workload != "mlp" else repeats,
    )
    res.update(num_hvps=int(r.num_hvps), value=float(r.largest[0]))
    out["eigenvalues_k1"] = res
    print(workload, mode, "eigenvalues_k1", res, flush=True)
    if workload != "mlp":
        res, _ = series(
            lambda: (
                landscape.train(
                    model,
                    data,
                    num_steps=50,
                    batch_size=64,
                    progress=False,
                    eval_every=50,
                    max_block=50,
                ).params
            )  # fmt: skip
        )
        out["train_50_steps"] = res
        print(workload, mode, "train_50_steps", res, flush=True)
    out["load_end"] = load()
    return out


def end_to_end(workload: str, mode: str) -> dict:
    env = {**os.environ, "LANDSCAPE_COMPILATION_CACHE": "0", "LANDSCAPE_CANONICAL_CONVS": mode}
    start = load()
    t = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-c", END_TO_END, workload, mode, str(HERE)],
        capture_output=True, text=True, cwd=REPO, env=env,
    )  # fmt: skip
    wall = time.perf_counter() - t
    line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    if p.returncode or not line:
        raise SystemExit(f"end to end {workload} {mode} failed:\n{p.stderr[-3000:]}")
    _, value, hvps, inside = line[0].split()
    return {
        "workload": workload,
        "mode": mode,
        "end_to_end_s": wall,
        "in_process_s": float(inside),
        "value": float(value),
        "num_hvps": int(hvps),
        "load_start": start,
        "load_end": load(),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--modes", default="cpu,never")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--slow-repeats", type=int, default=1)
    ap.add_argument("--loop", type=int, default=3, help="products per compiled loop")
    ap.add_argument("--no-end-to-end", action="store_true")
    ap.add_argument("--out", default=str(HERE / "conv_loops.json"))
    ap.add_argument("--append", action="store_true", help="add the runs to --out's")
    ap.add_argument("--child", nargs=2, metavar=("WORKLOAD", "MODE"))
    args = ap.parse_args()
    if args.child:
        w, m = args.child
        res = child(w, m, args.repeats, args.slow_repeats, args.loop)
        print("RESULT " + json.dumps(res), flush=True)
        return
    import jax
    import jaxlib

    results = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "cpus": os.cpu_count(),
        "runs": [],
        "end_to_end": [],
    }
    if args.append and Path(args.out).exists():
        results = json.loads(Path(args.out).read_text())
    for w in args.workloads.split(","):
        for m in args.modes.split(","):
            cmd = [sys.executable, __file__, "--child", w, m, "--repeats", str(args.repeats)]
            cmd += ["--slow-repeats", str(args.slow_repeats), "--loop", str(args.loop)]
            p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
            line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
            if p.returncode or not line:
                print(p.stdout[-2000:], p.stderr[-4000:])
                raise SystemExit(f"{w} {m} failed")
            results["runs"].append(json.loads(line[0][7:]))
            print(w, m, "done", results["runs"][-1]["load_start"], flush=True)
            if not args.no_end_to_end:
                results["end_to_end"].append(end_to_end(w, m))
                print(w, m, "end to end", results["end_to_end"][-1], flush=True)
            Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
