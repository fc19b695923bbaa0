"""Transformer benchmark (issue 16, "Speed"): top-k Hessian eigenvalues, the per-head top
eigenvalue of every (block, head), and a 2-D filter-normalised slice of a ViT-style transformer
on digits patches; ours against the same work in plain JAX written by hand (the floor) and,
for the top-k, against PyHessian on the matching PyTorch model.

Workload: scikit-learn digits as 8x8x1 images (``load_data("digits", flat=False)``, the first
``--n`` training examples), ``make_model("transformer", patch=2)``: 16 tokens of 4 pixels,
width ``--width``, ``--depth`` pre-LN blocks of ``--heads`` heads, MLP ratio 4, learned
positions, mean pooling, 10 classes; mean cross-entropy, float32; trained here with Adam
(1e-3, batch 64, seed 0, ``--epochs``; not timed). The weights, the data and the slice's two
filter-normalised directions (``landscape.surface.random_directions``, key 0) go to every
worker through one npz.

Checked before timing: the PyTorch model's loss, logits and gradient against ours on the same
weights (float32 rounding; ``check`` below). References in float64: ARPACK ``eigsh`` on the
float64 Hessian-vector product for the top-k and for every head's block.

Timing: every (task, side) runs in its own FRESH process (``worker_jax.py``: ours or floor;
``worker_torch.py``: PyHessian), one after another, never two at once; the order of the sides
rotates from round to round, so slow phases of the shared machine hit every side; each process
reports its import, set-up, first call (compilation included) and compile seconds
(``jax.monitoring``), ``--repeats`` warm calls, products per result and peak RSS; the driver
times the whole process (start to exit). Medians over rounds. ``uptime`` before and after, and
the 1-minute load before and after every process.

Usage (repository root; ``bash benchmarks/envs/make_torch_env.sh`` once for .venv-torch)::

    python benchmarks/transformer/run.py --rounds 2 --repeats 1      # the measured sizes
    python benchmarks/transformer/run.py --small                    # a quick validation

Writes ``benchmarks/transformer/results.json`` and ``RESULTS.md`` (``--out``, ``--md``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("LANDSCAPE_COMPILATION_CACHE", "0")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import scipy.sparse.linalg as sla  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

import landscape  # noqa: E402
from landscape import surface  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TORCH_PY = REPO / ".venv-torch" / "bin" / "python"
LOADED = 1.5  # 1-minute load (2 cores) above which a ratio is not a headline figure


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def prepare(cfg: dict, epochs: int, npz: str):
    ds = landscape.load_data("digits", flat=False)
    n = cfg["n"]
    x = np.asarray(ds.train["x"][:n], np.float32)
    y = np.asarray(ds.train["y"][:n], np.int32)
    cfg["input_shape"] = list(x.shape[1:])
    model = landscape.make_model(
        "transformer",
        input_shape=x.shape[1:],
        num_outputs=10,
        width=cfg["width"],
        depth=cfg["depth"],
        heads=cfg["heads"],
        patch=cfg["patch"],
        seed=0,
    )
    data = {"x": x, "y": y}
    if epochs:
        run = landscape.train(
            model,
            data,
            optimizer=optax.adam(1e-3),
            num_epochs=epochs,
            batch_size=64,
            seed=0,
            progress=False,
        )
        params = run.params
    else:
        params = model.params
    paths = landscape.tree.leaf_paths(params)
    d1, d2 = surface.random_directions(jax.random.key(0), params, 2)
    arrays = {"x": x, "y": y, "paths": np.asarray(paths)}
    for name, tree in (
        ("p", params),
        ("d1", d1.vector if hasattr(d1, "vector") else d1),
        ("d2", d2.vector if hasattr(d2, "vector") else d2),
    ):
        for p, leaf in zip(paths, jax.tree.leaves(tree)):
            arrays[f"{name}/{p}"] = np.asarray(leaf)
    np.savez(npz, **arrays)
    return model, params, data, paths


def loss_of(model, p, x, y):
    logits, _ = model.apply_fn(p, model.state, x)
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1)), logits


def check_torch(model, params, data, npz, cfg) -> dict:
    """The PyTorch model against ours on the same weights: loss, logits, gradient."""
    out = subprocess.run(
        [str(TORCH_PY), str(HERE / "worker_torch.py"), "check", npz, json.dumps(cfg)],
        capture_output=True,
        text=True,
    )
    line = [s for s in out.stdout.splitlines() if s.startswith("RESULT ")]
    if not line:
        raise RuntimeError(f"torch check failed:\n{out.stderr[-3000:]}")
    t = json.loads(line[0][7:])
    x, y = jnp.asarray(data["x"]), jnp.asarray(data["y"])
    (loss, logits), g = jax.value_and_grad(lambda p: loss_of(model, p, x, y), has_aux=True)(params)
    gflat = np.concatenate([np.asarray(a).ravel() for a in jax.tree.leaves(g)])
    tl = np.asarray(t["logits"])
    tg = np.asarray(t["grad"])
    res = {
        "loss_ours": float(loss),
        "loss_torch": t["loss"],
        "loss_rel_diff": abs(float(loss) - t["loss"]) / abs(float(loss)),
        "logits_max_abs_diff": float(np.max(np.abs(np.asarray(logits) - tl))),
        "logits_max_abs": float(np.max(np.abs(tl))),
        "grad_rel_diff": float(np.linalg.norm(gflat - tg) / np.linalg.norm(gflat)),
    }
    # float32 rounding: every logit is a sum of O(10^4) rounded products (about 1e-6 relative
    # each after the LayerNorms); the loss is a mean over N examples. 1e-5 relative on the loss
    # and the gradient, 1e-4 absolute on logits of size O(10), are 10-100x the rounding seen
    # and far below any real mismatch (a transposed kernel or a missing scale: O(1)).
    res["ok"] = (
        res["loss_rel_diff"] < 1e-5
        and res["logits_max_abs_diff"] < 1e-4
        and res["grad_rel_diff"] < 1e-4
    )
    return res


def references(model, params, data, paths, cfg) -> dict:
    """Float64 ARPACK: the top-k of the Hessian, and the top eigenvalue of each head's block."""
    sys.path.insert(0, str(HERE))
    import worker_jax  # the same head masks as the floor

    out = {}
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        x, y = jnp.asarray(data["x"], jnp.float64), jnp.asarray(data["y"])
        flat, unravel = ravel_pytree(p64)

        @jax.jit
        def hvp(v):
            def g(w):
                return ravel_pytree(jax.grad(lambda p: loss_of(model, p, x, y)[0])(unravel(w)))[0]

            return jax.jvp(g, (flat,), (v,))[1]

        n = flat.size
        t = time.perf_counter()
        L = sla.LinearOperator(
            (n, n), matvec=lambda v: np.asarray(hvp(jnp.asarray(v))), dtype=np.float64
        )
        vals = np.sort(sla.eigsh(L, k=cfg["k"], which="LA", tol=1e-10, v0=np.ones(n))[0])[::-1]
        out["topk"] = vals.tolist()
        out["topk_s"] = time.perf_counter() - t
        if "heads" in cfg["tasks"]:
            masks = worker_jax.head_masks(params, paths, cfg["depth"], cfg["heads"])
            heads = []
            t = time.perf_counter()
            for row in masks:
                r = []
                for m in row:
                    m = jnp.asarray(m, jnp.float64)
                    Lm = sla.LinearOperator(
                        (n, n),
                        matvec=lambda v, m=m: np.asarray(m * hvp(m * jnp.asarray(v))),
                        dtype=np.float64,
                    )
                    v0 = np.asarray(m) * (1.0 + np.arange(n) / n)
                    r.append(float(sla.eigsh(Lm, k=1, which="LA", tol=1e-10, v0=v0)[0][0]))
                heads.append(r)
            out["heads"] = heads
            out["heads_s"] = time.perf_counter() - t
    return out


