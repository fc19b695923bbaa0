"""Gaussian expectations of elementwise functions by Gauss-Hermite quadrature.

The kernel maps of infinitely wide networks are expectations of elementwise functions under
centred Gaussians: the length map ``E[f(u)]`` with ``u ~ N(0, v)``, and the covariance map
``E[f(u) g(u')]`` with ``(u, u') ~ N(0, [[v1, c], [c, v2]])`` (the NNGP map of an activation
``phi`` with ``f = g = phi``, its derivative kernel with ``f = g = phi'``). The NNGP/NTK
recursions of :mod:`ntk` use them for activations without a closed form; mean-field signal
propagation (length and correlation maps, ``chi``) needs the same integrals.

Every function here is traceable (use it inside ``jax.jit``), elementwise over broadcast
arrays of variances and covariances, and differentiable; outputs follow the dtype of the
covariance argument. The nodes and weights are computed once per degree in NumPy (float64) and
cast to that dtype.

Accuracy (probabilists' Gauss-Hermite rule of degree ``deg``): exact for polynomials of degree
below ``2 deg`` in each standard normal; spectrally fast for smooth functions (erf, GELU,
tanh: 1e-8 or better at ``deg = 128`` for unit variances); slow where a function has a kink
(ReLU's covariance map: about 1e-3 relative at ``deg = 200``; use a closed form there).

References:
  Golub, Welsch (1969), Calculation of Gauss quadrature rules. Poole et al. (2016),
  Exponential expressivity in deep neural networks through transient chaos (length and
  correlation maps). Lee et al. (2018), Deep neural networks as Gaussian processes. Novak et
  al. (2020), Neural Tangents (``stax.Elementwise``, numerical kernels).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from landscape import validate as _validate

__all__ = [
    "gaussian_expectation",
    "hermite_nodes",
    "pair_expectation",
    "pair_expectations",
    "safe_sqrt",
]


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def safe_sqrt(x, tol=0.0):
    """``sqrt(max(x, tol))`` with a finite derivative at zero (0 where ``x <= tol``, as in
    neural-tangents): standard deviations and ``sqrt(v1 v2 - c^2)`` of degenerate Gaussians
    stay differentiable."""
    return jnp.sqrt(jnp.maximum(x, tol))


@safe_sqrt.defjvp
def _safe_sqrt_jvp(tol, primals, tangents):
    (x,), (dx,) = primals, tangents
    root = safe_sqrt(x, max(tol, 1e-30))
    return safe_sqrt(x, tol), jnp.where(x > max(tol, 1e-30), dx / (2 * root), 0.0)


@functools.lru_cache(maxsize=32)
def _nodes(deg: int) -> tuple[np.ndarray, np.ndarray]:
    z, w = np.polynomial.hermite_e.hermegauss(deg)
    return z, w / np.sqrt(2 * np.pi)


@_validate.public
def hermite_nodes(deg: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes ``z`` and weights ``w`` of the probabilists' Gauss-Hermite rule of degree
    ``deg``, normalised to the standard normal: ``E[h(z)] ~ sum_k w_k h(z_k)``, ``sum w = 1``.

    Float64 NumPy arrays (computed once per degree; Golub-Welsch via
    ``numpy.polynomial.hermite_e.hermegauss``).

    Raises:
      ValueError: ``deg`` is not a positive int.
    """
    if isinstance(deg, bool) or not isinstance(deg, (int, np.integer)) or deg < 1:
        raise ValueError(f"{_validate.where()}: deg must be a positive int; got {deg!r}.")
    return _nodes(int(deg))


@_validate.public
def gaussian_expectation(elementwise_fn: Callable, var, *, deg: int = 64):
    """``E[elementwise_fn(u)]`` for ``u ~ N(0, var)``, elementwise over the array ``var``.

    Cost: ``deg`` evaluations of ``elementwise_fn`` per entry; memory ``deg`` times the array.

    Args:
      elementwise_fn: elementwise ``jax.numpy`` function.
      var: variances (array, ``>= 0``).
      deg: quadrature degree (exact for polynomials of degree below ``2 deg``).

    Returns:
      An array of ``var``'s shape and dtype.

    Example:
      >>> q = expectations.gaussian_expectation(lambda u: jnp.tanh(u) ** 2, 1.3)  # length map
    """
    z_np, w_np = hermite_nodes(deg)
    var = jnp.asarray(var)
    dtype = jnp.result_type(var, float)
    var = var.astype(dtype)
    z = jnp.asarray(z_np, dtype).reshape((deg,) + (1,) * var.ndim)
    w = jnp.asarray(w_np, dtype).reshape((deg,) + (1,) * var.ndim)
    return jnp.sum(w * elementwise_fn(safe_sqrt(var)[None] * z), axis=0)


