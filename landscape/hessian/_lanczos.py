"""Lanczos on pytrees: one compiled loop, full reorthogonalisation as matmuls, streaming mode.

Two loops, each one ``jax.jit``-compiled program whose compile time does not depend on the
number of steps (``lax.fori_loop`` with traced bounds):

* :func:`_expand_jit` (full reorthogonalisation): the basis is one ``(rows, P)`` array (see
  :class:`Layout`; the operator still sees pytrees). Each step applies the operator, removes
  the local three-term part (``alpha q_j`` and the coupling to the row ``q_j`` came from), then
  projects the remainder against the whole basis with two matrix-vector products (classical
  Gram-Schmidt), with a second pass when the norm dropped by more than ``1/sqrt(2)``
  (Daniel-Gragg-Kaufman-Stewart). The
  projection coefficients are recorded, so the loop also serves thick restarts and block starts
  (rows are expanded in queue order; the projected matrix includes every coupling). A tiny
  remainder (breakdown: the Krylov space is invariant) is replaced by a random vector
  orthogonal to the basis, with zero coupling. Optionally (``W``) the raw products ``A q_j``
  are kept as a second ``(rows, P)`` array, so true residuals ``||A x - theta x||`` of Ritz
  vectors ``x = Q^T y`` are formed as ``W^T y - theta Q^T y`` without further products
  (linearity of ``A``; the eigensolver uses it when the array fits a memory budget).
* :func:`_stream_jit` (no reorthogonalisation): the three-term recurrence with three vectors; memory
  ``O(P)``. On breakdown it stops (the remaining coefficients are zero, so the Gauss quadrature of
  the invariant subspace is exact and the extra nodes carry zero weight).

The recurrence runs in the operator's dtype; tridiagonal and projected eigenproblems are solved
on the host in float64 (NumPy/SciPy), whatever the dtype and the x64 flag.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from jax import lax

from landscape import _provenance, engine
from landscape import tree as _tree
from landscape import validate as _validate
from landscape._result import Result, result, static_field
from landscape.hessian import _operators as ops
from landscape.hessian import _random

PyTree = Any
_HI = lax.Precision.HIGHEST

DGKS_ETA = 0.7071067811865476
"""Second Gram-Schmidt pass when the remainder's norm dropped below this fraction."""

BREAKDOWN_FACTOR = 100.0
"""Breakdown when the remainder's norm is below ``BREAKDOWN_FACTOR * eps(dtype) * ||A||``."""

__all__ = ["LanczosResult", "lanczos", "tridiagonal_eigh"]


# --------------------------------------------------------------------------------------------
# The basis layout: one (rows, P) array
# --------------------------------------------------------------------------------------------
class Layout:
    """How vectors (pytrees) map to rows of the basis matrix (static, hashable).

    Vectors stay pytrees wherever they meet the operator; only the Krylov basis is stored as one
    ``(rows, P)`` array in the vectors' (promoted) dtype, so a projection against the basis is
    two matrix-vector products whatever the number of parameter leaves. Compile time of the
    Lanczos loop then does not grow with the number of leaves (per-leaf products cost XLA about
    0.1 s of compile time each: 7 s for an 18-leaf ResNet, minutes for a ResNet-50), and the
    run time is the same (memory-bound passes over the basis either way; the vector is copied
    in and out of the flat layout once per step, ``O(P)``).
    """

    def __init__(self, template: PyTree):
        leaves, self.treedef = jax.tree.flatten(template)
        self.shapes = tuple(tuple(int(d) for d in np.shape(x)) for x in leaves)
        self.dtypes = tuple(np.dtype(jnp.result_type(x)) for x in leaves)
        self.sizes = tuple(int(np.prod(s)) for s in self.shapes)
        self.offsets = tuple(int(o) for o in np.cumsum((0,) + self.sizes[:-1]))
        self.size = int(sum(self.sizes))
        self.dtype = np.dtype(jnp.result_type(*self.dtypes)) if leaves else np.dtype(np.float32)

    def _key(self):
        return (self.treedef, self.shapes, self.dtypes)

    def __hash__(self):
        return hash(self._key())

    def __eq__(self, other):
        return isinstance(other, Layout) and self._key() == other._key()

    def ravel(self, tree: PyTree) -> jax.Array:
        leaves = self.treedef.flatten_up_to(tree)
        return jnp.concatenate([jnp.ravel(x).astype(self.dtype) for x in leaves])

    def ravel_rows(self, tree: PyTree) -> jax.Array:
        leaves = self.treedef.flatten_up_to(tree)
        return jnp.concatenate(
            [x.reshape(x.shape[0], -1).astype(self.dtype) for x in leaves], axis=1
        )

    def unravel(self, flat: jax.Array) -> PyTree:
        out = [
            lax.slice_in_dim(flat, o, o + n).reshape(s).astype(dt)
            for o, n, s, dt in zip(self.offsets, self.sizes, self.shapes, self.dtypes)
        ]
        return jax.tree.unflatten(self.treedef, out)

    def unravel_rows(self, F: jax.Array) -> PyTree:
        r = F.shape[0]
        out = [
            lax.slice_in_dim(F, o, o + n, axis=1).reshape((r,) + s).astype(dt)
            for o, n, s, dt in zip(self.offsets, self.sizes, self.shapes, self.dtypes)
        ]
        return jax.tree.unflatten(self.treedef, out)

    def leaf_sums(self, flat: jax.Array) -> jax.Array:
        """Sums of a flat vector over each leaf's segment (per-leaf inner products)."""
        return jnp.stack(
            [jnp.sum(lax.slice_in_dim(flat, o, o + n)) for o, n in zip(self.offsets, self.sizes)]
        )


