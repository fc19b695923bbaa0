"""Class-structured spectra of the Gauss-Newton matrix of cross-entropy (Papyan 2019, 2020).

For softmax cross-entropy over ``C`` classes the Gauss-Newton matrix of the data term is

    G = (1/N) sum_i J_i^T H_i J_i,        H_i = diag(p_i) - p_i p_i^T,

``J_i`` the ``C x P`` Jacobian of example ``i``'s logits and ``p_i`` its softmax. The output
Hessian factorises over the classes ``c'`` the logits are pushed towards:

    H_i = sum_{c'} p_{i,c'} (e_{c'} - p_i)(e_{c'} - p_i)^T

(expand: ``sum_c' p_c' e_c' e_c'^T - p p^T - p p^T + (sum_c' p_c') p p^T = diag(p) - p p^T``),
so with the *logit gradients* ``g_{i,c'} = J_i^T (e_{c'} - p_i)`` (a parameter-space vector:
the gradient of the cross-entropy of example ``i`` had its label been ``c'``, with sign
flipped) and weights ``p_{i,c'}``,

    G = (1/N) sum_i sum_{c'} p_{i,c'} g_{i,c'} g_{i,c'}^T.

Papyan indexes every such vector by the pair ``(c, c')``: ``c = y_i`` the example's true class,
``c'`` the logit. For each pair, the mass and the weighted mean are

    w_{c,c'} = (1/N) sum_{i: y_i = c} p_{i,c'},     delta_{c,c'} = (1/(N w_{c,c'})) sum_{i: y_i = c} p_{i,c'} g_{i,c'}

and the weighted second moment splits exactly into the moment of the means plus the weighted
scatter around them (the cross terms vanish because the weighted deviations of each pair sum
to zero):

    G = sum_c w_{c,c} delta_{c,c} delta_{c,c}^T                  (G_class: the C class means)
      + sum_{c != c'} w_{c,c'} delta_{c,c'} delta_{c,c'}^T       (G_cross: C(C-1) cross-class means)
      + (1/N) sum_i sum_{c'} p_{i,c'} (g_{i,c'} - delta_{y_i,c'})(g_{i,c'} - delta_{y_i,c'})^T
                                                                 (G_within)

Papyan (2019) shows the outliers of ``G`` (and of the Hessian) come from this *second moment*
(it is not a covariance: the means matter), the class means giving ``C`` outliers and the
cross-class means a mini-bulk of ``C(C-1)``; the within-class scatter makes the bulk.

Rank of the class-mean part. Each example's weighted logit gradients sum to zero,
``sum_{c'} p_{i,c'} g_{i,c'} = J_i^T (p_i - p_i) = 0`` (the null vector ``1`` of ``H_i``), hence
for every class ``sum_{c'} w_{c,c'} delta_{c,c'} = 0``: each class mean is minus the
mass-weighted sum of its own cross-class means (so ``G_class + G_cross`` has rank at most
``C(C-1)``, not ``C^2``). That identity ties the class means to the cross-class means, not to
each other: nothing makes ``sum_c a_c delta_{c,c} = 0``, so ``G_class`` (uncentred, the part
``G`` holds) has rank ``C`` generically (at most ``C``). Centred by the global (mass-weighted)
mean ``delta_bar = sum_c w_{c,c} delta_{c,c} / W``, ``W = sum_c w_{c,c}``,

    G_class = sum_c w_{c,c} (delta_{c,c} - delta_bar)(delta_{c,c} - delta_bar)^T + W delta_bar delta_bar^T

the between-class covariance (first term) has rank at most ``C - 1`` (its factors
``sqrt(w_cc)(delta_cc - delta_bar)`` satisfy ``sum_c sqrt(w_cc) * factor_c = 0``) and the
global-mean term rank one. ``delta_bar = (1/(N W)) sum_i p_{i,y_i} J_i^T (e_{y_i} - p_i)`` is a
reweighted *negative gradient* of the loss, small near a minimum, so after training the
uncentred part is close to its rank-``C - 1`` covariance plus a small rank-one term.
``center=True`` returns the two as separate parts (``"class"`` and ``"global"``).

What dominates after training. With ``p_{i,y_i} -> 1`` the class means shrink like
``(1 - p_y)^2`` (weight ~1, vector ``J^T (e_y - p)`` of size ``1 - p_y``) while the cross-class
terms shrink like ``(1 - p_y)`` (weight ``p_{c'}``, vector of size ~1), so the outliers move to
the cross-class part. Measured (tests, digits MLP 64-16-10, 300 Adam steps, 512 examples,
float32): 9 = ``C - 1`` GGN eigenvalues above the within part's top eigenvalue, each 71-95%
cross-class (the 9th half within), < 0.5% class-mean.

Products, all matrix-free and chunked over the data by the engine (never a ``P x P`` matrix):

* ``G_class``, ``G_cross``, ``"global"``: explicit low rank, ``F^T (F v)`` with the factor rows
  ``F = sqrt(w) delta`` (``C``, ``C(C-1)``, one rows of ``P`` numbers), computed once from the
  per-example Jacobians (:func:`landscape.jacobians.per_example`, one batch at a time);
* ``G_within v = (1/N) sum_i J_i^T r_i`` with ``s_{i,c'} = (e_{c'} - p_i)^T J_i v -
  delta_{y_i,c'}^T v`` and ``r_i = p_i * s_i - p_i (p_i . s_i)``: one Jacobian-vector and one
  vector-Jacobian product per batch, the cost of a GGN product. (The term
  ``- sum_{c,c'} [(1/N) sum_{i in c} p_{i,c'} s_{i,c'}] delta_{c,c'}`` vanishes identically, the
  weighted deviations summing to zero, and is not formed.)

Weight decay in a :class:`landscape.Loss` adds its Hessian (``"penalty"``), so the parts sum to
:func:`~landscape.hessian.make_hvp`'s ``curvature="ggn"`` product, whatever the loss holds.

References:
  Papyan 2019, "Measurements of three-level hierarchical structure in the outliers in the
  spectrum of deepnet Hessians" (ICML). Papyan 2020, "Traces of class/cross-class structure
  pervade deep learning spectra" (JMLR 21). Sagun et al. 2017; Martens 2020.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.tree_util import Partial

from landscape import _provenance, engine, jacobians
from landscape import tree as _tree
from landscape import validate as _validate
from landscape._result import Result, result, static_field
from landscape.hessian import _driver, _eigen
from landscape.hessian import _operators as ops

PyTree = Any

__all__ = ["ClassDecompositionResult", "class_decomposition", "class_operators"]

_HI = lax.Precision.HIGHEST


# --------------------------------------------------------------------------------------------
# The means (one compiled program over the data)
# --------------------------------------------------------------------------------------------
def _batch_moments(pieces, num_classes, params, batch):
    """Per batch: ``(sum_i onehot_ic p_ic' g_ic', sum_i onehot_ic p_ic') / B`` as a pytree with
    leading ``(C, C)`` axes, and the ``(C, C)`` masses."""
    out = pieces.outputs(params, batch)
    p = jax.nn.softmax(out, axis=-1)
    y = batch[pieces.target_key]
    onehot = jax.nn.one_hot(y, num_classes, dtype=p.dtype)
    coef = onehot[:, :, None] * p[:, None, :]  # (B, c, c')
    jac = jacobians.per_example(lambda q, b: pieces.outputs(q, b), params, batch)  # (B, C, *leaf)
    b = out.shape[0]

    def leaf(j):
        jf = j.reshape(j.shape[:2] + (-1,))
        g = (
            jf - jnp.einsum("ik,ikp->ip", p, jf, precision=_HI)[:, None, :]
        )  # g_ic' = J_i^T(e_c' - p_i)
        m = jnp.einsum("icd,idp->cdp", coef, g, precision=_HI) / b
        return m.reshape((num_classes, num_classes) + j.shape[2:])

    return jax.tree.map(leaf, jac), jnp.sum(coef, axis=0) / b


@functools.partial(jax.jit, static_argnames=("s", "num_classes"))
def _moments_jit(s, d, num_classes):
    op = engine.merge_fn(s, d)
    fn = functools.partial(_batch_moments, op.pieces, num_classes)
    return engine.batched_mean(fn, op.params, op.batched)


@jax.jit
def _factors_jit(m, w):
    """Factor rows of the low-rank parts, both ways (one program): ``"class"`` (uncentred),
    ``"class_centred"``, ``"global"`` and ``"cross"``; and the means ``delta`` (zeros where a
    pair has no mass)."""
    num_classes = w.shape[0]
    pos = w > 0
    safe = jnp.where(pos, w, 1)
    inv_sqrt = jnp.where(pos, 1 / jnp.sqrt(safe), 0)
    inv = jnp.where(pos, 1 / safe, 0)

    def bcast(a, x):
        return a.reshape(a.shape + (1,) * (x.ndim - a.ndim)).astype(x.dtype)

    delta = jax.tree.map(lambda x: x * bcast(inv, x), m)
    scaled = jax.tree.map(lambda x: x * bcast(inv_sqrt, x), m)  # sqrt(w) delta
    diag = np.arange(num_classes)
    off = np.array(
        [(c, e) for c in range(num_classes) for e in range(num_classes) if c != e]
    ).reshape(-1, 2)
    out = {
        "cross": jax.tree.map(lambda x: x[off[:, 0], off[:, 1]], scaled),
        "class": jax.tree.map(lambda x: x[diag, diag], scaled),
    }
    wc = w[diag, diag]
    big_w = jnp.sum(wc)
    mbar = jax.tree.map(
        lambda x: jnp.sum(x[diag, diag], axis=0) / big_w.astype(x.dtype), m
    )  # delta_bar
    dcc = jax.tree.map(lambda x: x[diag, diag], delta)
    out["class_centred"] = jax.tree.map(
        lambda dc, mb: (dc - mb[None]) * bcast(jnp.sqrt(wc), dc), dcc, mbar
    )
    out["global"] = jax.tree.map(lambda mb: (mb * jnp.sqrt(big_w).astype(mb.dtype))[None], mbar)
    return out, delta


def _select(rows_all, center):
    """The low-rank parts' factor rows as the decomposition holds them (``center`` or not)."""
    if center:
        return {
            "global": rows_all["global"],
            "class": rows_all["class_centred"],
            "cross": rows_all["cross"],
        }
    return {"class": rows_all["class"], "cross": rows_all["cross"]}


# --------------------------------------------------------------------------------------------
# Matvecs (module level: static, hashable; arrays travel in a Partial)
# --------------------------------------------------------------------------------------------
def _rows_dot(rows, v):
    """``F v`` for factor rows ``F`` (leaves ``(r, *leaf)``) and a params-shaped ``v``."""
    parts = [
        jnp.matmul(f.reshape(f.shape[0], -1), x.reshape(-1).astype(f.dtype), precision=_HI)
        for f, x in zip(jax.tree.leaves(rows), jax.tree.leaves(v))
    ]
    return sum(parts[1:], parts[0])


def lowrank_matvec(rows, v):
    """``F^T (F v)``: the product of an explicit low-rank part ``sum_r f_r f_r^T``."""
    c = _rows_dot(rows, v)
    return jax.tree.map(
        lambda f, x: (
            jnp.matmul(c, f.reshape(f.shape[0], -1), precision=_HI)
            .reshape(x.shape)
            .astype(x.dtype)
        ),
        rows,
        v,
    )


def _batch_within(pieces, params, batch, v, dv):
    out, f_jvp = jax.linearize(lambda q: pieces.outputs(q, batch), params)
    u = f_jvp(v)
    p = jax.nn.softmax(out, axis=-1)
    y = batch[pieces.target_key]
    s = u - jnp.sum(p * u, axis=-1, keepdims=True) - dv[y].astype(u.dtype)
    ps = p * s
    r = (ps - p * jnp.sum(ps, axis=-1, keepdims=True)) / jnp.asarray(out.shape[0], u.dtype)
    (res,) = jax.linear_transpose(f_jvp, params)(r.astype(out.dtype))
    return res


def within_matvec(op, delta, v):
    """``G_within v`` (see the module docstring): one JVP and one VJP per batch."""
    num_classes = jax.tree.leaves(delta)[0].shape[0]
    parts = [
        jnp.matmul(
            d.reshape(num_classes * num_classes, -1), x.reshape(-1).astype(d.dtype), precision=_HI
        )
        for d, x in zip(jax.tree.leaves(delta), jax.tree.leaves(v))
    ]
    dv = sum(parts[1:], parts[0]).reshape(num_classes, num_classes)
    fn = functools.partial(_batch_within, op.pieces)
    out, _ = engine.batched_mean(fn, op.params, op.batched, v, dv)
    return _tree.cast(out, _tree.dtype_of(v))


def penalty_matvec(op, v):
    """Hessian of the loss's L2 penalty times ``v``."""

    def pen(q):
        return jnp.asarray(op.pieces.penalty(q))

    return jax.jvp(jax.grad(pen), (op.params,), (v,))[1]


# --------------------------------------------------------------------------------------------
# Operators
# --------------------------------------------------------------------------------------------
def _num_classes(op) -> int:
    out = jax.eval_shape(
        lambda p, b: op.pieces.outputs(p, b),
        op.params,
        jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), op.batched.full)
        if op.batched.full is not None
        else op.batched.rest,
    )
    if len(out.shape) != 2:
        raise ValueError(
            f"{_validate.where()}: the model must return logits of shape (batch, num_classes); got outputs of "
            f"shape {tuple(out.shape)} for a batch."
        )
    return int(out.shape[-1])


