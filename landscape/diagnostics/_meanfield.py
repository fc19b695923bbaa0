"""Mean-field theory of deep fully connected networks at initialisation.

A network with weights ``W_ij ~ N(0, sigma_w2 / N)`` and biases ``b_i ~ N(0, sigma_b2)`` (what
:func:`landscape.make_model` draws with ``sigma_w2``, ``sigma_b2``), of width ``N -> inf``,
propagates the pre-activation second moment ``q^l`` of one input and the correlation ``c^l``
of two by deterministic maps (Poole et al. 2016; Schoenholz et al. 2017), with ``z, z1, z2``
independent standard normals:

* the length map ``q -> f(q) = sigma_w2 E[phi(sqrt(q) z)^2] + sigma_b2`` (from ``q^1 =
  sigma_w2 q^0 + sigma_b2``, ``q^0`` the input's mean squared entry), with fixed point ``q*``;
* the correlation map ``c -> M(c) = (sigma_w2 E[phi(u1) phi(u2)] + sigma_b2) / q*`` with
  ``(u1, u2) ~ N(0, q* [[1, c], [c, 1]])``, with stable fixed point ``c*``;
* ``chi_1 = sigma_w2 E[phi'(sqrt(q*) z)^2] = M'(1)``: the mean squared singular value of the
  layer-to-layer Jacobian. ``chi_1 < 1`` is the ordered phase (``c* = 1``, inputs become
  alike, gradients vanish), ``chi_1 > 1`` the chaotic phase (``c* < 1``, gradients explode);
  ``chi_1 = 1`` is the order-to-chaos line, where depth scales diverge;
* the depth scales over which ``q^l`` and ``c^l`` approach their fixed points,
  ``xi_q = -1 / ln(sigma_w2 E[phi'(u)^2 + phi(u) phi''(u)])`` (``u = sqrt(q*) z``; the
  length map's slope ``f'(q*)`` by Stein's lemma) and ``xi_c = -1 / ln M'(c*)`` with
  ``M'(c) = sigma_w2 E[phi'(u1) phi'(u2)]`` (so ``xi_c = -1 / ln chi_1`` in the ordered phase).

Numerics. Any elementwise activation (a name in :data:`landscape.models.ACTIVATIONS` or a callable;
its derivatives by :func:`jax.grad`), by Gauss-Hermite quadrature from
:mod:`landscape.expectations` (``deg`` nodes for the one-dimensional means, ``deg_pair`` per
dimension for the correlation map). The rule converges geometrically for analytic activations, at a
rate set by their complex singularities, which approach the real axis as ``sqrt(q)`` grows (tanh's
poles at ``z = i pi / (2 sqrt(q))``): for tanh, ``E[tanh'(u)^2]`` has relative error 2e-15 at ``q =
0.57``, 8e-10 at ``q = 1.3``, 6e-6 at ``q = 3`` and 9e-3 at ``q = 10`` with the default ``deg =
128``, and the derivative kernel ``E[tanh'(u1) tanh'(u2)]`` (``c = 0.5``) 6e-12, 8e-8, 6e-6 and
5e-5 at ``q = 0.57, 1.3, 2.2, 3`` with ``deg_pair = 64``; float32 adds its rounding (~1e-7
relative). Every result carries ``chi_1_error``, the difference between ``chi_1`` at ``deg`` and at
``2 deg``, an estimate of the error at ``deg``: raise ``deg`` (and ``deg_pair``) for large ``q*``.
ReLU uses its closed forms (the arc-cosine kernels of degrees 0 and 1, Cho & Saul 2009: ``f(q) =
sigma_w2 q / 2 + sigma_b2``, ``chi_1 = sigma_w2 / 2``), exact, since quadrature converges slowly at
its kink (about 1e-3 relative at ``deg = 200``); other kinked activations (leaky ReLU, ELU's second
derivative) go through quadrature with that slower convergence, which ``chi_1_error`` shows.

The fixed point ``q*`` is the attractor of the length map from ``q^1``: 200 iterations of the map,
then up to 30 safeguarded Newton steps (a step is kept only where it lowers the residual and stays
non-negative). It is accepted where ``|f(q) - q| <= 1e-4 q`` (float32; ``1e-9 q`` in float64) and
``f'(q) <= 1`` (a stable fixed point); an iterate still growing where ``f'(q) >= 1`` (or past
``5e29``) means there is no finite fixed point ahead (``"no_fixed_point"``: GELU, softplus and
other ReLU-like tails with ``sigma_w2`` above about 2). ``c*`` is found by Newton's method from ``c
= 0`` on ``[0, 1]``, where ``M`` is convex and increasing (its expansion in Hermite polynomials has
non-negative coefficients), so the iterates increase monotonically to the smallest fixed point; in
the ordered phase that is ``c* = 1`` and it is set exactly. Just above ``chi_1 = 1``, ``M(c) - c =
O(eps^2)`` near ``c*`` (``eps = chi_1 - 1``) falls below the quadrature's resolution of ``M``
(tanh: Newton on the quadrature puts ``xi_c`` 2% off at ``eps = 2e-3`` in float32); there, for
``eps < 5e-3`` (float32) or ``2e-3`` (float64), ``c*`` and ``M'(c*)`` come from the cubic expansion
``M(1 + x) - (1 + x) = eps x + M''(1) x^2 / 2 + M'''(1) x^3 / 6``, whose coefficients are
one-dimensional means (``M^(k)(1) = sigma_w2 q*^(k-1) E[phi^(k)(u)^2]``, Price's theorem); against
Newton at ``deg_pair = 128`` in float64, its ``xi_c`` is within 0.2% at ``eps = 6e-3`` and 3e-5 at
``eps = 6e-4`` (tanh, ``sigma_b2 = 0.05``). In float32, ``xi_c ~ 1 / eps`` near the line carries
the relative error ``1e-7 / eps`` of ``chi_1``. Where the maps have no finite fixed point (ReLU
with ``sigma_w2 > 2``, or ``= 2`` with ``sigma_b2 > 0``: ``q^l`` grows without bound), where every
``q`` is one (ReLU at ``sigma_w2 = 2, sigma_b2 = 0``; the linear network at ``sigma_w2 = 1``), or
where the iteration did not converge, the result says so in ``status`` and ``reason`` and the
undefined numbers are NaN rather than a value. ReLU's ``chi_1 = sigma_w2 / 2`` does not depend on
``q``, so it is reported in every case; it has no order-to-chaos line, only the critical point
``(2, 0)``.

Everything is computed in one compiled program per activation, grid shape and dtype (plus a
small one for the critical line's root finder; the activation is a static argument: pass the
same callable, not a new lambda, to reuse it).

References:
  Poole, Lahiri, Raghu, Sohl-Dickstein, Ganguli (2016), Exponential expressivity in deep
  neural networks through transient chaos. Schoenholz, Gilmer, Ganguli, Sohl-Dickstein (2017),
  Deep information propagation. Pennington, Schoenholz, Ganguli (2017), Resurrecting the
  sigmoid in deep learning through dynamical isometry. Cho, Saul (2009), Kernel methods for
  deep learning (arc-cosine kernels).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from landscape import _provenance
from landscape import expectations as _ex
from landscape import validate as _validate
from landscape._result import Result, result, static_field

__all__ = ["MeanFieldResult", "PhaseDiagramResult", "mean_field", "phase_diagram"]

_NUM_ITER = 200
_NUM_NEWTON = 30
_NUM_C = 40
_QMAX = 1e30  # the length map is declared divergent beyond this second moment

#: status codes of :class:`PhaseDiagramResult.status` (and names of :attr:`MeanFieldResult.status`)
STATUS = {0: "ok", 1: "no_fixed_point", 2: "every_q_fixed", 3: "not_converged"}


# --------------------------------------------------------------------------------------------
# activations
def _elementwise_grad(f):
    return lambda u: jax.grad(lambda v: jnp.sum(f(v)))(u)


@dataclasses.dataclass(frozen=True)
class _Activation:
    """An elementwise activation and its derivatives (a static argument of the programs)."""

    fn: Callable
    name: str
    closed_form: str | None

    def phi(self, u):
        return self.fn(u)

    def dphi(self, u):
        return _elementwise_grad(self.fn)(u)

    def d2phi(self, u):
        return _elementwise_grad(_elementwise_grad(self.fn))(u)


@functools.lru_cache(maxsize=256)
def _elementwise_problem(fn) -> str | None:
    """Why ``fn`` is not an elementwise function of arrays (``None`` if it is): its value on
    a vector must equal its values on each entry alone, be unchanged by reversing the vector
    and by reshaping it, and keep the shape."""
    x = np.linspace(-3.0, 3.0, 7, dtype=np.float32)

    def probe(x):  # one compiled program (eager calls would compile every primitive)
        singles = [jnp.ravel(fn(x[i : i + 1])) for i in range(7)]
        return fn(x), singles, fn(x[::-1]), fn(x.reshape(7, 1)), _elementwise_grad(fn)(x)

    try:
        y, singles, rev, col, grad = jax.tree.map(np.asarray, jax.jit(probe)(jnp.asarray(x)))
        singles = np.concatenate(singles)
    except Exception as e:  # noqa: BLE001 - any failure is reported as the reason
        return f"calling it on a float32 array of shape (7,) raised {type(e).__name__}: {e}"
    if y.shape != (7,) or col.shape != (7, 1) or singles.shape != (7,):
        return f"it changed the shape of its input ((7,) -> {y.shape}, (7, 1) -> {col.shape})"
    if not np.all(np.isfinite(y)) or not np.all(np.isfinite(grad)):
        return "it is not finite (or its derivative is not) on [-3, 3]"

    def close(a, b):
        return np.allclose(a, b, rtol=1e-5, atol=1e-6)

    if not (close(y, singles) and close(y, rev[::-1]) and close(y, col.ravel())):
        return (
            "its value at an entry depends on the other entries (on a vector it differs from "
            "its values entry by entry, reversed or reshaped), like softmax or a normalisation"
        )
    return None


def _activation(activation) -> _Activation:
    from landscape import models

    where = _validate.where()
    if isinstance(activation, str):
        if activation not in models.ACTIVATIONS:
            raise ValueError(
                f"{where}: unknown activation {activation!r}; choose from "
                f"{sorted(models.ACTIVATIONS)} or pass an elementwise callable."
            )
        name, fn = activation, models.ACTIVATIONS[activation]
    elif callable(activation):
        fn = activation
        name = next((n for n, f in models.ACTIVATIONS.items() if f is fn), None)
        name = name or getattr(fn, "__name__", type(fn).__name__)
    else:
        raise TypeError(
            f"{where}: activation must be a name ({sorted(models.ACTIVATIONS)}) or an elementwise "
            f"callable; got {type(activation).__name__}."
        )
    try:
        problem = _elementwise_problem(fn)
    except TypeError:  # unhashable callable: not cached
        problem = _elementwise_problem.__wrapped__(fn)
    if problem is not None:
        raise ValueError(
            f"{where}: activation {name!r} is not elementwise: {problem}. Mean-field theory "
            "needs phi applied to each pre-activation separately."
        )
    closed = "relu" if fn is jax.nn.relu else None
    return _Activation(fn, name, closed)


# --------------------------------------------------------------------------------------------
# the maps
def _tol(dtype):
    return 1e-5 if jnp.dtype(dtype) == jnp.float32 else 1e-10


def _length_map(act, sw, sb, q, deg):
    if act.closed_form == "relu":
        return sw * q / 2 + sb
    return sw * _ex.gaussian_expectation(lambda u: act.phi(u) ** 2, q, deg=deg) + sb


def _length_slope(act, sw, q, deg):
    """``f'(q) = sigma_w2 E[phi'(u)^2 + phi(u) phi''(u)]``."""
    if act.closed_form == "relu":
        return sw / 2 + 0 * q
    return sw * _ex.gaussian_expectation(
        lambda u: act.dphi(u) ** 2 + act.phi(u) * act.d2phi(u), q, deg=deg
    )


def _chi(act, sw, q, deg):
    if act.closed_form == "relu":
        return sw / 2 + 0 * q
    return sw * _ex.gaussian_expectation(lambda u: act.dphi(u) ** 2, q, deg=deg)


def _solve_q(act, sw, sb, q1, deg):
    """The attractor of the length map from ``q1``, its status code and residual."""
    dtype = q1.dtype
    tol = _tol(dtype)
    if act.closed_form == "relu":
        ordered = sw < 2
        q = jnp.where(ordered, sb / jnp.where(ordered, 1 - sw / 2, 1.0), jnp.nan)
        every = (sw == 2) & (sb == 0)
        status = jnp.where(every, 2, jnp.where(ordered, 0, 1)).astype(jnp.int32)
        return q, status, jnp.zeros_like(q1)

    def clipped(fq):
        return jnp.where(jnp.isfinite(fq), jnp.minimum(fq, _QMAX), _QMAX)

    q = jax.lax.fori_loop(0, _NUM_ITER, lambda i, q: clipped(_length_map(act, sw, sb, q, deg)), q1)

    def newton(i, q):
        fq = _length_map(act, sw, sb, q, deg)
        g = fq - q
        gp = _length_slope(act, sw, q, deg) - 1
        ok = (gp < 0) & (q < _QMAX)
        cand = q - g / jnp.where(ok, gp, -1.0)
        ok = ok & jnp.isfinite(cand) & (cand >= 0)
        cand = jnp.where(ok, cand, q)
        better = ok & (jnp.abs(_length_map(act, sw, sb, cand, deg) - cand) < jnp.abs(g))
        return jnp.where(better, cand, clipped(fq))

    q = jax.lax.fori_loop(0, _NUM_NEWTON, newton, q)
    # the residual at q, and at q = 1 and 4 (every q a fixed point?), in one quadrature
    probe = jnp.stack([q, jnp.ones_like(q1), 4 * jnp.ones_like(q1)])
    fprobe = _length_map(act, sw[None], sb[None], probe, deg)
    gaps = jnp.abs(fprobe - probe)
    resid = gaps[0]
    slope = _length_slope(act, sw, jnp.where(jnp.isfinite(q), q, 1.0), deg)
    converged = (resid <= 10 * tol * jnp.maximum(q, 1e-12)) & (slope <= 1 + 10 * tol)
    # still growing where the map is at least as steep as the identity: no finite fixed point
    # ahead (ReLU-like tails, sigma_w2 E[phi'^2] -> rate > 1)
    growing = ~converged & (fprobe[0] > q) & (slope >= 1)
    diverged = ~jnp.isfinite(q) | (q >= _QMAX / 2) | growing
    every = (gaps[1] <= 10 * tol) & (gaps[2] <= 40 * tol)
    status = jnp.where(every, 2, jnp.where(diverged, 1, jnp.where(converged, 0, 3)))
    return q, status.astype(jnp.int32), resid


def _c_maps(act, sw, sb, q, c, deg_pair):
    """``M(c)`` and ``M'(c)`` at second moment ``q``."""
    if act.closed_form == "relu":  # arc-cosine kernels of degree 1 and 0 (Cho & Saul 2009)
        cc = jnp.clip(c, -1.0, 1.0)
        theta = jnp.arccos(cc)
        k1 = q / (2 * jnp.pi) * (jnp.sqrt(1 - cc * cc) + (jnp.pi - theta) * cc)
        k0 = (jnp.pi - theta) / (2 * jnp.pi)
        return (sw * k1 + sb) / q, sw * k0
    k, kd = _ex.pair_expectations(
        ((act.phi, act.phi), (act.dphi, act.dphi)), c * q, q, q, deg=deg_pair
    )
    return (sw * k + sb) / q, sw * kd


