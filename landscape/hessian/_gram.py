"""The GGN-NTK bridge: exact Gauss-Newton eigenpairs through the ``NC x NC`` output Gram.

For a loss ``L = (1/N) sum_i l(f(x_i), y_i)`` whose per-example output Hessian
``H_i = d^2 l / d f^2`` (``C x C``) is positive semi-definite, the data term of the
generalised Gauss-Newton matrix is (Schraudolph 2002; Martens 2020, section 8)

    G = (1/N) sum_i J_i^T H_i J_i = B^T B,      B = (1/sqrt N) [F_1 J_1; ...; F_N J_N]  (NC x P)

for any factors ``F_i`` with ``F_i^T F_i = H_i`` (``J_i`` the ``C x P`` output Jacobian of
example ``i``). ``B^T B`` (``P x P``) and ``B B^T`` (``NC x NC``) share their nonzero eigenvalues,
and

    M = B B^T = (1/N) F K F^T,       K = J J^T   (the empirical NTK with outputs kept:
                                                  ``K[(i,c),(j,d)] = J_{i,c} . J_{j,d}``)

with ``F = blockdiag(F_i)``. This is the duality Papyan (2019, 2020) uses between the GGN's
outliers and the Gram of the logit gradients. The eigenvectors map back exactly: if
``M u = lambda u`` with ``||u|| = 1`` and ``lambda > 0`` then ``v = B^T u / sqrt(lambda)`` is a unit
eigenvector of ``G`` with eigenvalue ``lambda`` (``G v = B^T (B B^T u) / sqrt(lambda) = lambda v``,
``||v||^2 = u^T M u / lambda = 1``): one vector-Jacobian product over the data per batch of
vectors.

Conventions (the loss classes of :mod:`landscape.losses`):

* Softmax cross-entropy (batch mean): ``H_i = m_i (diag(p_i) - p_i p_i^T)``, ``p_i`` the softmax,
  ``m_i`` the label mass (1 for integer labels). The factor is
  ``F_i = sqrt(m_i) (diag(s_i) - s_i p_i^T)`` with ``s_i = sqrt(p_i)``:
  ``F^T F = (diag(s) - p s^T)(diag(s) - s p^T) = diag(p) - 2 p p^T + (s^T s) p p^T`` (using
  ``diag(s) s = p``) and ``s^T s = sum_c p_c = 1``, so ``F^T F = diag(p) - p p^T``. ``s_i^T F_i = p_i^T - p_i^T = 0``: every example contributes one null
  vector, so ``M`` has rank at most ``N (C - 1)`` (the softmax is invariant to adding a constant
  to the logits).
* MSE: ours is ``0.5 * mean`` over examples AND outputs (:func:`landscape.losses.mse`), so
  ``l_i = ||f_i - y_i||^2 / (2C)``, ``H_i = I / C``, ``F_i = I / sqrt(C)`` and
  ``M = K / (N C)``: the GGN's nonzero eigenvalues are the output-kept empirical NTK's divided by
  ``N * C``.
* Weight decay ``0.5 * wd * ||params||^2`` in a :class:`landscape.Loss` adds ``wd * I`` to the GGN
  (what ``make_hvp(curvature="ggn")`` multiplies by), so every eigenvalue is shifted by ``wd``;
  the Gram holds the data term only and ``wd`` is added back explicitly to every value.
* The full spectrum of ``G + wd I`` (``P`` values) is the ``rank`` positive eigenvalues of ``M``
  plus ``wd``, and ``P - rank`` eigenvalues equal to ``wd`` exactly (the null space of ``B``).
  The numerical rank counts the eigenvalues of ``M`` above ``NC * eps(dtype) * lambda_max``
  (below that an eigenvalue of the Gram is not distinguishable from rounding).
* ``params_filter``: the Jacobians are taken with respect to the selected leaves (the diagonal
  block of the GGN); ``preconditioner`` ``P``: the Jacobians are scaled by ``P^{-1/2}`` (the
  operator ``P^{-1/2} G P^{-1/2}``), not with weight decay (then the shift ``wd P^{-1}`` is not a
  multiple of the identity: use Lanczos).

Cost: the Gram takes ``~2 (NC)^2 P`` flops (:func:`landscape.jacobians.gram`, ``trace_outputs=
False``) plus the per-example Jacobians (``~3 N C`` forward passes); memory two example blocks of
Jacobians (``2 b C P`` numbers, ``b`` chosen from :data:`GRAM_BLOCK_BYTES`) and the ``NC x NC``
Gram (refused above :data:`GRAM_MAX_BYTES` in float64 on the host); the eigendecomposition
``O((NC)^3)`` in float64 on the host. With several blocks only the ``nblk (nblk + 1) / 2`` block
pairs ``(i, j >= i)`` are formed and the lower triangle mirrored (``M`` is symmetric): each block's
Jacobians are computed once for its own row and once for every row above it. Never a ``P x P``
matrix.
This pays for itself for the full spectrum of small problems; a top-``k`` costs Lanczos about
``2k + 5`` to ``4k + 15`` products, which is why ``solver="auto"`` never takes this route for an
integer ``k``.

References:
  Schraudolph 2002, Fast curvature matrix-vector products for second-order gradient descent.
  Martens 2020, New insights and perspectives on the natural gradient method (JMLR 21).
  Papyan 2019, Measurements of three-level hierarchical structure in the outliers in the
  spectrum of deepnet Hessians (ICML); Papyan 2020, Traces of class/cross-class structure
  pervade deep learning spectra (JMLR 21). Jacot, Gabriel, Hongler 2018 (the NTK).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from landscape import engine, jacobians
from landscape import tree as _tree
from landscape import validate as _validate
from landscape.hessian import _operators as ops

PyTree = Any

GRAM_MAX_BYTES = 1 << 30
"""The ``NC x NC`` Gram is refused when its float64 copy on the host would exceed this (1 GiB:
``NC <= 11585``; its eigendecomposition then takes minutes). Use Lanczos (``solver="lanczos"``)."""

GRAM_BLOCK_BYTES = 128 << 20
"""Per-example Jacobians of one block of examples take at most this many bytes (two blocks are
live at once): the block size is ``GRAM_BLOCK_BYTES // (C P itemsize)`` examples."""