def _labels(batched, target_key):
    parts = [p for p in (batched.full, batched.rest) if p is not None]
    for p in parts:
        if target_key not in p:
            raise ValueError(
                f"{_validate.where()}: data has no '{target_key}' entry (the integer class labels)."
            )
    ys = [np.asarray(p[target_key]).reshape(-1) for p in parts]
    return np.concatenate(ys)


def _build(loss_fn, params, data, *, center, model, output_loss, batch_size):
    if not isinstance(center, bool):
        raise TypeError(f"{_validate.where()}: center must be a bool; got {center!r}.")
    op = ops.make_hvp(
        loss_fn,
        params,
        data,
        curvature="ggn",
        model=model,
        output_loss=output_loss,
        batch_size=batch_size,
        method="forward_over_reverse",
    )
    if op.pieces.kind != "cross_entropy":
        what = "output_loss" if model is not None else "loss_fn"
        raise ValueError(
            f"{_validate.where()}: the class decomposition is defined for softmax cross-entropy; {what} is "
            f"{op.pieces.kind or 'a custom output loss'!r}. Pass a landscape.Loss of kind 'cross_entropy' "
            "(landscape.make_loss_fn(model)) or output_loss='cross_entropy'."
        )
    num_classes = _num_classes(op)
    y = _labels(op.batched, op.pieces.target_key)
    name = f"data['{op.pieces.target_key}']"
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(
            f"{_validate.where()}: {name} must hold integer class labels (the decomposition groups examples by "
            f"class); got dtype {y.dtype}. Convert one-hot or soft targets with argmax."
        )
    if y.size != op.batched.num_examples:
        raise ValueError(
            f"{_validate.where()}: {name} must hold one label per example, shape (N,); got {y.size} labels for "
            f"{op.batched.num_examples} examples."
        )
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(
            f"{_validate.where()}: {name} holds labels in [{int(y.min())}, {int(y.max())}]; they must lie in "
            f"[0, {num_classes}) (the model has {num_classes} outputs)."
        )
    s, d = engine.split_fn(op)
    (m, w), ok = _moments_jit(s, d, num_classes)
    if not bool(np.all(np.asarray(ok))):
        raise FloatingPointError(
            f"{_validate.where()}: non-finite logit gradients (per-example Jacobians) at these params."
        )
    rows_all, delta = _factors_jit(m, w)
    counts = np.bincount(y, minlength=num_classes)
    return op, rows_all, delta, (m, w), counts


