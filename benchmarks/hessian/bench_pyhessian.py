"""landscape.hessian against PyHessian on the same weights, alternating runs.

Workload (issue 3): scikit-learn digits, all 1797 examples, MLP 64-256-256-10 ReLU,
cross-entropy, trained here with Adam (seeded); the weights and data are handed to PyHessian
(``.venv-torch``, see ``benchmarks/envs/make_torch_env.sh``) through an ``.npz``. PyHessian gets
all 1797 examples as one batch (its fastest mode: it keeps the gradient's graph); we use one
batch too (``batch_size=1797``).

Every task runs ours then theirs, repeated ``--repeats`` times after one warm-up round, and the
medians are reported. References are float64: ARPACK ``eigsh`` on our float64 Hessian-vector
product for the eigenvalues, and for the trace the exact identity ``tr H = tr GGN`` of a ReLU
network (the residual ``sum_c r_c grad^2 f_c`` has a zero diagonal because every weight enters
the network linearly between ReLUs), computed from per-example Jacobians in float64.

PyHessian 0.1 calls the removed ``torch.eig`` in ``density()``: the worker patches that one call
(symmetric ``torch.linalg.eigh``), nothing else.

Usage (from the repository root)::

    python benchmarks/hessian/bench_pyhessian.py --repeats 5 --out benchmarks/hessian/results.json
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
import scipy.sparse.linalg as sla
from jax import lax
from jax.flatten_util import ravel_pytree
from jax.tree_util import Partial

import landscape
from landscape import engine, hessian

REPO = Path(__file__).resolve().parents[2]
TORCH_PY = REPO / ".venv-torch" / "bin" / "python"


def machine() -> dict:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "jax": jax.__version__, "loadavg_start": os.getloadavg()}


def exact_trace_relu(apply_fn, state, params64, x64):
    """tr H = tr GGN for a ReLU MLP with cross-entropy: mean_n tr(H_out,n J_n J_n^T), float64."""

    def logits_one(p, xi):
        return apply_fn(p, state, xi[None])[0][0]

    @jax.jit
    def chunk(p, xb):
        J = jax.vmap(jax.jacrev(logits_one), in_axes=(None, 0))(p, xb)
        G = sum(jnp.einsum("ncx,ndx->ncd", a.reshape(a.shape[0], a.shape[1], -1), a.reshape(a.shape[0], a.shape[1], -1))
                for a in jax.tree.leaves(J))
        z = jax.vmap(logits_one, in_axes=(None, 0))(p, xb)
        pr = jax.nn.softmax(z, axis=-1)
        Hout = jax.vmap(jnp.diag)(pr) - pr[:, :, None] * pr[:, None, :]
        return jnp.sum(Hout * G)

    total = 0.0
    for i in range(0, x64.shape[0], 32):
        total += float(chunk(params64, x64[i:i + 32]))
    return total / x64.shape[0]


class Torch:
    def __init__(self, npz: str):
        self.p = subprocess.Popen([str(TORCH_PY), str(Path(__file__).with_name("_pyhessian_worker.py")), npz],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.info = json.loads(self._line())

    def _line(self):
        while True:
            line = self.p.stdout.readline()
            if not line:
                raise RuntimeError("PyHessian worker died")
            if line.startswith("{"):
                return line

    def __call__(self, **cmd):
        self.p.stdin.write(json.dumps(cmd) + "\n")
        self.p.stdin.flush()
        return json.loads(self._line())

    def close(self):
        self.p.stdin.close()
        self.p.wait(timeout=60)


def workload(epochs: int = 20):
    """The issue's workload, shared by every script here: digits (all 1797 examples), MLP
    64-256-256-10 trained with Adam (seeded); returns ``(data, run, loss_fn)`` with the plain
    mean cross-entropy (= torch CrossEntropyLoss)."""
    ds = landscape.load_data("digits")
    x = np.concatenate([ds.train["x"], ds.test["x"]]).astype(np.float32)
    y = np.concatenate([ds.train["y"], ds.test["y"]]).astype(np.int32)
    data = {"x": x, "y": y}
    model = landscape.make_model("mlp", input_shape=(64,), num_outputs=10, hidden=(256, 256), seed=0)
    run = landscape.train(model, data, optimizer=optax.adam(1e-3), num_epochs=epochs, batch_size=64, seed=0,
                          progress=False)
    return data, run, landscape.make_loss_fn(run.model, has_aux=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--trace-hvps", type=int, default=30,
                    help="our Hutch++ budget; 30 matches PyHessian's accuracy (see calibrate_trace.py)")
    ap.add_argument("--density10-repeats", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "hessian" / "results.json"))
    args = ap.parse_args()
    info = machine()

    data, run, loss_fn = workload(args.epochs)
    x, y = data["x"], data["y"]
    params = run.params
    n_params = landscape.tree.size(params)
    print(run, "parameters", n_params, flush=True)
    tmp = tempfile.mkdtemp()
    npz = os.path.join(tmp, "weights.npz")
    np.savez(npz, x=x, y=y, **{k: np.asarray(v) for k, v in landscape.tree.flatten_dict_paths(params).items()})
    batched = engine.batch(data, 1797)

    # ---------------- float64 references ----------------
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        d64 = {"x": x.astype(np.float64), "y": y}
        op64 = hessian.make_hvp(loss_fn, p64, d64, batch_size=1797, method="linearize")
        flat, unravel = ravel_pytree(p64)
        count = [0]

        def mv(v):
            count[0] += 1
            return np.asarray(ravel_pytree(op64(unravel(jnp.asarray(v))))[0])

        t = time.perf_counter()
        L = sla.LinearOperator((n_params, n_params), matvec=mv, dtype=np.float64)
        ref_vals = np.sort(sla.eigsh(L, k=5, which="LA", tol=0, v0=np.ones(n_params))[0])[::-1]
        arpack = {"hvps": count[0], "time": time.perf_counter() - t}
        count[0] = 0
        top1 = sla.eigsh(L, k=1, which="LA", tol=0, v0=np.ones(n_params))[0]
        arpack["hvps_top1"] = count[0]
        t = time.perf_counter()
        ref_trace = exact_trace_relu(run.model.apply_fn, run.model.state, p64, d64["x"])
        arpack["trace_time"] = time.perf_counter() - t
        # ours, float64, against that reference (first call, compilation included)
        t = time.perf_counter()
        ours64 = hessian.trace(loss_fn, p64, d64, key=jax.random.key(0), batch_size=1797)
        arpack["ours_exact_trace64"] = {"value": float(ours64.estimate), "time": time.perf_counter() - t,
                                        "estimator": ours64.estimator,
                                        "rel_diff": abs(float(ours64.estimate) - ref_trace) / ref_trace}
    print("reference top-5", ref_vals, "top-1", top1, "trace", ref_trace, arpack, flush=True)

    # ---------------- our tasks ----------------
    def ours(task, r):
        key = jax.random.key(r)
        t = time.perf_counter()
        if task == "top1":
            res = hessian.eigenvalues(loss_fn, params, batched, k=1, key=key)
            out = {"values": res.values.tolist(), "hvps": res.num_hvps}
        elif task == "top1_tol1e-2":  # a looser residual target: still ~60x more accurate than PyHessian
            res = hessian.eigenvalues(loss_fn, params, batched, k=1, key=key, tol=1e-2)
            out = {"values": res.values.tolist(), "hvps": res.num_hvps}
        elif task == "top5":
            res = hessian.eigenvalues(loss_fn, params, batched, k=5, key=key)
            out = {"values": res.values.tolist(), "hvps": res.num_hvps}
        elif task == "trace":  # the default: estimator="auto" (exact for this ReLU network)
            res = hessian.trace(loss_fn, params, batched, key=key)
            out = {"trace": float(res.estimate), "se": float(res.std_error), "hvps": res.num_hvps,
                   "estimator": res.estimator, "passes": res.exact_passes}
        elif task == "trace_hutchpp":
            res = hessian.trace(loss_fn, params, batched, key=key, estimator="hutch++", max_hvps=args.trace_hvps,
                                rtol=0.0)
            out = {"trace": float(res.estimate), "se": float(res.std_error), "hvps": res.num_hvps}
        elif task.startswith("density"):
            nv = 1 if task == "density1" else 10
            res = hessian.spectral_density(loss_fn, params, batched, key=key, num_probes=nv, num_steps=100, check=False)
            out = {"top_node": res.top_node, "slq_trace": res.trace_estimate, "hvps": res.num_hvps}
        elif task.startswith("stream"):
            nv = 1 if task == "stream1" else 10
            res = hessian.spectral_density(loss_fn, params, batched, key=key, num_probes=nv, num_steps=100, check=False,
                                           reorthogonalize=False)
            out = {"top_node": res.top_node, "slq_trace": res.trace_estimate, "hvps": res.num_hvps}
        out["time"] = time.perf_counter() - t
        out["task"] = task
        return out

    theirs_cmd = {"top1": {"task": "top1"}, "top5": {"task": "top5"}, "trace": {"task": "trace"},
                  "density1": {"task": "density", "iter": 100, "n_v": 1},
                  "density10": {"task": "density", "iter": 100, "n_v": 10}}
    tasks = ["top1", "top5", "trace", "density1", "density10"]
    torch_side = Torch(npz)
    info["torch"] = torch_side.info
    rows = {t: {"ours": [], "theirs": []} for t in tasks}
    rows["top1_tol1e-2"] = {"ours": [], "theirs": []}
    rows["trace_hutchpp"] = {"ours": [], "theirs": []}
    rows["stream1"] = {"ours": [], "theirs": []}
    rows["stream10"] = {"ours": [], "theirs": []}
    for r in range(args.repeats + 1):  # round 0 is the warm-up (compilation, caches)
        for task in tasks:
            if task == "density10" and (r == 0 or r > args.density10_repeats):
                continue  # shares its compiled programs with density1; PyHessian takes minutes
            a = ours(task, r)
            b = torch_side(seed=r, **theirs_cmd[task])
            if r:
                rows[task]["ours"].append(a)
                rows[task]["theirs"].append(b)
            if task == "top1":
                s = ours("top1_tol1e-2", r)
                if r:
                    rows["top1_tol1e-2"]["ours"].append(s)
            if task == "trace":
                s = ours("trace_hutchpp", r)
                if r:
                    rows["trace_hutchpp"]["ours"].append(s)
            if task.startswith("density"):
                s = ours("stream" + task[len("density"):], r)
                if r:
                    rows["stream" + task[len("density"):]]["ours"].append(s)
        print("round", r, "done", flush=True)

    # ---------------- cost of one product, overhead outside products ----------------
    op_fr = hessian.make_hvp(loss_fn, params, batched, method="forward_over_reverse")
    op_li = hessian.make_hvp(loss_fn, params, batched, method="linearize")
    v = jax.tree.map(jnp.ones_like, params)
    grad_fn = Partial(engine._value_and_grad, loss_fn)
    gs, ds_ = engine.split_fn(grad_fn)

    def timeit(f, n=20):
        jax.block_until_ready(f())
        ts = []
        for _ in range(n):
            t = time.perf_counter()
            jax.block_until_ready(f())
            ts.append(time.perf_counter() - t)
        return float(np.median(ts))

    prep = op_li.host_prepared()
    ps, pd = engine.split_fn(prep)
    sub = op_li.subset.restrict(v)

    @jax.jit
    def hvp_loop(pd, v):  # 100 products, nothing else: the floor of a 100-step Lanczos
        pr = engine.merge_fn(ps, pd)

        def body(i, v):
            w = pr(v)[0]
            return jax.tree.map(lambda a: a / jnp.sqrt(jnp.vdot(a, a) + 1.0), w)

        return lax.fori_loop(0, 100, body, v)

    cost = {}
    for _ in range(3):  # alternate the measurements
        cost.setdefault("grad", []).append(timeit(lambda: engine._mean_jit(gs, ds_, params, batched, ())))
        cost.setdefault("hvp_fwd_over_rev", []).append(timeit(lambda: op_fr(v)))
        cost.setdefault("hvp_linearized", []).append(timeit(lambda: op_li(v)))
        cost.setdefault("hvp_loop100", []).append(timeit(lambda: hvp_loop(pd, sub), n=3))
        cost.setdefault("lanczos100_full", []).append(timeit(lambda: hessian.lanczos(op_li, v, 100, key=jax.random.key(0)), n=3))
        cost.setdefault("lanczos100_stream", []).append(
            timeit(lambda: hessian.lanczos(op_li, v, 100, key=jax.random.key(0), reorthogonalize=False), n=3))
        cost.setdefault("pyhessian", []).append(torch_side(task="hvp", n=20))
    torch_side.close()
    cost_med = {k: float(np.median(vs)) for k, vs in cost.items() if k != "pyhessian"}
    cost_med["pyhessian_hvp"] = float(np.median([c["hvp_s"] for c in cost["pyhessian"]]))
    cost_med["pyhessian_grad"] = float(np.median([c["grad_s"] for c in cost["pyhessian"]]))
    info["loadavg_end"] = os.getloadavg()

    # ---------------- summary ----------------
    def err(task, side, o):
        if task.startswith("top1"):
            return abs(o["values"][0] - ref_vals[0]) / ref_vals[0]
        if task == "top5":
            vals = np.sort(np.asarray(o["values"]))[::-1]
            return float(np.max(np.abs(vals - ref_vals) / ref_vals[0]))
        if task.startswith("trace"):
            return abs(o["trace"] - ref_trace) / ref_trace
        return abs(o["top_node"] - ref_vals[0]) / ref_vals[0]

    summary = {}
    for task, d in rows.items():
        if not d["ours"]:
            continue
        s = {}
        for side in ("ours", "theirs"):
            if not d[side]:
                continue
            s[side] = {"time": float(np.median([o["time"] for o in d[side]])),
                       "hvps": float(np.median([o["hvps"] for o in d[side]])),
                       "rel_error": float(np.median([err(task, side, o) for o in d[side]])),
                       "rel_error_max": float(np.max([err(task, side, o) for o in d[side]]))}
        if "theirs" in s:
            s["speedup"] = s["theirs"]["time"] / s["ours"]["time"]
        summary[task] = s
    for task, against in (("top1_tol1e-2", "top1"), ("trace_hutchpp", "trace"), ("stream1", "density1"),
                          ("stream10", "density10")):
        if task in summary and "theirs" in summary.get(against, {}):
            summary[task]["speedup_vs_" + against] = summary[against]["theirs"]["time"] / summary[task]["ours"]["time"]
    out = {"machine": info, "reference": {"top5": ref_vals.tolist(), "trace": ref_trace, "arpack": arpack},
           "summary": summary, "cost": cost_med, "raw": rows, "args": vars(args)}
    Path(args.out).write_text(json.dumps(out, indent=1, default=float))
    print(json.dumps({"summary": summary, "cost": cost_med, "machine": info}, indent=1, default=float))


if __name__ == "__main__":
    sys.exit(main())