def _solve_c(act, sw, sb, q, deg_pair):
    """The smallest fixed point of the convex increasing correlation map on ``[0, 1]``
    (Newton from ``c = 0``, falling back to the map where a step is not valid)."""
    qs = jnp.where(q > 0, q, 1.0)

    def step(i, carry):
        c, _ = carry
        m, mp = _c_maps(act, sw, sb, qs, c, deg_pair)
        g, gp = m - c, mp - 1
        ok = gp < 0
        cand = c - g / jnp.where(ok, gp, -1.0)
        ok = ok & jnp.isfinite(cand) & (cand >= c)
        return jnp.clip(jnp.where(ok, cand, m), 0.0, 1.0), mp

    # M'(c) of the last step's c: converged (quadratically) to the returned one
    return jax.lax.fori_loop(0, _NUM_C, step, (jnp.zeros_like(q), jnp.zeros_like(q)))


def _depth_scale(slope):
    """``-1 / ln(slope)``: 0 at slope 0, infinite at slope >= 1 (a marginal fixed point)."""
    s = jnp.clip(slope, 0.0, 1.0)
    inner = jnp.where((s > 0) & (s < 1), s, 0.5)
    return jnp.where(s >= 1, jnp.inf, jnp.where(s <= 0, 0.0, -1.0 / jnp.log(inner)))


