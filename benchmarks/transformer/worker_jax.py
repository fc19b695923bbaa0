"""One fresh process of the transformer benchmark, JAX side: ``ours`` (this repository) or
``floor`` (the same work in plain JAX written by hand). Driven by ``run.py``.

    python worker_jax.py SIDE TASK NPZ CONFIG_JSON

TASK is ``topk`` (top-k Hessian eigenvalues), ``heads`` (the top eigenvalue of every attention
head's diagonal Hessian block) or ``slice`` (a 2-D filter-normalised slice). The process imports,
loads the weights and data the driver wrote (``NPZ``), makes the first call (compilation
included), then ``repeats`` warm calls, and prints ONE JSON line: import / setup / first-call
seconds, the compile seconds (``jax.monitoring``: backend compilation, tracing, lowering, and the
number of programs), the warm times, the products (Hessian-vector products) per result, the
results themselves, and the peak resident memory (``VmHWM``: the process's high-water mark,
compilation included).

Both sides run the SAME forward function (the model's ``apply_fn``) and the same mean
cross-entropy on the same float32 weights and all ``N`` examples in one batch; what differs is
the machinery around it:

* ``topk``: ours ``landscape.hessian.eigenvalues(loss_fn, params, data, k=k, key=key)`` (the
  one-shot: builds the operator, thick-restart Lanczos to ``tol``); floor: the gradient
  linearised once per call with ``jax.linearize`` (jitted; each product then runs only the
  tangent part, as our ``method="auto"`` and PyHessian's kept graph) on the raveled parameters,
  and a Lanczos with full
  reorthogonalisation on the host (NumPy float64 basis) that stops when the top ``k`` Ritz
  pairs meet the same bound as ours (``min(r, r^2 / gap) <= tol * |theta_1|``; no restarts).
* ``heads``: for every (block, head), the top eigenvalue of ``S^T H S`` on that head's
  coordinates (its query, key, value kernel slices and q/k/v bias slices, its output-kernel
  slice; the output bias is shared by the heads and excluded). Ours: one ``make_hvp`` operator,
  ``restrict(op, head_selection(params, block=b, head=h))`` and ``eigenvalues(..., k=1)`` per
  head (``HESSIAN_HEADS=mask`` or an older tree without ``restrict``: our ``eigenvalues`` on a
  hand-masked matvec instead, reported as ``heads_api``). Floor: the linearised gradient (once
  per call) and ONE jitted masked product ``m * H (m * v)`` (the mask an argument: one program
  for all heads), the host Lanczos with ``k = 1``.
* ``slice``: ours ``landscape.surface.slice_2d(loss, params, data, (d1, d2), alphas, betas)``
  (loss and accuracy at every point; its defaults: the grid evaluator's chunks and batches);
  floor: ``lax.map`` over chunks of ``chunk`` grid points of a ``vmap`` of the loss-and-accuracy
  function on the whole batch, in one jitted program. Both get the same two directions (filter
  normalised by ``landscape.surface.random_directions`` in the driver, stored in the npz), so
  the two surfaces must agree to float32 rounding (checked by the driver).
"""

from __future__ import annotations

import functools
import json
import os
import resource
import sys
import time

T_START = time.perf_counter()
os.environ.setdefault(
    "LANDSCAPE_COMPILATION_CACHE", "0"
)  # cold compilations, as every benchmark here

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax, monitoring  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

COMPILE = {"programs": 0, "backend_s": 0.0, "trace_s": 0.0, "lower_s": 0.0}


def _listener(event, duration, **kw):
    if event.endswith("backend_compile_duration"):
        COMPILE["programs"] += 1
        COMPILE["backend_s"] += duration
    elif event.endswith("jaxpr_trace_duration"):
        COMPILE["trace_s"] += duration
    elif event.endswith("jaxpr_to_mlir_module_duration"):
        COMPILE["lower_s"] += duration


monitoring.register_event_duration_secs_listener(_listener)

import landscape  # noqa: E402
from landscape import engine, hessian, surface  # noqa: E402

T_IMPORT = time.perf_counter() - T_START


# ------------------------------------------------------------------------------------------
# workload
# ------------------------------------------------------------------------------------------
def build(npz: str, cfg: dict):
    z = np.load(npz)
    model = landscape.make_model(
        "transformer",
        input_shape=tuple(cfg["input_shape"]),
        num_outputs=10,
        width=cfg["width"],
        depth=cfg["depth"],
        heads=cfg["heads"],
        patch=cfg["patch"],
        seed=0,
    )
    paths = landscape.tree.leaf_paths(model.params)
    treedef = jax.tree.structure(model.params)
    params = jax.tree.unflatten(treedef, [jnp.asarray(z["p/" + p]) for p in paths])
    data = {"x": np.asarray(z["x"]), "y": np.asarray(z["y"])}
    dirs = None
    if "d1/" + paths[0] in z:
        dirs = tuple(
            jax.tree.unflatten(treedef, [jnp.asarray(z[f"{n}/{p}"]) for p in paths])
            for n in ("d1", "d2")
        )
    return model, params, data, dirs, paths