def _dot(a, b):
    return jnp.dot(a, b, precision=_HI)


def _eps(dtype) -> float:
    return float(jnp.finfo(dtype).eps)


# --------------------------------------------------------------------------------------------
# The compiled loop with full reorthogonalisation
# --------------------------------------------------------------------------------------------
def traced_once(mv_static, mv_dyn):
    """The product ``v -> (A v, finite flags)`` inside one compiled program, traced once for
    the flags' shape query and the loop body (:func:`landscape.engine.shared_trace`)."""
    return engine.shared_trace(lambda dyn, v: engine.merge_fn(mv_static, dyn)(v), mv_dyn)


def _expand_body(mv, layout, seed, tol_break, j, carry):
    Q, H, parent, filled, ok, first_bad, anorm, nbreak, ndgks, W = carry
    rows = H.shape[0]
    dtype = H.dtype
    q = lax.dynamic_index_in_dim(Q, j, 0, keepdims=False)
    w_tree, flags = mv(layout.unravel(q))
    w = layout.ravel(w_tree).astype(dtype)
    if W is not None:  # the raw product A q_j (true residuals later without products)
        W = lax.dynamic_update_index_in_dim(W, w, j, 0)
    ok = ok & flags
    first_bad = jnp.where((first_bad < 0) & ~jnp.all(flags), j, first_bad)
    anorm = jnp.maximum(anorm, jnp.sqrt(_dot(w, w)))
    # local three-term part: alpha q_j and the coupling to the row q_j was made from
    alpha = _dot(q, w)
    p = parent[j]
    pp = jnp.maximum(p, 0)
    pc = jnp.where(p >= 0, H[j, pp], jnp.zeros((), dtype))
    w = w - alpha * q - pc * lax.dynamic_index_in_dim(Q, pp, 0, keepdims=False)
    n0 = jnp.sqrt(_dot(w, w))
    mask = jnp.arange(rows) < filled
    fresh = _random.uniform_like(w, seed, j)

    # classical Gram-Schmidt passes against the whole basis (one site: compiled once):
    # pass 1 always; a second when the norm dropped below 1/sqrt(2) (DGKS); on breakdown the
    # remainder is rounding noise, a generic vector takes over and gets two passes
    def cond(st):
        return st[2] < st[3]

    def body(st):
        w, c, k, target, broke, n_prev = st
        ck = jnp.where(mask, _dot(Q, w), 0).astype(dtype)
        w = w - _dot(ck, Q)
        n = jnp.sqrt(_dot(w, w))
        first = k == 0
        broke_now = first & (n <= tol_break * anorm)
        c = c + jnp.where(broke, 0, ck)  # the fresh vector's projections are not A's
        w = jnp.where(broke_now, fresh, w)
        target = jnp.where(
            first, jnp.where(broke_now, 3, jnp.where(n < DGKS_ETA * n_prev, 2, 1)), target
        )
        return w, c, k + 1, target, broke | broke_now, n

    init = (w, jnp.zeros((rows,), dtype), jnp.asarray(0), jnp.asarray(1), jnp.asarray(False), n0)
    w, c, npass, _, broke, _ = lax.while_loop(cond, body, init)
    ndgks = ndgks + ((npass == 2) & ~broke).astype(ndgks.dtype)
    n2 = jnp.sqrt(_dot(w, w))
    beta = jnp.where(broke, jnp.zeros((), dtype), n2)
    col = c.at[j].add(alpha).at[pp].add(pc)
    Q = lax.dynamic_update_index_in_dim(Q, w / n2, filled, 0)
    H = H.at[:, j].set(jnp.where(mask, col, 0))
    H = H.at[filled, j].set(beta)
    parent = parent.at[filled].set(jnp.where(broke, -1, j))
    nbreak = nbreak + broke.astype(nbreak.dtype)
    return Q, H, parent, filled + 1, ok, first_bad, anorm, nbreak, ndgks, W