def _near_critical(dtype):
    """``chi_1 - 1`` below which the chaotic ``c*`` comes from the expansion at ``c = 1``."""
    return 5e-3 if jnp.dtype(dtype) == jnp.float32 else 2e-3


def _curvature_c(act, sw, q, deg):
    """``M''(1) = sigma_w2 q E[phi''(u)^2]`` and ``M'''(1) = sigma_w2 q^2 E[phi'''(u)^2]``
    (Price's theorem)."""
    if act.closed_form == "relu":
        return jnp.full_like(q, jnp.inf), jnp.zeros_like(q)
    d3 = _elementwise_grad(act.d2phi)
    k2 = sw * q * _ex.gaussian_expectation(lambda u: act.d2phi(u) ** 2, q, deg=deg)
    k3 = sw * q * q * _ex.gaussian_expectation(lambda u: d3(u) ** 2, q, deg=deg)
    return k2, k3


def _c_star_expansion(eps, k2, k3):
    """The fixed point ``c* = 1 + x < 1`` of the cubic model ``M(1 + x) - (1 + x) = eps x +
    k2 x^2 / 2 + k3 x^3 / 6`` (``eps = chi_1 - 1 > 0`` small), and ``M'(c*)``: errors
    ``O(eps^3)`` in both."""
    k2s = jnp.where(k2 > 0, k2, 1.0)
    a, b, c = k3 / 6, k2s / 2, eps  # eps + k2 x / 2 + k3 x^2 / 6 = 0: the root near -2 eps / k2
    disc = jnp.maximum(b * b - 4 * a * c, 0.0)
    x = -2 * c / (b + jnp.sqrt(disc))  # the stable form of the small root
    return 1 + x, 1 + eps + k2s * x + k3 * x * x / 2