def _part_operators(op, rows_all, delta, center):
    rows = _select(rows_all, center)
    like = op.params
    out = {}
    if center:
        out["global"] = ops.as_operator(Partial(lowrank_matvec, rows["global"]), like=like)
    out["class"] = ops.as_operator(Partial(lowrank_matvec, rows["class"]), like=like)
    out["cross"] = ops.as_operator(Partial(lowrank_matvec, rows["cross"]), like=like)
    out["within"] = ops.as_operator(Partial(within_matvec, op, delta), like=like)
    if op.pieces.loss is not None and op.pieces.loss.weight_decay:
        out["penalty"] = ops.as_operator(Partial(penalty_matvec, op), like=like)
    return out


@_validate.public("landscape.hessian.class_operators")
def class_operators(
    loss_fn,
    params: PyTree,
    data: PyTree,
    *,
    center: bool = False,
    model=None,
    output_loss=None,
    batch_size: int | None = None,
) -> dict:
    """The parts of the cross-entropy GGN as operators (see the module docstring for the algebra).

    Returns:
      ``{"class", "cross", "within"}`` (``"global"`` first with ``center=True``; ``"penalty"``
      last when the loss has weight decay) mapped to operators every estimator takes
      (``eigenvalues(ops["within"], k=5, key=key)``), and ``"ggn"``: the GGN's own
      :class:`CurvatureOperator`. The parts' products sum to the GGN's to rounding.

    Cost:
      Building: the per-example Jacobians once, batch by batch (memory ``batch_size x C x P``),
      and ``C^2`` parameter-sized means (memory ``C^2 P``). Products: ``O(C^2 P)`` for the
      low-rank parts, one JVP and one VJP over the data for ``"within"``.
    """
    op, rows_all, delta, _, _ = _build(
        loss_fn,
        params,
        data,
        center=center,
        model=model,
        output_loss=output_loss,
        batch_size=batch_size,
    )
    return {**_part_operators(op, rows_all, delta, center), "ggn": op}