@functools.partial(
    jax.jit, static_argnames=("mv_static", "layout"), donate_argnames=("Q", "H", "W")
)
def _expand_jit(
    mv_static, mv_dyn, layout, Q, H, parent, filled, anorm, start, stop, seed, tol_break, W=None
):
    """Rows ``start .. stop - 1`` expanded; ``W`` (``None`` or ``(rows, P)``) receives the raw
    products (``None`` and an array are two programs, each compiled once)."""
    mv = traced_once(mv_static, mv_dyn)
    q0 = layout.unravel(Q[0])
    flags_shape = jax.eval_shape(lambda v: mv(v)[1], q0)
    ok = jnp.ones(flags_shape.shape, bool)
    carry = (Q, H, parent, filled, ok, jnp.asarray(-1), anorm, jnp.asarray(0), jnp.asarray(0), W)
    body = functools.partial(_expand_body, mv, layout, seed, tol_break)
    return lax.fori_loop(start, stop, body, carry)


class KrylovState:
    """Host handle of a Krylov basis being expanded (device arrays plus host bookkeeping).

    ``Q`` is the ``(rows, P)`` basis; ``H[:, j]`` holds the projections of ``A q_j`` on the rows
    that existed when row ``j`` was expanded, and ``H[filled_j, j]`` the norm of the remainder.
    ``expanded`` rows have been multiplied by ``A``; ``filled`` rows exist. ``W`` (or ``None``)
    holds ``A q_j`` for the expanded rows (``W[j]`` is meaningless for the others).
    """

    def __init__(
        self,
        prepared,
        layout: Layout,
        Q,
        H,
        parent,
        filled: int,
        expanded: int,
        *,
        key,
        dtype,
        W=None,
    ):
        self.prepared = prepared
        self.layout = layout
        self.Q, self.H, self.parent, self.W = Q, H, parent, W
        self.filled, self.expanded = int(filled), int(expanded)
        self.key = key
        self.dtype = dtype
        self.anorm = np.zeros((), np.dtype(dtype))
        self.num_matvecs = 0
        self.num_breakdowns = 0
        self.num_second_passes = 0
        self.ok = True
        self.first_bad: int | None = None
        self.ok_flags = None
        self._calls = 0
        self._seed0 = _random.key_seed(key)  # host work, once
        self._H_host = None  # host copy of H, fetched once per expansion

    @property
    def rows(self) -> int:
        return int(self.H.shape[0])

    @property
    def max_expand(self) -> int:
        return int(self.H.shape[1])

    def expand(self, num: int) -> None:
        """Expand the next ``num`` rows (one compiled call)."""
        num = min(num, self.max_expand - self.expanded, self.rows - self.filled)
        if num <= 0:
            return
        s, d = engine.split_fn(self.prepared)
        seed = np.uint32((self._seed0 + 7919 * self._calls) & 0xFFFFFFFF)
        self._calls += 1
        tol_break = np.asarray(BREAKDOWN_FACTOR * _eps(self.dtype), np.dtype(self.dtype))
        out = _expand_jit(
            s,
            d,
            self.layout,
            self.Q,
            self.H,
            self.parent,
            np.int32(self.filled),
            self.anorm,
            np.int32(self.expanded),
            np.int32(self.expanded + num),
            seed,
            tol_break,
            self.W,
        )
        self.Q, self.H, self.parent, _filled, ok, first_bad, self.anorm, nbreak, ndgks, self.W = (
            out
        )
        self._H_host = None
        self.filled += num
        self.expanded += num
        self.num_matvecs += num
        self.num_breakdowns += int(nbreak)
        self.num_second_passes += int(ndgks)
        ok = np.asarray(ok)
        self.ok_flags = ok if self.ok_flags is None else (self.ok_flags & ok)
        if not ok.all():
            self.ok = False
            if self.first_bad is None:
                self.first_bad = int(first_bad)

    def H64(self) -> np.ndarray:
        if self._H_host is None:
            self._H_host = np.asarray(self.H, dtype=np.float64)
        return self._H_host