def ce_and_acc(apply_fn, state, p, x, y):
    logits, _ = apply_fn(p, state, x)
    logp = jax.nn.log_softmax(logits)
    loss = -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))
    acc = jnp.mean((jnp.argmax(logits, axis=-1) == y).astype(jnp.float32))
    return loss, acc


# ------------------------------------------------------------------------------------------
# the floor: Lanczos with full reorthogonalisation on the host
# ------------------------------------------------------------------------------------------
def host_lanczos(step, lin, v0: np.ndarray, *, k: int, tol: float, max_steps: int = 64, extra=()):
    """Top-``k`` Ritz values of the symmetric product ``lin`` from ``v0``: Lanczos with full
    reorthogonalisation, one jitted ``step`` per product (the basis a fixed ``(max_steps, n)``
    float32 buffer on the device), the tridiagonal's eigenproblem on the host in float64 after
    every product. Stops when every wanted pair's bound ``min(r, r^2 / gap)`` (``r = |beta_m
    s_mi|``, ``gap`` to the nearest other Ritz value less ``r``; ``r`` alone while there is no
    other) is at most ``tol * |theta_1|``, ours' criterion. Returns ``(values, bounds, products)``."""
    Q = (
        jnp.zeros((max_steps + 1, v0.size), jnp.float32)
        .at[0]
        .set(jnp.asarray(v0 / np.linalg.norm(v0), jnp.float32))
    )
    alpha, beta = [], []
    for j in range(max_steps):
        Q, a, b = step(lin, Q, j, *extra)
        a, b = float(a), float(b)
        alpha.append(a)
        m = j + 1
        if m >= k:
            T = np.diag(alpha) + np.diag(beta, 1) + np.diag(beta, -1)
            theta, S = np.linalg.eigh(T)
            theta, S = theta[::-1], S[:, ::-1]
            r = b * np.abs(S[-1, :])
            bounds = []
            for i in range(k):
                others = np.delete(theta, i)
                gap = np.min(np.abs(others - theta[i])) - r[i] if others.size else 0.0
                bounds.append(min(r[i], r[i] ** 2 / gap) if gap > 0 else r[i])
            bounds = np.asarray(bounds)
            if np.all(bounds <= tol * abs(theta[0])) or b < 1e-30:
                return theta[:k], bounds, m
        beta.append(b)
    raise RuntimeError(f"host_lanczos: not converged in {max_steps} products; raise max_steps")


def _lanczos_step(product, Q, j):
    """One Lanczos step: ``w = A q_j``, ``alpha = q_j . w``, ``w`` orthogonalised against the
    whole basis twice (rows beyond ``j`` are zero), ``q_{j+1} = w / ||w||``."""
    w = product(Q[j])
    a = jnp.vdot(Q[j], w)
    w = w - Q.T @ (Q @ w)
    w = w - Q.T @ (Q @ w)
    b = jnp.linalg.norm(w)
    return Q.at[j + 1].set(w / jnp.where(b > 0, b, 1)), a, b


@functools.partial(jax.jit, donate_argnums=1)  # the basis is updated in place
def lanczos_step(lin, Q, j):
    return _lanczos_step(lin, Q, j)


@functools.partial(jax.jit, donate_argnums=1)
def lanczos_step_masked(lin, Q, j, mask):
    return _lanczos_step(lambda v: mask * lin(mask * v), Q, j)


def floor_hvp(model, params, data):
    """The floor's products on the raveled parameters: ``linearize(w, x, y)`` linearises the
    gradient once (``jax.linearize``: the forward pass and the gradient's backward pass run once
    and are kept, each product runs only the tangent part: what our ``method="auto"`` picks
    here and what PyHessian's kept graph does), ``apply(lin, v)`` and ``apply_masked(lin, v, m)``
    are one product; ``fwd_over_rev`` is the textbook ``jvp`` of ``grad`` (reported for its
    per-product cost)."""
    flat0, unravel = ravel_pytree(params)
    apply_fn, state = model.apply_fn, model.state

    def grad_flat(w, x, y):
        g = jax.grad(lambda p: ce_and_acc(apply_fn, state, p, x, y)[0])(unravel(w))
        return ravel_pytree(g)[0]

    @jax.jit
    def linearize(w, x, y):
        return jax.linearize(lambda u: grad_flat(u, x, y), w)[1]

    @jax.jit
    def apply(lin, v):
        return lin(v)

    @jax.jit
    def apply_masked(lin, v, mask):
        return mask * lin(mask * v)

    @jax.jit
    def fwd_over_rev(w, v, x, y):
        return jax.jvp(lambda u: grad_flat(u, x, y), (w,), (v,))[1]

    x, y = jnp.asarray(data["x"]), jnp.asarray(data["y"])
    return flat0, unravel, linearize, apply, apply_masked, fwd_over_rev, x, y


