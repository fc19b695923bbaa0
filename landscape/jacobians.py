"""Per-example Jacobians of a network's outputs and their Gram matrices.

For ``f(params, x) -> (n, O)`` outputs (or ``(n,)``: one output), the per-example Jacobian
``J_i = d f(params, x_i) / d params`` is an ``O x P`` matrix per example, kept in the
parameters' pytree shape: leaves ``(n, O, *leaf)``. Its Gram matrix ``J(x1) J(x2)^T`` is the
empirical neural tangent kernel (Jacot et al. 2018); the same Jacobians give the generalised
Gauss-Newton matrix ``J^T H J`` of a loss with output Hessian ``H`` (Schraudolph 2002;
Martens 2020) and per-example gradients.

Every function is traceable (use it inside ``jax.jit``). Each Gram is reduced to matrix
products over ONE contiguous axis per parameter leaf (``(n1, K) @ (n2, K)^T``: XLA's CPU dot
with several or non-contiguous contracting axes is several times slower), at
``Precision.HIGHEST``; :func:`per_example` traces ``f`` at
:data:`landscape.engine.ANALYSIS_PRECISION`.

Costs, for ``n`` examples, ``O`` outputs, ``P`` parameters and ``FP`` the flops of one
example's forward pass: :func:`per_example` ``~3 n O FP`` (one reverse pass per output and
example, vectorised), memory ``n O P``; :func:`gram` ``2 n1 n2 O P`` flops averaged over
outputs (``2 n1 n2 O^2 P`` per output pair). Novak et al. (2022) compare this "Jacobian
contraction" with NTK-vector products and structured products.

References:
  Jacot, Gabriel, Hongler (2018), Neural Tangent Kernel. Novak, Sohl-Dickstein, Schoenholz
  (2022), Fast finite width neural tangent kernel. Martens (2020), New insights and
  perspectives on the natural gradient method.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from landscape import engine
from landscape import validate as _validate

PyTree = Any

__all__ = ["gram", "per_example", "row_gram", "row_gram_per_output"]

_HI = jax.lax.Precision.HIGHEST


def _outputs_2d(out):
    return out[:, None] if out.ndim == 1 else out


@_validate.public
@engine.at_analysis_precision
def per_example(f: Callable, params: PyTree, x) -> PyTree:
    """Per-example Jacobians of ``f(params, x)`` with respect to ``params``.

    Args:
      f: ``f(params, x) -> (n, O)`` or ``(n,)`` outputs; examples must not interact (no
        batch statistics in training mode).
      params: the parameters (pytree of arrays).
      x: inputs ``(n, ...)`` (any pytree of arrays with a leading example axis).

    Returns:
      The parameters' pytree with leaves ``(n, O, *leaf)`` (``O = 1`` for ``(n,)``
      outputs), in the parameters' dtype.

    Raises:
      ValueError: ``f`` returns outputs that are not ``(n,)`` or ``(n, O)``.

    Example:
      >>> j = jacobians.per_example(lambda p, x: model(x, params=p), model.params, x)
      >>> theta = jacobians.gram(j)             # (n, n) empirical NTK (mean over outputs)
    """

    def f1(p, xi):
        out = f(p, jax.tree.map(lambda a: a[None], xi))
        if not hasattr(out, "ndim") or out.ndim not in (1, 2):
            raise ValueError(
                f"{_validate.where()}: f(params, x) must return outputs of shape (n,) or "
                f"(n, num_outputs); got {getattr(out, 'shape', type(out).__name__)} for one "
                "example."
            )
        return _outputs_2d(out)[0]

    return jax.vmap(jax.jacrev(f1), in_axes=(None, 0))(params, x)


def row_gram(a1, a2=None):
    """``A1 A2^T`` of per-example rows: ``a (n, ...)`` flattened to ``(n, K)``; ``a2=None``
    (or ``a1`` itself): the symmetric Gram ``A1 A1^T``. One matrix product over one contiguous
    axis (``2 n1 n2 K`` flops), at ``Precision.HIGHEST``."""
    f1 = a1.reshape(a1.shape[0], -1)
    f2 = f1 if a2 is None or a2 is a1 else a2.reshape(a2.shape[0], -1)
    return jnp.matmul(f1, f2.T, precision=_HI)


def row_gram_per_output(a1, a2=None):
    """``t[i, j, o, r] = sum_k a1[i, o, k] a2[j, r, k]`` for ``a (n, O, K)``: the Gram per
    pair of outputs, ``(n1, n2, O, O)``, as one matrix product of ``(n1 O, K)`` by ``(n2 O,
    K)^T``. ``a2=None``: ``a2 = a1``."""
    b1, O = a1.shape[:2]
    f1 = a1.reshape(b1 * O, -1)
    if a2 is None or a2 is a1:
        b2, f2 = b1, f1
    else:
        b2, f2 = a2.shape[0], a2.reshape(a2.shape[0] * O, -1)
    t = jnp.matmul(f1, f2.T, precision=_HI)
    return t.reshape(b1, O, b2, O).transpose(0, 2, 1, 3)


@_validate.public
def gram(j1: PyTree, j2: PyTree | None = None, *, trace_outputs: bool = True):
    """Gram matrix ``J1 J2^T`` of per-example Jacobians (from :func:`per_example`), summed
    over the parameter leaves.

    Args:
      j1, j2: Jacobian pytrees with leaves ``(n1, O, *leaf)`` and ``(n2, O, *leaf)`` of the
        same structure; ``j2=None``: ``j2 = j1`` (symmetric: each leaf flattened once).
      trace_outputs: ``True``: the mean over outputs, ``(1/O) sum_o J1[:, o] J2[:, o]^T``,
        ``(n1, n2)`` (neural-tangents' ``trace_axes=(-1,)``); ``False``: every pair of
        outputs, ``(n1, n2, O, O)``.

    Returns:
      The Gram matrix in the Jacobians' dtype.

    Raises:
      ValueError: ``j1`` and ``j2`` have different tree structures.
    """
    sym = j2 is None or j2 is j1
    l1 = jax.tree.leaves(j1)
    if sym:
        l2 = l1
    else:
        if jax.tree.structure(j1) != jax.tree.structure(j2):
            raise ValueError(
                f"{_validate.where()}: j2 must have j1's tree structure; got "
                f"{jax.tree.structure(j2)}, expected {jax.tree.structure(j1)}."
            )
        l2 = jax.tree.leaves(j2)
    out = None
    for a, b in zip(l1, l2):
        a = a.reshape(a.shape[:2] + (-1,))
        b = None if sym else b.reshape(b.shape[:2] + (-1,))
        t = row_gram(a, b) / a.shape[1] if trace_outputs else row_gram_per_output(a, b)
        out = t if out is None else out + t
    return out