@functools.partial(jax.jit, static_argnames=("rows",))
def _init_basis(start_rows, rows):
    return (
        jnp.zeros((rows, start_rows.shape[1]), start_rows.dtype)
        .at[: start_rows.shape[0]]
        .set(start_rows)
    )


def new_state(
    prepared,
    layout: Layout,
    start_rows,
    num_start: int,
    rows: int,
    max_expand: int,
    *,
    key,
    dtype,
    store_products: bool = False,
) -> KrylovState:
    """A Krylov state whose first ``num_start`` rows are the orthonormal flat ``start_rows``
    (``(b, P)``, from :meth:`Layout.ravel_rows`); ``store_products`` keeps the raw products
    (a second ``(rows, P)`` array)."""
    Q = _init_basis(start_rows.astype(np.dtype(dtype)), rows)
    H = jax.device_put(np.zeros((rows, max_expand), np.dtype(dtype)))
    parent = jax.device_put(-np.ones((rows,), np.int32))
    W = _zeros_like_jit(Q) if store_products else None
    return KrylovState(prepared, layout, Q, H, parent, num_start, 0, key=key, dtype=dtype, W=W)


@jax.jit
def _zeros_like_jit(Q):
    return jnp.zeros_like(Q)


@functools.partial(jax.jit, donate_argnames=("Q",))
def _recombine_jit(Q, S):
    """New basis rows ``S^T Q`` (``S`` is rows x rows)."""
    return _dot(S.T.astype(Q.dtype), Q)


def _orthogonalize(Q, w, mask):
    """Two classical Gram-Schmidt passes of ``w`` against the masked rows of ``Q``."""

    def one(_, w):
        c = jnp.where(mask, _dot(Q, w), 0).astype(Q.dtype)
        return w - _dot(c, Q)

    return lax.fori_loop(0, 2, one, w)


@jax.jit
def _inject_jit(Q, filled, seed):
    rows = Q.shape[0]
    mask = jnp.arange(rows) < filled
    r = _random.normal_like(Q[0], seed, 1_000_003)
    r = _orthogonalize(Q, r, mask)
    n = jnp.sqrt(_dot(r, r))
    return lax.dynamic_update_index_in_dim(Q, r / n, filled, 0), n


def restart(
    state: KrylovState,
    S: np.ndarray,
    diag: np.ndarray,
    coupling: np.ndarray,
    num_keep: int,
    num_carry: int,
    *,
    inject: int = 0,
) -> None:
    """Thick restart in place.

    The new basis is ``[Q_e Y_keep (num_keep rows), carried unexpanded rows (num_carry),
    injected fresh random rows (inject)]``, with ``S`` (rows x rows) mapping old rows to new
    ones, ``diag`` the kept Ritz values and ``coupling`` (num_carry x num_keep) the projections
    of ``A`` times the kept Ritz vectors on the carried rows. Stored products are recombined
    with the same ``S`` (the kept rows map expanded rows to expanded rows only).
    """
    rows = state.rows
    S = S.astype(np.dtype(state.dtype))
    Q = _recombine_jit(state.Q, S)
    if state.W is not None:  # A (Q^T S) = (A Q)^T S: the kept rows' products follow
        state.W = _recombine_jit(state.W, S)
    H = np.zeros((rows, state.max_expand))
    H[np.arange(num_keep), np.arange(num_keep)] = diag
    if num_carry:
        H[num_keep : num_keep + num_carry, :num_keep] = coupling
    filled = num_keep + num_carry
    for i in range(inject):
        seed = (state._seed0 + 104729 * (state._calls + i + 1)) & 0xFFFFFFFF
        Q, _ = _inject_jit(Q, np.int32(filled), np.uint32(seed))
        filled += 1
    state._calls += 1
    state.Q = Q
    state.H = jax.device_put(H.astype(np.dtype(state.dtype)))
    state._H_host = None
    state.parent = jax.device_put(-np.ones((rows,), np.int32))
    state.filled = filled
    state.expanded = num_keep


