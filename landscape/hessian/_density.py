"""Spectral density by stochastic Lanczos quadrature (SLQ)."""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from landscape import _provenance, engine
from landscape import store as _store
from landscape import validate as _validate
from landscape._result import Meta, Result, result, static_field
from landscape.hessian import _driver, _eigen, _random
from landscape.hessian import _lanczos as lz
from landscape.hessian import _operators as ops

PyTree = Any

BASIS_MAX_BYTES = 2 << 30
"""``reorthogonalize="auto"`` stores the basis (full reorthogonalisation) up to this size."""

__all__ = ["DensityResult", "smooth_density", "spectral_density"]

# fewer Lanczos steps than this cannot resolve a density: warned, not refused (a quick look)
MIN_DENSITY_STEPS = 10


@_validate.public("landscape.hessian.smooth_density")
def smooth_density(nodes, weights, grid, sigma) -> np.ndarray:
    """Gaussian-smoothed spectral density on ``grid``: the average over probes of
    ``sum_i w_i N(t; theta_i, sigma^2)`` (float64, host; integrates to one over the real line).

    Args:
      nodes, weights: arrays ``(num_probes, m)`` (or ``(m,)``) of Gauss nodes and weights.
      grid: points ``t``.
      sigma: the Gaussian width (> 0).
    """
    nodes = np.atleast_2d(np.asarray(nodes, np.float64))
    weights = np.atleast_2d(np.asarray(weights, np.float64))
    grid = np.asarray(grid, np.float64)
    out = np.zeros(grid.shape)
    for th, w in zip(nodes, weights):
        keep = w > 0
        z = (grid[:, None] - th[keep][None, :]) / sigma
        out += (np.exp(-0.5 * z * z) * w[keep][None, :]).sum(axis=1)
    return out / (len(nodes) * sigma * math.sqrt(2 * math.pi))


@result
class DensityResult(Result):
    """A spectral density estimate (stochastic Lanczos quadrature).

    Attributes:
      nodes, weights: the raw Gauss quadrature of every probe, ``(num_probes, num_steps)``
        (float64; each row of weights sums to one). The spectral measure of the operator is
        approximated by their average.
      grid, density: the smoothed density on a grid (``scale="log"``: the grid is
        ``log10(lambda)`` and the density is per unit of ``log10(lambda)``).
      sigma: the Gaussian width used (in grid units).
      scale: ``"linear"`` or ``"log"``.
      mass_excluded: (log scale) the weight of nodes at or below ``log_floor`` (zero and
        negative curvature), not shown in the log density.
      checks: consistency checks: ``weight_sum_error`` (max |sum w - 1|),
        ``slq_trace`` (``P * mean_p sum_i w_i theta_i``) and ``hutchinson_trace`` (``P * mean_p
        q0^T A q0``, the same probes' Hutchinson estimate, computed from the products) with
        ``trace_std_error``; ``top_node`` (largest node), ``top_eigenvalue`` (an independent
        Lanczos solve warm-started from the top Ritz vector) and ``top_relative_difference``;
        ``reference_trace`` and ``trace_z_score`` when a reference trace was given.
      num_hvps: products used (probes plus checks).
    """

    nodes: np.ndarray
    weights: np.ndarray
    grid: np.ndarray
    density: np.ndarray
    sigma: float = static_field(default=0.0)
    scale: str = static_field(default="linear")
    log_floor: float | None = static_field(default=None)
    mass_excluded: float = static_field(default=0.0)
    checks: dict = static_field(default_factory=dict)
    num_params: int = static_field(default=0)
    num_probes: int = static_field(default=0)
    num_steps: int = static_field(default=0)
    num_hvps: int = static_field(default=0)
    reorthogonalize: bool = static_field(default=True)
    curvature: str = static_field(default="hessian")
    provenance: dict = static_field(default_factory=dict)

    @property
    def trace_estimate(self) -> float:
        """``P * mean_p sum_i w_i theta_i`` (the SLQ trace)."""
        return float(self.num_params * np.mean(np.sum(self.weights * self.nodes, axis=1)))

    @property
    def top_node(self) -> float:
        return float(np.max(np.where(self.weights > 0, self.nodes, -np.inf)))

    def smoothed(self, sigma: float | None = None, grid=None, *, num_points: int = 1000) -> tuple[np.ndarray, np.ndarray]:
        """``(grid, density)`` on the linear scale at another width (host, no products)."""
        lo, hi = _node_range(self.nodes, self.weights)
        sigma = float(sigma) if sigma is not None else default_sigma(lo, hi, self.num_steps)
        if grid is None:
            grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, num_points)
        return np.asarray(grid, np.float64), smooth_density(self.nodes, self.weights, grid, sigma)

    def moment(self, j: int) -> float:
        """Quadrature estimate of ``tr(A^j) / P``."""
        return float(np.mean(np.sum(self.weights * self.nodes**j, axis=1)))

    def __repr__(self):
        return (
            f"DensityResult({self.num_probes} probes x {self.num_steps} steps, scale={self.scale}, "
            f"sigma={self.sigma:.3g}, top_node={self.top_node:.6g}, trace={self.trace_estimate:.6g}, "
            f"num_hvps={self.num_hvps})"
        )