def head_masks(params, paths, depth: int, heads: int):
    """``mask[b][h]``: raveled 0/1 vectors of each head's coordinates (q/k/v kernel columns
    ``[:, h]``, q/k/v biases ``[h]``, output kernel rows ``[h]``; not the output bias)."""
    leaves = jax.tree.leaves(params)
    treedef = jax.tree.structure(params)
    out = []
    for b in range(depth):
        row = []
        for h in range(heads):
            ms = []
            for p, leaf in zip(paths, leaves):
                m = np.zeros(leaf.shape, np.float32)
                pre = f"blocks/{b}/attn/"
                if p.startswith(pre):
                    rel = p[len(pre) :]
                    if rel in ("query/kernel", "key/kernel", "value/kernel"):
                        m[:, h] = 1
                    elif rel in ("query/bias", "key/bias", "value/bias", "out/kernel"):
                        m[h] = 1
                ms.append(m)
            row.append(np.asarray(ravel_pytree(jax.tree.unflatten(treedef, ms))[0]))
        out.append(row)
    return out


# ------------------------------------------------------------------------------------------
# tasks: each returns run(r) -> dict with "products"
# ------------------------------------------------------------------------------------------
def make_task(side, task, model, params, data, dirs, paths, cfg):
    n = len(data["y"])
    k, tol = cfg["k"], cfg["tol"]
    info = {}
    if side == "ours":
        loss = landscape.make_loss_fn(model, has_aux=False)
        batched = engine.batch(data, n)  # one batch of all N, as the floor and PyHessian
        if task != "slice":  # built after the timed calls (product_ms), not in the set-up
            PRODUCT["make"] = lambda: hessian.make_hvp(loss, params, batched)
            PRODUCT["fn"] = lambda: jax.block_until_ready(PRODUCT["op"](params))
        if task == "topk":

            def run(r):
                res = hessian.eigenvalues(
                    loss, params, batched, k=k, key=jax.random.key(r), tol=tol
                )
                return {
                    "values": np.asarray(res.values).tolist(),
                    "products": int(res.num_hvps),
                    "bounds": np.asarray(res.error_bounds).tolist(),
                }

        elif task == "heads":
            use_api = (
                hasattr(hessian, "restrict") and os.environ.get("HESSIAN_HEADS", "api") == "api"
            )
            info["heads_api"] = "restrict+head_selection" if use_api else "hand-masked matvec"
            if not use_api:
                masks = head_masks(params, paths, cfg["depth"], cfg["heads"])

            def run(r):
                op = hessian.make_hvp(loss, params, batched)
                vals, prods = [], 0
                for b in range(cfg["depth"]):
                    row = []
                    for h in range(cfg["heads"]):
                        kk = jax.random.fold_in(jax.random.key(r), b * cfg["heads"] + h)
                        if use_api:
                            sop = hessian.restrict(
                                op, hessian.head_selection(params, block=b, head=h)
                            )
                            e = hessian.eigenvalues(sop, k=1, key=kk, tol=tol)
                        else:
                            e = _masked_eigen(op, params, masks[b][h], kk, tol)
                        row.append(float(np.asarray(e.values)[0]))
                        prods += int(e.num_hvps)
                    vals.append(row)
                return {"values": vals, "products": prods}

        elif task == "slice":
            loss2 = landscape.make_loss_fn(model)  # loss and accuracy
            grid = np.linspace(-1, 1, cfg["grid"])

            def run(r):
                res = surface.slice_2d(loss2, params, data, dirs, alphas=grid, betas=grid)
                return {
                    "loss": np.asarray(res.train["loss"]).tolist(),
                    "accuracy": np.asarray(res.train["accuracy"]).tolist(),
                    "products": 0,
                    "points": int(cfg["grid"] ** 2),
                }

    else:
        flat0, unravel, linearize, apply, apply_masked, fwd_over_rev, x, y = floor_hvp(
            model, params, data
        )
        size = flat0.size
        if task != "slice":  # after the timed calls: one linearised product
            PRODUCT["make"] = lambda: linearize(flat0, x, y)
            PRODUCT["fn"] = lambda: jax.block_until_ready(apply(PRODUCT["op"], flat0))
            PRODUCT["fn2"] = lambda: jax.block_until_ready(fwd_over_rev(flat0, flat0, x, y))
        if task == "topk":

            def run(r):
                v0 = np.random.default_rng(r).standard_normal(size)
                lin = linearize(flat0, x, y)
                vals, bounds, m = host_lanczos(lanczos_step, lin, v0, k=k, tol=tol)
                return {"values": vals.tolist(), "products": m, "bounds": bounds.tolist()}

        elif task == "heads":
            masks = [
                [jnp.asarray(m) for m in row]
                for row in head_masks(params, paths, cfg["depth"], cfg["heads"])
            ]

            def run(r):
                vals, prods = [], 0
                rng = np.random.default_rng(r)
                lin = linearize(flat0, x, y)
                for b in range(cfg["depth"]):
                    row = []
                    for h in range(cfg["heads"]):
                        m = masks[b][h]
                        v0 = rng.standard_normal(size) * np.asarray(m)
                        val, _, used = host_lanczos(
                            lanczos_step_masked, lin, v0, k=1, tol=tol, extra=(m,)
                        )
                        row.append(float(val[0]))
                        prods += used
                    vals.append(row)
                return {"values": vals, "products": prods}

        elif task == "slice":
            apply_fn, state = model.apply_fn, model.state
            f1, _ = ravel_pytree(dirs[0])
            f2, _ = ravel_pytree(dirs[1])
            g = cfg["grid"]
            A, B = np.meshgrid(np.linspace(-1, 1, g), np.linspace(-1, 1, g), indexing="ij")
            ab = (jnp.asarray(A.ravel(), jnp.float32), jnp.asarray(B.ravel(), jnp.float32))
            chunk = int(cfg.get("chunk", g))

            @jax.jit
            def plane(w, d1, d2, a, b, x, y):
                def point(ab1):
                    return ce_and_acc(
                        apply_fn, state, unravel(w + ab1[0] * d1 + ab1[1] * d2), x, y
                    )

                return lax.map(point, (a, b), batch_size=chunk)

            def run(r):
                lo, ac = plane(flat0, f1, f2, ab[0], ab[1], x, y)
                return {
                    "loss": np.asarray(lo).reshape(g, g).tolist(),
                    "accuracy": np.asarray(ac).reshape(g, g).tolist(),
                    "products": 0,
                    "points": g * g,
                }

    return run, info