@functools.partial(jax.jit, static_argnames=("layout",))
def _rows_combine_jit(layout, Q, Y):
    """``Y^T Q`` as stacked pytree vectors (``Y`` is rows x k)."""
    return layout.unravel_rows(_dot(Y.T.astype(Q.dtype), Q))


def combine_rows(state: KrylovState, Y: np.ndarray) -> PyTree:
    """Vectors ``sum_r Y[r, i] q_r`` for every column of ``Y``, as a stacked pytree (leading
    axis ``Y.shape[1]``)."""
    full = np.zeros((state.rows, Y.shape[1]))
    full[: Y.shape[0]] = Y
    return _rows_combine_jit(state.layout, state.Q, full.astype(np.dtype(state.dtype)))


@functools.partial(jax.jit, static_argnames=("layout",))
def ravel_rows(layout: Layout, tree):
    """Stacked pytree vectors to a flat ``(b, P)`` array."""
    return layout.ravel_rows(tree)


@functools.partial(jax.jit, static_argnames=("layout",))
def unravel_rows(layout: Layout, F):
    """A flat ``(b, P)`` array to stacked pytree vectors."""
    return layout.unravel_rows(F)


# --------------------------------------------------------------------------------------------
# Streaming loop (no basis)
# --------------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("mv_static", "num_steps"))
def _stream_jit(mv_static, mv_dyn, v0, num_steps, tol_break):
    mv = traced_once(mv_static, mv_dyn)
    dtype = _tree.dtype_of(v0)
    flags_shape = jax.eval_shape(lambda v: mv(v)[1], v0)

    def body(j, carry):
        q_prev, q, beta_prev, alphas, betas, frozen, ok, first_bad, anorm = carry

        def active(_):
            w, flags = mv(q)
            w = _tree.cast(w, dtype)
            an = jnp.maximum(anorm, _tree.norm(w))
            w = _tree.axpy(-beta_prev, q_prev, w)
            alpha = _tree.vdot(q, w)
            w = _tree.axpy(-alpha, q, w)
            beta = _tree.norm(w)
            broke = beta <= tol_break * an
            qn = jax.tree.map(
                lambda a, b: jnp.where(broke, b, a / jnp.where(broke, 1, beta).astype(a.dtype)),
                w,
                q,
            )
            return (
                q,
                qn,
                jnp.where(broke, 0, beta).astype(dtype),
                alpha.astype(dtype),
                broke,
                flags,
                an,
            )

        def idle(_):
            return (
                q_prev,
                q,
                beta_prev,
                jnp.zeros((), dtype),
                jnp.asarray(True),
                jnp.ones(flags_shape.shape, bool),
                anorm,
            )

        qp, qn, beta, alpha, broke, flags, an = lax.cond(frozen, idle, active, None)
        alphas = alphas.at[j].set(alpha)
        betas = betas.at[j].set(jnp.where(frozen, 0, beta))
        ok = ok & flags
        first_bad = jnp.where((first_bad < 0) & ~jnp.all(flags), j, first_bad)
        return qp, qn, beta, alphas, betas, frozen | broke, ok, first_bad, an

    init = (
        _tree.zeros_like(v0),
        v0,
        jnp.zeros((), dtype),
        jnp.zeros((num_steps,), dtype),
        jnp.zeros((num_steps,), dtype),
        jnp.asarray(False),
        jnp.ones(flags_shape.shape, bool),
        jnp.asarray(-1),
        jnp.zeros((), dtype),
    )
    out = lax.fori_loop(0, num_steps, body, init)
    _, _, _, alphas, betas, frozen, ok, first_bad, anorm = out
    return alphas, betas, ok, first_bad, anorm