# --------------------------------------------------------------------------------------------
# Ranks and attribution
# --------------------------------------------------------------------------------------------
def _flat_rows(f):
    return f.reshape(f.shape[0], -1)


def _host_grams(rows):
    """The small Grams ``F F^T`` of several factor-row pytrees (a dict of them), formed in
    float64 on the host from the device's factor rows: a float32 Gram would carry rounding of
    ``eps32 * sigma_max^2``, i.e. singular values below ``sqrt(eps32) * sigma_max`` (3e-4 of
    the largest) could not be told from zero, and an algebraically zero one (the centred class
    means') came out above the rank tolerance."""
    out = {}
    for name, tree in rows.items():
        g = None
        for f in jax.tree.leaves(tree):
            f = np.asarray(f, np.float64).reshape(np.shape(f)[0], -1)
            g = f @ f.T if g is None else g + f @ f.T
        out[name] = g
    return out


def _spectrum(g, num_params, dtype):
    """Nonzero spectrum of ``F^T F`` from its small float64 Gram ``g = F F^T`` and its
    numerical rank: singular values of ``F`` above ``sigma_max * 10 * r * eps(dtype)`` (``r``
    rows). The factor rows are computed in ``dtype``, so an algebraically zero singular value
    appears at the rows' rounding, ``~ eps(dtype) * sigma_max`` (measured 5e-8 relative in
    float32); NumPy's ``matrix_rank`` rule, ``max(r, P) * eps``, would cut at 1% of
    ``sigma_max`` for ``P = 85000`` parameters and drop real singular values."""
    del num_params  # the rule depends on the short side only (see above)
    g = np.asarray(g, np.float64)
    vals = np.sort(np.clip(np.linalg.eigvalsh(0.5 * (g + g.T)), 0, None))[::-1]
    sv = np.sqrt(vals)
    tol = (sv[0] if sv.size else 0.0) * 10 * g.shape[0] * float(np.finfo(dtype).eps)
    return vals, int(np.sum(sv > tol)) if sv.size and sv[0] > 0 else 0