def cached_references(model, params, data, paths, cfg) -> dict:
    """:func:`references`, cached in ``reference.json`` under the workload and a hash of the
    trained weights (recomputed when either differs)."""
    import hashlib

    h = hashlib.sha256(
        b"".join(np.asarray(a, np.float32).tobytes() for a in jax.tree.leaves(params))
    ).hexdigest()[:16]
    key = json.dumps(
        {k: cfg[k] for k in ("width", "depth", "heads", "patch", "n", "k", "epochs")},
        sort_keys=True,
    )
    path = HERE / "reference.json"
    cache = json.loads(path.read_text()) if path.exists() else {}
    hit = cache.get(key)
    if hit and hit.get("params_hash") == h and ("heads" in hit or "heads" not in cfg["tasks"]):
        return hit
    ref = references(model, params, data, paths, cfg)
    ref["params_hash"] = h
    cache[key] = ref
    path.write_text(json.dumps(cache, indent=1))
    return ref


def run_worker(side: str, task: str, npz: str, cfg: dict) -> dict:
    if side == "pyhessian":
        cmd = [str(TORCH_PY), str(HERE / "worker_torch.py"), task, npz, json.dumps(cfg)]
    else:
        cmd = [sys.executable, str(HERE / "worker_jax.py"), side, task, npz, json.dumps(cfg)]
    env = dict(
        os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), LANDSCAPE_COMPILATION_CACHE="0"
    )
    load0 = os.getloadavg()[0]
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - t
    load1 = os.getloadavg()[0]
    line = [s for s in out.stdout.splitlines() if s.startswith("RESULT ")]
    if out.returncode or not line:
        raise RuntimeError(f"{side} {task} failed (rc {out.returncode}):\n{out.stderr[-4000:]}")
    rec = json.loads(line[0][7:])
    rec.update(process_s=wall, load_before=load0, load_after=load1)
    return rec


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def med_or_none(xs):
    xs = [x for x in xs if x]
    return statistics.median(xs) if xs else None