@jax.jit
def _first_row(tree):
    return jax.tree.map(lambda x: x[0], tree)


def stream(prepared, v0: PyTree, num_steps: int, *, stacked: bool = False):
    """Streaming Lanczos from the unit vector ``v0``: ``(alphas, betas, ok_flags, first_bad)``.

    ``stacked``: ``v0`` carries a leading axis of one (a row of stacked vectors).

    ``betas[j]`` couples steps ``j`` and ``j + 1`` (the last one is the final remainder norm);
    after a breakdown the remaining coefficients are zero.
    """
    s, d = engine.split_fn(prepared)
    if stacked:
        v0 = _first_row(v0)
    dtype = _tree.dtype_of(v0)
    tol_break = np.asarray(BREAKDOWN_FACTOR * _eps(dtype), np.dtype(dtype))
    alphas, betas, ok, first_bad, _ = _stream_jit(s, d, v0, num_steps, tol_break)
    return (
        np.asarray(alphas, np.float64),
        np.asarray(betas, np.float64),
        np.asarray(ok),
        int(first_bad),
    )


# --------------------------------------------------------------------------------------------
# Host float64 eigenproblems
# --------------------------------------------------------------------------------------------
@_validate.public("landscape.hessian.tridiagonal_eigh")
def tridiagonal_eigh(alphas, betas) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and eigenvectors of the symmetric tridiagonal matrix with
    diagonal ``alphas`` (m) and off-diagonal ``betas`` (the first m - 1 are used), in float64
    on the host (LAPACK ``stemr`` through SciPy)."""
    a = np.asarray(alphas, np.float64)
    b = np.asarray(betas, np.float64)[: max(len(a) - 1, 0)]
    if len(a) == 1:
        return a.copy(), np.ones((1, 1))
    try:
        return scipy.linalg.eigh_tridiagonal(a, b)
    except (np.linalg.LinAlgError, ValueError):  # pragma: no cover - fall back to dense
        T = np.diag(a) + np.diag(b, 1) + np.diag(b, -1)
        return np.linalg.eigh(T)


def projected_eigh(H: np.ndarray, e: int) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs (ascending) of the projected matrix ``H[:e, :e]`` (float64), symmetric from its
    upper triangle.

    Rows are expanded in order, so ``H[a, b]`` for ``a <= b`` is a projection computed when row
    ``b`` was expanded (row ``a`` existed then). The lower triangle holds what was recorded
    before: the remainder norms, and the couplings a restart wrote, which miss what a lock
    dropped (see ``_eigen``); in exact arithmetic both triangles agree, and their difference is
    the products' rounding noise.
    """
    T = np.triu(np.asarray(H[:e, :e], np.float64))
    T = T + np.triu(T, 1).T
    return np.linalg.eigh(T)


# --------------------------------------------------------------------------------------------
# Public Lanczos
# --------------------------------------------------------------------------------------------
@result
class LanczosResult(Result):
    """Outcome of :func:`lanczos`.

    Attributes:
      alphas: diagonal of the tridiagonal matrix ``T`` (``num_steps``), float64.
      betas: ``betas[j]`` couples steps ``j`` and ``j + 1``; ``betas[-1]`` is the norm of the
        final remainder (``A Q = Q T + betas[-1] q_next e_m^T``). Zero after a breakdown.
      basis: the Lanczos vectors, one pytree shaped like ``v0`` with a leading axis of
        ``num_steps`` (``None`` in streaming mode).
      num_matvecs: number of operator applications.
      num_breakdowns: breakdowns handled (a random vector orthogonal to the basis took over).
      reorthogonalize: whether the basis was fully reorthogonalised.
    """

    alphas: np.ndarray
    betas: np.ndarray
    basis: PyTree
    num_matvecs: int = static_field(default=0)
    num_breakdowns: int = static_field(default=0)
    reorthogonalize: bool = static_field(default=True)
    provenance: dict = static_field(default_factory=dict)

    def ritz(self) -> tuple[np.ndarray, np.ndarray]:
        """Ritz values (ascending) and the eigenvectors of ``T`` (float64, host)."""
        return tridiagonal_eigh(self.alphas, self.betas)