def _node_range(nodes, weights):
    live = np.asarray(weights) > 0
    th = np.asarray(nodes)[live] if live.any() else np.asarray(nodes).ravel()
    return float(th.min()), float(th.max())


def default_sigma(lo: float, hi: float, num_steps: int) -> float:
    """The default width: the node range over the number of steps (the quadrature's
    resolution; Gauss nodes of ``m`` steps resolve features about ``range / m`` wide)."""
    width = (hi - lo) / max(num_steps, 1)
    return width if width > 0 else max(abs(hi), 1.0) * 1e-3


@functools.partial(jax.jit, static_argnames=("layout", "flat"))
def _probe_vector(layout, seed, counter, flat):
    """The unit Rademacher probe: a flat row ``(1, P)`` or a pytree."""
    z = _random.rademacher_like(jnp.zeros((layout.size,), layout.dtype), seed, counter)
    z = z / jnp.sqrt(jnp.asarray(layout.size, layout.dtype))
    return z[None] if flat else layout.unravel(z)


def _one_probe(op, prepared, layout, seed, p, num_steps, reorth, key):
    """Nodes, weights, q0^T A q0 and (full mode) the top Ritz vector of probe ``p``."""
    if reorth:
        v = _probe_vector(layout, np.uint32(seed), np.int32(p), True)
        st = lz.new_state(prepared, layout, v, 1, num_steps + 1, num_steps, key=jax.random.fold_in(key, p),
                          dtype=op.dtype)
        st.expand(num_steps)
        if not st.ok:
            op.check_flags(st.ok_flags, f"probe {p}, Lanczos step {st.first_bad}")
        H = st.H64()
        alphas = np.diag(H[:num_steps, :num_steps]).copy()
        betas = np.array([H[j + 1, j] for j in range(num_steps)])
        theta, Y = lz.tridiagonal_eigh(alphas, betas)
        top = lz.combine_rows(st, Y[:, -1:])
        return theta, Y[0] ** 2, alphas[0], top
    v = _probe_vector(layout, np.uint32(seed), np.int32(p), False)
    alphas, betas, ok, first_bad = lz.stream(prepared, v, num_steps)
    if not ok.all():
        op.check_flags(ok, f"probe {p}, Lanczos step {first_bad}")
    # after a breakdown the rest of T is zero: the trailing nodes get zero weight
    theta, Y = lz.tridiagonal_eigh(alphas, betas)
    return theta, Y[0] ** 2, alphas[0], None