@functools.partial(jax.jit, static_argnames=("act", "deg", "num_layers"))
def _layers_program(act, sw, sb, q0, *, deg, num_layers):
    """``q^1 .. q^L``: ``q^1 = sigma_w2 q^0 + sigma_b2``, then the length map."""

    def layer(qv, _):
        return jnp.minimum(_length_map(act, sw, sb, qv, deg), _QMAX), qv

    return jax.lax.scan(layer, sw * q0 + sb, None, length=num_layers)[1]


@functools.partial(jax.jit, static_argnames=("act", "deg", "deg_pair"))
def _mean_field_program(act, sw, sb, q0, *, deg, deg_pair):
    return _mean_field_body(act, sw, sb, q0, deg=deg, deg_pair=deg_pair)


def _mean_field_body(act, sw, sb, q0, *, deg, deg_pair):
    q1 = sw * q0 + sb
    q, status, resid = _solve_q(act, sw, sb, q1, deg)
    ok = status == 0
    every = status == 2
    qs = jnp.where(ok, q, q1)  # every-q: evaluate at q^1
    chi = _chi(act, sw, qs, deg)
    chi_ref = _chi(act, sw, qs, 2 * deg)
    slope_q = _length_slope(act, sw, qs, deg)
    chaotic = ok & (chi > 1) & (q > 0)
    c_ch, slope_c = _solve_c(act, sw, sb, jnp.where(chaotic, q, 1.0), deg_pair)
    # just above chi_1 = 1, M(c) - c = O(eps^2) near c* (eps = chi_1 - 1), below the
    # quadrature's resolution of M: there c* and M'(c*) come from the expansion of M at c = 1
    # (whose derivatives are one-dimensional means)
    eps = chi - 1
    near = chaotic & (eps < _near_critical(q.dtype))
    k2, k3 = _curvature_c(act, sw, jnp.where(chaotic, q, 1.0), deg)
    c_exp, slope_exp = _c_star_expansion(jnp.where(near, eps, 0.0), k2, k3)
    c_ch = jnp.where(near, c_exp, c_ch)
    slope_c = jnp.where(near, slope_exp, slope_c)
    c_star = jnp.where(chaotic, c_ch, 1.0)
    xi_c = jnp.where(chaotic, _depth_scale(slope_c), _depth_scale(chi))
    nan = jnp.full_like(q, jnp.nan)
    inf = jnp.full_like(q, jnp.inf)
    defined = ok | every
    chi_known = defined | (act.closed_form == "relu")
    out = {
        "q_star": jnp.where(ok, q, nan),
        "chi_1": jnp.where(chi_known, chi, nan),
        "chi_1_error": jnp.where(chi_known, jnp.abs(chi - chi_ref), nan),
        "xi_q": jnp.where(ok, _depth_scale(slope_q), jnp.where(every, inf, nan)),
        "xi_c": jnp.where(ok, xi_c, jnp.where(every, inf, nan)),
        "c_star": jnp.where(defined, c_star, nan),
        "status": status,
        "residual": resid,
    }
    return out