_HI = lax.Precision.HIGHEST

__all__ = ["GRAM_BLOCK_BYTES", "GRAM_MAX_BYTES", "ce_factor", "gram_matrix", "solve"]


# --------------------------------------------------------------------------------------------
# Output-Hessian factors
# --------------------------------------------------------------------------------------------
def ce_factor(p):
    """``F = diag(sqrt p) - sqrt(p) p^T`` per example (``p``: ``(n, C)`` probabilities): the
    factor with ``F^T F = diag(p) - p p^T``, the softmax cross-entropy's output Hessian."""
    s = jnp.sqrt(p)
    return jax.vmap(jnp.diag)(s) - s[:, :, None] * p[:, None, :]


def _factors(pieces, out, batch, w):
    """Per-example factors ``F_i`` (``(b, C, C)``, ``F_i^T F_i = H_i``), times ``w_i`` (the
    ``1/sqrt N`` normalisation, zero on padding)."""
    if out.ndim == 1:
        out = out[:, None]
    c = out.shape[-1]
    if pieces.kind == "cross_entropy":
        p = jax.nn.softmax(out, axis=-1)
        f = ce_factor(p)
        t = batch[pieces.target_key]
        if not jnp.issubdtype(t.dtype, jnp.integer):  # soft labels: H scaled by the label mass
            f = f * jnp.sqrt(jnp.sum(t, axis=-1)).astype(f.dtype)[:, None, None]
    else:  # mse: H_i = I / C
        f = jnp.broadcast_to(
            jnp.eye(c, dtype=out.dtype) / jnp.sqrt(jnp.asarray(c, out.dtype)), (out.shape[0], c, c)
        )
    return f * w.astype(f.dtype)[:, None, None]


def _outputs(op, sub, batch):
    return op.pieces.outputs(op.subset.merge(op.params, sub), batch)


def _scaled(op, v):
    """``v`` in the preconditioned coordinates: the subset vector ``P^{-1/2} v``."""
    return v if op.scale is None else jax.tree.map(jnp.multiply, op.scale, v)