@_validate.public
def pair_expectations(
    pairs: Sequence[tuple[Callable, Callable]], cov, var1, var2, *, deg: int = 64
) -> tuple:
    """``E[f(u) g(u')]`` for every ``(f, g)`` in ``pairs``, ``(u, u') ~ N(0, [[var1, cov],
    [cov, var2]])``, elementwise over the broadcast arrays ``cov``, ``var1``, ``var2``.

    Two-dimensional Gauss-Hermite quadrature: ``u = sqrt(var1) z1``, ``u' = sqrt(var2) (rho z1
    + sqrt(1 - rho^2) z2)`` with ``rho = cov / sqrt(var1 var2)`` (clipped to ``[-1, 1]``; 0
    where a variance is 0). A ``lax.scan`` over the nodes of ``z1`` sums the inner rule over
    ``z2``, so all pairs share the nodes and one pass.

    Cost: ``deg^2`` evaluations of ``f`` and ``g`` per entry and pair; memory ``deg`` times the
    array per pair.

    Args:
      pairs: ``((f, g), ...)`` elementwise ``jax.numpy`` functions (e.g. ``((phi, phi),
        (dphi, dphi))`` for an activation's NNGP map and derivative kernel).
      cov: covariances ``E[u u']``.
      var1, var2: variances of ``u`` and ``u'`` (``>= 0``).
      deg: quadrature degree per dimension.

    Returns:
      A tuple with one array per pair, of the broadcast shape and ``cov``'s dtype.

    Example:
      >>> k, kdot = expectations.pair_expectations(((jnp.tanh, jnp.tanh), (dtanh, dtanh)),
      ...                                          c, v1, v2, deg=128)
    """
    pairs = tuple(pairs)
    if not pairs or not all(
        isinstance(p, tuple) and len(p) == 2 and callable(p[0]) and callable(p[1]) for p in pairs
    ):
        raise TypeError(
            f"{_validate.where()}: pairs must be a non-empty sequence of (f, g) pairs of "
            f"callables; got {pairs!r}."
        )
    z_np, w_np = hermite_nodes(deg)
    dtype = jnp.result_type(cov)
    z = jnp.asarray(z_np, dtype)
    w = jnp.asarray(w_np, dtype)
    c, v1, v2 = jnp.broadcast_arrays(cov, var1, var2)
    s1, s2 = safe_sqrt(v1), safe_sqrt(v2)
    pos = s1 * s2 > 0
    rho = jnp.where(pos, jnp.clip(c / jnp.where(pos, s1 * s2, 1.0), -1.0, 1.0), 0.0)
    perp = safe_sqrt(1 - rho * rho)
    zz = z.reshape((deg,) + (1,) * c.ndim)
    ww = w.reshape((deg,) + (1,) * c.ndim)

    def body(carry, zi_wi):
        zi, wi = zi_wi
        u = s1 * zi
        v = s2[None] * (rho[None] * zi + perp[None] * zz)  # (deg, ...)
        out = tuple(
            acc + wi * f(u) * jnp.sum(ww * g(v), axis=0) for acc, (f, g) in zip(carry, pairs)
        )
        return out, None

    shape = jnp.broadcast_shapes(c.shape, v1.shape, v2.shape)
    init = tuple(jnp.zeros(shape, dtype) for _ in pairs)
    out, _ = jax.lax.scan(body, init, (z, w))
    return out


@_validate.public
def pair_expectation(f: Callable, g: Callable, cov, var1, var2, *, deg: int = 64):
    """``E[f(u) g(u')]`` for one pair; see :func:`pair_expectations` (cost, accuracy).

    Example:
      >>> # ReLU's covariance map (closed form: the arc-cosine kernel of Cho & Saul 2009)
      >>> k = expectations.pair_expectation(jax.nn.relu, jax.nn.relu, c, v1, v2, deg=200)
    """
    return pair_expectations(((f, g),), cov, var1, var2, deg=deg)[0]