@functools.partial(jax.jit, static_argnames=("act", "deg"))
def _critical_program(act, sw, sb, q0, *, deg):
    """``chi_1 - 1`` and ``q*`` at one ``(sigma_w2, sigma_b2)`` (the root finder's function)."""
    q, status, _ = _solve_q(act, sw, sb, sw * q0 + sb, deg)
    return _chi(act, sw, q, deg) - 1, jnp.where(status == 0, q, jnp.nan)


def _critical_root(act, lo, hi, sb, q0, *, deg, dtype):
    """The root of ``chi_1(sigma_w2) - 1`` in ``[lo, hi]`` (Brent's method on the host, to the
    dtype's resolution) and ``q*`` there."""
    from scipy import optimize

    def g(sw):
        return float(_critical_program(act, jnp.asarray(sw, dtype), sb, q0, deg=deg)[0])

    eps = float(jnp.finfo(dtype).eps)
    root = lo if g(lo) == 0 else optimize.brentq(g, lo, hi, xtol=eps, rtol=4 * eps, maxiter=200)
    q = float(_critical_program(act, jnp.asarray(root, dtype), sb, q0, deg=deg)[1])
    return root, q


def _first_crossing(row):
    """Index ``j`` of the first grid interval ``[j, j + 1]`` where ``row - 1`` changes sign."""
    e = row - 1
    for j in range(len(e) - 1):
        if np.isfinite(e[j]) and np.isfinite(e[j + 1]) and (e[j] == 0 or e[j] * e[j + 1] < 0):
            return j
    return None


# --------------------------------------------------------------------------------------------
# validation
def _dtype(dtype):
    if dtype is None:
        return jnp.dtype(jnp.result_type(float))
    try:
        d = jnp.dtype(dtype)
    except TypeError as e:
        raise TypeError(
            f"{_validate.where()}: dtype must be float32 or float64; got {dtype!r}."
        ) from e
    if d not in (jnp.float32, jnp.float64):
        raise ValueError(f"{_validate.where()}: dtype must be float32 or float64; got {d}.")
    if d == jnp.float64 and not jax.config.jax_enable_x64:
        raise ValueError(
            f"{_validate.where()}: dtype=float64 needs 64-bit JAX; run inside "
            "jax.enable_x64(True) (or set jax_enable_x64), or use float32."
        )
    return d


def _variance(value, name, *, positive):
    v = _validate.check_finite_scalar(value, name=name)
    if positive and v <= 0:
        raise ValueError(f"{_validate.where()}: {name} must be > 0; got {value!r}.")
    if v < 0:
        raise ValueError(f"{_validate.where()}: {name} must be >= 0; got {value!r}.")
    return v


def _grid(values, name, *, positive):
    try:
        a = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"{_validate.where()}: {name} must be a 1-D sequence of numbers; got {values!r}."
        ) from e
    if a.ndim == 0:
        a = a.reshape(1)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(
            f"{_validate.where()}: {name} must be a non-empty 1-D sequence; got shape {a.shape}."
        )
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{_validate.where()}: {name} must be finite; got {a.tolist()}.")
    bad = a[a <= 0] if positive else a[a < 0]
    if bad.size:
        bound = (
            "> 0 (a weight variance of 0 carries no signal)" if positive else ">= 0 (0: no biases)"
        )
        raise ValueError(
            f"{_validate.where()}: every entry of {name} must be {bound}; got {bad.tolist()[:5]}. "
            f"Pass a grid of positive values, e.g. np.linspace(0.5, 4, 50)."
        )
    if np.any(np.diff(a) <= 0):
        raise ValueError(
            f"{_validate.where()}: {name} must be strictly increasing; got {a.tolist()[:8]}."
        )
    return a


def _degree(deg, name):
    return _validate.check_positive_int(deg, name=name)


def _method(act, deg, deg_pair):
    if act.closed_form == "relu":
        return "closed form (ReLU arc-cosine kernels, exact)"
    return f"Gauss-Hermite quadrature (deg={deg}, deg_pair={deg_pair}; derivatives by jax.grad)"