def _gram_spectrum(rows, num_params, dtype):
    """:func:`_spectrum` of one part's factor rows."""
    return _spectrum(_host_grams({"part": rows})["part"], num_params, dtype)


@jax.jit
def _lowrank_quads_jit(rows, vectors):
    """``v^T F^T F v = ||F v||^2`` of every low-rank part (a dict of factor rows) for each
    stacked vector, one program."""

    def one(tree):
        parts = [
            jnp.matmul(_flat_rows(v).astype(f.dtype), _flat_rows(f).T, precision=_HI)  # (k, r)
            for f, v in zip(jax.tree.leaves(tree), jax.tree.leaves(vectors))
        ]
        fv = sum(parts[1:], parts[0])
        return jnp.sum(fv * fv, axis=1)

    return {name: one(tree) for name, tree in rows.items()}


@functools.partial(jax.jit, static_argnames=("s",))
def _quad_jit(s, d, vectors):
    """``v^T A v`` for each stacked vector."""
    fn = engine.merge_fn(s, d)

    def one(v):
        return _tree.vdot(v, fn(v))

    return lax.map(one, vectors)


# --------------------------------------------------------------------------------------------
# The analysis
# --------------------------------------------------------------------------------------------
@result
class ClassDecompositionResult(Result):
    """The cross-entropy GGN split into class-mean, cross-class and within-class parts.

    Attributes:
      values: the GGN's top-``k`` eigenvalues (Lanczos on the GGN operator).
      part_values: ``{part: top eigenvalues}`` of every part: exact from the small Grams for the
        low-rank parts (at most ``C`` for ``"class"``, ``C(C-1)`` for ``"cross"``, 1 for
        ``"global"``), Lanczos (:func:`eigenvalues`) for ``"within"``; ``"penalty"`` (weight
        decay ``wd``: its Hessian is ``wd I``) holds ``wd`` ``k`` times.
      attribution: ``{part: (k,) array}``: ``v^T G_part v / v^T G v`` for each top GGN
        eigenvector ``v`` (the parts' quadratic forms over their sum: they add to one).
      class_spectrum, class_spectrum_centred: the exact nonzero spectrum of the class-mean part,
        uncentred (``sum_c w_cc delta_cc delta_cc^T``) and centred by the global mean (the
        between-class covariance), from their ``C x C`` Grams in float64.
      cross_spectrum: the same for the cross-class part (``C(C-1)`` values).
      class_rank, class_rank_centred, cross_rank: numerical ranks (singular values of the factor
        rows, from their float64 Grams, above ``sigma_max * 10 * r * eps(dtype)``, ``r`` the
        rows: the rounding of rows computed in ``dtype``). Algebra: at most ``C``, ``C - 1`` and
        ``C(C-1)``; the class ranks generically equal; the cross rank falls short where the
        network gives a pair of classes almost no probability (their masses vanish).
      bulk_edge: the within-class part's top eigenvalue (the edge of the bulk), plus the
        penalty's (the weight-decay coefficient) when the loss has weight decay.
      num_outliers: how many of the top-``k`` GGN eigenvalues exceed ``bulk_edge``.
      masses: ``(C, C)`` ``w_{c,c'} = (1/N) sum_{i in c} p_{i,c'}``.
      class_counts: examples per class.
      num_classes, k, parts, center, num_hvps (products of the GGN and the within part).
    """

    values: np.ndarray
    part_values: dict
    attribution: dict
    class_spectrum: np.ndarray
    class_spectrum_centred: np.ndarray
    cross_spectrum: np.ndarray
    masses: np.ndarray
    class_counts: np.ndarray
    bulk_edge: np.ndarray
    class_rank: int = static_field(default=0)
    class_rank_centred: int = static_field(default=0)
    cross_rank: int = static_field(default=0)
    num_outliers: int = static_field(default=0)
    num_classes: int = static_field(default=0)
    k: int = static_field(default=0)
    parts: tuple = static_field(default=())
    center: bool = static_field(default=False)
    num_hvps: int = static_field(default=0)
    provenance: dict = static_field(default_factory=dict)

    def __repr__(self):
        att = ", ".join(f"{p}={float(np.mean(self.attribution[p])):.3f}" for p in self.parts)
        return (
            f"ClassDecompositionResult(C={self.num_classes}, k={self.k}, class_rank={self.class_rank} "
            f"(centred {self.class_rank_centred}), num_outliers={self.num_outliers}, mean attribution: {att})"
        )