def summarise(runs: list[dict], ref: dict, cfg: dict) -> dict:
    out = {}
    for task in cfg["tasks"]:
        out[task] = {}
        for side in ("ours", "floor", "pyhessian"):
            rs = [r for r in runs if r["task"] == task and r["side"] == side]
            if not rs:
                continue
            s = {
                "processes": len(rs),
                "warm_s": med([med(r["warm_s"]) for r in rs]),
                "warm_all": [w for r in rs for w in r["warm_s"]],
                "first_s": med([r["first_s"] for r in rs]),
                "import_s": med([r["import_s"] for r in rs]),
                "setup_s": med([r["setup_s"] for r in rs]),
                "process_s": med([r["process_s"] for r in rs]),
                "products": med([r["products_warm"] for r in rs]),
                "products_first": med([r["first_result"]["products"] for r in rs]),
                "maxrss_mb": med([r["maxrss_mb"] for r in rs]),
                "product_ms": med_or_none([r.get("product_ms") for r in rs]),
                "product_ms_fwd_over_rev": med_or_none(
                    [r.get("product_ms_fwd_over_rev") for r in rs]
                ),
                "load_min": min(min(r["load_before"], r["load_after"]) for r in rs),
                "load_max": max(max(r["load_before"], r["load_after"]) for r in rs),
            }
            if "compile_first" in rs[0]:
                s["compile_s"] = med(
                    [
                        r["compile_first"]["backend_s"]
                        + r["compile_first"]["trace_s"]
                        + r["compile_first"]["lower_s"]
                        for r in rs
                    ]
                )
                s["backend_compile_s"] = med([r["compile_first"]["backend_s"] for r in rs])
                s["programs"] = med([r["compile_first"]["programs"] for r in rs])
                s["recompiled_warm"] = max(r["recompiled_warm"] for r in rs)
            if "heads_api" in rs[0]:
                s["heads_api"] = rs[0]["heads_api"]
            last = rs[-1]["result"]
            if task == "topk" and "topk" in ref:
                rv = np.asarray(ref["topk"])
                errs = [
                    float(
                        np.max(
                            np.abs(np.asarray(r["result"]["values"][: len(rv)]) - rv) / np.abs(rv)
                        )
                    )
                    for r in rs
                ]
                s["max_rel_error"] = max(errs)
                s["values"] = last["values"]
            if task == "heads" and "heads" in ref:
                rv = np.asarray(ref["heads"])
                errs = [
                    float(np.max(np.abs(np.asarray(r["result"]["values"]) - rv) / np.abs(rv)))
                    for r in rs
                ]
                s["max_rel_error"] = max(errs)
                s["values"] = last["values"]
            if task == "slice":
                s["loss_range"] = [float(np.min(last["loss"])), float(np.max(last["loss"]))]
            out[task][side] = s
        if task == "slice" and "ours" in out[task] and "floor" in out[task]:
            a = [r for r in runs if r["task"] == "slice" and r["side"] == "ours"][-1]["result"]
            b = [r for r in runs if r["task"] == "slice" and r["side"] == "floor"][-1]["result"]
            la, lb = np.asarray(a["loss"]), np.asarray(b["loss"])
            out[task]["agreement"] = {
                "loss_max_abs_diff": float(np.max(np.abs(la - lb))),
                "loss_max_rel_diff": float(np.max(np.abs(la - lb) / np.abs(lb))),
                "accuracy_max_abs_diff": float(
                    np.max(np.abs(np.asarray(a["accuracy"]) - np.asarray(b["accuracy"])))
                ),
            }
    return out


