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
from landscape.hessian import _driver, _eigen, _random
from landscape.hessian import _lanczos as lz
from landscape.hessian import _operators as ops

PyTree = Any
_HI = lax.Precision.HIGHEST

__all__ = ["TraceResult", "trace"]


@result
class TraceResult(Result):
    """A stochastic trace estimate with its standard error.

    Attributes:
      estimate: the trace estimate (float64 scalar).
      std_error: its standard error (sample standard deviation of the probe terms over the
        square root of their number; for Hutch++ the deflated part is exact given the sketch and
        only the residual probes contribute).
      samples: the per-probe values ``z^T A z`` (Hutchinson) or ``u^T A u`` with
        ``u = (I - Q Q^T) z`` (Hutch++ residual part).
      deflated_part: ``tr(Q^T A Q)`` of Hutch++ (0 for Hutchinson).
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


@functools.partial(jax.jit, static_argnames=("mv_static", "layout", "num"))
def _sketch_jit(mv_static, mv_dyn, layout, seed, num):
    """``A S`` for ``num`` Rademacher columns ``S``, as flat rows ``(num, P)``."""
    mv = engine.merge_fn(mv_static, mv_dyn)
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
    mv = engine.merge_fn(mv_static, mv_dyn)
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
    mv = engine.merge_fn(mv_static, mv_dyn)
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
) -> TraceResult:
    """Trace of an operator (see :func:`trace`): the solver behind it."""
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
        Q, rank = _eigen.orthonormal_rows(Y, name="the sketch")
        vals, ok = _quad_rows_jit(s, d, layout, Q)
        op.check_flags(ok)
        used += rank
        s_used = rank
        exact_leaf = np.asarray(vals, np.float64).sum(axis=0)
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
            est = exact_leaf.sum() + tot.mean()
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
        converged = se <= rtol * abs(est) + atol
    leaf_est = exact_leaf + mean_leaf
    per_leaf = {p: np.float64(v) for p, v in zip(paths, leaf_est)}
    per_leaf_se = {p: np.float64(v) for p, v in zip(paths, se_leaf)}
    layers: dict[str, list[int]] = {}
    for i, p in enumerate(paths):
        layers.setdefault(op.subset.layer_of(p), []).append(i)
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


@_validate.public("landscape.hessian.trace")
@ops.curvature_keywords()
def trace(
    operator,
    params: PyTree = None,
    data: PyTree = None,
    /,
    *,
    key,
    estimator: str = "hutch++",
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
    loss, or any matvec), with a standard error and per-layer traces.

    Called like :func:`eigenvalues`: ``trace(op, key=...)`` on a :class:`CurvatureOperator`,
    ``trace(matvec, like=template, key=...)``, or the one-shot ``trace(loss_fn, params, data,
    key=..., **curvature)``.

    ``"hutchinson"``: the mean of ``z^T A z`` over Rademacher probes ``z`` (Hutchinson 1989).
    ``"hutch++"`` (default): sketch ``Y = A S`` with ``sketch_size`` Rademacher columns,
    orthonormalise it (``Q``), take ``tr(Q^T A Q)`` exactly and estimate the rest with
    Hutchinson on ``(I - QQ^T) A (I - QQ^T)`` (Meyer, Musco, Musco, Woodruff 2021). On spectra
    with a few large eigenvalues (trained networks) the residual part is much smaller, so the
    error at equal products is lower; on a flat spectrum the sketch buys nothing and Hutchinson
    is better. Probes run in compiled chunks of ``chunk_size``; after each chunk the estimate
    stops when ``std_error <= rtol * |estimate| + atol`` (at least ``min_probes`` probes), or
    when ``max_hvps`` products are used.

    Per-leaf traces (the trace of each parameter leaf's diagonal block) come from the same
    probes at no extra cost: ``tr(A_ll) = tr(Q_l^T (A Q)_l) + E[u_l^T (A u)_l]``; per-layer
    traces sum the leaves of a layer.

    Args:
      operator, params, data, like: what to estimate on, as in :func:`eigenvalues`.
      key: PRNG key (required): seeds the counter-based probe generator.
      estimator: ``"hutch++"`` or ``"hutchinson"``.
      max_hvps: product budget (sketch, its product and the probes together).
      sketch_size: Hutch++ sketch columns (default ``max_hvps // 3``).
      rtol, atol: standard-error target.
      min_probes: probes before the target is checked.
      chunk_size: probes per compiled call.
      **curvature: with a ``loss_fn``: the operator settings of :func:`make_hvp`.

    Returns:
      :class:`TraceResult`.

    Cost:
      At most ``max_hvps`` products; memory ``sketch_size x P`` for Hutch++.

    Raises:
      ValueError, TypeError: invalid settings or inputs (see :func:`eigenvalues`).
      FloatingPointError: a product was not finite (names the batch).

    Example:
      >>> t = landscape.hessian.trace(loss_fn, params, data, key=jax.random.key(0), max_hvps=60)
      >>> t.estimate, t.std_error, t.per_layer

    References:
      Hutchinson 1989; Meyer, Musco, Musco, Woodruff 2021 (Hutch++); Yao et al. 2020 (PyHessian).
    """
    key = _validate.check_key(key)
    _validate.check_choice(estimator, ("hutch++", "hutchinson"), name="estimator")
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
    return _driver.drive(estimate_trace, operator, params, data, like=like, curvature=curvature, key=key,
                         record=settings, **settings)