@_validate.public("landscape.hessian.spectral_density")
@ops.curvature_keywords()
def spectral_density(
    operator,
    params: PyTree = None,
    data: PyTree = None,
    /,
    *,
    key,
    num_probes: int = 10,
    num_steps: int = 90,
    reorthogonalize: bool | str = "auto",
    sigma: float | None = None,
    num_points: int = 1000,
    grid=None,
    scale: str = "linear",
    log_floor: float | None = None,
    check: bool = True,
    reference_trace: float | None = None,
    store=None,
    like: PyTree | None = None,
    progress: bool = False,
    **curvature,
) -> DensityResult:
    """Spectral density of a symmetric operator (the Hessian, GGN or Fisher of the
    full-data-set mean loss, or any matvec) by stochastic Lanczos quadrature.

    Called like :func:`eigenvalues`: ``spectral_density(op, key=...)`` on a
    :class:`CurvatureOperator`, ``spectral_density(matvec, like=template, key=...)``, or the
    one-shot ``spectral_density(loss_fn, params, data, key=..., **curvature)``.

    For each of ``num_probes`` Rademacher probes ``z/||z||``, ``num_steps`` Lanczos steps give a
    tridiagonal ``T``; its eigenvalues (nodes) and squared first eigenvector components
    (weights) are a Gauss quadrature of the probe's spectral measure, exact for polynomials of
    degree ``< 2 num_steps``. The density is their average, smoothed by a Gaussian of width
    ``sigma`` (Lin, Saad, Yang 2016; Ghorbani, Krishnan, Xiao 2019; Papyan 2020).

    Args:
      operator, params, data, like: what to estimate on, as in :func:`eigenvalues`.
      key: PRNG key (required): seeds the probes.
      num_probes: probes (default 10); the probe noise of the density falls as
        ``1/sqrt(num_probes)``.
      num_steps: Lanczos steps per probe (default 90); fewer than :data:`MIN_DENSITY_STEPS`
        (10) cannot resolve a density and warn. ``num_probes=1`` gives no standard error.
      reorthogonalize: ``True`` (store the basis, full reorthogonalisation; memory
        ``(num_steps + 1) x P``, nodes free of spurious copies), ``False`` (streaming three-term
        recurrence, memory ``O(P)``: for large models; converged outliers may appear as
        several nearby nodes sharing their weight, which leaves the smoothed density and the
        moments unchanged) or ``"auto"`` (store when the basis fits in
        :data:`BASIS_MAX_BYTES`).
      sigma: Gaussian width in grid units; default: node range / ``num_steps`` (the quadrature's
        resolution) on the linear scale, log-range / ``num_steps`` on the log scale.
      num_points, grid: the evaluation grid (default: ``num_points`` points covering the nodes
        with a margin of 5 sigma).
      scale: ``"linear"``, or ``"log"`` (density of ``log10(lambda)`` over the nodes above
        ``log_floor``, as in Papyan 2020's log spectra; default floor ``1e-6 x`` top node).
      check: run the consistency checks that cost products (an independent top eigenvalue,
        warm-started from probe 0's top Ritz vector).
      reference_trace: an independent trace (e.g. ``trace(...).estimate``) to compare with the
        SLQ trace (reported as a z-score against the SLQ standard error).
      store: a directory: every probe's quadrature is saved atomically as it finishes
        (:class:`landscape.Store`) and a rerun with the same settings resumes; the resumed
        result equals an uninterrupted one (``num_hvps`` counts the products of this run only).
      progress: a progress bar over the probes (on stderr), with how many a resumed run loaded.
      **curvature: with a ``loss_fn``: the operator settings of :func:`make_hvp`.

    Returns:
      :class:`DensityResult` with raw ``nodes``/``weights``, ``grid``/``density`` and ``checks``.

    Cost:
      ``num_probes x num_steps`` products (plus about 5 to 20 for ``check``); with
      reorthogonalisation two passes over the stored basis per step.

    Raises:
      ValueError, TypeError: invalid settings (e.g. ``num_steps`` above the dimension) or inputs
        (see :func:`eigenvalues`).
      FloatingPointError: a product was not finite (names the batch).

    Example:
      >>> d = landscape.hessian.spectral_density(loss_fn, params, data, key=jax.random.key(0))
      >>> landscape.plot.plot_density(d, yscale="log")

    References:
      Golub and Meurant 2010; Lin, Saad, Yang 2016; Ghorbani, Krishnan, Xiao 2019; Papyan 2020.
    """
    key = _validate.check_key(key)
    num_probes = _validate.check_positive_int(num_probes, name="num_probes")
    num_steps = _validate.check_positive_int(num_steps, name="num_steps")
    num_points = _validate.check_positive_int(num_points, name="num_points")
    _validate.check_choice(progress, (True, False), name="progress")
    if num_steps < MIN_DENSITY_STEPS:
        _validate.warn(
            f"{_validate.where()}: num_steps={num_steps} gives {num_steps} quadrature node(s) per probe: the density is "
            f"{num_probes * num_steps} Gaussian bump(s) and cannot resolve the spectrum's shape (bulk, "
            f"outliers). Use num_steps >= {MIN_DENSITY_STEPS} (default 90)"
            + ("; num_probes=1 also gives no standard error for the trace." if num_probes == 1 else ".")
        )
    _validate.check_choice(scale, ("linear", "log"), name="scale")
    _validate.check_choice(reorthogonalize, (True, False, "auto"), name="reorthogonalize")
    if sigma is not None:
        sigma = _validate.check_finite_scalar(sigma, name="sigma")
        if sigma <= 0:
            raise ValueError(f"{_validate.where()}: sigma must be > 0; got {sigma}.")
    if reference_trace is not None:
        reference_trace = _validate.check_finite_scalar(reference_trace, name="reference_trace")
    if log_floor is not None and _validate.check_finite_scalar(log_floor, name="log_floor") <= 0:
        raise ValueError(f"{_validate.where()}: log_floor must be > 0; got {log_floor}.")
    return _driver.drive(
        estimate_density, operator, params, data, like=like, curvature=curvature, key=key, record={},
        num_probes=num_probes, num_steps=num_steps, reorthogonalize=reorthogonalize, sigma=sigma,
        num_points=num_points, grid=grid, scale=scale, log_floor=log_floor, check=check,
        reference_trace=reference_trace, store=store, progress=bool(progress),
    )