HEADER = """## Transformers: landscape against plain JAX (the floor) and PyHessian

Issue 16 ("Speed"). Workload: a ViT-style `make_model("transformer")` on digits patches
(8x8x1 images, patch 2: 16 tokens), pre-LN blocks, learned positions, mean pooling, trained
briefly with Adam (seed 0); mean cross-entropy over all N examples in ONE batch on every side;
float32. Three tasks, each side in its own fresh processes, sides rotated round by round:

* **top-k** (k = 5): ours `landscape.hessian.eigenvalues(loss_fn, params, data, k=5, key=key)`
  (the one-shot; thick-restart Lanczos to tol 1e-6); the floor: `jax.linearize` of the gradient
  once per call, one jitted Lanczos step per product (full reorthogonalisation, the basis on the
  device) and the same stopping bound on the host; PyHessian 0.1 `hessian(...).eigenvalues(top_n=5)`
  (power iteration with deflation, its defaults) on the PyTorch copy of the model (same layout,
  same weights; loss, logits and gradient checked against ours before timing).
* **per head**: the top eigenvalue of the Hessian's diagonal block on each (block, head)'s
  coordinates (its query/key/value kernel columns and biases, its output-kernel rows; not the
  shared output bias). Ours: `make_hvp` once, `restrict(op, head_selection(params, block=b,
  head=h))` and `eigenvalues(..., k=1)` per head; the floor: one jitted masked product
  `m * H (m * v)` on the linearised gradient and the same Lanczos with k = 1.
* **2-D slice**: ours `landscape.surface.slice_2d` (loss and accuracy at every point, its
  defaults) on two filter-normalised directions (`random_directions`, attention kernels per
  head); the floor: `lax.map` over chunks of 21 points of a `vmap`ped loss-and-accuracy, one
  jitted program, on the same directions (the surfaces agree to float32 rounding, checked).

Commands (repository root; `bash benchmarks/envs/make_torch_env.sh` once):

    python benchmarks/transformer/run.py --rounds 2 --repeats 1    # -> results.json, RESULTS.md
    python benchmarks/transformer/run.py --small                   # quick validation

Files: `run.py` (driver: training, the PyTorch check, float64 ARPACK references cached in
`reference.json`, rounds, tables), `worker_jax.py` (ours and the floor), `worker_torch.py`
(PyHessian and the PyTorch model).

"""


def round_ratios(runs: list[dict]):
    """``(task, other side, [(their warm / our warm, max load of the pair), ...])`` per round."""
    out = []
    for task in dict.fromkeys(r["task"] for r in runs):
        for other in ("floor", "pyhessian"):
            rat = []
            for key in dict.fromkeys((r.get("run", 0), r["round"]) for r in runs):
                pick = {
                    r["side"]: r
                    for r in runs
                    if r["task"] == task and (r.get("run", 0), r["round"]) == key
                }
                if "ours" in pick and other in pick:
                    a, b = pick["ours"], pick[other]
                    load = max(
                        a["load_before"], a["load_after"], b["load_before"], b["load_after"]
                    )
                    rat.append((med(b["warm_s"]) / med(a["warm_s"]), load))
            if rat:
                out.append((task, other, rat))
    return out