# --------------------------------------------------------------------------------------------
@result
class MeanFieldResult(Result):
    """Mean-field quantities of one ``(activation, sigma_w2, sigma_b2)``.

    Attributes:
      q_star: fixed point of the length map (NaN unless ``status == "ok"``).
      chi_1: ``sigma_w2 E[phi'(sqrt(q*) z)^2]`` (for ``"every_q_fixed"`` at ``q^1``; for ReLU,
        where it does not depend on ``q``, in every case; NaN where undefined).
      xi_q, xi_c: depth scales of the length and correlation maps (``inf`` at a marginal fixed
        point: ``chi_1 = 1`` for ``xi_c``, and both where every ``q`` is a fixed point). Within
        ``5e-3`` (float32; ``2e-3`` float64) above ``chi_1 = 1`` the chaotic ``c*`` and
        ``xi_c`` come from the cubic expansion of the correlation map at ``c = 1`` (see the
        module docstring).
      c_star: stable fixed point of the correlation map (1 in the ordered phase).
      chi_1_error: ``|chi_1(deg) - chi_1(2 deg)|`` at the same ``q*``: an estimate of the
        quadrature error of ``chi_1`` (0 for the closed forms).
      residual: ``|f(q) - q|`` at the returned ``q``.
      q_layers: ``q^1 .. q^L`` of ``num_layers`` layers from the input's ``q^0`` (empty if
        ``num_layers = 0``): ``q^1 = sigma_w2 q^0 + sigma_b2``, ``q^{l+1} = f(q^l)``.
      activation, sigma_w2, sigma_b2, q0: the inputs.
      status: ``"ok"``, ``"no_fixed_point"`` (the length map diverges), ``"every_q_fixed"``
        (``f(q) = q`` for every ``q``) or ``"not_converged"``.
      reason: what ``status`` means for this case, in words.
      phase: ``"ordered"`` (``chi_1 < 1``), ``"chaotic"`` (``> 1``), ``"critical"``
        (``|chi_1 - 1| <= 1e-6`` in float32, ``1e-12`` in float64) or ``"undefined"`` (no
        fixed point).
      method: closed form or quadrature, with the degrees.
    """

    q_star: np.ndarray
    chi_1: np.ndarray
    xi_q: np.ndarray
    xi_c: np.ndarray
    c_star: np.ndarray
    chi_1_error: np.ndarray
    residual: np.ndarray
    q_layers: np.ndarray
    activation: str = static_field(default="")
    sigma_w2: float = static_field(default=0.0)
    sigma_b2: float = static_field(default=0.0)
    q0: float = static_field(default=1.0)
    status: str = static_field(default="ok")
    reason: str = static_field(default="")
    phase: str = static_field(default="undefined")
    method: str = static_field(default="")
    deg: int = static_field(default=128)
    deg_pair: int = static_field(default=64)
    provenance: dict = static_field(default_factory=dict)

    def __repr__(self):
        def num(x):
            return f"{float(x):.6g}"

        return (
            f"MeanFieldResult({self.activation}, sigma_w2={self.sigma_w2:g}, "
            f"sigma_b2={self.sigma_b2:g}: {self.status}, {self.phase}, q_star={num(self.q_star)}, "
            f"chi_1={num(self.chi_1)}, xi_q={num(self.xi_q)}, xi_c={num(self.xi_c)}, "
            f"c_star={num(self.c_star)})"
        )


def _reason(act, status, sw, sb):
    relu = act.closed_form == "relu"
    if status == "ok":
        return "the length map has a stable finite fixed point"
    if status == "no_fixed_point":
        if relu:
            return (
                f"ReLU: the length map q -> {sw:g} q / 2 + {sb:g} has no finite fixed point for "
                "sigma_w2 > 2 or (sigma_w2 = 2, sigma_b2 > 0): q^l grows without bound (chi_1 = "
                "sigma_w2 / 2 is still the per-layer growth of squared gradients)"
            )
        return "the length map has no finite fixed point from q^1: q^l grows without bound"
    if status == "every_q_fixed":
        return (
            "every q is a fixed point of the length map (f(q) = q; ReLU at sigma_w2 = 2, "
            "sigma_b2 = 0: the critical point, chi_1 = 1): q* is not defined, the other "
            "quantities are at q^1"
        )
    return (
        "the fixed-point iteration did not reach the tolerance or ended on an unstable fixed "
        "point (a length map whose slope is close to 1 at its fixed point, or an activation the "
        "quadrature does not resolve)"
    )


def _phase(chi, dtype):
    if not np.isfinite(chi):
        return "undefined"
    if abs(chi - 1) <= (1e-6 if jnp.dtype(dtype) == jnp.float32 else 1e-12):
        return "critical"
    return "ordered" if chi < 1 else "chaotic"


