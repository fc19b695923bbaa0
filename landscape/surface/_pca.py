"""Principal directions of a training trajectory (Li et al. 2018, section 7).

The snapshots ``theta_i`` (``i = 1..k``) are taken relative to the final point:
``m_i = theta_i - theta_final``. With ``center=True`` (Li et al., who call scikit-learn's PCA,
and scikit-learn itself) the rows are centred, ``m_i - mean_j m_j``; with ``center=False`` they
are not. Everything is computed from the k x k Gram matrix ``G = M M^T`` (accumulated leaf by
leaf, one leaf's differences in memory at a time): its eigenvectors ``u_j`` give the principal
directions ``v_j = M_c^T u_j / sqrt(lambda_j)`` (unit norm) without ever forming a P x P
matrix. The path is projected as Li et al. do: coordinates ``<theta_i - theta_final, v_j>``,
so the final point is the origin of the slice through ``theta_final`` along ``v_1, v_2``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from landscape import _provenance
from landscape import tree as _tree
from landscape import validate as _validate
from landscape._result import Result, result, static_field
from landscape.surface._directions import Direction

PyTree = Any

__all__ = ["PCAResult", "pca_directions"]

_HIGHEST = jax.lax.Precision.HIGHEST


@result
class PCAResult(Result):
    """Principal directions of a trajectory.

    Attributes:
      vectors: params-shaped pytree with a leading axis ``num``: the unit-norm principal
        directions, in decreasing order of variance.
      explained_variance: ``lambda_j / (k - 1)`` (centred, scikit-learn's convention) or
        ``lambda_j / k`` (uncentred), for the ``num`` components.
      explained_variance_ratio: ``lambda_j / sum(all lambda)``: the fraction of the
        trajectory's (centred) variance along each direction.
      singular_values: ``sqrt(lambda_j)``.
      coords: ``(k, num)``: the projected path, ``<theta_i - theta_final, v_j>``.
      steps: ``(k,)`` training steps of the snapshots (``-1`` when unknown).
      center: whether the rows were centred.
      provenance: what produced it.
    """

    vectors: PyTree
    explained_variance: np.ndarray
    explained_variance_ratio: np.ndarray
    singular_values: np.ndarray
    coords: np.ndarray
    steps: np.ndarray
    center: bool = static_field(default=True)
    bias_bn: str = static_field(default="keep")
    provenance: dict = static_field(default_factory=dict)

    @property
    def num_components(self) -> int:
        return int(np.shape(self.explained_variance)[0])

    def direction(self, i: int) -> Direction:
        """Component ``i`` as a :class:`Direction` (spec ``kind="pca"``)."""
        spec = {
            "kind": "pca",
            "component": int(i),
            "center": bool(self.center),
            "bias_bn": self.bias_bn,
            "explained_variance_ratio": float(np.asarray(self.explained_variance_ratio)[i]),
        }
        return Direction(_tree.index(self.vectors, i), spec)

    def as_directions(self) -> tuple[Direction, ...]:
        """All components as :class:`Direction` objects (pass the first two to ``slice_2d``)."""
        return tuple(self.direction(i) for i in range(self.num_components))


def _stack_trajectory(trajectory, final):
    steps = None
    if (
        isinstance(trajectory, Mapping)
        and "params" in trajectory
        and set(trajectory) <= {"params", "step"}
    ):
        steps = trajectory.get("step")
        trajectory = trajectory["params"]
    if isinstance(trajectory, Sequence) and not isinstance(trajectory, (str, bytes)):
        if len(trajectory) == 0:
            raise ValueError(f"{_validate.where()}: trajectory is empty; pass at least 2 snapshots.")
        for i, t in enumerate(trajectory):
            _validate.check_same_structure(
                t, final, name=f"trajectory[{i}]", ref_name="final"
            )
        trajectory = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trajectory)
    else:
        s1, s2 = jax.tree.structure(trajectory), jax.tree.structure(final)
        if s1 != s2:
            raise ValueError(
                f"{_validate.where()}: trajectory must be a list of params-shaped pytrees, or one pytree with a "
                f"leading snapshot axis, or TrainResult.snapshots; got structure "
                f"{_validate.describe(trajectory)}, expected leaves shaped like "
                f"{_validate.describe(final)}."
            )
        ks = set()
        for path, t, f in zip(
            _tree.leaf_paths(final), jax.tree.leaves(trajectory), jax.tree.leaves(final)
        ):
            if np.ndim(t) != np.ndim(f) + 1 or np.shape(t)[1:] != np.shape(f):
                raise ValueError(
                    f"{_validate.where()}: trajectory leaf '{path}' has shape {np.shape(t)}, expected "
                    f"(num_snapshots, *{np.shape(f)})."
                )
            ks.add(np.shape(t)[0])
        if len(ks) != 1:
            raise ValueError(
                f"{_validate.where()}: trajectory leaves disagree on the number of snapshots: {sorted(ks)}."
            )
    k = jax.tree.leaves(trajectory)[0].shape[0]
    return trajectory, k, steps


@_validate.public("landscape.surface.pca_directions")
def pca_directions(
    trajectory,
    final: PyTree,
    *,
    center: bool = True,
    num_components: int = 2,
    bias_bn: str = "keep",
) -> PCAResult:
    """Top principal directions of a training trajectory, relative to the final point.

    Args:
      trajectory: the snapshots: ``TrainResult.snapshots`` (``{"step", "params"}``), a
        params-shaped pytree with a leading snapshot axis, or a list of params pytrees.
      final: the final parameters (the centre of the plot).
      center: centre the rows as Li et al. and scikit-learn do (default), or not.
      num_components: number of components (at most the rank of the trajectory matrix).
      bias_bn: ``"keep"`` (default, as Li et al.'s default) or ``"zero"`` (their
        ``--ignore biasbn``: 1-D leaves do not take part and the directions are zero there).

    Returns:
      A :class:`PCAResult` (directions, explained variance and ratio, projected path).

    Raises:
      ValueError: fewer than 2 snapshots, mismatched structures or shapes, non-finite
        snapshots, ``num_components`` larger than the number of non-zero components.

    Cost: memory ``k^2`` for the Gram matrix plus one leaf of differences at a time (never
    ``P^2``); time ``O(k^2 P)`` for the Gram matrix and ``O(k P)`` per component.

    References:
      Li et al. (2018), Visualizing the Loss Landscape of Neural Nets, section 7.
    """
    _validate.check_params(final, name="final")
    num = _validate.check_positive_int(num_components, name="num_components")
    _validate.check_choice(bias_bn, ("keep", "zero"), name="bias_bn")
    if not isinstance(center, bool):
        raise TypeError(f"{_validate.where()}: center must be a bool; got {center!r}.")
    traj, k, steps = _stack_trajectory(trajectory, final)
    _validate.check_finite(traj, name="trajectory")
    if k < 2:
        raise ValueError(f"{_validate.where()}: trajectory needs at least 2 snapshots; got {k}.")
    t_leaves = jax.tree.leaves(traj)
    f_leaves, treedef = jax.tree.flatten(final)
    active = [not (bias_bn == "zero" and np.ndim(f) <= 1) for f in f_leaves]
    dtype = _tree.dtype_of(final)

    def diffs(t, f):
        f = jnp.asarray(f)
        return (jnp.asarray(t).astype(f.dtype) - f[None]).reshape(t.shape[0], -1)

    gram = np.zeros((k, k))
    for t, f, a in zip(t_leaves, f_leaves, active):
        if a:
            m = diffs(t, f)
            gram += np.asarray(jnp.matmul(m, m.T, precision=_HIGHEST), dtype=np.float64)
    if center:
        c = np.eye(k) - np.full((k, k), 1.0 / k)
        gram_c = c @ gram @ c
    else:
        gram_c = gram
    lam, u = np.linalg.eigh((gram_c + gram_c.T) / 2)
    order = np.argsort(lam)[::-1]
    lam, u = np.clip(lam[order], 0.0, None), u[:, order]
    total = float(lam.sum())
    tol = max(k, 1) * np.finfo(np.dtype(dtype)).eps * (lam[0] if lam.size else 0.0)
    rank = int(np.sum(lam > tol))
    if num > rank:
        raise ValueError(
            f"{_validate.where()}: num_components={num} but the trajectory spans only {rank} "
            f"non-zero principal direction(s) ({k} snapshots{', centred' if center else ''}); use "
            f"num_components <= {rank}."
        )
    lam, u = lam[:num], u[:, :num]
    sv = np.sqrt(lam)
    coeff = u / sv  # v_j = M_c^T u_j / s_j; and M_c^T u = M^T (u - mean(u)) when centred
    if center:
        coeff = coeff - coeff.mean(axis=0, keepdims=True)
    vec_leaves = []
    for t, f, a in zip(t_leaves, f_leaves, active):
        if a:
            m = diffs(t, f)
            v = jnp.matmul(jnp.asarray(coeff.T, m.dtype), m, precision=_HIGHEST)
            vec_leaves.append(v.reshape((num,) + np.shape(f)))
        else:
            vec_leaves.append(jnp.zeros((num,) + np.shape(f), jnp.result_type(f)))
    # deterministic signs (scikit-learn's svd_flip on the components): the entry of largest
    # magnitude of each direction is positive
    best = np.zeros(num)
    best_abs = np.full(num, -1.0)
    for v in vec_leaves:
        flat = np.asarray(v, dtype=np.float64).reshape(num, -1)
        if flat.shape[1] == 0:
            continue
        idx = np.argmax(np.abs(flat), axis=1)
        vals = flat[np.arange(num), idx]
        upd = np.abs(vals) > best_abs
        best[upd], best_abs[upd] = vals[upd], np.abs(vals[upd])
    signs = np.where(best < 0, -1.0, 1.0)
    vec_leaves = [
        v * jnp.asarray(signs, v.dtype).reshape((num,) + (1,) * (v.ndim - 1)) for v in vec_leaves
    ]
    coords = np.zeros((k, num))
    for t, f, v, a in zip(t_leaves, f_leaves, vec_leaves, active):
        if a:
            m = diffs(t, f)
            coords += np.asarray(
                jnp.matmul(m, v.reshape(num, -1).T, precision=_HIGHEST), dtype=np.float64
            )
    vectors = jax.tree.unflatten(treedef, vec_leaves)
    ev = lam / (k - 1) if center else lam / k
    ratio = lam / total if total > 0 else np.zeros_like(lam)
    steps_arr = (
        np.asarray(steps, dtype=np.int64) if steps is not None else np.full(k, -1, np.int64)
    )
    if steps_arr.shape != (k,):
        raise ValueError(f"{_validate.where()}: snapshot steps have shape {steps_arr.shape}, expected ({k},).")
    prov = _provenance.provenance(
        dtype=dtype,
        settings={
            "function": _validate.where(),
            "center": center,
            "num_components": num,
            "bias_bn": bias_bn,
            "num_snapshots": int(k),
        },
    )
    return PCAResult(
        vectors=vectors,
        explained_variance=ev,
        explained_variance_ratio=ratio,
        singular_values=sv,
        coords=coords,
        steps=steps_arr,
        center=center,
        bias_bn=bias_bn,
        provenance=prov,
    )