def _jac(op, batch):
    """Per-example Jacobians of the block's outputs w.r.t. the subset (scaled by ``P^{-1/2}``)."""
    sub0 = op.subset.restrict(op.params)
    j = jacobians.per_example(functools.partial(_outputs, op), sub0, batch)
    if op.scale is not None:
        j = jax.tree.map(lambda a, s: a * s.astype(a.dtype), j, op.scale)
    return j


def _block_factor(op, batch, w):
    out = _outputs(op, op.subset.restrict(op.params), batch)
    return _factors(op.pieces, out, batch, w)


# --------------------------------------------------------------------------------------------
# Compiled programs
# --------------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("s",))
def _gram_jit(s, d, xb, wb):
    """``M`` (``(nblk, b C, nblk, b C)``) and a finite flag; ``xb``/``wb`` the blocked data."""
    op = engine.merge_fn(s, d)
    nblk, b = wb.shape

    def one_block(x, w):
        return _jac(op, x), _block_factor(op, x, w)

    def pair(ja, fa, jb, fb):
        k = jacobians.gram(ja, jb, trace_outputs=False)  # (na, nb, C, C)
        m = jnp.einsum("icd,ijde,jfe->icjf", fa, k, fb, precision=_HI)
        return m.reshape(fa.shape[0] * fa.shape[1], fb.shape[0] * fb.shape[1])

    if nblk == 1:
        x0 = jax.tree.map(lambda a: a[0], xb)
        j0, f0 = one_block(x0, wb[0])
        m = pair(j0, f0, j0, f0)[None, :, None, :]
    else:
        # M is symmetric: only the blocks (i, j >= i) are formed (the diagonal one from the row's
        # own Jacobians, j > i through a cond that skips j < i), the rest mirrored
        idx = jnp.arange(nblk)

        def row(args):
            i, xa, wa = args
            ja, fa = one_block(xa, wa)
            diag = pair(ja, fa, ja, fa)

            def col(argsb):
                j, xj, wj = argsb
                return lax.cond(
                    j > i,
                    lambda: pair(ja, fa, *one_block(xj, wj)),
                    lambda: jnp.zeros_like(diag),
                )

            out = lax.map(col, (idx, xb, wb))  # (nblk, bC, bC), zero for j <= i
            return out.at[i].set(diag)

        m = lax.map(row, (idx, xb, wb))  # (nblk, nblk, bC, bC): the upper block triangle
        upper = idx[:, None] <= idx[None, :]
        m = jnp.where(upper[:, :, None, None], m, m.transpose(1, 0, 3, 2))
        m = m.transpose(0, 2, 1, 3)
    return m, jnp.all(jnp.isfinite(m))


@functools.partial(jax.jit, static_argnames=("s",))
def _vectors_jit(s, d, xb, wb, U, scale):
    """``scale_k * B^T u_k`` for the rows ``u_k`` of ``U`` (``(k, nblk, b, C)``): per block one
    output VJP, vmapped over the ``k`` cotangents ``F_i^T u_{k,i}``."""
    op = engine.merge_fn(s, d)
    sub0 = op.subset.restrict(op.params)

    def body(acc, args):
        x, w, u = args
        out, vjp = jax.vjp(lambda q: _outputs(op, q, x), sub0)
        f = _factors(op.pieces, out, x, w)
        cot = jnp.einsum("icd,kic->kid", f, u, precision=_HI)
        if out.ndim == 1:
            cot = cot[..., 0]
        (g,) = jax.vmap(vjp)(cot.astype(out.dtype))
        g = jax.vmap(functools.partial(_scaled, op))(g)
        return _tree.add(acc, g), None

    k = U.shape[0]
    init = jax.tree.map(lambda a: jnp.zeros((k,) + a.shape, a.dtype), sub0)
    acc, _ = lax.scan(body, init, (xb, wb, jnp.moveaxis(U, 1, 0)))
    return jax.tree.map(
        lambda a: a * scale.reshape((k,) + (1,) * (a.ndim - 1)).astype(a.dtype), acc
    )