@_validate.public
def mean_field(
    activation: str | Callable,
    sigma_w2: float,
    sigma_b2: float,
    *,
    q0: float = 1.0,
    num_layers: int = 0,
    deg: int = 128,
    deg_pair: int = 64,
    dtype=None,
) -> MeanFieldResult:
    """Mean-field fixed points, ``chi_1`` and depth scales of a deep fully connected network.

    Cost: one compiled program per activation, dtype and degrees; about 300 evaluations of the
    length map (``deg`` activation calls each) and 40 of the correlation map (``deg_pair^2``).

    Args:
      activation: a name in :data:`landscape.models.ACTIVATIONS` (``"relu"``, ``"tanh"``,
        ``"sigmoid"``, ``"gelu"``, ``"erf"``, ...) or an elementwise callable (traceable by
        JAX; a static argument: reuse the same object to avoid recompiling).
      sigma_w2: weight variance times fan-in (``> 0``).
      sigma_b2: bias variance (``>= 0``).
      q0: the input's mean squared entry ``|x|^2 / d`` (``> 0``); the length map starts at
        ``q^1 = sigma_w2 q0 + sigma_b2`` and ``q*`` is its attractor from there.
      num_layers: also return ``q^1 .. q^L`` for ``L = num_layers`` layers (``q_layers``).
      deg: Gauss-Hermite degree of the one-dimensional means.
      deg_pair: degree per dimension of the correlation map.
      dtype: ``float32`` or ``float64`` (default: JAX's default float; float64 needs
        ``jax.enable_x64``).

    Returns:
      A :class:`MeanFieldResult` (undefined quantities are NaN, and ``status``/``reason`` say
      why).

    Raises:
      ValueError: an activation that is not elementwise or unknown, ``sigma_w2 <= 0``,
        ``sigma_b2 < 0``, non-finite inputs, a bad dtype.
      TypeError: an activation that is neither a name nor a callable.

    Example:
      >>> r = mean_field("tanh", 1.761, 0.05)   # near the order-to-chaos line
      >>> float(r.chi_1), float(r.q_star)        # (about 1.0, about 0.57)

    References:
      Poole et al. (2016); Schoenholz et al. (2017); Pennington et al. (2017).
    """
    sw = _variance(sigma_w2, "sigma_w2", positive=True)
    sb = _variance(sigma_b2, "sigma_b2", positive=False)
    q0v = _variance(q0, "q0", positive=True)
    num_layers = _validate.check_positive_int(num_layers, name="num_layers", allow_zero=True)
    deg, deg_pair = _degree(deg, "deg"), _degree(deg_pair, "deg_pair")
    d = _dtype(dtype)
    act = _activation(activation)
    args = (act, jnp.asarray(sw, d), jnp.asarray(sb, d), jnp.asarray(q0v, d))
    out = _mean_field_program(*args, deg=deg, deg_pair=deg_pair)
    out = {k: np.asarray(v) for k, v in out.items()}
    status = STATUS[int(out.pop("status"))]
    q_layers = (
        np.asarray(_layers_program(*args, deg=deg, num_layers=num_layers))
        if num_layers
        else np.zeros((0,), d)
    )
    chi = float(out["chi_1"])
    return MeanFieldResult(
        **out,
        q_layers=q_layers,
        activation=act.name,
        sigma_w2=sw,
        sigma_b2=sb,
        q0=q0v,
        status=status,
        reason=_reason(act, status, sw, sb),
        phase=_phase(chi, d) if status in ("ok", "every_q_fixed") else "undefined",
        method=_method(act, deg, deg_pair),
        deg=deg,
        deg_pair=deg_pair,
        provenance=_provenance.provenance(
            dtype=d,
            settings={
                "activation": act.name,
                "sigma_w2": sw,
                "sigma_b2": sb,
                "q0": q0v,
                "num_layers": num_layers,
                "deg": deg,
                "deg_pair": deg_pair,
            },
        ),
    )


# --------------------------------------------------------------------------------------------
@result
class PhaseDiagramResult(Result):
    """``chi_1``, ``q*`` and ``xi_c`` on a ``(sigma_b2, sigma_w2)`` grid, with the critical line.

    Attributes:
      sigma_w2s: ``(n_w,)`` weight variances (columns).
      sigma_b2s: ``(n_b,)`` bias variances (rows).
      chi_1, q_star, xi_c, xi_q, c_star, chi_1_error: ``(n_b, n_w)`` grids (NaN where undefined;
        see :class:`MeanFieldResult`).
      status: ``(n_b, n_w)`` codes of :data:`STATUS` (0 ok, 1 no fixed point, 2 every ``q`` a
        fixed point, 3 not converged).
      critical_sigma_w2: ``(n_b,)`` the ``sigma_w2`` where ``chi_1 = 1`` for each ``sigma_b2``,
        by Brent's method (to the dtype's resolution) inside the first grid interval where
        ``chi_1 - 1`` changes sign; NaN where it does not within the grid.
      critical_q_star: ``(n_b,)`` ``q*`` there (NaN for ReLU's every-``q`` point).
      critical_note: which rows have no crossing and why.
    """

    sigma_w2s: np.ndarray
    sigma_b2s: np.ndarray
    chi_1: np.ndarray
    q_star: np.ndarray
    xi_c: np.ndarray
    xi_q: np.ndarray
    c_star: np.ndarray
    chi_1_error: np.ndarray
    status: np.ndarray
    critical_sigma_w2: np.ndarray
    critical_q_star: np.ndarray
    activation: str = static_field(default="")
    q0: float = static_field(default=1.0)
    critical_note: str = static_field(default="")
    method: str = static_field(default="")
    deg: int = static_field(default=128)
    deg_pair: int = static_field(default=64)
    provenance: dict = static_field(default_factory=dict)

    @property
    def critical_line(self) -> tuple[np.ndarray, np.ndarray]:
        """``(sigma_w2, sigma_b2)`` of the rows where the critical point was found."""
        keep = np.isfinite(self.critical_sigma_w2)
        return self.critical_sigma_w2[keep], self.sigma_b2s[keep]

    def __repr__(self):
        n = int(np.isfinite(self.critical_sigma_w2).sum())
        return (
            f"PhaseDiagramResult({self.activation}, grid {len(self.sigma_b2s)} x "
            f"{len(self.sigma_w2s)} (sigma_b2 x sigma_w2), critical line at {n} of "
            f"{len(self.sigma_b2s)} sigma_b2 values)"
        )


