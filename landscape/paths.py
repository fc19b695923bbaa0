"""Paths between two parameter points: the straight line, Bezier curves and polygonal chains.

A foundation module beside :mod:`landscape.grid`: the surface analysis interpolates along a
linear path, the connectivity analysis profiles and trains curves, both through the same grid
evaluator.

A path is a pytree: its control points are ONE pytree shaped like the parameters with a
leading axis of length ``K`` (start, bends..., end), and its kind is static. ``path(t)`` builds
the parameters at ``t`` inside any compiled program, so a path is a family of points for
:func:`landscape.grid.evaluate` (its control points travel as dynamic arguments; the kind is
part of the compilation key).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from landscape import tree as _tree
from landscape import validate as _validate

PyTree = Any

PATH_KINDS = ("linear", "bezier", "polychain")

__all__ = [
    "PATH_KINDS",
    "Path",
    "as_bends",
    "bezier",
    "check_path",
    "linear_path",
    "path_distances",
    "polychain",
]


@functools.partial(jax.jit, static_argnames=("kind", "num_controls", "dtype"))
def _basis(kind: str, num_controls: int, t, dtype):
    """Weights of the ``num_controls`` control points at ``t`` (traceable; shape ``(K,)``)."""
    t = jnp.asarray(t, dtype)
    k = jnp.arange(num_controls, dtype=dtype)
    n = num_controls - 1
    if kind == "polychain":
        # hat functions max(0, 1 - |t n - k|): the segment between consecutive controls
        return jnp.maximum(0.0, 1.0 - jnp.abs(t * n - k)).astype(dtype)
    # Bernstein polynomials C(n, k) t^k (1 - t)^(n - k); "linear" is the degree-1 case.
    # jnp.power(0., 0.) == 1, so w(0) = e_0 and w(1) = e_K exactly: the ends are reproduced bit
    # for bit.
    binom = jnp.asarray([math.comb(n, i) for i in range(num_controls)], dtype)
    return binom * jnp.power(t, k) * jnp.power(1.0 - t, n - k)


@dataclasses.dataclass(frozen=True)
class Path:
    """A path ``phi(t)``, ``t in [0, 1]``, between two parameter points.

    Attributes:
      controls: the control points as one pytree shaped like the parameters with a leading
        axis ``K``: ``controls[0]`` is the start, ``controls[-1]`` the end, the rest the bends.
      kind: ``"linear"`` (``K = 2``), ``"bezier"`` (Bernstein basis of degree ``K - 1``;
        Garipov et al. 2018) or ``"polychain"`` (straight segments through the bends at
        ``t = k / (K - 1)``).

    A path is a pytree (``controls`` dynamic, ``kind`` static): pass it to ``jax.jit`` or to
    :func:`landscape.grid.evaluate` as the family of points (``path(t)`` builds the point inside
    the compiled program).

    Example:
      >>> path = landscape.paths.bezier(params_a, bend, params_b)
      >>> mid = path(0.5)                         # parameters at t = 0.5
      >>> vals = landscape.grid.evaluate(loss_fn, path, np.linspace(0, 1, 61)[:, None], data)
    """

    controls: PyTree
    kind: str = dataclasses.field(default="bezier", metadata=dict(static=True))

    # ---- evaluation ------------------------------------------------------------------------
    def weights(self, t) -> jax.Array:
        """Weights of the control points at ``t`` (shape ``(K,)``, sums to 1)."""
        return _basis(self.kind, self.num_controls, t, _tree.dtype_of(self.controls))

    def __call__(self, t) -> PyTree:
        """The parameters at ``t`` (a scalar; traceable). Cost: one weighted sum of ``K``
        parameter vectors (for a linear path the elementwise ``(1 - t) a + t b``, exact at both
        ends, in the leaves' dtypes)."""
        if self.kind == "linear":

            def lerp(x):
                tt = jnp.asarray(t).astype(x.dtype)
                return (1 - tt) * x[0] + tt * x[1]

            return jax.tree.map(lerp, self.controls)
        return _tree.lincomb(self.weights(t), self.controls)

    def points(self, ts) -> PyTree:
        """The parameters at every ``t`` of ``ts`` stacked on a leading axis (small models and
        few ``t`` only: this materialises ``len(ts)`` parameter copies)."""
        return jax.vmap(self.__call__)(jnp.asarray(ts))

    # ---- structure -------------------------------------------------------------------------
    @property
    def num_controls(self) -> int:
        return int(jax.tree.leaves(self.controls)[0].shape[0])

    @property
    def num_bends(self) -> int:
        return self.num_controls - 2

    @property
    def start(self) -> PyTree:
        return _tree.index(self.controls, 0)

    @property
    def end(self) -> PyTree:
        return _tree.index(self.controls, -1)

    @property
    def bends(self) -> PyTree:
        """The bends with a leading axis ``K - 2`` (empty for a linear path)."""
        return jax.tree.map(lambda x: x[1:-1], self.controls)

    def replace(self, **changes) -> Path:
        return dataclasses.replace(self, **changes)

    def with_bends(self, bends: PyTree) -> Path:
        """The same path with new bends (leading axis ``K - 2``); the ends are kept. A linear
        path has no bends (use :func:`polychain` for a piecewise-linear path through bends)."""
        nb = {np.shape(x)[0] for x in jax.tree.leaves(bends)}
        if self.kind == "linear" and nb - {0}:
            raise ValueError(
                "landscape.paths.Path.with_bends: a linear path has no bends (exactly two control "
                f"points); got {nb.pop()} bends. Use landscape.paths.polychain for a piecewise-linear "
                "path through them."
            )
        controls = jax.tree.map(
            lambda c, b: jnp.concatenate([c[:1], jnp.asarray(b, c.dtype), c[-1:]], axis=0),
            self.controls,
            bends,
        )
        return Path(controls, self.kind)

    def __repr__(self):
        return (
            f"Path({self.kind}, num_bends={self.num_bends}, "
            f"num_params={_tree.size(self.start)})"
        )

    # ---- a family of points for landscape.grid (coordinates ``c = (t,)``) ------------------
    def point(self, c) -> PyTree:
        """The parameters at coordinate ``c = (t,)`` (traceable)."""
        return self(c[0])

    def alpha(self, c):
        """The weight of the end point's batch-norm statistics at ``c`` (``t``)."""
        return c[0]

    def basis(self) -> list[PyTree]:
        """The control points; ``point(c) = sum_k basis_weights(c)[k] basis()[k]``."""
        return _tree.unstack(self.controls)

    def basis_weights(self, c) -> jax.Array:
        return self.weights(c[0])

    @property
    def origin(self) -> PyTree:
        """A representative point (the start), for checks and dtypes."""
        return self.start

    def describe(self) -> dict:
        """Static description for stores and provenance (the arrays are hashed separately)."""
        return {"family": "path", "kind": self.kind, "num_bends": self.num_bends}


jax.tree_util.register_dataclass(Path, data_fields=["controls"], meta_fields=["kind"])


# --------------------------------------------------------------------------------------------
# Constructors
# --------------------------------------------------------------------------------------------
def _check_point(p, ref, *, name: str) -> None:
    _validate.check_params(p, name=name)
    _validate.check_same_structure(
        p, ref, name=name, ref_name="params_a", check_shapes=True, check_dtypes=True
    )


@_validate.public("landscape.paths.as_bends")
def as_bends(bend, ref, *, name: str) -> list[PyTree]:
    """One bend (shaped like ``ref``) or several stacked on a leading axis."""
    _validate.check_params(bend, name=name)
    s1, s2 = jax.tree.structure(bend), jax.tree.structure(ref)
    if s1 != s2:
        raise ValueError(
            f"{_validate.where()}: {name} must have the same tree structure as params_a; got "
            f"{_validate.describe(bend)}, expected {_validate.describe(ref)}."
        )
    leaves, refs = jax.tree.leaves(bend), jax.tree.leaves(ref)
    paths = _tree.leaf_paths(ref)
    if all(np.shape(b) == np.shape(r) for b, r in zip(leaves, refs)):
        _check_point(bend, ref, name=name)
        return [bend]
    ks = {np.shape(b)[0] if np.ndim(b) == np.ndim(r) + 1 else None for b, r in zip(leaves, refs)}
    for path, b, r in zip(paths, leaves, refs):
        if np.shape(b)[1:] != np.shape(r) or np.ndim(b) != np.ndim(r) + 1 or len(ks) != 1:
            raise ValueError(
                f"{_validate.where()}: {name} must be shaped like params_a (one bend) or stacked on a leading "
                f"axis (several bends); leaf '{path}' has shape {np.shape(b)}, params_a's has "
                f"{np.shape(r)}."
            )
        if jnp.result_type(b) != jnp.result_type(r):
            raise TypeError(
                f"{_validate.where()}: {name} leaf '{path}' has dtype {jnp.result_type(b)}, expected "
                f"{jnp.result_type(r)} (params_a's)."
            )
    return _tree.unstack(bend)


def _make(kind: str, params_a, middle, params_b) -> Path:
    _validate.check_params(params_a, name="params_a")
    _check_point(params_b, params_a, name="params_b")
    bends: list[PyTree] = []
    for i, m in enumerate(middle):
        bends.extend(as_bends(m, params_a, name=f"bend {i}"))
    points = [params_a, *bends, params_b]
    controls = _tree.stack(points)  # one compiled program for the whole tree
    return Path(controls, kind)


@_validate.public("landscape.paths.linear_path")
def linear_path(params_a: PyTree, params_b: PyTree) -> Path:
    """The straight line ``phi(t) = (1 - t) a + t b``.

    Args:
      params_a, params_b: the endpoints (same tree structure, shapes and dtypes).

    Returns:
      A :class:`Path` of kind ``"linear"`` with two control points.

    Raises:
      ValueError, TypeError: the endpoints differ in structure, shape or dtype, or are not
        finite.

    References:
      Goodfellow et al. 2015, "Qualitatively characterizing neural network optimization
      problems"; Frankle et al. 2020, "Linear mode connectivity and the lottery ticket
      hypothesis".
    """
    return _make("linear", params_a, (), params_b)


@_validate.public("landscape.paths.bezier")
def bezier(params_a: PyTree, *points: PyTree) -> Path:
    """A Bezier curve ``bezier(params_a, bend, params_b)`` (quadratic), or with more bends.

    ``phi(t) = sum_k C(n, k) t^k (1 - t)^(n - k) w_k`` with ``w_0 = a``, ``w_n = b`` and the
    bends in between; with one bend ``theta``: ``(1 - t)^2 a + 2 t (1 - t) theta + t^2 b``.

    Args:
      params_a: the start.
      *points: the bends then the end: ``bezier(a, bend, b)``, ``bezier(a, bend1, bend2, b)``,
        or ``bezier(a, bends, b)`` with the bends stacked on a leading axis.

    Returns:
      A :class:`Path` of kind ``"bezier"``.

    Raises:
      ValueError, TypeError: the end is missing, or a point differs from ``params_a`` in
        structure, shape or dtype, or is not finite.

    References:
      Garipov et al. 2018, "Loss surfaces, mode connectivity, and fast ensembling of DNNs".
    """
    if not points:
        raise TypeError(f"{_validate.where()}: give the end point: bezier(params_a, bend, params_b).")
    return _make("bezier", params_a, points[:-1], points[-1])


@_validate.public("landscape.paths.polychain")
def polychain(params_a: PyTree, *points: PyTree) -> Path:
    """A polygonal chain ``a -> bend_1 -> ... -> b`` (Garipov et al.'s PolyChain).

    With ``K`` control points the bend ``k`` sits at ``t = k / (K - 1)``:
    ``phi(t) = sum_k max(0, 1 - |t (K - 1) - k|) w_k``.

    Args:
      params_a: the start.
      *points: the bends then the end (``polychain(a, bend, b)``; several bends as separate
        arguments or stacked on a leading axis).

    Returns:
      A :class:`Path` of kind ``"polychain"``.

    Raises:
      ValueError, TypeError: as :func:`bezier`.

    References:
      Garipov et al. 2018; Draxler et al. 2018, "Essentially no barriers in neural network
      energy landscape".
    """
    if not points:
        raise TypeError(f"{_validate.where()}: give the end point: polychain(params_a, bend, params_b).")
    return _make("polychain", params_a, points[:-1], points[-1])


@_validate.public("landscape.paths.check_path")
def check_path(path, *, name: str = "path") -> Path:
    """Validate a :class:`Path` at a public boundary."""
    if not isinstance(path, Path):
        raise TypeError(
            f"{_validate.where()}: {name} must be a landscape.paths.Path (from linear_path, bezier, polychain "
            f"or fit_curve(...).path); got {type(path).__name__}."
        )
    _validate.check_choice(path.kind, PATH_KINDS, name=f"{name}.kind")
    leaves = jax.tree.leaves(path.controls)
    if not leaves:
        raise ValueError(f"{_validate.where()}: {name} has no control points.")
    ks = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
    if len(ks) != 1 or None in ks or ks.pop() < 2:
        raise ValueError(
            f"{_validate.where()}: {name}.controls must have one leading axis of length >= 2 on every leaf; "
            f"got {_validate.describe(path.controls)}."
        )
    k = int(np.shape(leaves[0])[0])
    if path.kind == "linear" and k != 2:
        raise ValueError(
            f"{_validate.where()}: {name} is linear, so it has exactly two control points (its "
            f"ends); got {k}. Use landscape.paths.polychain for a piecewise-linear path through "
            "bends."
        )
    _validate.check_finite(path.controls, name=f"{name}.controls")
    return path


@jax.jit
def _difference_gram(controls):
    """``G[i, j] = <c_{i+1} - c_0, c_{j+1} - c_0>`` over all leaves (float32 leaves: HIGHEST
    precision products)."""
    g = None
    for x in jax.tree.leaves(controls):
        d = (x[1:] - x[:1]).reshape(x.shape[0] - 1, -1)
        gi = jnp.matmul(d, d.T, precision=jax.lax.Precision.HIGHEST)
        g = gi if g is None else g + gi
    return g


def path_distances(path: Path, ts) -> np.ndarray:
    """Cumulative Euclidean length of the polygon through ``path(ts)``.

    ``phi(t) - phi(s) = sum_k (w_k(t) - w_k(s)) (c_k - c_0)`` (the weights sum to one), so every
    segment length follows from the small Gram matrix of the control points' differences:
    ``K^2`` inner products once, then host arithmetic in float64 for any number of points.
    """
    ts = np.asarray(ts, np.float64)
    if ts.size < 2:
        return np.zeros_like(ts)
    G = np.asarray(_difference_gram(path.controls), np.float64)
    ts_dev = _tree.to_device(np.asarray(ts, _tree.dtype_of(path.controls)))
    W = np.asarray(jax.vmap(path.weights)(ts_dev), np.float64)
    dW = np.diff(W[:, 1:], axis=0)
    seg = np.sqrt(np.maximum(np.einsum("ni,ij,nj->n", dW, G, dW), 0.0))
    return np.concatenate([[0.0], np.cumsum(seg)])