@functools.partial(jax.jit, static_argnames=("s",))
def _residuals_jit(s, d, V, theta):
    """``||A v_i - theta_i v_i||`` for the stacked subset vectors ``V`` with the operator's own
    products (independent of the Gram), and the products' finite flags."""
    prep = engine.merge_fn(s, d)

    def one(args):
        v, t = args
        av, ok = prep(v)
        r = _tree.sub(
            _tree.cast(av, _tree.dtype_of(v)), _tree.scale(t.astype(_tree.dtype_of(v)), v)
        )
        return jnp.sqrt(_tree.vdot(r, r)), jnp.all(ok)

    return lax.map(one, (V, theta))


# --------------------------------------------------------------------------------------------
# Host side
# --------------------------------------------------------------------------------------------
def _weight_decay(op) -> float:
    loss = op.pieces.loss
    return float(loss.weight_decay) if loss is not None and loss.weight_decay else 0.0


def _examples(full, rest) -> PyTree:
    """The batched data's examples in one leading axis (call under ``jit``)."""
    parts = []
    if full is not None:
        parts.append(jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), full))
    if rest is not None:
        parts.append(rest)
    if len(parts) == 1:
        return parts[0]
    return jax.tree.map(lambda *a: jnp.concatenate(a, axis=0), *parts)


def _one_example(batched) -> PyTree:
    """The shapes (``ShapeDtypeStruct``) of a batch of one example."""
    if batched.full is not None:
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct((1,) + a.shape[2:], a.dtype), batched.full)
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct((1,) + a.shape[1:], a.dtype), batched.rest)


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _blocked_jit(full, rest, nblk: int, blk: int, pad: int) -> PyTree:
    """The examples padded (repeating the first) to ``nblk * blk`` and blocked
    ``(nblk, blk, ...)``: one program for the whole layout."""

    def lay(a):
        if pad:
            a = jnp.concatenate([a, jnp.repeat(a[:1], pad, axis=0)], axis=0)
        return a.reshape((nblk, blk) + a.shape[1:])

    return jax.tree.map(lay, _examples(full, rest))


def _num_outputs(op, example) -> int:
    sub0 = op.subset.restrict(op.params)
    out = jax.eval_shape(lambda q, b: _outputs(op, q, b), sub0, example)
    if len(out.shape) not in (1, 2):
        raise ValueError(
            f"{_validate.where()}: solver='gram' needs outputs of shape (batch,) or (batch, num_outputs); "
            f"got {tuple(out.shape)} for one example."
        )
    return 1 if len(out.shape) == 1 else int(out.shape[-1])


def check_operator(op) -> None:
    """The Gram route applies: a GGN :class:`CurvatureOperator` of cross-entropy or MSE."""
    if not isinstance(op, ops.CurvatureOperator):
        raise TypeError(
            f"{_validate.where()}: solver='gram' needs a curvature operator from "
            "landscape.hessian.make_hvp(..., curvature='ggn') (or loss_fn, params, data with "
            f"curvature='ggn'); got a {type(op).__name__}: a plain matvec has no Jacobians. Use "
            "solver='lanczos'."
        )
    if op.curvature != "ggn":
        raise ValueError(
            f"{_validate.where()}: solver='gram' computes the Gauss-Newton spectrum (the PSD "
            f"J^T H J, dual to the output-kept NTK); got curvature={op.curvature!r}, which is not "
            "of that form (the Hessian and the residual are indefinite). Pass curvature='ggn', or "
            "use solver='lanczos' for this curvature."
        )
    if op.pieces.kind not in ("cross_entropy", "mse"):
        raise ValueError(
            f"{_validate.where()}: solver='gram' needs the output Hessian's factor in closed form: "
            "a cross-entropy or MSE loss (a landscape.Loss, or output_loss='cross_entropy'/'mse'); "
            "got a custom output loss. Use solver='lanczos'."
        )
    if op.scale is not None and _weight_decay(op):
        raise ValueError(
            f"{_validate.where()}: solver='gram' with a preconditioner and weight decay: the "
            "preconditioned penalty wd P^{-1} is not a multiple of the identity, so it cannot be "
            "added back to the Gram's eigenvalues. Use solver='lanczos'."
        )