def markdown(res: dict) -> str:
    cfg, summ, m = res["config"], res["summary"], res["machine"]
    L = [HEADER]
    L.append(f"### Run {res['date']} (`{res['command']}`)")
    L.append("")
    L.append(
        f"Workload: digits 8x8x1, N = {cfg['n']}, patch {cfg['patch']} ({res['tokens']} tokens), width "
        f"{cfg['width']}, {cfg['depth']} blocks, {cfg['heads']} heads, MLP ratio 4, {res['num_params']} "
        f"parameters, trained {cfg['epochs']} epochs (train loss {res['check']['loss_ours']:.4f}); float32; "
        f"one batch of all N on every side; k = {cfg['k']}, tol = {cfg['tol']:g}; slice "
        f"{cfg['grid']} x {cfg['grid']}. {cfg['rounds']} rounds of fresh processes (sides rotated each "
        f"round), {cfg['repeats']} warm calls per process."
    )
    L.append("")
    L.append(
        f"Machine: {m['cpu']}, {m['cores']} cores, no GPU, {m['platform']}; jax {m['jax']}, torch "
        f"{res.get('torch', '?')} ({res.get('torch_threads', '?')} threads), PyHessian 0.1. `uptime` before: "
        f"`{res['uptime_before']}`; after: `{res['uptime_after']}`."
    )
    c = res["check"]
    L.append("")
    L.append(
        f"PyTorch model check (same weights): loss {c['loss_ours']:.7f} (ours) vs {c['loss_torch']:.7f} "
        f"(torch), relative difference {c['loss_rel_diff']:.1e}; logits max |diff| "
        f"{c['logits_max_abs_diff']:.1e} (max |logit| {c['logits_max_abs']:.1f}); gradient relative "
        f"difference {c['grad_rel_diff']:.1e}: {'agree to float32 rounding' if c['ok'] else 'MISMATCH'}."
    )
    if "topk" in res["reference"]:
        L.append("")
        L.append(
            "Float64 reference (ARPACK on the float64 HVP): top-k "
            + ", ".join(f"{v:.6g}" for v in res["reference"]["topk"])
            + "."
        )
    L.append("")
    L.append(
        "| task | side | warm call (s) | ms / product | products | rel. error | first call (s) | compile (s) | programs | "
        "process (s) | import (s) | peak RSS (MB) | load (min-max) | ratio (their / our warm) |"
    )
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for task, sides in summ.items():
        ours = sides.get("ours", {}).get("warm_s")
        for side in ("ours", "floor", "pyhessian"):
            if side not in sides:
                continue
            s = sides[side]
            err = f"{s['max_rel_error']:.1e}" if "max_rel_error" in s else ""
            comp = f"{s['compile_s']:.2f}" if "compile_s" in s else ""
            prog = f"{s['programs']:.0f}" if "programs" in s else ""
            ratio = "" if side == "ours" or not ours else f"{s['warm_s'] / ours:.2f}"
            loaded = " (loaded)" if s["load_max"] > LOADED and ratio else ""
            pm = f"{s['product_ms']:.1f}" if s.get("product_ms") else ""
            name = side + (f" ({s['heads_api']})" if "heads_api" in s else "")
            L.append(
                f"| {task} | {name} | {s['warm_s']:.3f} | {pm} | {s['products']:.0f} | {err} | {s['first_s']:.2f} | "
                f"{comp} | {prog} | {s['process_s']:.2f} | {s['import_s']:.2f} | {s['maxrss_mb']:.0f} | "
                f"{s['load_min']:.2f}-{s['load_max']:.2f} | {ratio}{loaded} |"
            )
    L.append("")
    L.append(
        "Per-round ratios (the other side's warm call over ours in the same round, the two "
        "processes adjacent in time; their 1-minute loads):"
    )
    L.append("")
    L.append("| task | side | ratio per round (load) | median ratio |")
    L.append("|---|---|---|---|")
    for task, other, rat in round_ratios(res["runs"]):
        cells = ", ".join(f"{x:.2f} ({ld:.1f})" for x, ld in rat)
        L.append(f"| {task} | {other} | {cells} | {med([x for x, _ in rat]):.2f} |")
    if "slice" in summ and "agreement" in summ["slice"]:
        a = summ["slice"]["agreement"]
        L.append("")
        L.append(
            f"Slice agreement, ours vs floor (same directions): loss max |diff| {a['loss_max_abs_diff']:.1e} "
            f"(relative {a['loss_max_rel_diff']:.1e}), accuracy max |diff| {a['accuracy_max_abs_diff']:.3g}."
        )
    L.append("")
    L.append(
        "Ratios are the other side's warm-call median over ours (> 1: we are faster); the floor is the "
        "same work in plain JAX by hand, so a ratio below 1 against it is our overhead. Products are "
        "Hessian-vector products per result (the heads: summed over every block and head). Peak RSS is "
        "each fresh process's high-water mark (VmHWM), compilation included. Rows whose processes ran "
        f"at a 1-minute load above {LOADED} on the 2 cores are marked loaded: not headline figures."
    )
    return "\n".join(L) + "\n"


