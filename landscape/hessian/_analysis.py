"""Analyses built on the curvature operators: gradient overlap with the top eigenspace, the
Hessian = GGN + residual split, and sharpness measures beyond the top eigenvalue."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from landscape import _provenance, engine
from landscape import tree as _tree
from landscape import validate as _validate
from landscape._result import Meta, Result, result, static_field
from landscape.hessian import _density, _driver, _eigen, _random, _trace
from landscape.hessian import _lanczos as lz
from landscape.hessian import _operators as ops

PyTree = Any

__all__ = [
    "DecompositionResult",
    "OverlapResult",
    "SharpnessResult",
    "adaptive_sharpness",
    "epsilon_sharpness",
    "ggn_decomposition",
    "gradient_overlap",
    "sharpness",
]


# --------------------------------------------------------------------------------------------
# Gradient overlap (Gur-Ari, Roberts, Dyer 2018)
# --------------------------------------------------------------------------------------------
@result
class OverlapResult(Result):
    """How much of the gradient lies in the top-k eigenspace.

    Attributes:
      fraction: ``||P_k g||^2 / ||g||^2`` with ``P_k`` the projector on the top-k eigenvectors.
      cos2: per eigenvector ``<v_i, g>^2 / ||g||^2`` (sums to ``fraction``).
      values: the eigenvalues.
      grad_norm: ``||g||`` of the full-data-set gradient.
      loss: the full-data-set loss.
    """

    fraction: np.ndarray
    cos2: np.ndarray
    values: np.ndarray
    grad_norm: np.ndarray
    loss: np.ndarray
    k: int = static_field(default=0)
    provenance: dict = static_field(default_factory=dict)

    def __repr__(self):
        return f"OverlapResult(k={self.k}, fraction={float(self.fraction):.4f}, grad_norm={float(self.grad_norm):.4g})"


@functools.partial(jax.jit, static_argnames=("layout",))
def _project_jit(layout, vectors, g):
    return jnp.dot(layout.ravel_rows(vectors), layout.ravel(g), precision=lax.Precision.HIGHEST)


@_validate.public("landscape.hessian.gradient_overlap")
@ops.curvature_keywords()
def gradient_overlap(
    loss_fn,
    params: PyTree,
    data: PyTree,
    *,
    k: int = 10,
    eigen: _eigen.EigenResult | None = None,
    key=None,
    tol: float = _eigen.DEFAULT_TOL,
    **curvature,
) -> OverlapResult:
    """Overlap of the full-data-set gradient with the top-k Hessian eigenspace.

    Gur-Ari, Roberts and Dyer (2018) observed that after a short initial phase the gradient lies
    mostly in the span of the top eigenvectors (about one per class). Computes the gradient
    exactly (one compiled pass) and the top-k eigenpairs (or reuses ``eigen``).

    Args:
      loss_fn, params, data: see :func:`make_hvp`.
      k: eigenvectors (ignored when ``eigen`` is given).
      eigen: an :class:`EigenResult` at the same ``params`` (its ``vectors`` are used).
      key: PRNG key for the eigensolver (required unless ``eigen`` is given).
      tol: passed to :func:`eigenvalues`.
      **curvature: the operator settings of :func:`make_hvp`, passed to :func:`eigenvalues`
        (``batch_size`` also sets the gradient's batches).

    Returns:
      :class:`OverlapResult`.

    Cost:
      One gradient plus the eigensolver's products (none with ``eigen``).

    Example:
      >>> top = landscape.hessian.eigenvalues(loss_fn, params, data, k=10, key=key)
      >>> landscape.hessian.gradient_overlap(loss_fn, params, data, eigen=top).fraction

    References:
      Gur-Ari, Roberts, Dyer 2018, "Gradient descent happens in a tiny subspace".
    """
    if eigen is None:
        if key is None:
            raise TypeError(f"{_validate.where()}: key is required to compute the eigenvectors (or pass eigen=...).")
        eigen = _eigen.eigenvalues(loss_fn, params, data, k=k, key=key, tol=tol, **curvature)
    elif not isinstance(eigen, _eigen.EigenResult):
        raise TypeError(f"{_validate.where()}: eigen must be an EigenResult; got {type(eigen).__name__}.")
    stacked = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), eigen.vectors)
    _validate.check_same_structure(stacked, params, name="eigen.vectors (one row)")
    vals, grad = engine.value_and_grad(loss_fn, params, data, batch_size=curvature.get("batch_size"))
    layout = lz.Layout(params)
    c = np.asarray(_project_jit(layout, eigen.vectors, grad), np.float64)
    gn = float(_tree.norm(grad))
    cos2 = c**2 / max(gn**2, np.finfo(np.float64).tiny)
    return OverlapResult(
        fraction=np.float64(cos2.sum()), cos2=cos2, values=np.asarray(eigen.values), grad_norm=np.float64(gn),
        loss=np.float64(vals["loss"]), k=len(cos2),
        provenance=_provenance.provenance(dtype=_tree.dtype_of(params), settings={"k": len(cos2)}),
    )


# --------------------------------------------------------------------------------------------
# Hessian = GGN + residual (Papyan 2019, 2020)
# --------------------------------------------------------------------------------------------
PARTS = ("hessian", "ggn", "residual")


@result
class DecompositionResult(Result):
    """Spectra of the Hessian, its Gauss-Newton part and the residual ``H - GGN``.

    Attributes:
      grid: common linear grid of the smoothed densities.
      density: ``{part: density on grid}`` for ``"hessian"``, ``"ggn"``, ``"residual"``.
      nodes, weights: ``{part: (num_probes, num_steps)}`` raw quadratures (same probes for all).
      top_values: ``{part: top-k eigenvalues}`` (descending; empty when ``k=0``).
      bottom_values: ``{part: bottom-k eigenvalues}`` (ascending; the residual is indefinite).
      traces: ``{part: SLQ trace}`` (``tr H = tr GGN + tr R`` holds probe by probe).
      sigma: smoothing width.
      num_hvps: products used in total (a residual product costs a Hessian and a GGN product).
    """

    grid: np.ndarray
    density: dict
    nodes: dict
    weights: dict
    top_values: dict
    bottom_values: dict
    traces: dict
    sigma: float = static_field(default=0.0)
    num_params: int = static_field(default=0)
    num_probes: int = static_field(default=0)
    num_steps: int = static_field(default=0)
    num_hvps: int = static_field(default=0)
    provenance: dict = static_field(default_factory=dict)

    @_validate.public("landscape.hessian.DecompositionResult.part")
    def part(self, name: str) -> _density.DensityResult:
        """One part as a :class:`DensityResult` (for :func:`landscape.plot.plot_density`)."""
        _validate.check_choice(name, PARTS, name="name")
        return _density.DensityResult(
            nodes=self.nodes[name], weights=self.weights[name], grid=self.grid, density=self.density[name],
            sigma=self.sigma, num_params=self.num_params, num_probes=self.num_probes, num_steps=self.num_steps,
            curvature=name,
        )

    def __repr__(self):
        tr = ", ".join(f"{p}={float(self.traces[p]):.4g}" for p in PARTS)
        return f"DecompositionResult(traces: {tr}; num_hvps={self.num_hvps})"


@_validate.public("landscape.hessian.ggn_decomposition")
@ops.curvature_keywords(exclude=("curvature",))
def ggn_decomposition(
    loss_fn,
    params: PyTree,
    data: PyTree,
    *,
    key,
    k: int = 5,
    num_probes: int = 5,
    num_steps: int = 60,
    sigma: float | None = None,
    num_points: int = 1000,
    **curvature,
) -> DecompositionResult:
    """Split the Hessian into its Gauss-Newton part and the residual, with both spectra.

    ``H = G + R`` where ``G = mean_i J_i^T H_out,i J_i`` (positive semi-definite; its outliers
    carry the class structure) and ``R = mean_i sum_c (dl_i/df_c) grad^2 f_c`` (indefinite,
    typically small after training) (Papyan 2019, 2020; Sagun et al. 2017). SLQ densities of all
    three operators use the same probes, and their top/bottom eigenvalues come from the
    thick-restart solver.

    Args:
      loss_fn, params, data: see :func:`make_hvp` (the GGN needs a :class:`landscape.Loss`, or
        ``model`` and ``output_loss``).
      key: PRNG key (required).
      k: top and bottom eigenvalues per part (0 to skip).
      num_probes, num_steps, sigma, num_points: SLQ settings (see :func:`spectral_density`).
      **curvature: the operator settings of :func:`make_hvp` but ``curvature`` (every part is
        computed): ``model``, ``output_loss``, ``params_filter``, ``preconditioner``,
        ``batch_size``, ``method``.

    Returns:
      :class:`DecompositionResult`.

    Cost:
      ``num_probes x num_steps`` products per part (a residual product is one Hessian-vector
      product for a :class:`landscape.Loss`, a Hessian plus a GGN
      product), plus the eigensolvers'.

    Example:
      >>> dec = landscape.hessian.ggn_decomposition(loss_fn, params, data, key=key)
      >>> landscape.plot.plot_decomposition(dec)

    References:
      Sagun et al. 2017; Papyan 2019 ("Measurements of three-level hierarchical structure in the
      outliers in the spectrum of deepnet Hessians"); Papyan 2020 ("Traces of class/cross-class
      structure pervade deep learning spectra").
    """
    key = _validate.check_key(key)
    k = _validate.check_positive_int(k, name="k", allow_zero=True)
    out: dict[str, _density.DensityResult] = {}
    tops, bots = {}, {}
    hvps = 0
    for part in PARTS:
        op = ops.make_hvp(loss_fn, params, data, curvature=part, **curvature)  # one per part
        d = _density.spectral_density(op, key=key, num_probes=num_probes, num_steps=num_steps, sigma=sigma,
                                      num_points=num_points, check=False)
        out[part] = d
        op_cost2 = op.pieces is not None and op.pieces.loss is None  # a plain loss_fn: H - GGN
        hvps += d.num_hvps * (2 if part == "residual" and op_cost2 else 1)
        if k:
            e = _eigen.eigenvalues(  # krylov_dim: the density's basis shape (same program)
                op, k=k, which="both", key=jax.random.fold_in(key, 1), tol=1e-4,
                krylov_dim=max(num_steps - 2 * k, 2 * k + 1),
            )
            hvps += e.num_hvps * (2 if part == "residual" and op_cost2 else 1)
            tops[part], bots[part] = e.largest, e.smallest
        else:
            tops[part] = bots[part] = np.zeros(0)
    lo = min(float(np.min(out[p].nodes)) for p in PARTS)
    hi = max(float(np.max(out[p].nodes)) for p in PARTS)
    sig = float(sigma) if sigma is not None else _density.default_sigma(lo, hi, num_steps)
    grid = np.linspace(lo - 5 * sig, hi + 5 * sig, num_points)
    dens = {p: _density.smooth_density(out[p].nodes, out[p].weights, grid, sig) for p in PARTS}
    return DecompositionResult(
        grid=grid, density=dens, nodes={p: out[p].nodes for p in PARTS}, weights={p: out[p].weights for p in PARTS},
        top_values=tops, bottom_values=bots, traces={p: np.float64(out[p].trace_estimate) for p in PARTS},
        sigma=sig, num_params=out["hessian"].num_params, num_probes=num_probes, num_steps=num_steps,
        num_hvps=int(hvps),
        provenance=_provenance.provenance(
            dtype=_tree.dtype_of(params), seeds=_driver.key_desc(key),
            settings={"k": k, "num_probes": num_probes, "num_steps": num_steps}),
    )


# --------------------------------------------------------------------------------------------
# Sharpness measures
# --------------------------------------------------------------------------------------------
def _full_value_and_grad(loss_fn, point, batched):
    def f(p, batch):
        return jax.value_and_grad(lambda q: engine.loss_and_aux(loss_fn, q, batch)[0])(p)

    return engine.batched_mean(f, point, batched)


@functools.partial(jax.jit, static_argnames=("loss_static", "num_steps"))
def _eps_sharp_jit(loss_static, loss_dyn, params, batched, epsilon, num_steps, seed):
    loss_fn = engine.merge_fn(loss_static, loss_dyn)
    box = jax.tree.map(lambda x: epsilon.astype(x.dtype) * (jnp.abs(x) + 1), params)
    (f0, _), _ = _full_value_and_grad(loss_fn, params, batched)
    # start at a random point of the box: at a minimum the gradient vanishes and a sign step
    # from z = 0 would not move
    z0 = jax.tree.map(lambda b, u: b * 2 * u, box, _random.uniform_like(params, seed, 0))

    def body(t, carry):
        z, best, ok = carry
        (f, g), flags = _full_value_and_grad(loss_fn, _tree.add(params, z), batched)
        step = 2.0 / num_steps
        z = jax.tree.map(lambda zi, gi, bi: jnp.clip(zi + step * bi * jnp.sign(gi), -bi, bi), z, g, box)
        return z, jnp.maximum(best, f), ok & jnp.all(flags)

    z, best, ok = lax.fori_loop(0, num_steps, body, (z0, f0, jnp.asarray(True)))
    (f_last, _), flags = _full_value_and_grad(loss_fn, _tree.add(params, z), batched)
    return f0, jnp.maximum(best, f_last), ok & jnp.all(flags)


@_validate.public("landscape.hessian.epsilon_sharpness")
def epsilon_sharpness(
    loss_fn, params: PyTree, data: PyTree, *, key, epsilon: float = 1e-3, num_steps: int = 20,
    batch_size: int | None = None,
) -> dict[str, float]:
    """Keskar et al. (2017)'s epsilon-sharpness in the full parameter space.

    ``100 * (max_{z in C} L(theta + z) - L(theta)) / (1 + L(theta))`` over the box
    ``C = {|z_i| <= epsilon (|theta_i| + 1)}``. The maximisation runs ``num_steps`` projected
    sign-gradient ascent steps from a random point of the box (step ``2 epsilon (|theta| + 1) /
    num_steps``, the largest loss seen is kept) on the exact full-data-set loss, in one compiled
    loop, instead of the paper's L-BFGS-B: a lower bound of the true maximum, like the paper's.

    Args:
      key: PRNG key (required: randomness is explicit): seeds the random start in the box.
      epsilon: the box's relative size; num_steps: ascent steps.
      batch_size: examples per batch of the full-data-set loss.

    Returns:
      ``{"sharpness": percent, "loss": L(theta), "max_loss": ...}``.

    Cost:
      ``num_steps + 2`` full-data-set gradients.

    References:
      Keskar, Mudigere, Nocedal, Smelyanskiy, Tang 2017, "On large-batch training for deep
      learning: generalization gap and sharp minima" (Metric 2.1).
    """
    _validate.check_params(params)
    epsilon = _validate.check_finite_scalar(epsilon, name="epsilon")
    if epsilon <= 0:
        raise ValueError(f"{_validate.where()}: epsilon must be > 0; got {epsilon}.")
    num_steps = _validate.check_positive_int(num_steps, name="num_steps")
    batched = engine.batch(data, batch_size)
    engine.check_loss(loss_fn, params, batched)
    s, d = engine.split_fn(loss_fn)
    seed = np.uint32(_random.key_seed(_validate.check_key(key)))
    f0, fmax, ok = _eps_sharp_jit(s, d, params, batched, np.asarray(epsilon, np.dtype(_tree.dtype_of(params))),
                                  num_steps, seed)
    if not bool(ok):
        raise FloatingPointError(f"{_validate.where()}: non-finite loss or gradient inside the epsilon box.")
    f0, fmax = float(f0), float(fmax)
    return {"sharpness": 100.0 * (fmax - f0) / (1.0 + f0), "loss": f0, "max_loss": fmax}


@functools.partial(jax.jit, static_argnames=("loss_static", "num_steps", "p_inf"))
def _adaptive_jit(loss_static, loss_dyn, params, batched, rho, eta, num_steps, p_inf):
    loss_fn = engine.merge_fn(loss_static, loss_dyn)
    T = jax.tree.map(lambda x: jnp.abs(x) + eta.astype(x.dtype), params)
    (f0, _), _ = _full_value_and_grad(loss_fn, params, batched)

    def project(u):
        if p_inf:
            return jax.tree.map(lambda x: jnp.clip(x, -rho, rho), u)
        n = _tree.norm(u)
        return _tree.scale(jnp.minimum(1.0, rho / jnp.maximum(n, 1e-30)), u)

    def body(t, carry):
        u, best, ok = carry
        delta = jax.tree.map(jnp.multiply, T, u)
        (f, g), flags = _full_value_and_grad(loss_fn, _tree.add(params, delta), batched)
        gu = jax.tree.map(jnp.multiply, T, g)  # gradient with respect to u
        if p_inf:
            direction = jax.tree.map(jnp.sign, gu)
        else:
            direction = _tree.scale(1.0 / jnp.maximum(_tree.norm(gu), 1e-30), gu)
        u = project(_tree.axpy(2.0 * rho / num_steps, direction, u))
        return u, jnp.maximum(best, f), ok & jnp.all(flags)

    u, best, ok = lax.fori_loop(0, num_steps, body, (_tree.zeros_like(params), f0, jnp.asarray(True)))
    (f_last, _), flags = _full_value_and_grad(loss_fn, _tree.add(params, jax.tree.map(jnp.multiply, T, u)), batched)
    return f0, jnp.maximum(best, f_last), ok & jnp.all(flags)


@_validate.public("landscape.hessian.adaptive_sharpness")
def adaptive_sharpness(
    loss_fn, params: PyTree, data: PyTree, *, rho: float = 0.05, eta: float = 0.0, p: float = 2,
    num_steps: int = 20, batch_size: int | None = None,
) -> dict[str, float]:
    """Adaptive (scale-invariant) worst-case sharpness of Kwon et al. (2021).

    ``max_{||T^{-1} delta||_p <= rho} L(theta + delta) - L(theta)`` with
    ``T = diag(|theta| + eta)``: perturbations are measured relative to each weight's size, so
    the measure does not change under the rescalings that leave a ReLU network's function
    unchanged (the objection of Dinh et al. 2017 to plain sharpness). Maximised by
    ``num_steps`` projected (normalised-)gradient ascent steps in the rescaled coordinates
    ``u = T^{-1} delta`` (step ``2 rho / num_steps``; with one step and ``p=2`` this is ASAM's
    perturbation), keeping the largest loss seen, on the exact full-data-set loss.

    Args:
      rho: radius; eta: offset of ``T`` (ASAM uses 0.01; 0 is the elementwise adaptive
        sharpness of Andriushchenko et al. 2023); p: 2 or ``float("inf")``.

    Returns:
      ``{"sharpness": increase, "loss": L(theta), "max_loss": ...}``.

    Cost:
      ``num_steps + 2`` full-data-set gradients.

    References:
      Kwon, Kim, Park, Choi 2021 (ASAM); Andriushchenko et al. 2023 ("A modern look at the
      relationship between sharpness and generalization").
    """
    _validate.check_params(params)
    rho = _validate.check_finite_scalar(rho, name="rho")
    eta = _validate.check_finite_scalar(eta, name="eta")
    if rho <= 0 or eta < 0:
        raise ValueError(f"{_validate.where()}: need rho > 0 and eta >= 0; got rho={rho}, eta={eta}.")
    if p not in (2, float("inf")):
        raise ValueError(f"{_validate.where()}: p must be 2 or float('inf'); got {p!r}.")
    num_steps = _validate.check_positive_int(num_steps, name="num_steps")
    batched = engine.batch(data, batch_size)
    engine.check_loss(loss_fn, params, batched)
    s, d = engine.split_fn(loss_fn)
    dt = _tree.dtype_of(params)
    f0, fmax, ok = _adaptive_jit(s, d, params, batched, np.asarray(rho, np.dtype(dt)), np.asarray(eta, np.dtype(dt)), num_steps,
                                 p == float("inf"))
    if not bool(ok):
        raise FloatingPointError(f"{_validate.where()}: non-finite loss or gradient inside the perturbation ball.")
    f0, fmax = float(f0), float(fmax)
    return {"sharpness": fmax - f0, "loss": f0, "max_loss": fmax}


@result
class SharpnessResult(Result):
    """Several sharpness measures at one point.

    Attributes:
      max_eigenvalue: the top Hessian eigenvalue (and its residual in ``details``).
      trace, trace_std_error: Hutch++ trace of the Hessian.
      epsilon_sharpness: Keskar et al.'s measure (percent).
      adaptive_sharpness: Kwon et al.'s worst-case loss increase.
      loss: full-data-set loss.
      details: settings and solver diagnostics.
    """

    max_eigenvalue: np.ndarray
    trace: np.ndarray
    trace_std_error: np.ndarray
    epsilon_sharpness: np.ndarray
    adaptive_sharpness: np.ndarray
    loss: np.ndarray
    details: dict = static_field(default_factory=dict)
    provenance: dict = static_field(default_factory=dict)

    def __repr__(self):
        return (
            f"SharpnessResult(max_eigenvalue={float(self.max_eigenvalue):.5g}, trace={float(self.trace):.5g}"
            f" +- {float(self.trace_std_error):.2g}, epsilon={float(self.epsilon_sharpness):.4g}%, "
            f"adaptive={float(self.adaptive_sharpness):.4g}, loss={float(self.loss):.4g})"
        )


@_validate.public("landscape.hessian.sharpness")
@ops.curvature_keywords()
def sharpness(
    loss_fn, params: PyTree, data: PyTree, *, key, epsilon: float = 1e-3, rho: float = 0.05, eta: float = 0.0,
    num_steps: int = 20, max_hvps: int = 60, tol: float = 1e-4, **curvature,
) -> SharpnessResult:
    """Flat versus sharp: the top eigenvalue, the trace, epsilon-sharpness and adaptive
    sharpness of the full-data-set loss at ``params``.

    Args:
      key: PRNG key (required).
      epsilon: box size of :func:`epsilon_sharpness`; rho, eta: of :func:`adaptive_sharpness`.
      num_steps: ascent steps of both worst-case measures.
      max_hvps: product budget of the Hutch++ trace.
      tol: residual tolerance of the top eigenvalue.
      **curvature: the operator settings of :func:`make_hvp` for the eigenvalue and the trace
        only (recorded in ``details["operator"]``); epsilon- and adaptive sharpness always
        perturb every parameter of the loss itself (``batch_size`` also sets their batches).

    Returns:
      :class:`SharpnessResult`.

    Cost:
      About ``20 + max_hvps`` products and ``2 num_steps + 4`` gradients.

    Example:
      >>> landscape.hessian.sharpness(loss_fn, params, data, key=jax.random.key(0))

    References:
      Keskar et al. 2017; Dinh et al. 2017; Kwon et al. 2021; Jiang et al. 2020 ("Fantastic
      generalization measures").
    """
    key = _validate.check_key(key)
    k1, k2 = _tree.split_key(key)
    batch_size = curvature.get("batch_size")
    op = ops.make_hvp(loss_fn, params, data, **curvature)  # one operator for both estimates
    eig = _eigen.eigenvalues(op, k=1, key=k1, tol=tol, check_multiplicity=False)
    tr = _trace.trace(op, key=k2, max_hvps=max_hvps)
    es = epsilon_sharpness(loss_fn, params, data, epsilon=epsilon, num_steps=num_steps, key=k2, batch_size=batch_size)
    ad = adaptive_sharpness(loss_fn, params, data, rho=rho, eta=eta, num_steps=num_steps, batch_size=batch_size)
    details = Meta(
        epsilon=epsilon, rho=rho, eta=eta, num_steps=num_steps, max_hvps=max_hvps,
        eigen_residual=float(eig.residuals[0]), eigen_num_hvps=eig.num_hvps, trace_num_hvps=tr.num_hvps,
        epsilon_max_loss=es["max_loss"], adaptive_max_loss=ad["max_loss"],
        operator=op.describe(),
    )
    return SharpnessResult(
        max_eigenvalue=np.float64(eig.values[0]), trace=np.float64(tr.estimate),
        trace_std_error=np.float64(tr.std_error), epsilon_sharpness=np.float64(es["sharpness"]),
        adaptive_sharpness=np.float64(ad["sharpness"]), loss=np.float64(es["loss"]), details=details,
        provenance=_provenance.provenance(dtype=_tree.dtype_of(params), seeds=_driver.key_desc(key),
                                          settings=dict(details)),
    )