@functools.partial(jax.jit, static_argnames=("layout",))
def _unit_row(layout, v):
    """``v / ||v||`` as one flat row ``(1, P)``."""
    f = layout.ravel(v)
    return (f / jnp.sqrt(_dot(f, f)))[None]


@_validate.public("landscape.hessian.lanczos")
def lanczos(
    operator, v0: PyTree, num_steps: int, *, key, reorthogonalize: bool = True
) -> LanczosResult:
    """Lanczos tridiagonalisation of a symmetric operator, in one compiled loop.

    Args:
      operator: a :class:`CurvatureOperator` (from :func:`make_hvp`; ``v0`` is then
        params-shaped) or a matvec ``v -> A v`` on pytrees shaped like ``v0`` (``v0`` is its
        template): traceable, symmetric and hashable (a module-level function or a
        ``jax.tree_util.Partial`` whose array arguments stay dynamic). It is a static argument
        of the compiled loop: reuse the same object (a new lambda per call recompiles).
      v0: starting vector (nonzero, finite); normalised here.
      num_steps: Krylov dimension ``m`` (number of products).
      key: PRNG key (required: randomness is explicit): the random vector that takes over on
        breakdown (unused by the streaming recurrence, which stops there).
      reorthogonalize: ``True``: full reorthogonalisation against the stored basis (memory
        ``(m + 1) x P``, per step two matmul passes over the basis); ``False``: streaming
        three-term recurrence, memory ``O(P)``, no basis returned (enough for quadrature; Ritz
        values may show spurious copies once some have converged).

    Returns:
      :class:`LanczosResult` with ``alphas``/``betas`` in float64.

    Cost:
      ``num_steps`` products; with reorthogonalisation ``2 (m + 1) P`` extra memory reads per
      step.

    Raises:
      ValueError: ``num_steps`` out of range, ``v0`` zero/non-finite/mismatched.
      TypeError: a missing ``key``, an operator that is not callable or not hashable.
      FloatingPointError: a product was not finite (names the batch for data-set operators).

    Example:
      >>> op = landscape.hessian.make_hvp(loss_fn, params, data)
      >>> res = landscape.hessian.lanczos(op, v0, 30, key=jax.random.key(0))
      >>> ritz_values, _ = res.ritz()

    References:
      Lanczos 1950; Paige 1972 (loss of orthogonality); Daniel, Gragg, Kaufman, Stewart 1976
      (reorthogonalisation criterion).
    """
    key = _validate.check_key(key)
    op = ops.as_operator(operator, like=v0)
    ops.check_vector(v0, op.template, name="v0", allow_zero=False, ref_name=op.template_name)
    v = op.restrict(v0)
    n = _tree.size(v)
    num_steps = _validate.check_positive_int(num_steps, name="num_steps")
    if num_steps > n:
        raise ValueError(
            f"{_validate.where()}: num_steps={num_steps} exceeds the dimension of the operator ({n})."
        )
    prepared = op.host_prepared()
    dtype = _tree.dtype_of(v)
    layout = Layout(v)
    row = _unit_row(layout, v)
    if not reorthogonalize:
        alphas, betas, ok, first_bad = stream(
            prepared, unravel_rows(layout, row), num_steps, stacked=True
        )
        op.check_flags(ok)
        return LanczosResult(
            alphas,
            betas,
            None,
            num_steps,
            int(np.sum(betas[:-1] == 0)),
            False,
            _provenance.provenance(dtype=dtype, settings={"num_steps": num_steps}),
        )
    st = new_state(prepared, layout, row, 1, num_steps + 1, num_steps, key=key, dtype=dtype)
    st.expand(num_steps)
    op.check_flags(st.ok_flags)
    H = st.H64()
    alphas = np.diag(H[:num_steps, :num_steps]).copy()
    betas = np.array([H[j + 1, j] for j in range(num_steps)])
    basis = op.subset.embed(
        unravel_rows(layout, st.Q[:num_steps]), op.template, leading=(num_steps,)
    )
    return LanczosResult(
        alphas,
        betas,
        basis,
        num_steps,
        st.num_breakdowns,
        True,
        _provenance.provenance(dtype=dtype, settings={"num_steps": num_steps}),
    )