def _layout(op):
    """The padded, blocked data: ``(xb, wb, N, C, b)``."""
    n = op.batched.num_examples
    c = _num_outputs(op, _one_example(op.batched))
    size = op.num_params
    item = np.dtype(op.dtype).itemsize
    if (n * c) ** 2 * 8 > GRAM_MAX_BYTES:
        raise ValueError(
            f"{_validate.where()}: solver='gram' would form an NC x NC = {n * c} x {n * c} Gram "
            f"({(n * c) ** 2 * 8 / 2**30:.1f} GiB in float64, above GRAM_MAX_BYTES = "
            f"{GRAM_MAX_BYTES / 2**30:.1f} GiB). Use solver='lanczos' (the default for a top-k: "
            "about 2k + 5 to 4k + 15 curvature products) or fewer examples."
        )
    blk = max(1, min(n, GRAM_BLOCK_BYTES // max(1, c * size * item)))
    nblk = math.ceil(n / blk)
    blk = math.ceil(n / nblk)
    pad = nblk * blk - n

    xb = _blocked_jit(op.batched.full, op.batched.rest, nblk, blk, pad)
    w = np.zeros(nblk * blk, np.dtype(op.dtype))
    w[:n] = 1.0 / math.sqrt(n)
    return xb, _tree.to_device(w.reshape(nblk, blk)), n, c, blk


def gram_matrix(op) -> tuple[np.ndarray, dict]:
    """The ``NC x NC`` matrix ``(1/N) F K F^T`` of a GGN operator (float64 on the host, in the
    operator's dtype on the device), rows ordered example-major (``i * C + c``), and the layout
    used (``{"xb", "wb", "num_examples", "num_outputs", "block"}``).

    Raises:
      FloatingPointError: the Jacobians or outputs were not finite.
    """
    xb, wb, n, c, blk = _layout(op)
    s, d = engine.split_fn(op)
    m, ok = _gram_jit(s, d, xb, wb)
    if not bool(ok):
        raise FloatingPointError(
            f"{_validate.where()}: the output Gram is not finite (non-finite outputs or Jacobians at "
            "these params)."
        )
    nb = wb.shape[0]
    M = np.asarray(m, np.float64).reshape(nb * blk * c, nb * blk * c)[: n * c, : n * c]
    return 0.5 * (M + M.T), {"xb": xb, "wb": wb, "num_examples": n, "num_outputs": c, "block": blk}


def solve(
    op, *, key, k, which, tol, v0=None, krylov_dim=None, max_restarts=None, check_multiplicity=None
):
    """The Gram route of :func:`~landscape.hessian.eigenvalues` (``solver="gram"``): an
    :class:`~landscape.hessian.EigenResult` with the ``k`` largest eigenpairs of ``G + wd I``
    (``k="all"``: every eigenvalue above ``wd``, i.e. the nonzero part of the data term)."""
    from landscape.hessian import _eigen

    del key, max_restarts  # deterministic; no restarts
    check_operator(op)
    for name, val in (
        ("v0", v0),
        ("krylov_dim", krylov_dim),
        ("check_multiplicity", check_multiplicity),
    ):
        if val is not None:
            raise TypeError(
                f"{_validate.where()}: {name}= is a Lanczos setting; solver='gram' is a direct "
                "eigendecomposition and does not take it."
            )
    if which != "largest":
        raise ValueError(
            f"{_validate.where()}: solver='gram' returns the top of the GGN spectrum (which='largest'); "
            f"got which={which!r}. The smallest eigenvalues of G + wd I are wd itself (multiplicity "
            "P - rank, see k='all' and num_zero); use solver='lanczos' for the bottom."
        )
    _validate.check_finite(op.batched.full, name="data")
    _validate.check_finite(op.batched.rest, name="data")
    P = op.num_params
    nc = op.batched.num_examples * _num_outputs(op, _one_example(op.batched))
    if k != "all" and k > min(nc, P):
        raise ValueError(
            f"{_validate.where()}: k={k} exceeds the number of nonzero GGN eigenvalues the Gram "
            f"route can return: at most min(N*C, num_params) = min({nc}, {P}) = {min(nc, P)} (N*C is "
            "the size of the output Gram). Ask for fewer, or k='all'."
        )
    M, lay = gram_matrix(op)
    lam, U = np.linalg.eigh(M)
    lam, U = lam[::-1], U[:, ::-1]
    gdt = np.dtype(op.dtype)
    top = max(float(lam[0]), 0.0)
    thresh = nc * float(np.finfo(gdt).eps) * top
    rank = int(np.sum(lam > thresh)) if top > 0 else 0
    wd = _weight_decay(op)
    if k == "all":
        kk = rank
        if kk == 0:
            raise ValueError(
                f"{_validate.where()}: the GGN's data term is zero at these params (numerical rank 0): "
                f"every eigenvalue equals the weight decay {wd}."
            )
    else:
        kk = int(k)
        if kk > rank:
            raise ValueError(
                f"{_validate.where()}: the GGN's data term has numerical rank {rank} < k={kk} "
                f"(Gram eigenvalues above N*C*eps*lambda_max = {thresh:.2e}); the remaining "
                f"{P - rank} eigenvalues equal the weight decay {wd} and have no Gram eigenvector. "
                f"Ask k <= {rank}, or k='all'."
            )
    nb, blk, c = lay["wb"].shape[0], lay["block"], lay["num_outputs"]
    Uk = np.zeros((kk, nb * blk * c))
    Uk[:, :nc] = U[:, :kk].T
    s, d = engine.split_fn(op)
    V = _vectors_jit(
        s,
        d,
        lay["xb"],
        lay["wb"],
        _tree.to_device(np.asarray(Uk.reshape(kk, nb, blk, c), gdt)),
        _tree.to_device(np.asarray(1.0 / np.sqrt(lam[:kk]), gdt)),
    )
    V = _normalise_jit(V)
    values = lam[:kk] + wd
    prep = op.host_prepared()
    ps, pd = engine.split_fn(prep)
    res, ok = _residuals_jit(ps, pd, V, _tree.to_device(np.asarray(values, gdt)))
    op.check_flags(np.asarray(ok).all(), "residual check of the Gram route's eigenvectors")
    residuals = np.asarray(res, np.float64)
    # the whole spectrum of G + wd I: the Gram's values (+ wd), and wd itself for P > NC
    spectrum = np.concatenate([np.maximum(lam, 0.0) + wd, [wd] if nc < P else []])
    bounds = np.empty(kk)
    for i in range(kk):
        others = np.delete(spectrum, i)
        gap = float(np.min(np.abs(others - values[i]))) if others.size else np.inf
        bounds[i] = min(residuals[i], residuals[i] ** 2 / gap) if gap > 0 else residuals[i]
    norm = float(values[0])
    tol_used = max(float(tol), _eigen.TOL_FLOOR * float(np.finfo(gdt).eps))
    converged = bounds <= tol_used * max(norm, np.finfo(np.float64).tiny) * (1 + 1e-6)
    if not converged.all():
        _validate.warn(
            f"{_validate.where()}: {int((~converged).sum())} of {kk} Gram-route eigenpairs have an error "
            f"bound above {tol_used:.1e} x ||A|| (largest {bounds.max():.2e}, ||A|| ~ {norm:.3e}): the "
            "Gram was formed in "
            f"{gdt} from products whose rounding sets that floor. Run in float64 for more.",
            RuntimeWarning,
        )
    return _eigen.EigenResult(
        values=np.asarray(values, np.float64),
        vectors=op.subset.embed(V, op.template, leading=(kk,)),
        residuals=residuals,
        converged=converged,
        error_bounds=bounds,
        norm_estimate=norm,
        num_hvps=kk,
        num_restarts=0,
        num_checks=0,
        which="largest",
        k=kk,
        tol=float(tol),
        tol_used=tol_used,
        noise=0.0,
        curvature=op.curvature,
        params_filter=None if op.subset.is_all else tuple(op.subset.selected_paths),
        dtype=str(gdt),
        solver="gram",
        rank=rank,
        num_zero=P - rank,
        weight_decay=wd,
    )


@jax.jit
def _normalise_jit(V):
    """Unit rows (the map ``B^T u / sqrt(lambda)`` is unit up to rounding)."""
    sq = sum(jnp.sum(a.reshape(a.shape[0], -1) ** 2, axis=1) for a in jax.tree.leaves(V))
    inv = 1.0 / jnp.sqrt(sq)
    return jax.tree.map(lambda a: a * inv.reshape((-1,) + (1,) * (a.ndim - 1)).astype(a.dtype), V)