def combine(files: list[str], out: str, md: str) -> None:
    """One summary over the rounds of several runs (same workload, same reference)."""
    parts = [json.loads(Path(f).read_text()) for f in files]
    res = dict(parts[0])
    keys = ("width", "depth", "heads", "patch", "n", "k", "tol", "grid", "epochs")
    for p in parts[1:]:
        if any(p["config"][k] != res["config"][k] for k in keys):
            raise SystemExit(f"combine: different workloads in {files}")
    res["runs"] = [dict(r, run=i) for i, p in enumerate(parts) for r in p["runs"]]
    res["config"] = dict(res["config"], rounds=sum(p["config"]["rounds"] for p in parts))
    res["uptime_after"] = parts[-1]["uptime_after"]
    res["date"] = " + ".join(p["date"] for p in parts)
    res["command"] = " ; ".join(p["command"] for p in parts)
    res["summary"] = summarise(res["runs"], res["reference"], res["config"])
    Path(out).write_text(json.dumps(res, indent=1, default=float))
    Path(md).write_text(markdown(res))
    print(markdown(res))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--patch", type=int, default=2)
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--tol", type=float, default=1e-6)
    ap.add_argument("--grid", type=int, default=21)
    ap.add_argument("--chunk", type=int, default=21, help="the floor's grid points per vmap chunk")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--tasks", default="topk,heads,slice")
    ap.add_argument("--no-ref", action="store_true")
    ap.add_argument(
        "--ref-only",
        action="store_true",
        help="compute (or check) the cached float64 references, then stop",
    )
    ap.add_argument(
        "--small", action="store_true", help="validation sizes: N 128, grid 5, 1 round"
    )
    ap.add_argument("--out", default=str(HERE / "results.json"))
    ap.add_argument("--md", default=str(HERE / "RESULTS.md"))
    ap.add_argument(
        "--combine",
        nargs="+",
        default=None,
        help="results.json files of earlier runs of the same workload: one table over all their rounds",
    )
    args = ap.parse_args()
    if args.combine:
        combine(args.combine, args.out, args.md)
        return
    if args.small:
        args.n, args.grid, args.rounds, args.repeats, args.epochs = 128, 5, 1, 1, 2
    cfg = {
        k: getattr(args, k)
        for k in (
            "width",
            "depth",
            "heads",
            "patch",
            "n",
            "k",
            "tol",
            "grid",
            "chunk",
            "epochs",
            "rounds",
            "repeats",
        )
    }
    cfg["tasks"] = args.tasks.split(",")
    res = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python benchmarks/transformer/run.py " + " ".join(sys.argv[1:]),
        "uptime_before": uptime(),
        "machine": {
            "cpu": cpu(),
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "jax": jax.__version__,
        },
    }
    print(res["uptime_before"], flush=True)
    npz = os.path.join(tempfile.mkdtemp(), "transformer.npz")
    model, params, data, paths = prepare(cfg, args.epochs, npz)
    res["num_params"] = int(landscape.tree.size(params))
    res["tokens"] = (8 // cfg["patch"]) ** 2
    res["check"] = check_torch(model, params, data, npz, cfg)
    print("torch check", res["check"], flush=True)
    if not res["check"]["ok"]:
        raise SystemExit("the PyTorch model does not match ours; not timing")
    res["reference"] = {} if args.no_ref else cached_references(model, params, data, paths, cfg)
    print("reference", res["reference"], flush=True)
    if args.ref_only:
        return
    sides = {
        "topk": ["ours", "floor", "pyhessian"],
        "heads": ["ours", "floor"],
        "slice": ["ours", "floor"],
    }
    runs = []
    for r in range(args.rounds):
        for task in cfg["tasks"]:
            order = sides[task][r % len(sides[task]) :] + sides[task][: r % len(sides[task])]
            for side in order:
                rec = run_worker(side, task, npz, cfg)
                rec["round"] = r
                runs.append(rec)
                with open(str(args.out) + ".partial.jsonl", "a") as f:  # survives a crash later on
                    f.write(json.dumps(rec) + "\n")
                print(
                    f"round {r} {task:5s} {side:9s} warm {med(rec['warm_s']):.3f} s  first {rec['first_s']:.2f} s  "
                    f"products {rec['products_warm']}  process {rec['process_s']:.2f} s  rss "
                    f"{rec['maxrss_mb']:.0f} MB  load {rec['load_before']:.2f}->{rec['load_after']:.2f}",
                    flush=True,
                )
    res["uptime_after"] = uptime()
    print(res["uptime_after"], flush=True)
    tr = [r for r in runs if r["side"] == "pyhessian"]
    if tr:
        res["torch"], res["torch_threads"] = tr[0]["torch"], tr[0]["threads"]
    res["config"] = cfg
    res["summary"] = summarise(runs, res["reference"], cfg)
    res["runs"] = runs
    Path(args.out).write_text(json.dumps(res, indent=1, default=float))
    md = markdown(res)
    Path(args.md).write_text(md)
    print(md)


if __name__ == "__main__":
    main()