def estimate_density(op, *, key, num_probes, num_steps, reorthogonalize, sigma, num_points, grid, scale,
                     log_floor, check, reference_trace, store, progress=False) -> DensityResult:
    """SLQ density of an operator (see :func:`spectral_density`): the solver behind it."""
    n = op.num_params
    if num_steps > n:
        raise ValueError(f"{_validate.where()}: num_steps={num_steps} exceeds the number of parameters ({n}).")
    if reorthogonalize == "auto":
        itemsize = np.dtype(op.dtype).itemsize
        reorthogonalize = (num_steps + 1) * n * itemsize <= BASIS_MAX_BYTES
    settings = {
        "num_probes": num_probes, "num_steps": num_steps, "reorthogonalize": bool(reorthogonalize),
        **op.describe(), "key": _driver.key_desc(key), "dtype": str(np.dtype(op.dtype)),
    }
    if store is not None:  # bound to the operator itself: its static description and its arrays
        # a curvature operator's params, data, model state and preconditioner; a matvec's arrays
        static, arrays = engine.split_fn(op.matvec_fn if isinstance(op, ops.MatvecOperator) else op)
        store = _store.as_store(store, {
            "job": "landscape.hessian.spectral_density", **settings,
            "operator": _store.stable_text(static), "operator_arrays": _provenance.data_hash(arrays),
        })
    prepared = op.host_prepared()
    layout = lz.Layout(op.subset.restrict(op.template))
    seed = _random.key_seed(key)
    top_vec = None  # probe 0's top Ritz vector: the warm start of the check
    hvps = 0

    def compute(ids):
        nonlocal top_vec, hvps
        (p,) = ids
        th, w, a0, top = _one_probe(op, prepared, layout, seed, p, num_steps, reorthogonalize, key)
        hvps += num_steps
        out = {"nodes": np.asarray(th), "weights": np.asarray(w), "q0Aq0": np.float64(a0)}
        if p == 0 and top is not None:
            top_vec = top
            if store is not None:  # so that a resumed run warm-starts the check alike
                out["top"] = np.asarray(lz.ravel_rows(layout, top))
        return [out]

    probes = _store.run_chunks(compute, num_probes, store=store, desc="spectral_density",
                               unit="probe", progress=bool(progress))
    if check and top_vec is None and "top" in probes[0]:  # probe 0 came from the store
        top_vec = lz.unravel_rows(layout, probes[0]["top"])
    nodes = np.stack([np.asarray(r["nodes"], np.float64) for r in probes])
    weights = np.stack([np.asarray(r["weights"], np.float64) for r in probes])
    first = np.array([float(r["q0Aq0"]) for r in probes])

    checks: dict[str, Any] = {}
    checks["weight_sum_error"] = float(np.max(np.abs(weights.sum(axis=1) - 1.0)))
    per_probe = n * np.sum(weights * nodes, axis=1)
    checks["slq_trace"] = float(per_probe.mean())
    checks["hutchinson_trace"] = float(n * first.mean())
    checks["trace_std_error"] = float(per_probe.std(ddof=1) / np.sqrt(num_probes)) if num_probes > 1 else float("nan")
    top_node = float(np.max(np.where(weights > 0, nodes, -np.inf)))
    checks["top_node"] = top_node
    if reference_trace is not None:
        ref = float(reference_trace)
        checks["reference_trace"] = ref
        se = checks["trace_std_error"]
        checks["trace_z_score"] = float((checks["slq_trace"] - ref) / se) if se and np.isfinite(se) else float("nan")
    if check:
        v0 = None if top_vec is None else op.subset.embed(top_vec, op.template, leading=(1,))
        # krylov_dim = num_steps - 1 gives the same basis shape as the probes: same program
        eig = _eigen.solve(op, k=1, which="largest", tol=1e-4, key=jax.random.fold_in(key, 7777), v0=v0,
                           krylov_dim=max(num_steps - 1, 2), check_multiplicity=False)
        hvps += eig.num_hvps
        lam = float(eig.values[0])
        checks["top_eigenvalue"] = lam
        checks["top_eigenvalue_residual"] = float(eig.residuals[0])
        checks["top_relative_difference"] = float((top_node - lam) / max(abs(lam), 1e-300))

    lo, hi = _node_range(nodes, weights)
    mass_excluded = 0.0
    floor = None
    if scale == "linear":
        sig = float(sigma) if sigma is not None else default_sigma(lo, hi, num_steps)
        g = np.linspace(lo - 5 * sig, hi + 5 * sig, num_points) if grid is None else np.asarray(grid, np.float64)
        dens = smooth_density(nodes, weights, g, sig)
    else:
        floor = float(log_floor) if log_floor is not None else (abs(hi) * 1e-6 if hi > 0 else 1e-12)
        if floor <= 0:
            raise ValueError(f"{_validate.where()}: log_floor must be > 0; got {floor}.")
        above = nodes > floor
        mass_excluded = float(np.mean(np.sum(np.where(above, 0.0, weights), axis=1)))
        u = np.log10(np.where(above, nodes, floor))
        wl = np.where(above, weights, 0.0)
        ulo, uhi = math.log10(floor), math.log10(max(hi, floor * 10))
        sig = float(sigma) if sigma is not None else (uhi - ulo) / num_steps
        g = np.linspace(ulo, uhi + 5 * sig, num_points) if grid is None else np.asarray(grid, np.float64)
        dens = smooth_density(u, wl, g, sig)
    prov = _driver.provenance(op, key, settings)
    return DensityResult(
        nodes=nodes, weights=weights, grid=g, density=dens, sigma=float(sig), scale=scale, log_floor=floor,
        mass_excluded=mass_excluded, checks=Meta(checks), num_params=int(n), num_probes=num_probes,
        num_steps=num_steps, num_hvps=int(hvps), reorthogonalize=bool(reorthogonalize),
        curvature=op.curvature, provenance=prov,
    )