def _masked_eigen(op, params, mask, key, tol):
    """Our ``eigenvalues`` on a hand-masked matvec (the fallback without ``restrict``)."""
    from jax.tree_util import Partial

    _, unravel = ravel_pytree(params)
    mtree = unravel(jnp.asarray(mask))
    return hessian.eigenvalues(Partial(_mask_mv, op, mtree), like=params, k=1, key=key, tol=tol)


def _mask_mv(op, m, v):
    return jax.tree.map(jnp.multiply, m, op(jax.tree.map(jnp.multiply, m, v)))


def peak_rss_mb() -> float:
    """The process's peak resident memory (``VmHWM``; ``getrusage``'s ``ru_maxrss`` would carry
    the parent's high-water mark across ``exec``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


PRODUCT = {}


def product_ms(side, task, cfg, name="fn"):
    """Median milliseconds of one full Hessian-vector product (after the timed calls; ``fn2``:
    the floor's forward-over-reverse product)."""
    f = PRODUCT.get(name)
    if f is None:
        return None
    if "make" in PRODUCT and "op" not in PRODUCT:
        PRODUCT["op"] = PRODUCT["make"]()
    f()
    ts = []
    for _ in range(5):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return 1e3 * float(np.median(ts))


def main():
    side, task, npz, cfg = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    t = time.perf_counter()
    model, params, data, dirs, paths = build(npz, cfg)
    run, info = make_task(side, task, model, params, data, dirs, paths, cfg)
    t_setup = time.perf_counter() - t
    c0 = dict(COMPILE)
    t = time.perf_counter()
    first = run(0)
    t_first = time.perf_counter() - t
    c1 = dict(COMPILE)
    warm = []
    for r in range(1, cfg["repeats"] + 1):
        t = time.perf_counter()
        out = run(r)
        warm.append(time.perf_counter() - t)
    c2 = dict(COMPILE)
    rec = {
        "side": side,
        "task": task,
        "import_s": T_IMPORT,
        "setup_s": t_setup,
        "first_s": t_first,
        "warm_s": warm,
        "compile_first": {k_: c1[k_] - c0[k_] for k_ in c1},
        "compile_setup": {k_: c0[k_] for k_ in c0},
        "recompiled_warm": c2["programs"] - c1["programs"],
        "result": out,
        "first_result": {"products": first["products"]},
        "products_warm": out["products"],
        "maxrss_mb": peak_rss_mb(),
        "product_ms": product_ms(side, task, cfg),
        "product_ms_fwd_over_rev": product_ms(side, task, cfg, "fn2"),
        "jax": jax.__version__,
        **info,
    }
    print("RESULT " + json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
