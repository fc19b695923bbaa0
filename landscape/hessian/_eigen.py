"""Extreme eigenpairs by thick-restart Lanczos: eigenvalue error bounds, multiplicity checks,
true residuals."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from landscape import engine
from landscape import tree as _tree
from landscape import validate as _validate
from landscape._result import Result, result, static_field
from landscape.hessian import _driver, _random
from landscape.hessian import _lanczos as lz
from landscape.hessian import _operators as ops

PyTree = Any

DEFAULT_TOL = 1e-6
"""Default tolerance of :func:`eigenvalues`: a bound on each eigenvalue's error relative to
``||A||`` (see :func:`error_bounds`)."""

TOL_FLOOR = 64.0
"""``tol`` is floored at ``TOL_FLOOR * eps(dtype)`` (7.6e-6 in float32, 1.4e-14 in float64):
float32 products carry relative errors of that order, so a smaller target cannot be met."""

CHECK_EVERY = 2
"""Host convergence checks every this many products, and after every product once the largest
error bound is within :data:`NEAR_FACTOR` of the tolerance: a check (a float64 Rayleigh-Ritz
of the small projected matrix on the host) costs well under a millisecond, a product on the
benchmark workload 11-16 ms, so checking often is cheaper than one product too many."""

NEAR_FACTOR = 1e3
"""See :data:`CHECK_EVERY`."""

CLUSTER_MAX = 8
"""Largest group of neighbouring Ritz values treated as one cluster in :func:`error_bounds`."""

STORED_PRODUCTS_MAX_BYTES = 1 << 30
"""Keep the raw products ``A q_j`` of the basis (a second basis-sized array) when it takes at
most this many bytes (1 GiB): the final true residuals then cost no products. Larger problems
recompute them with one product per pair."""

MAX_CHECKS = 3
"""At most this many fresh-vector multiplicity checks per solve."""

CHECK_STEPS = 7
"""Products of one fresh-vector check (fewer when the Krylov dimension leaves less room). On
planted diagonal spectra (``n = 3000``, ``k = 5``, float64, ``tol = 1e-8``) with a repeated top
value, a triple, a quadruple or a 1e-9 cluster inside the wanted set, 7 found every copy in 30
runs each; 6 missed the third copy of the triple once in 30, 5 twice in 20, 4 up to 4 in 20
(a check is a short Krylov run from a random vector: its power to see a missed copy grows
with its length). On the benchmark workload (no repeated values) the check passes with any of
them."""

NOISE_FACTOR = 10.0
"""The absolute tolerance is also floored at this multiple of the products' rounding noise,
measured as the largest asymmetry ``|q_i^T A q_j - q_j^T A q_i|`` of the projected matrix (zero
in exact arithmetic). True residuals sit at 3-4 times that level once Lanczos has converged;
flat minima (small ||A|| from large cancelling per-example terms) and differences of operators
(the GGN residual) have a noise floor far above ``eps * ||A||``."""

LOOSEN_WARN = 10.0
"""Warn when the noise floor loosens the tolerance by more than this factor."""

ASYMMETRY_WARN = 1e-3
"""Warn when the measured asymmetry of the products exceeds this fraction of ||A||: float32
rounding stays near 1e-5 even on flat minima; more means the operator is not symmetric."""

SOLVERS = ("auto", "lanczos", "gram")
"""``solver=`` of :func:`eigenvalues`: ``"lanczos"`` (thick-restart Lanczos on any operator),
``"gram"`` (the exact GGN route through the ``NC x NC`` output Gram) or ``"auto"`` (Lanczos for
an int ``k``; the Gram for ``k="all"``)."""

__all__ = ["EigenResult", "SOLVERS", "eigenvalues"]


@result
class EigenResult(Result):
    """Extreme eigenpairs of a curvature operator.

    Attributes:
      values: eigenvalues (float64): descending for ``which="largest"``, ascending for
        ``"smallest"``; for ``"both"`` the ``k`` largest (descending) then the ``k`` smallest
        (ascending); see :attr:`largest`, :attr:`smallest` and :attr:`ends`.
      vectors: unit eigenvectors as ONE params-shaped pytree with a leading axis of size
        ``len(values)`` (zeros outside ``params_filter``). ``landscape.surface`` uses them as
        slice directions.
      residuals: true residual norms ``||A v - lambda v||`` (float64) of the returned vectors:
        ``A v`` formed from the stored products of the basis vectors (``A v = sum_j y_j A q_j``,
        no further products) when they fit :data:`STORED_PRODUCTS_MAX_BYTES`, otherwise
        recomputed with one product per pair. Neither uses the Lanczos recurrence, so loss of
        orthogonality or a wrong projected matrix shows here.
      converged: ``error_bounds <= tol_used * norm_estimate``.
      error_bounds: a bound on each eigenvalue's absolute error from its true residual:
        ``min(r, r^2 / gap)`` (block form for clusters), the gap estimated from the other Ritz
        values (see :func:`error_bounds`). The eigenvectors are accurate to about
        ``residual / gap`` in angle (Davis-Kahan), i.e. about the square root of the eigenvalue
        accuracy: ask a smaller ``tol`` for accurate vectors.
      noise: the products' rounding noise: the largest asymmetry ``|q_i^T A q_j - q_j^T A q_i|``
        of the projected matrix (zero in exact arithmetic), measured before any multiplicity
        check. A warning is issued when it loosens ``tol`` more than 10x, or exceeds 1e-3 ||A||
        (then the operator is not symmetric).
      norm_estimate: the estimate of ``||A||`` (largest |Ritz value| seen) the tolerance scales.
      num_hvps: products used, the fresh-vector checks and any residual products included.
      num_restarts, num_checks: restart cycles and multiplicity checks (fresh-vector cycles).
      which, k, tol, curvature, params_filter, dtype: settings. ``tol_used`` is the relative
        tolerance actually applied: ``tol`` floored at ``64 eps(dtype)`` and at ``10 x noise /
        norm_estimate``.
      solver: ``"lanczos"`` or ``"gram"`` (the exact GGN route through the ``NC x NC`` output
        Gram, :mod:`landscape.hessian._gram`; then ``num_hvps`` counts only the residual
        products, ``num_restarts = num_checks = 0`` and ``noise = 0``).
      rank, num_zero, weight_decay: Gram route only (``None`` otherwise): the numerical rank of
        the GGN's data term, ``num_zero = num_params - rank`` further eigenvalues that equal
        ``weight_decay`` exactly (not returned), and the weight decay added back to every value.
    """

    values: np.ndarray
    vectors: PyTree
    residuals: np.ndarray
    converged: np.ndarray
    error_bounds: np.ndarray | None = None
    norm_estimate: float = static_field(default=0.0)
    num_hvps: int = static_field(default=0)
    num_restarts: int = static_field(default=0)
    num_checks: int = static_field(default=0)
    which: str = static_field(default="largest")
    k: int = static_field(default=1)
    tol: float = static_field(default=DEFAULT_TOL)
    tol_used: float = static_field(default=DEFAULT_TOL)
    noise: float = static_field(default=0.0)
    curvature: str = static_field(default="hessian")
    params_filter: Any = static_field(default=None)
    dtype: str = static_field(default="float32")
    solver: str = static_field(default="lanczos")
    rank: int | None = static_field(default=None)
    num_zero: int | None = static_field(default=None)
    weight_decay: float | None = static_field(default=None)
    provenance: dict = static_field(default_factory=dict)

    @property
    def ends(self) -> tuple[str, ...]:
        """``"largest"``/``"smallest"`` label of every value."""
        if self.which == "both":
            return ("largest",) * self.k + ("smallest",) * self.k
        return (self.which,) * len(self.values)

    @property
    def largest(self) -> np.ndarray:
        """The values from the top of the spectrum (descending)."""
        if self.which == "smallest":
            return np.asarray(self.values)[:0]
        return np.asarray(self.values)[: self.k]

    @property
    def smallest(self) -> np.ndarray:
        """The values from the bottom of the spectrum (ascending)."""
        if self.which == "largest":
            return np.asarray(self.values)[:0]
        return (
            np.asarray(self.values)[-self.k :] if self.which == "both" else np.asarray(self.values)
        )

    def vector(self, i: int) -> PyTree:
        """The ``i``-th eigenvector (params-shaped)."""
        return _tree.index(self.vectors, i)

    def __repr__(self):
        vals = np.array2string(np.asarray(self.values), precision=6, separator=", ")
        bound = (
            float(np.max(self.error_bounds))
            if self.error_bounds is not None and len(self.values)
            else float("nan")
        )
        return (
            f"EigenResult({self.which}, values={vals}, max_residual={float(np.max(self.residuals)):.2e}, "
            f"max_error_bound={bound:.1e}, converged={int(np.sum(self.converged))}/{len(self.values)}, num_hvps={self.num_hvps}"
            + (
                f", solver=gram, rank={self.rank}, num_zero={self.num_zero})"
                if self.solver == "gram"
                else ")"
            )
        )


# --------------------------------------------------------------------------------------------
@jax.jit
def _stored_residuals_jit(Q, W, Y, theta):
    """``||W^T y_i - theta_i Q^T y_i||`` for every column of ``Y`` (padded with zeros): the true
    residuals of the Ritz vectors from the stored products ``W[j] = A q_j`` (rows of ``Y`` that
    are not expanded carry zeros, so their meaningless ``W`` rows do not enter)."""
    Yc = Y.astype(Q.dtype)
    AX = jnp.dot(Yc.T, W, precision=jax.lax.Precision.HIGHEST)
    X = jnp.dot(Yc.T, Q, precision=jax.lax.Precision.HIGHEST)
    R = AX - theta[:, None].astype(Q.dtype) * X
    return jnp.sqrt(jnp.sum(R * R, axis=1))


@functools.partial(jax.jit, static_argnames=("mv_static", "layout"))
def _true_residuals_jit(mv_static, mv_dyn, layout, Q, Y, theta, k):
    """``||A x_i - theta_i x_i||`` for the first ``k`` vectors ``x_i = Y[:, i]^T Q``.

    ``Y`` is padded to the basis' row count and ``k`` is dynamic, so one program serves every
    ``k`` for a given operator and basis shape.
    """
    mv = lz.traced_once(mv_static, mv_dyn)
    rows = Y.shape[1]
    X = jnp.dot(Y.T.astype(Q.dtype), Q, precision=jax.lax.Precision.HIGHEST)
    flags_shape = jax.eval_shape(lambda v: mv(v)[1], layout.unravel(X[0]))

    def body(i, carry):
        res, ok = carry
        x = X[i]
        ax, flags = mv(layout.unravel(x))
        r = layout.ravel(ax).astype(x.dtype) - theta[i] * x
        return res.at[i].set(jnp.sqrt(jnp.dot(r, r))), ok & flags

    init = (jnp.zeros((rows,), theta.dtype), jnp.ones(flags_shape.shape, bool))
    return jax.lax.fori_loop(0, k, body, init)


def orthonormal_rows(F, *, name: str, drop_zero: bool = False) -> tuple[jax.Array, int]:
    """Orthonormalise the rows of a flat ``(b, P)`` array: two passes of a Gram-matrix
    eigendecomposition in float64 on the host; rank-deficient directions are dropped.

    ``drop_zero``: zero rows are dropped too (a sketch ``A S`` of an operator that vanishes on
    some of ``S``); the rank is then 0 when every row is zero (and the rows returned are empty).

    Raises:
      ValueError: a zero row (unless ``drop_zero``).
    """
    dtype = np.dtype(F.dtype)
    norms = np.sqrt(np.maximum(np.diag(np.asarray(_gram_jit(F), np.float64)), 0))
    if drop_zero and np.any(norms == 0):
        F, norms = F[norms > 0], norms[norms > 0]
        if not len(norms):
            return F, 0
    b = F.shape[0]
    if np.any(norms == 0):
        raise ValueError(
            f"{_validate.where()}: {name} contains a zero vector (row {int(np.argmin(norms))}); starting vectors must be nonzero."
        )
    F = _combine_jit(F, np.diag(1.0 / norms).astype(dtype))
    if b == 1:  # one row: normalised is orthonormal
        return F, 1
    rank = b
    for _ in range(2):
        G = np.asarray(_gram_jit(F), np.float64)
        d, U = np.linalg.eigh(0.5 * (G + G.T))
        keep = d > max(d.max(), 0) * 1e3 * float(np.finfo(dtype).eps) * b
        U, d = U[:, keep][:, ::-1], d[keep][::-1]
        W = U / np.sqrt(d)
        F = _combine_jit(F, W.astype(dtype))
        rank = int(keep.sum())
    return F, rank


@jax.jit
def _combine_jit(F, W):
    """``W^T F``."""
    return jnp.dot(W.T.astype(F.dtype), F, precision=jax.lax.Precision.HIGHEST)


@jax.jit
def _gram_jit(F):
    return jnp.dot(F, F.T, precision=jax.lax.Precision.HIGHEST)


@jax.jit
def _stack1(v):
    return jax.tree.map(lambda x: jnp.asarray(x)[None], v)


@functools.partial(jax.jit, static_argnames=("size", "dtype"))
def _random_row(seed, size, dtype):
    return _random.normal_like(jnp.zeros((1, size), dtype), seed, 0)


def start_block(op, layout: lz.Layout, v0, key) -> tuple[jax.Array, int]:
    """Orthonormal flat starting rows ``(b, P)`` in the operator's subset space (random if ``v0``
    is None). ``v0`` may be one template-shaped vector or a stack of them (leading axis)."""
    if v0 is None:
        F = _random_row(np.uint32(_random.key_seed(key)), layout.size, layout.dtype)
        return orthonormal_rows(F, name="v0")
    ref = op.template_name
    p_leaves = jax.tree.leaves(op.template)
    if jax.tree.structure(v0) != jax.tree.structure(op.template):
        _validate.check_same_structure(v0, op.template, name="v0", ref_name=ref)
    v_leaves = jax.tree.leaves(v0)
    if all(np.shape(a) == np.shape(b) for a, b in zip(v_leaves, p_leaves)):
        ops.check_vector(v0, op.template, name="v0", allow_zero=False, ref_name=ref)
        V = _stack1(v0)
    else:
        lead = {np.shape(a)[:1] for a in v_leaves}
        ok = len(lead) == 1 and all(
            np.shape(a)[1:] == np.shape(b) for a, b in zip(v_leaves, p_leaves)
        )
        if not ok:
            raise ValueError(
                f"{_validate.where()}: v0 must be {ref}-shaped or a stack of {ref}-shaped vectors (leading axis); "
                f"got {_validate.describe(v0)}, expected {_validate.describe(op.template)}."
            )
        _validate.check_finite(v0, name="v0")
        V = v0
    F = lz.ravel_rows(layout, op.subset.restrict(V))
    return orthonormal_rows(F, name="v0")


def _dominated(ritz, which: str) -> bool:
    """Whether the unwanted end of the spectrum seen so far is larger in magnitude than the
    wanted values. The tolerance is relative to ``||A||``, so then it is loose for the wanted
    values: in a small Krylov space a Ritz value among the many eigenvalues near zero has a
    residual below it and would pass for the top. Measured: a transformer's Hessian after a
    catapult (eigenvalues from about -1541 to 28.2) "converged" to 0.0087 after 2 products.
    Until the first basis is full such a space is not accepted (ARPACK never tests before it
    is)."""
    theta = np.asarray(ritz.theta, np.float64)
    if which == "both" or not theta.size:
        return False
    wanted = float(np.max(np.abs(theta[ritz.wanted])))  # the wanted end's extreme
    other = max(0.0, -float(theta.min())) if which == "largest" else max(0.0, float(theta.max()))
    return other > 2.0 * wanted


def _order(theta: np.ndarray, which: str, count: int) -> np.ndarray:
    """Indices of ``count`` Ritz values from the wanted end(s), most wanted first."""
    asc = np.argsort(theta, kind="stable")
    if which == "largest":
        return asc[::-1][:count]
    if which == "smallest":
        return asc[:count]
    top, bot = asc[::-1], asc
    out, seen = [], set()
    for a, b in zip(top, bot):
        for i in (a, b):
            if i not in seen and len(out) < count:
                out.append(int(i))
                seen.add(int(i))
    return np.asarray(out, int)


def _wanted(theta: np.ndarray, which: str, k: int) -> np.ndarray:
    """Indices of the wanted values in output order."""
    asc = np.argsort(theta, kind="stable")
    if which == "largest":
        return asc[::-1][:k]
    if which == "smallest":
        return asc[:k]
    return np.concatenate([asc[::-1][:k], asc[:k]])


def error_bounds(theta: np.ndarray, resid: np.ndarray, idx) -> np.ndarray:
    """Eigenvalue error bounds of the Ritz values ``theta[idx]`` from residual norms ``resid``.

    For a Ritz value ``theta_i`` with residual ``r_i = ||A x_i - theta_i x_i||`` some eigenvalue
    lies within ``r_i`` (Krylov-Bogoliubov), and if the rest of the spectrum is at distance
    ``delta`` the error is at most ``r_i^2 / delta`` (Kato-Temple; Parlett, *The Symmetric
    Eigenvalue Problem*, Thm 11.7.1). For a cluster ``C`` of neighbouring Ritz values (a
    repeated or close eigenvalue) the block form ``||R_C||^2 / delta_C`` holds for every member
    (Mathias 1998; Li and Li 2005), with ``||R_C||_2^2 <= sum_{j in C} r_j^2``. ``delta`` is
    estimated from the other Ritz values, each widened by its own residual: the eigenvalue a
    Ritz value approximates lies within its residual. The bound returned is the smallest of
    ``r_i`` and the block bounds of every run of at most :data:`CLUSTER_MAX` neighbouring Ritz
    values that contains ``i`` and has a neighbour outside it (an extreme cluster is bounded
    only on its inner side).

    The estimate of ``delta`` assumes the Ritz values already represent the spectrum next to the
    wanted ones: an eigenvalue the Krylov space has not yet seen (a start vector nearly
    orthogonal to it, or a second copy of a repeated one) is invisible to every residual-based
    test; the fresh-vector check of :func:`eigenvalues` is there for that.
    """
    theta = np.asarray(theta, np.float64)
    resid = np.abs(np.asarray(resid, np.float64))
    idx = np.asarray(idx, int)
    n = len(theta)
    if n == 0 or len(idx) == 0:
        return np.zeros(len(idx))
    order = np.argsort(theta, kind="stable")
    th, r = theta[order], resid[order]
    pos = np.empty(n, int)
    pos[order] = np.arange(n)
    csum = np.concatenate([[0.0], np.cumsum(r * r)])
    # below[a]: from th[a] down to the next Ritz value plus its residual; above[b]: from th[b]
    # up to the next Ritz value minus its residual
    below = np.full(n, np.inf)
    above = np.full(n, np.inf)
    below[1:] = th[1:] - th[:-1] - r[:-1]
    above[:-1] = th[1:] - th[:-1] - r[1:]
    a, b = np.arange(n)[:, None], np.arange(n)[None, :]
    gap = np.minimum(below[:, None], above[None, :])  # the run th[a..b] against the rest
    ok = (b >= a) & (b - a < CLUSTER_MAX) & np.isfinite(gap) & (gap > 0)
    block = np.where(ok, (csum[b + 1] - csum[a]) / np.where(ok, gap, 1.0), np.inf)
    out = np.empty(len(idx))
    for t, i in enumerate(idx):
        p = pos[i]
        out[t] = min(r[p], float(block[: p + 1, p:].min()))
    return out


class _Ritz:
    """Rayleigh-Ritz of the expanded basis, with residual estimates and error bounds.

    The projected matrix is taken from its computed (upper) triangle (see
    :func:`~landscape.hessian._lanczos.projected_eigh`). ``floor[j]`` bounds the part of ``A q_j``
    that the recorded couplings miss: a fresh-vector check locks the converged pairs and drops
    their couplings (the residual each had then), and later restarts carry that through, so a
    Ritz vector ``Q^T y`` has residual at most ``||C y|| + |y|^T floor`` (``C`` the couplings to
    the unexpanded rows).
    """

    def __init__(
        self,
        state: lz.KrylovState,
        which: str,
        k: int,
        tol: float,
        noise: float = 0.0,
        *,
        measure: bool = True,
        floor=None,
    ):
        e, F = state.expanded, state.filled
        H = state.H64()
        self.e, self.F = e, F
        # rounding noise of the products: the asymmetry of the projected matrix, measured only
        # while both triangles are computed projections (before any multiplicity check: a lock
        # drops couplings, after which the triangles differ by more than rounding)
        measured = float(np.max(np.abs(H[:e, :e] - H[:e, :e].T))) if (e and measure) else 0.0
        self.noise = max(float(noise), measured)
        self.theta, self.Y = lz.projected_eigh(H, e)
        self.C = H[e:F, :e]
        self.resid = np.linalg.norm(self.C @ self.Y, axis=0) if e < F else np.zeros(e)
        if floor is not None and e:
            self.resid = self.resid + np.abs(self.Y).T @ np.asarray(floor[:e], np.float64)
        self.anorm = max(float(np.max(np.abs(self.theta))) if e else 0.0, float(state.anorm))
        ktot = 2 * k if which == "both" else k
        self.enough = e >= ktot
        self.wanted = _wanted(self.theta, which, k) if self.enough else np.zeros(0, int)
        self.tol_abs = max(
            tol * max(self.anorm, np.finfo(np.float64).tiny), NOISE_FACTOR * self.noise
        )
        self.bounds = (
            error_bounds(self.theta, self.resid, self.wanted) if self.enough else np.zeros(0)
        )
        self.converged = self.bounds <= self.tol_abs

    @property
    def worst(self) -> float:
        """Largest error bound of the wanted pairs over the tolerance (<= 1: converged)."""
        return (
            float(np.max(self.bounds) / self.tol_abs)
            if self.enough and len(self.bounds)
            else np.inf
        )

    @property
    def all_converged(self) -> bool:
        return bool(self.enough and self.converged.all())


def solve(
    op,
    *,
    k: int,
    which: str,
    tol: float,
    key,
    v0=None,
    krylov_dim: int | None = None,
    max_restarts: int = 100,
    check_multiplicity: bool | None = None,
    num_check_steps: int | None = None,
) -> EigenResult:
    """Thick-restart Lanczos on an operator (see :func:`eigenvalues`): the solver behind it,
    also used by the density's check and the sharpness callback."""
    n = op.num_params
    ktot = 2 * k if which == "both" else k
    if ktot > n:
        raise ValueError(
            f"{_validate.where()}: k={k} asks for {ktot} eigenpairs but the operator has only {n} parameters "
            f"({'all' if op.subset.is_all else 'params_filter'}); use k <= {n // (2 if which == 'both' else 1)}."
        )
    dtype = op.dtype
    tol_used = max(float(tol), TOL_FLOOR * float(jnp.finfo(dtype).eps))
    if krylov_dim is None:
        m = min(n, max(20, 2 * ktot + 1))
    else:
        m = _validate.check_positive_int(krylov_dim, name="krylov_dim")
        if m < ktot + 1 and m < n:
            raise ValueError(
                f"{_validate.where()}: krylov_dim={m} must exceed the number of wanted pairs ({ktot})."
            )
        m = min(m, n)
    key = _validate.check_key(key)
    k_start, k_run = _tree.split_key(key)
    layout = lz.Layout(op.subset.restrict(op.template))
    V, b = start_block(op, layout, v0, k_start)
    rows = m + max(b, ktot) + 1  # independent of the start block up to k_total vectors
    store = rows * layout.size * np.dtype(dtype).itemsize <= STORED_PRODUCTS_MAX_BYTES
    prepared = op.host_prepared()
    st = lz.new_state(
        prepared, layout, V, b, rows, m, key=k_run, dtype=dtype, store_products=store
    )
    s_check = (
        num_check_steps if num_check_steps is not None else max(4, min(CHECK_STEPS, m - ktot))
    )
    if check_multiplicity is None:  # a second copy of the top value is the second eigenvalue
        check_multiplicity = ktot > 1
    num_keep_default = min(m - 2, ktot + max(ktot, (m - ktot) // 2)) if m > ktot + 2 else ktot

    def fail_nonfinite():
        if not st.ok:
            op.check_flags(st.ok_flags, f"Lanczos step {st.first_bad}")

    worst = np.inf  # the largest error bound over the tolerance at the last check

    def next_chunk(room: int) -> int:
        """Products until the next check (see CHECK_EVERY)."""
        first = max(0, ktot + 1 - st.expanded)  # no bound before k_total + 1 products
        chunk = max(first, 1 if worst <= NEAR_FACTOR else CHECK_EVERY)
        return max(1, min(chunk, room))

    restarts = checks = 0
    verifying = False
    passed = False  # a multiplicity check found no missed copy
    num_locked = 0
    noise = 0.0
    floor = np.zeros(st.rows)  # residual bounds the couplings miss (see _Ritz)
    while True:
        target = m if not verifying else min(m, st.expanded + s_check)
        while st.expanded < target:
            before = st.expanded
            st.expand(next_chunk(target - st.expanded) if not verifying else target - st.expanded)
            fail_nonfinite()
            if st.expanded == before or st.expanded >= n:
                break
            if not verifying:
                probe = _Ritz(st, which, k, tol_used, noise, measure=checks == 0, floor=floor)
                noise = probe.noise
                worst = probe.worst
                if probe.all_converged and (st.expanded >= m or not _dominated(probe, which)):
                    break
        ritz = _Ritz(st, which, k, tol_used, noise, measure=checks == 0, floor=floor)
        noise = ritz.noise
        complete = ritz.e >= n  # the basis spans the whole space: exact
        if verifying:
            verifying = False
            worst = np.inf
            if complete:
                break
            if _verified(ritz, which, k, num_locked):
                passed = True
                if ritz.all_converged:
                    break
                # the check found nothing new, but a wanted pair near a fresh Ritz value mixed
                # with the fresh block and lost its convergence: restart (no further check)
            # else the fresh vector found something that may belong to the wanted set: go on
        elif ritz.all_converged or complete:
            if (
                complete
                or not check_multiplicity
                or passed
                or checks >= MAX_CHECKS
                or ritz.e >= n - 1
            ):
                break
            checks += 1
            verifying = True
            wv = ritz.wanted
            num_locked = len(wv)
            S = np.zeros((st.rows, st.rows))
            S[: ritz.e, :num_locked] = ritz.Y[:, wv]
            # locking drops the couplings: their size becomes the locked rows' residual floor
            floor = np.zeros(st.rows)
            floor[:num_locked] = ritz.resid[wv]
            lz.restart(st, S, ritz.theta[wv], np.zeros((0, num_locked)), num_locked, 0, inject=1)
            continue
        if restarts >= max_restarts:
            break
        restarts += 1
        nk = max(min(num_keep_default, ritz.e - 1), min(ktot, ritz.e))
        keep = _order(ritz.theta, which, nk)
        nc = ritz.F - ritz.e
        S = np.zeros((st.rows, st.rows))
        S[: ritz.e, :nk] = ritz.Y[:, keep]
        for r in range(nc):
            S[ritz.e + r, nk + r] = 1.0
        coupling = ritz.C @ ritz.Y[:, keep] if nc else np.zeros((0, nk))
        new_floor = np.zeros(st.rows)
        new_floor[:nk] = np.abs(ritz.Y[:, keep]).T @ floor[: ritz.e]
        floor = new_floor
        lz.restart(st, S, ritz.theta[keep], coupling, nk, nc)

    w = ritz.wanted
    values = ritz.theta[w]
    X = lz.combine_rows(st, ritz.Y[:, w])
    Ypad = np.zeros((st.rows, st.rows))
    Ypad[: ritz.e, : len(w)] = ritz.Y[:, w]
    theta = np.zeros(st.rows)
    theta[: len(w)] = values
    ydt = np.dtype(dtype)
    if st.W is not None:  # A x = sum_j y_j (A q_j) from the stored products: no further products
        res = _stored_residuals_jit(st.Q, st.W, Ypad.astype(ydt), theta.astype(ydt))
        num_hvps = st.num_matvecs
    else:
        s, d = engine.split_fn(prepared)
        res, ok = _true_residuals_jit(
            s, d, st.layout, st.Q, Ypad.astype(ydt), theta.astype(ydt), np.int32(len(w))
        )
        op.check_flags(ok, "final residual check")
        num_hvps = st.num_matvecs + len(w)
    residuals = np.asarray(res, np.float64)[: len(w)]
    # the reported bounds: the true residuals of the wanted pairs, the gaps to the other Ritz
    # values widened by their residual estimates
    r_all = np.array(ritz.resid, np.float64)
    r_all[w] = residuals
    bounds = error_bounds(ritz.theta, r_all, w)
    converged = bounds <= ritz.tol_abs * (1 + 1e-6)
    vectors = op.subset.embed(X, op.template, leading=(len(w),))
    if not converged.all():
        _validate.warn(
            f"{_validate.where()}: {int((~converged).sum())} of {len(w)} eigenpairs did not reach the tolerance "
            f"{ritz.tol_abs:.2e} on their error bound (= max({tol_used:.1e} x ||A||, {NOISE_FACTOR:g} x product noise "
            f"{ritz.noise:.1e}); ||A|| ~ {ritz.anorm:.3e}) after {num_hvps} products and {restarts} restarts; "
            f"largest bound {bounds.max():.2e} (residual {residuals[np.argmax(bounds)]:.2e}). Increase max_restarts "
            "or krylov_dim, or loosen tol.",
            RuntimeWarning,
        )
    anorm = max(ritz.anorm, np.finfo(np.float64).tiny)
    if ritz.noise > ASYMMETRY_WARN * anorm:
        _validate.warn(
            f"{_validate.where()}: the products are not symmetric: |q_i^T A q_j - q_j^T A q_i| reaches "
            f"{ritz.noise:.2e} = {ritz.noise / anorm:.1e} x ||A||, far above rounding. Is the loss "
            "deterministic (no dropout or batch statistics in training mode) and the matvec a "
            f"symmetric operator? The tolerance was loosened to {ritz.tol_abs / anorm:.1e} x ||A||.",
            RuntimeWarning,
        )
    elif ritz.tol_abs > LOOSEN_WARN * tol_used * anorm:
        _validate.warn(
            f"{_validate.where()}: the products' rounding noise ({ritz.noise / anorm:.1e} x ||A||, measured as the "
            f"asymmetry of the projected matrix) loosened the tolerance from {tol_used:.1e} to "
            f"{ritz.tol_abs / anorm:.1e} x ||A||: the eigenvalues are not more accurate than that. Run in "
            "float64 for more.",
            RuntimeWarning,
        )
    return EigenResult(
        values=np.asarray(values, np.float64),
        vectors=vectors,
        residuals=residuals,
        converged=converged,
        error_bounds=np.asarray(bounds, np.float64),
        norm_estimate=float(ritz.anorm),
        num_hvps=int(num_hvps),
        num_restarts=int(restarts),
        num_checks=int(checks),
        which=which,
        k=int(k),
        tol=float(tol),
        tol_used=float(ritz.tol_abs / max(ritz.anorm, np.finfo(np.float64).tiny)),
        noise=float(ritz.noise),
        curvature=op.curvature,
        params_filter=None if op.subset.is_all else tuple(op.subset.selected_paths),
        dtype=str(np.dtype(dtype)),
    )


def _verified(ritz: _Ritz, which: str, k: int, num_locked: int) -> bool:
    """True when no Ritz value of the fresh-vector block can belong to the wanted set.

    After a check the projected matrix is nearly block diagonal: the locked pairs (their Ritz
    values on the diagonal, coupled to the fresh block only through their small residuals) and
    the fresh Krylov block. Ritz vectors are told apart by their mass
    on the locked rows; a fresh value that could reach past the k-th locked value (value plus its
    residual estimate) means the check found something.
    """
    theta, resid, Y = ritz.theta, ritz.resid, ritz.Y
    locked = np.sum(Y[:num_locked] ** 2, axis=0) >= 0.5
    fresh = ~locked
    if not fresh.any() or not locked.any():
        return bool(not fresh.any())
    lv = theta[locked]
    ok = True
    if which in ("largest", "both"):
        kth = np.sort(lv)[::-1][min(k, len(lv)) - 1]
        ok &= bool(np.all(theta[fresh] + resid[fresh] < kth))
    if which in ("smallest", "both"):
        kth = np.sort(lv)[min(k, len(lv)) - 1]
        ok &= bool(np.all(theta[fresh] - resid[fresh] > kth))
    return ok


@_validate.public("landscape.hessian.eigenvalues")
@ops.curvature_keywords()
def eigenvalues(
    operator,
    params: PyTree = None,
    data: PyTree = None,
    /,
    *,
    k: int | str = 5,
    which: str = "largest",
    tol: float = DEFAULT_TOL,
    key,
    solver: str = "auto",
    v0: PyTree | None = None,
    krylov_dim: int | None = None,
    max_restarts: int = 100,
    check_multiplicity: bool | None = None,
    like: PyTree | None = None,
    **curvature,
) -> EigenResult:
    """Extreme eigenpairs of a symmetric operator: the Hessian (or GGN / Fisher) of the
    full-data-set mean loss, or any matvec.

    Three ways to call it (one driver; the first argument decides):

    * ``eigenvalues(op, k=..., key=...)`` with ``op = make_hvp(loss_fn, params, data, ...)``:
      reuse one operator for several analyses;
    * ``eigenvalues(matvec, like=template, k=..., key=...)`` with a matvec ``v -> A v`` on
      pytrees shaped like ``template`` (arrays or ``jax.ShapeDtypeStruct``);
    * ``eigenvalues(loss_fn, params, data, k=..., key=..., curvature="ggn", ...)``: the one-shot,
      which builds ``make_hvp(loss_fn, params, data, **curvature)`` and solves on it.

    Thick-restart Lanczos with full reorthogonalisation: Krylov cycles of ``krylov_dim``
    products, convergence checked on the host every product or two (float64 Rayleigh-Ritz of
    the projected matrix), the best Ritz vectors kept at each restart (Wu and Simon 2000). A
    pair has converged when its eigenvalue error bound ``min(r, r^2 / gap)`` is below the
    tolerance, ``r`` its Ritz estimate ``|beta_m y_m|`` of the residual (see
    :func:`error_bounds`). A single Krylov vector cannot see the second copy of a repeated
    eigenvalue (nor an eigenvalue the start vector is nearly orthogonal to), so once all wanted
    pairs have converged they are locked and a fresh random vector orthogonal to them is
    expanded for a few products (``check_multiplicity``); any value it finds that may belong to
    the wanted set sends the iteration on from the enlarged basis. Finally each pair's true
    residual ``||A v - lambda v||`` is formed from the stored products (or recomputed) and the
    reported error bound and ``converged`` flag are computed from it.

    Args:
      operator: a :class:`CurvatureOperator` (from :func:`make_hvp`); or a matvec ``v -> A v``
        (with ``like``): traceable, symmetric, and hashable (a module-level function or a
        ``jax.tree_util.Partial`` whose array arguments stay arguments; a new lambda per call
        recompiles); or the ``loss_fn`` of a one-shot (with ``params`` and ``data``).
      params, data: with a ``loss_fn``: the point and the data set (dict of arrays or a
        :class:`landscape.engine.Batched`); see :func:`make_hvp`. Not with an operator.
      k: number of eigenpairs (from each end for ``which="both"``); ``k <= num_params``; with
        ``solver="gram"`` also ``k <= N * C``. ``"all"``: the full GGN spectrum through the Gram
        (every eigenvalue of the data term above rounding, see ``solver``).
      which: ``"largest"`` (algebraically largest, e.g. the sharpness), ``"smallest"`` (most
        negative curvature) or ``"both"``.
      tol: relative eigenvalue tolerance: a pair is converged when the bound on its eigenvalue's
        error is at most ``tol * ||A||`` (``||A||`` estimated by the largest |Ritz value|). The
        bound is ``min(r, r^2 / gap)`` for the residual ``r = ||A v - lambda v||``: the residual
        alone bounds the distance to some eigenvalue; with the rest of the spectrum at distance
        ``gap`` the error is quadratic in it (Kato-Temple), and the gap is estimated from the
        other Ritz values, each widened by its residual (block form for clusters; see
        :func:`error_bounds`). **Default 1e-6.** The bound is honest where the Ritz values
        already show the spectrum next to the wanted ones; an eigenvalue the Krylov space has not
        seen yet cannot be bounded by any residual test, which is what the fresh-vector check
        (on for ``k_total > 1``) is for, and why loose tolerances (above ~1e-3) that stop after
        very few products are less safe than the bound says. Vectors are accurate to about
        ``r / gap`` in angle, roughly the square root of ``tol``: ask a smaller ``tol`` when the
        vectors matter more than the values. ``tol`` is floored at ``64 * eps(dtype)`` (7.6e-6 in
        float32, 1.4e-14 in float64; float32 products of a network's loss differ from the
        float64 ones by about that much) and at 10 times the products' measured rounding noise
        (see ``tol_used`` and ``noise``).
      key: PRNG key (required, also with ``v0``: randomness is explicit): the random start
        vector, the multiplicity checks' fresh vectors and breakdown replacements.
      solver: ``"lanczos"`` (thick-restart Lanczos, any operator), ``"gram"`` or ``"auto"``
        (**default**: Lanczos for an int ``k``, the Gram for ``k="all"``). ``"gram"`` is the exact
        GGN-NTK bridge for ``curvature="ggn"`` with cross-entropy or MSE: the eigenpairs of the
        ``NC x NC`` matrix ``(1/N) H^{1/2} J J^T H^{1/2}`` (``J`` the stacked per-example output
        Jacobians, the empirical NTK with outputs kept) by a float64 eigendecomposition on the
        host, mapped back to parameter-space eigenvectors by one vector-Jacobian product per
        example block; the weight decay of a :class:`landscape.Loss` is added back explicitly
        to every value (``weight_decay``), and the ``num_zero = num_params - rank`` remaining
        eigenvalues equal it exactly. MSE (ours: ``0.5 * mean`` over examples and outputs) has
        ``H_i = I / C``: the values are the NTK's divided by ``N * C``. Cost ``~2 (NC)^2 P``
        flops for the Gram plus ``O((NC)^3)`` for its eigendecomposition and ``k`` products for
        the true residuals; refused when the Gram exceeds ``GRAM_MAX_BYTES`` (1 GiB in float64).
        Only ``which="largest"``; ``v0``, ``krylov_dim`` and ``check_multiplicity`` do not apply.
        For a top-``k`` of a large data set Lanczos is cheaper (benchmarks/hessian/gram_route.md).
      v0: warm start: one params-shaped (``like``-shaped) vector or a stack of them (e.g. the
        previous result's ``vectors``); nonzero and finite.
      krylov_dim: basis size of a restart cycle (default ``max(20, 2 k_total + 1)``, ARPACK's
        choice, capped at the dimension).
      max_restarts: restart cycles before giving up (unconverged pairs are flagged and a
        ``RuntimeWarning`` is issued).
      check_multiplicity: run the fresh-vector check (:data:`CHECK_STEPS` = 7 extra products,
        more when it finds something). Default: on when more than one pair is wanted (for
        ``k=1`` a second copy of the top value would be the second eigenvalue, so the answer
        cannot change).
      like: with a plain matvec: a params-shaped pytree (arrays or ``jax.ShapeDtypeStruct``) its
        vectors are shaped like (the dimension and dtype of the problem).
      **curvature: with a ``loss_fn``: the operator settings of :func:`make_hvp`
        (``curvature``, ``model``, ``output_loss``, ``params_filter``, ``preconditioner``,
        ``batch_size``, ``method``).

    Returns:
      :class:`EigenResult` (values, params-shaped ``vectors`` with a leading axis, true
      ``residuals``, ``error_bounds``, ``converged``, ``num_hvps``).

    Cost:
      Typically ``2k + 5`` to ``4k + 15`` products for well-separated outliers (the benchmark's
      MLP: 6-9 for ``k=1``, 22-23 for ``k=5`` at the default ``tol``, the check's 7 included);
      the final residuals cost nothing when the products are stored, else ``k`` products.
      Memory ``(krylov_dim + k_total + 1) x P`` for the basis, twice that with the stored
      products.

    Raises:
      ValueError, TypeError: an unknown ``solver``; ``solver="gram"`` with a curvature other
        than ``"ggn"``, a custom output loss, a plain matvec, ``which`` other than
        ``"largest"``, ``k > N * C``, non-finite data or a Gram above ``GRAM_MAX_BYTES``;
        ``k`` larger than the number of parameters, a zero/non-finite or
        mismatched ``v0``, invalid settings, a missing ``key``; params/data or curvature settings
        given with an operator; a matvec without ``like``; an unknown keyword.
      FloatingPointError: a product was not finite (names the batch).

    Example:
      >>> res = landscape.hessian.eigenvalues(loss_fn, params, data, k=5, key=jax.random.key(0))
      >>> op = landscape.hessian.make_hvp(loss_fn, params, data, curvature="ggn")
      >>> ggn = landscape.hessian.eigenvalues(op, k=5, key=jax.random.key(0))
      >>> res.values, res.residuals

    References:
      Lanczos 1950; Wu and Simon 2000 (thick restart); Parlett 1998 (The Symmetric Eigenvalue
      Problem: residual and gap bounds); Mathias 1998, Li and Li 2005 (quadratic residual
      bounds for clusters); Ghorbani, Krishnan, Xiao 2019; Yao et al. 2020 (PyHessian).
      ``solver="gram"``: Martens 2020 (the GGN ``J^T H J``); Papyan 2019, 2020 (the GGN's
      spectrum from the Gram of the logit gradients); Jacot et al. 2018 (the NTK).
    """
    _validate.check_choice(which, ("largest", "smallest", "both"), name="which")
    _validate.check_choice(solver, SOLVERS, name="solver")
    if isinstance(k, str):
        if k != "all":
            raise ValueError(
                f"{_validate.where()}: k must be a positive int or 'all' (the full GGN spectrum, "
                f"solver='gram'); got {k!r}."
            )
        if solver == "lanczos":
            raise ValueError(
                f"{_validate.where()}: k='all' (the full spectrum) needs solver='gram' (or 'auto'): "
                "Lanczos returns extreme eigenpairs; give an int k."
            )
        solver = "gram"
    else:
        k = _validate.check_positive_int(k, name="k")
        # a top-k: Lanczos gets it in ~30 products, never the O((NC)^2 P) Gram
        if solver == "auto":
            solver = "lanczos"
    tol = _validate.check_finite_scalar(tol, name="tol")
    if tol <= 0:
        raise ValueError(f"{_validate.where()}: tol must be > 0; got {tol}.")
    max_restarts = _validate.check_positive_int(max_restarts, name="max_restarts", allow_zero=True)
    key = _validate.check_key(key)
    if solver == "gram":
        from landscape.hessian import _gram

        fn, record = _gram.solve, {"k": k, "which": which, "tol": tol, "solver": "gram"}
    else:
        fn = solve
        record = {
            "k": k,
            "which": which,
            "tol": tol,
            "krylov_dim": krylov_dim,
            "solver": "lanczos",
        }
    return _driver.drive(
        fn,
        operator,
        params,
        data,
        like=like,
        curvature=curvature,
        key=key,
        record=record,
        k=k,
        which=which,
        tol=tol,
        v0=v0,
        krylov_dim=krylov_dim,
        max_restarts=max_restarts,
        check_multiplicity=check_multiplicity,
    )