@_validate.public
def phase_diagram(
    activation: str | Callable,
    sigma_w2s: Sequence[float],
    sigma_b2s: Sequence[float],
    *,
    q0: float = 1.0,
    deg: int = 128,
    deg_pair: int = 64,
    dtype=None,
) -> PhaseDiagramResult:
    """``chi_1`` (and ``q*``, ``xi_c``) over a grid of ``(sigma_w2, sigma_b2)``, and the
    order-to-chaos line ``chi_1 = 1`` located by root finding for each ``sigma_b2``.

    Each grid point is :func:`mean_field` (one compiled program for the whole grid). The
    critical ``sigma_w2`` of a row is found by Brent's method (``scipy.optimize.brentq``, each
    evaluation a compiled length-map solve) on ``chi_1(sigma_w2) - 1`` in the first
    grid interval where it changes sign (a grid fine enough to separate crossings is the
    caller's choice; tanh and erf cross once). ReLU's ``chi_1 = sigma_w2 / 2`` crosses 1 at
    ``sigma_w2 = 2`` for every ``sigma_b2``, but only at ``sigma_b2 = 0`` is there a fixed point
    there: its line is the single point ``(2, 0)`` (when the grid holds it).

    Cost: ``n_b n_w`` mean-field solves plus about 10-40 length-map solves per row (Brent's
    iterations to the dtype's resolution), each a call of one small compiled program.

    Args:
      activation: as for :func:`mean_field`.
      sigma_w2s: strictly increasing weight variances, all ``> 0``.
      sigma_b2s: strictly increasing bias variances, all ``>= 0`` (0 is the network without
        biases).
      q0, deg, deg_pair, dtype: as for :func:`mean_field`.

    Returns:
      A :class:`PhaseDiagramResult` with ``(len(sigma_b2s), len(sigma_w2s))`` grids.

    Raises:
      ValueError: non-positive ``sigma_w2s``, negative ``sigma_b2s``, grids that are empty, not
        1-D, not finite or not increasing; a non-elementwise activation.

    Example:
      >>> pd = phase_diagram("tanh", np.linspace(0.5, 4, 36), np.linspace(0, 0.3, 7))
      >>> landscape.plot.plot_phase_diagram(pd)
    """
    sws = _grid(sigma_w2s, "sigma_w2s", positive=True)
    sbs = _grid(sigma_b2s, "sigma_b2s", positive=False)
    q0v = _variance(q0, "q0", positive=True)
    deg, deg_pair = _degree(deg, "deg"), _degree(deg_pair, "deg_pair")
    d = _dtype(dtype)
    act = _activation(activation)
    sw_grid, sb_grid = np.meshgrid(sws, sbs)
    out = _mean_field_program(
        act,
        jnp.asarray(sw_grid, d),
        jnp.asarray(sb_grid, d),
        jnp.full(sw_grid.shape, q0v, d),
        deg=deg,
        deg_pair=deg_pair,
    )
    out = {k: np.asarray(v) for k, v in out.items()}
    crit = np.full(len(sbs), np.nan, d)
    crit_q = np.full(len(sbs), np.nan, d)
    missing = []
    if act.closed_form == "relu":
        for i, sb in enumerate(sbs):
            if sb == 0 and sws[0] <= 2 <= sws[-1]:
                crit[i] = 2.0
            else:
                missing.append(float(sb))
        note = (
            "ReLU has no order-to-chaos line: chi_1 = sigma_w2 / 2 for every sigma_b2, and for "
            "sigma_b2 > 0 there is no fixed point at sigma_w2 >= 2; the critical point is "
            "(sigma_w2, sigma_b2) = (2, 0), where every q is a fixed point"
            + ("" if np.isfinite(crit).any() else " (not on this grid)")
        )
    else:
        for i, sb in enumerate(sbs):
            j = _first_crossing(out["chi_1"][i])
            if j is None:
                missing.append(float(sb))
                continue
            crit[i], crit_q[i] = _critical_root(
                act,
                float(sws[j]),
                float(sws[j + 1]),
                jnp.asarray(sb, d),
                jnp.asarray(q0v, d),
                deg=deg,
                dtype=d,
            )
        note = (
            "chi_1 = 1 located at every sigma_b2"
            if not missing
            else f"chi_1 - 1 does not change sign within sigma_w2s = [{sws[0]:g}, {sws[-1]:g}] "
            f"at sigma_b2 = {[round(x, 6) for x in missing][:10]}: widen the grid"
        )
    out.pop("residual")
    return PhaseDiagramResult(
        sigma_w2s=sws.astype(d),
        sigma_b2s=sbs.astype(d),
        chi_1=out["chi_1"],
        q_star=out["q_star"],
        xi_c=out["xi_c"],
        xi_q=out["xi_q"],
        c_star=out["c_star"],
        chi_1_error=out["chi_1_error"],
        status=out["status"].astype(np.int8),
        critical_sigma_w2=crit,
        critical_q_star=crit_q,
        activation=act.name,
        q0=q0v,
        critical_note=note,
        method=_method(act, deg, deg_pair),
        deg=deg,
        deg_pair=deg_pair,
        provenance=_provenance.provenance(
            dtype=d,
            settings={
                "activation": act.name,
                "q0": q0v,
                "deg": deg,
                "deg_pair": deg_pair,
                "grid": [len(sbs), len(sws)],
            },
        ),
    )