@_validate.public("landscape.hessian.class_decomposition")
def class_decomposition(
    loss_fn,
    params: PyTree,
    data: PyTree,
    *,
    key,
    k: int | None = None,
    center: bool = False,
    tol: float = 1e-6,
    model=None,
    output_loss=None,
    batch_size: int | None = None,
) -> ClassDecompositionResult:
    """Split the cross-entropy Gauss-Newton matrix into its class-mean, cross-class and
    within-class parts (Papyan 2019, 2020), with their top eigenvalues and the attribution of the
    GGN's top eigenvectors to them.

    ``G = G_class + G_cross + G_within`` exactly (the algebra is in
    :mod:`landscape.hessian._classes`): ``G_class = sum_c w_cc delta_cc delta_cc^T`` from the
    ``C`` class means of the weighted logit gradients ``g_{i,c'} = J_i^T (e_c' - p_i)``,
    ``G_cross`` from the ``C(C-1)`` cross-class means, ``G_within`` the weighted scatter around
    them. Every part is a matrix-free operator (:func:`class_operators`). The GGN's and the
    within part's top eigenvalues come from :func:`~landscape.hessian.eigenvalues` (Lanczos);
    the low-rank parts' exactly from their ``C x C`` / ``C(C-1) x C(C-1)`` Grams (float64). ``G_class`` has rank at most ``C``
    (generically ``C``); centred by the global mean it has rank at most ``C - 1``: both ranks
    are measured from the exact ``C x C`` Grams.

    Args:
      loss_fn, params, data: as :func:`make_hvp` with ``curvature="ggn"``: a
        :class:`landscape.Loss` of kind ``"cross_entropy"`` (or a plain ``loss_fn`` with
        ``model`` and ``output_loss="cross_entropy"``); ``data["y"]`` integer labels in
        ``[0, C)``.
      key: PRNG key (required) for the eigensolvers.
      k: GGN eigenpairs to compute and attribute (default ``C + 5``, capped at the number of
        parameters).
      center: return the class-mean part centred by the global mean (rank ``<= C - 1``) plus a
        rank-one ``"global"`` part, instead of Papyan's uncentred second moment.
      tol: eigenvalue tolerance of :func:`eigenvalues` (relative to each operator's norm).
      model, output_loss, batch_size: operator settings of :func:`make_hvp`.

    Returns:
      :class:`ClassDecompositionResult`.

    Cost:
      The per-example Jacobians once (memory ``batch_size x C x P``; ``C^2 P`` for the means),
      then Lanczos on the GGN and on each part (the low-rank parts' products cost ``O(C^2 P)``,
      the within part's a GGN product), plus ``k`` within-part products for the attribution.

    Raises:
      ValueError: not cross-entropy; labels outside ``[0, C)`` or not one per example; logits
        not ``(batch, C)``; non-finite data or params; mismatched shapes.
      TypeError: non-integer labels; a missing ``key``; non-int ``k``.

    Example:
      >>> dec = landscape.hessian.class_decomposition(loss_fn, trained.params, ds.train, key=key)
      >>> dec.class_rank, dec.num_outliers, dec.attribution["class"]

    References:
      Papyan 2019 (ICML), Papyan 2020 (JMLR); Sagun et al. 2017.
    """
    key = _validate.check_key(key)
    if k is not None:
        k = _validate.check_positive_int(k, name="k")
    tol = _validate.check_finite_scalar(tol, name="tol")
    if tol <= 0:
        raise ValueError(f"{_validate.where()}: tol must be > 0; got {tol}.")
    op, rows_all, delta, (_, wj), counts = _build(
        loss_fn,
        params,
        data,
        center=center,
        model=model,
        output_loss=output_loss,
        batch_size=batch_size,
    )
    w = np.asarray(wj, np.float64)
    num_classes = int(w.shape[0])
    num_params, dtype = op.num_params, np.dtype(op.dtype)
    k = min(num_classes + 5 if k is None else k, num_params)
    parts = _part_operators(op, rows_all, delta, center)
    rows = _select(rows_all, center)
    keys = _tree.split_key(key, len(parts) + 1)
    top = _eigen.eigenvalues(op, k=k, key=keys[0], tol=tol)
    hvps = top.num_hvps
    # explicit low-rank parts: their exact nonzero spectra from the small Grams F F^T (what
    # Lanczos on their operators converges to, without a compiled solve per part); the
    # penalty's exactly (wd I); the within-class part by Lanczos
    grams = _host_grams(rows_all)
    spectra = {name: _spectrum(g, num_params, dtype) for name, g in grams.items()}
    part_values = {}
    for (name, pop), kk in zip(parts.items(), keys[1:]):
        if name in rows:
            vals = spectra["class_centred" if (name == "class" and center) else name][0]
            part_values[name] = vals[: min(k, len(vals))]
        elif name == "penalty":  # the Hessian of 0.5 wd ||params||^2 is wd I: exact, no solve
            part_values[name] = np.full(k, float(op.pieces.loss.weight_decay))
        else:
            e = _eigen.eigenvalues(pop, k=k, key=kk, tol=tol)
            part_values[name] = np.asarray(e.values, np.float64)
            hvps += e.num_hvps
    # the parts' quadratic forms v^T G_part v of the top GGN eigenvectors: ||F v||^2 for the
    # low-rank parts (one program), wd ||v||^2 for the penalty, products for the within part
    lowrank = _lowrank_quads_jit(rows, top.vectors)
    quads = {}
    for name, pop in parts.items():
        if name in rows:
            quads[name] = np.asarray(lowrank[name], np.float64)
        elif name == "penalty":
            sq = sum(
                np.sum(np.asarray(x, np.float64).reshape(k, -1) ** 2, axis=1)
                for x in jax.tree.leaves(top.vectors)
            )
            quads[name] = float(op.pieces.loss.weight_decay) * sq
        else:
            s, d = engine.split_fn(pop.matvec_fn)
            quads[name] = np.asarray(_quad_jit(s, d, top.vectors), np.float64)
            hvps += k
    total = sum(quads.values())
    denom = np.where(total != 0, total, 1.0)
    attribution = {name: q / denom for name, q in quads.items()}
    cls_vals, cls_rank = spectra["class"]
    cent_vals, cent_rank = spectra["class_centred"]
    cross_vals, cross_rank = spectra["cross"]
    edge = float(part_values["within"][0])
    if "penalty" in part_values:  # weight decay lifts every GGN eigenvalue: the bulk's edge too
        edge += float(part_values["penalty"][0])  # (an upper bound: lambda_max(W + P))
    values = np.asarray(top.values, np.float64)
    return ClassDecompositionResult(
        values=values,
        part_values=part_values,
        attribution=attribution,
        class_spectrum=cls_vals,
        class_spectrum_centred=cent_vals,
        cross_spectrum=cross_vals,
        masses=w,
        class_counts=counts,
        bulk_edge=np.float64(edge),
        class_rank=cls_rank,
        class_rank_centred=cent_rank,
        cross_rank=cross_rank,
        num_outliers=int(np.sum(values > edge)),
        num_classes=num_classes,
        k=k,
        parts=tuple(parts),
        center=center,
        num_hvps=int(hvps),
        provenance=_provenance.provenance(
            dtype=dtype,
            seeds=_driver.key_desc(key),
            settings={"k": k, "center": center, "tol": tol, **op.describe()},
        ),
    )
