"""Stochastic trace estimation: Hutchinson and Hutch++, with per-leaf and per-layer traces."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from landscape import engine
from landscape import validate as _validate
from landscape._result import Result, result, static_field
from landscape.hessian import _driver, _eigen, _exact, _random
from landscape.hessian import _lanczos as lz
from landscape.hessian import _operators as ops

PyTree = Any
_HI = lax.Precision.HIGHEST

__all__ = ["TraceResult", "trace"]


@result
class TraceResult(Result):
    """A trace, exact or estimated, with its standard error.

    Attributes:
      estimate: the trace (float64 scalar).
      std_error: its standard error (sample standard deviation of the probe terms over the
        square root of their number; for Hutch++ the deflated part is exact given the sketch and
        only the residual probes contribute; 0 for ``"exact"``; for ``"control_variate"`` only
        the residual ``H - GGN`` is estimated).
      samples: the per-probe values ``z^T A z`` (Hutchinson), ``u^T A u`` with
        ``u = (I - Q Q^T) z`` (Hutch++ residual part) or ``z^T (H - GGN) z`` (control variate;
        ``z`` zero on the leaves where the residual's diagonal block vanishes).
      deflated_part: the part computed without probes: ``tr(Q^T A Q)`` of Hutch++ (0 for
        Hutchinson), the exact trace (``"exact"``) or the exact GGN (+ L2 penalty) trace
        (``"control_variate"``).
      estimator: ``"exact"``, ``"control_variate"``, ``"hutch++"`` or ``"hutchinson"``.
      reason: why this estimator was used (``estimator="auto"`` says what it found).
      exact_passes: backward passes of the exact part (cotangent directions per example).
      per_leaf, per_leaf_se: ``{leaf_path: trace of that diagonal block}`` from the same probes
        (no extra products) and their standard errors.
      per_layer, per_layer_se: the same summed by layer (leaf path without its last component,
        e.g. ``"layers/0"``).
      num_hvps: products used (sketch + deflation + probes).
      num_probes: residual/Hutchinson probes used.
      converged: whether the standard-error target was met within the budget.
    """

    estimate: np.ndarray
    std_error: np.ndarray
    samples: np.ndarray
    deflated_part: np.ndarray
    per_leaf: dict
    per_leaf_se: dict
    per_layer: dict
    per_layer_se: dict
    num_hvps: int = static_field(default=0)
    num_probes: int = static_field(default=0)
    sketch_size: int = static_field(default=0)
    estimator: str = static_field(default="hutch++")
    reason: str = static_field(default="")
    exact_passes: int = static_field(default=0)
    converged: bool = static_field(default=False)
    rtol: float = static_field(default=0.0)
    num_params: int = static_field(default=0)
    curvature: str = static_field(default="hessian")
    provenance: dict = static_field(default_factory=dict)

    def __repr__(self):
        return (
            f"TraceResult({self.estimator}, estimate={float(self.estimate):.6g} +- {float(self.std_error):.2g}, "
            f"num_hvps={self.num_hvps}, layers={len(self.per_layer)})"
        )


def _layers(op, paths: list[str]) -> dict[str, list[str]]:
    """``{layer: its leaf paths}`` in order (a layer is a leaf path without its last part)."""
    layers: dict[str, list[str]] = {}
    for p in paths:
        layers.setdefault(op.subset.layer_of(p), []).append(p)
    return layers


@functools.partial(jax.jit, static_argnames=("mv_static", "layout", "num"))
def _sketch_jit(mv_static, mv_dyn, layout, seed, num):
    """``A S`` for ``num`` Rademacher columns ``S``, as flat rows ``(num, P)``."""
    mv = lz.traced_once(mv_static, mv_dyn)
    zero = jnp.zeros((layout.size,), layout.dtype)
    flags = jax.eval_shape(lambda v: mv(v)[1], layout.unravel(zero))

    def body(i, carry):
        out, ok = carry
        z = _random.rademacher_like(zero, seed, i)
        y, f = mv(layout.unravel(z))
        return lax.dynamic_update_index_in_dim(out, layout.ravel(y), i, 0), ok & f

    init = (jnp.zeros((num, layout.size), layout.dtype), jnp.ones(flags.shape, bool))
    return lax.fori_loop(0, num, body, init)


@functools.partial(jax.jit, static_argnames=("mv_static", "layout"))
def _quad_rows_jit(mv_static, mv_dyn, layout, Q):
    """Per-leaf ``q_i^T (A q_i)`` for every flat row ``q_i`` of ``Q``."""
    mv = lz.traced_once(mv_static, mv_dyn)
    num = Q.shape[0]
    nl = len(layout.sizes)
    flags = jax.eval_shape(lambda v: mv(v)[1], layout.unravel(Q[0]))

    def body(i, carry):
        vals, ok = carry
        q = Q[i]
        y, f = mv(layout.unravel(q))
        return vals.at[i].set(layout.leaf_sums(q * layout.ravel(y))), ok & f

    return lax.fori_loop(0, num, body, (jnp.zeros((num, nl), layout.dtype), jnp.ones(flags.shape, bool)))


@functools.partial(jax.jit, static_argnames=("mv_static", "layout", "num"))
def _probes_jit(mv_static, mv_dyn, layout, Q, seed, start, num):
    """Per-leaf ``u^T (A u)`` for ``num`` Rademacher probes ``z`` (``u = z - Q^T Q z`` when a
    flat deflation basis ``Q`` is given, else ``u = z``), probe counters ``start, start+1, ...``."""
    mv = lz.traced_once(mv_static, mv_dyn)
    nl = len(layout.sizes)
    zero = jnp.zeros((layout.size,), layout.dtype)
    flags = jax.eval_shape(lambda v: mv(v)[1], layout.unravel(zero))

    def body(i, carry):
        vals, ok = carry
        u = _random.rademacher_like(zero, seed, start + i)
        if Q is not None:
            u = u - jnp.dot(jnp.dot(Q, u, precision=_HI), Q, precision=_HI)
        y, f = mv(layout.unravel(u))
        return vals.at[i].set(layout.leaf_sums(u * layout.ravel(y))), ok & f

    return lax.fori_loop(0, num, body, (jnp.zeros((num, nl), layout.dtype), jnp.ones(flags.shape, bool)))


def estimate_trace(
    op,
    *,
    key,
    estimator: str,
    max_hvps: int,
    sketch_size: int | None,
    rtol: float,
    atol: float,
    min_probes: int,
    chunk_size: int,
    offset: float = 0.0,
) -> TraceResult:
    """Trace of an operator (see :func:`trace`): the solver behind it (``offset``: a known
    part of the total, used only by the stopping rule)."""
    prepared = op.host_prepared()
    s, d = engine.split_fn(prepared)
    layout = lz.Layout(op.subset.restrict(op.template))
    n = op.num_params
    paths = list(op.subset.selected_paths)
    seed = _random.key_seed(key)
    used = 0
    exact_leaf = np.zeros(len(paths))
    Q = None
    s_used = 0
    if estimator == "hutch++":
        s_size = sketch_size if sketch_size is not None else max(1, max_hvps // 3)
        s_size = min(s_size, n, max(1, (max_hvps - min(min_probes, max_hvps)) // 2))
        Y, ok = _sketch_jit(s, d, layout, np.uint32(seed ^ 0x5A5A5A5A), s_size)
        op.check_flags(ok)
        used += s_size
        Q, rank = _eigen.orthonormal_rows(Y, name="the sketch", drop_zero=True)
        if rank:
            vals, ok = _quad_rows_jit(s, d, layout, Q)
            op.check_flags(ok)
            used += rank
            s_used = rank
            exact_leaf = np.asarray(vals, np.float64).sum(axis=0)
        else:  # the operator vanishes on the whole sketch: nothing to deflate
            Q = None
    rows: list[np.ndarray] = []
    converged = False
    counter = 0
    while used < max_hvps:
        num = min(chunk_size, max_hvps - used)
        vals, ok = _probes_jit(s, d, layout, Q, np.uint32(seed), np.int32(counter), num)
        op.check_flags(ok)
        counter += num
        used += num
        rows.append(np.asarray(vals, np.float64))
        allv = np.concatenate(rows)
        if len(allv) >= max(min_probes, 2):
            tot = allv.sum(axis=1)
            est = offset + exact_leaf.sum() + tot.mean()
            se = tot.std(ddof=1) / np.sqrt(len(tot))
            if se <= rtol * abs(est) + atol:
                converged = True
                break
    allv = np.concatenate(rows) if rows else np.zeros((0, len(paths)))
    m = len(allv)
    tot = allv.sum(axis=1)
    mean_leaf = allv.mean(axis=0) if m else np.zeros(len(paths))
    se_leaf = allv.std(axis=0, ddof=1) / np.sqrt(m) if m > 1 else np.full(len(paths), np.nan)
    est = float(exact_leaf.sum() + (tot.mean() if m else 0.0))
    se = float(tot.std(ddof=1) / np.sqrt(m)) if m > 1 else float("nan")
    if m > 1 and not converged:
        converged = se <= rtol * abs(est + offset) + atol
    leaf_est = exact_leaf + mean_leaf
    per_leaf = {p: np.float64(v) for p, v in zip(paths, leaf_est)}
    per_leaf_se = {p: np.float64(v) for p, v in zip(paths, se_leaf)}
    layers = {ly: [paths.index(p) for p in ps] for ly, ps in _layers(op, paths).items()}
    per_layer = {ly: np.float64(leaf_est[idx].sum()) for ly, idx in layers.items()}
    per_layer_se = {
        ly: np.float64(allv[:, idx].sum(axis=1).std(ddof=1) / np.sqrt(m)) if m > 1 else np.float64(np.nan)
        for ly, idx in layers.items()
    }
    return TraceResult(
        estimate=np.float64(est),
        std_error=np.float64(se),
        samples=tot,
        deflated_part=np.float64(exact_leaf.sum()),
        per_leaf=per_leaf,
        per_leaf_se=per_leaf_se,
        per_layer=per_layer,
        per_layer_se=per_layer_se,
        num_hvps=int(used),
        num_probes=int(m),
        sketch_size=int(s_used),
        estimator=estimator,
        converged=bool(converged),
        rtol=float(rtol),
        num_params=int(n),
        curvature=op.curvature,
    )


ESTIMATORS = ("auto", "exact", "control_variate", "hutch++", "hutchinson")


def _route(op, estimator: str, max_hvps: int):
    """``(estimator, reason, per-leaf affinity reasons or None)`` for the requested estimator."""
    if estimator in ("hutch++", "hutchinson"):
        return estimator, "requested", None
    curv = getattr(op, "curvature", None)
    reasons, why = _exact.support(op)
    if reasons is None:
        if estimator != "auto":
            raise ValueError(f"{_validate.where()}: estimator={estimator!r} is not available: {why}. Use "
                             "estimator='auto' (falls back to Hutch++) or 'hutch++'/'hutchinson'.")
        return "hutch++", f"no exact route: {why}", None
    if curv != "fisher" and op.pieces.kind not in ("cross_entropy", "mse"):
        if estimator != "auto":
            raise ValueError(f"{_validate.where()}: estimator={estimator!r} needs a cross-entropy or MSE output "
                             "loss (the output Hessian's factor is analytic for those); use 'auto' or 'hutch++'.")
        return "hutch++", "no exact route: a custom output loss (the exact GGN trace covers cross-entropy and MSE)", None
    M = _exact.num_directions(op, "fisher" if curv == "fisher" else "ggn")
    nbytes = _exact.directions_bytes(op, M) if curv != "fisher" else 0
    if nbytes > _exact.DIRECTIONS_BUDGET:
        if estimator != "auto":
            raise ValueError(f"{_validate.where()}: the exact route's cotangent directions would take "
                             f"{nbytes / 2**20:.0f} MiB per batch (outputs with many rows); use a smaller batch_size "
                             "or estimator='auto'/'hutch++'.")
        return "hutch++", (f"the exact route's cotangent directions would take {nbytes / 2**20:.0f} MiB per batch "
                           "(outputs with many rows)"), None
    if estimator == "auto" and 2 * max_hvps < M:
        return "hutch++", (f"the exact route needs {M} backward passes per batch (cotangent directions per "
                           f"example), more than the product budget (max_hvps={max_hvps}) costs"), None
    bad = {p: r for p, r in zip(op.subset.selected_paths, reasons) if r is not None}
    if curv in ("ggn", "fisher"):
        if estimator == "control_variate":
            raise ValueError(f"{_validate.where()}: the {curv} trace is exact (estimator='exact' or 'auto'); "
                             "estimator='control_variate' is for the Hessian.")
        return "exact", f"{curv}: per-example gradient norms", reasons
    if curv == "residual":
        if not bad:
            return "exact", ("the outputs are piecewise affine in every parameter leaf (traced program): the "
                             "residual H - GGN has zero diagonal blocks, its trace is 0"), reasons
        if estimator == "exact":
            raise ValueError(f"{_validate.where()}: the residual's trace is not exactly 0 here ('{next(iter(bad))}': "
                             f"{next(iter(bad.values()))}); use estimator='auto' (Hutchinson on those leaves).")
        return "hutchinson", (f"Hutchinson on the {len(bad)} leaves where the residual's diagonal block does not "
                              f"vanish (e.g. '{next(iter(bad))}': {next(iter(bad.values()))}); 0 on the others"), reasons
    if not bad:
        if estimator == "control_variate":
            return "control_variate", "requested (the residual's diagonal vanishes on every leaf)", reasons
        return "exact", ("the outputs are piecewise affine in every parameter leaf (traced program), so "
                         "the residual H - GGN has zero diagonal blocks: tr H = tr GGN"), reasons
    first = next(iter(bad.items()))
    if estimator == "exact":
        raise ValueError(
            f"{_validate.where()}: the Hessian's trace is not exactly the GGN's here: the outputs are not "
            f"piecewise affine in {len(bad)} leaf/leaves (e.g. '{first[0]}': {first[1]}). Use "
            "estimator='control_variate' (exact GGN + Hutchinson on H - GGN) or 'auto'."
        )
    return "control_variate", (
        f"{len(bad)} of {len(reasons)} leaves are not piecewise affine (e.g. '{first[0]}': {first[1]}): exact "
        "GGN trace plus Hutchinson on H - GGN over those leaves"), reasons


def solve_trace(op, *, key, estimator, max_hvps, sketch_size, rtol, atol, min_probes, chunk_size) -> TraceResult:
    """The trace solver behind :func:`trace`: routes to the exact, control-variate or
    stochastic estimators."""
    est, reason, reasons = _route(op, estimator, max_hvps)
    if reasons is None:  # the stochastic estimators on the whole operator
        if est == "hutch++" and max_hvps < 3:
            if estimator == "auto":
                est, reason = "hutchinson", reason + "; max_hvps < 3 leaves no room for a Hutch++ sketch"
            else:
                raise ValueError(f"{_validate.where()}: hutch++ needs max_hvps >= 3 (sketch, its product, "
                                 f"probes); got {max_hvps}.")
        res = estimate_trace(op, key=key, estimator=est, max_hvps=max_hvps, sketch_size=sketch_size, rtol=rtol,
                             atol=atol, min_probes=min_probes, chunk_size=chunk_size)
        return res.replace(reason=reason)
    return _exact_trace(op, est, reason, reasons, key=key, max_hvps=max_hvps, rtol=rtol, atol=atol,
                        min_probes=min_probes, chunk_size=chunk_size)


def _exact_trace(op, est, reason, reasons, *, key, max_hvps, rtol, atol, min_probes, chunk_size) -> TraceResult:
    curv = op.curvature
    paths = list(op.subset.selected_paths)
    kind = "fisher" if curv == "fisher" else "ggn"
    M = _exact.num_directions(op, kind)
    if curv == "residual":
        exact_leaf = np.zeros(len(paths))
        M = 0
    else:
        exact_leaf = _exact.leaf_traces(op, kind)
        if curv != "fisher":
            exact_leaf = exact_leaf + _exact.penalty_diagonal(op)
    per_leaf = dict(zip(paths, exact_leaf))
    per_leaf_se = {p: np.float64(0.0) for p in paths}
    bad = [p for p, r in zip(paths, reasons) if r is not None] if curv in ("hessian", "residual") else []
    samples = np.zeros(0)
    layer_se: dict = {}
    se = 0.0
    used = 0
    probes = 0
    converged = True
    if bad and est in ("control_variate", "hutchinson"):
        rop = _exact.residual_operator(op, bad)
        # a residual product of a landscape.Loss is one Hessian-vector product (of r . f); of a
        # plain loss_fn with model=, a Hessian product and a GGN product
        cost = 1 if op.pieces.loss is not None else 2
        budget = max_hvps // cost
        if budget < 2:
            raise ValueError(f"{_validate.where()}: the control variate needs 2 residual probes ({2 * cost} products "
                             f"here); got max_hvps={max_hvps}.")
        sub = estimate_trace(rop, key=key, estimator="hutchinson", max_hvps=budget, sketch_size=None, rtol=rtol,
                             atol=atol, min_probes=min(min_probes, budget), chunk_size=chunk_size,
                             offset=float(exact_leaf.sum()))
        for p in bad:
            per_leaf[p] = per_leaf[p] + sub.per_leaf[p]
            per_leaf_se[p] = sub.per_leaf_se[p]
        samples = np.asarray(sub.samples)
        layer_se = dict(sub.per_layer_se)
        se = float(sub.std_error)
        used = cost * sub.num_hvps
        probes = sub.num_probes
        converged = bool(sub.converged)
    elif est == "control_variate":
        reason += "; no leaf needs probes"
    total = float(sum(per_leaf.values()))
    per_leaf = {p: np.float64(v) for p, v in per_leaf.items()}
    layers = _layers(op, paths)
    per_layer = {ly: np.float64(sum(per_leaf[p] for p in ps)) for ly, ps in layers.items()}
    # the exact part has no variance: a layer's SE is that of its probed leaves' sum
    per_layer_se = {ly: np.float64(layer_se.get(ly, 0.0)) for ly in layers}
    return TraceResult(
        estimate=np.float64(total),
        std_error=np.float64(se),
        samples=samples,
        deflated_part=np.float64(exact_leaf.sum()),
        per_leaf=per_leaf,
        per_leaf_se=per_leaf_se,
        per_layer=per_layer,
        per_layer_se=per_layer_se,
        num_hvps=int(used),
        num_probes=int(probes),
        sketch_size=0,
        estimator=est,
        reason=reason,
        exact_passes=int(M),
        converged=bool(converged),
        rtol=float(rtol),
        num_params=int(op.num_params),
        curvature=op.curvature,
    )


@_validate.public("landscape.hessian.trace")
@ops.curvature_keywords()
def trace(
    operator,
    params: PyTree = None,
    data: PyTree = None,
    /,
    *,
    key,
    estimator: str = "auto",
    max_hvps: int = 100,
    sketch_size: int | None = None,
    rtol: float = 1e-2,
    atol: float = 0.0,
    min_probes: int = 10,
    chunk_size: int = 10,
    like: PyTree | None = None,
    **curvature,
) -> TraceResult:
    """Trace of a symmetric operator (the Hessian, GGN or Fisher of the full-data-set mean
    loss, or any matvec), exact where the algebra allows, else with a standard error; with
    per-leaf and per-layer traces.

    Called like :func:`eigenvalues`: ``trace(op, key=...)`` on a :class:`CurvatureOperator`,
    ``trace(matvec, like=template, key=...)``, or the one-shot ``trace(loss_fn, params, data,
    key=..., **curvature)``.

    Estimators (``estimator=``; the result's ``estimator`` and ``reason`` say which ran and why):

    * ``"auto"`` (default): ``"exact"`` when it applies, else ``"control_variate"`` for a
      Hessian, else ``"hutch++"``. The exact and control-variate routes need the model's
      outputs and output loss: a :class:`landscape.Loss` from ``make_loss_fn`` carries them (or
      ``model=`` and ``output_loss=``); a plain ``loss_fn``, a matvec or a preconditioned
      operator gets Hutch++. Auto also takes Hutch++ when the exact route would need more than
      ``2 max_hvps`` backward passes (outputs with many rows, e.g. sequences).
    * ``"exact"``: the GGN and empirical-Fisher traces from per-example gradient norms
      (``tr GGN = mean_i tr(J_i^T H_i J_i)``, see :mod:`landscape.hessian._exact`); the
      Hessian's when the network's outputs are piecewise affine in each parameter leaf
      (ReLU/leaky-ReLU/max-pool MLPs and CNNs, batch norm in evaluation mode, a linear read-out),
      decided from the traced program (never from layer names): then the residual ``H - GGN``
      has zero diagonal blocks and ``tr H = tr GGN`` (+ the L2 penalty's ``weight_decay * P``).
      Tied weights, LayerNorm, batch norm in training mode, weight standardisation, attention
      and smooth activations break it, for the leaves they touch; ``"exact"`` then raises,
      naming the leaf and the operation.
    * ``"control_variate"``: ``tr H = tr GGN (exact) + E[z^T (H - GGN) z]``, the expectation
      over Rademacher probes ``z`` supported on the leaves where the residual's diagonal does
      not vanish. Its standard error is the residual's only. A residual product is one
      Hessian-vector product (of ``r . f`` with the output residual ``r = dL/df`` held fixed)
      for a :class:`landscape.Loss`; with a plain ``loss_fn`` and ``model=`` it is a Hessian
      and a GGN product, and ``num_hvps`` counts both.
    * ``"hutchinson"``: the mean of ``z^T A z`` over Rademacher probes ``z`` (Hutchinson 1989).
    * ``"hutch++"``: sketch ``Y = A S`` with ``sketch_size`` Rademacher columns, orthonormalise
      it (``Q``), take ``tr(Q^T A Q)`` exactly and estimate the rest with Hutchinson on
      ``(I - QQ^T) A (I - QQ^T)`` (Meyer, Musco, Musco, Woodruff 2021). On spectra with a few
      large eigenvalues (trained networks) the residual part is much smaller, so the error at
      equal products is lower; on a flat spectrum the sketch buys nothing and Hutchinson is
      better.

    Stochastic probes run in compiled chunks of ``chunk_size``; after each chunk the estimate
    stops when ``std_error <= rtol * |estimate| + atol`` (at least ``min_probes`` probes), or
    when ``max_hvps`` products are used. Per-leaf traces (each parameter leaf's diagonal block)
    come from the same probes (``tr(A_ll) = tr(Q_l^T (A Q)_l) + E[u_l^T (A u)_l]``) or exactly;
    per-layer traces sum the leaves of a layer.

    Args:
      operator, params, data, like: what to estimate on, as in :func:`eigenvalues`.
      key: PRNG key (required): seeds the counter-based probe generator.
      estimator: ``"auto"``, ``"exact"``, ``"control_variate"``, ``"hutch++"`` or ``"hutchinson"``.
      max_hvps: product budget of the stochastic part (sketch, its product and the probes).
      sketch_size: Hutch++ sketch columns (default ``max_hvps // 3``).
      rtol, atol: standard-error target.
      min_probes: probes before the target is checked.
      chunk_size: probes per compiled call.
      **curvature: with a ``loss_fn``: the operator settings of :func:`make_hvp`.

    Returns:
      :class:`TraceResult`.

    Cost:
      Exact: about ``M + 1`` gradient evaluations (``M`` cotangent directions per example: the
      number of outputs for a classifier, 1 for the Fisher) and a forward pass, one compiled
      program. Stochastic: at most ``max_hvps`` products; memory ``sketch_size x P`` for Hutch++.

    Raises:
      ValueError, TypeError: invalid settings or inputs (see :func:`eigenvalues`); an
        ``"exact"``/``"control_variate"`` request where it does not apply (with the reason).
      FloatingPointError: a product was not finite (names the batch).

    Example:
      >>> t = landscape.hessian.trace(loss_fn, params, data, key=jax.random.key(0))
      >>> t.estimate, t.std_error, t.estimator, t.reason, t.per_layer

    References:
      Hutchinson 1989; Meyer, Musco, Musco, Woodruff 2021 (Hutch++); Yao et al. 2020 (PyHessian);
      Schraudolph 2002, Martens 2020 (GGN); Papyan 2019 (H = GGN + residual); Goodfellow 2015
      (per-example gradient norms).
    """
    key = _validate.check_key(key)
    _validate.check_choice(estimator, ESTIMATORS, name="estimator")
    max_hvps = _validate.check_positive_int(max_hvps, name="max_hvps")
    min_probes = _validate.check_positive_int(min_probes, name="min_probes")
    chunk_size = _validate.check_positive_int(chunk_size, name="chunk_size")
    if sketch_size is not None:
        sketch_size = _validate.check_positive_int(sketch_size, name="sketch_size")
    rtol = _validate.check_finite_scalar(rtol, name="rtol")
    atol = _validate.check_finite_scalar(atol, name="atol")
    if rtol < 0 or atol < 0:
        raise ValueError(f"{_validate.where()}: rtol and atol must be >= 0; got rtol={rtol}, atol={atol}.")
    if estimator == "hutch++" and max_hvps < 3:
        raise ValueError(f"{_validate.where()}: hutch++ needs max_hvps >= 3 (sketch, its product, probes); got {max_hvps}.")
    settings = {"estimator": estimator, "max_hvps": max_hvps, "sketch_size": sketch_size, "rtol": rtol,
                "atol": atol, "min_probes": min_probes, "chunk_size": chunk_size}
    return _driver.drive(solve_trace, operator, params, data, like=like, curvature=curvature, key=key,
                         record=settings, **settings)
