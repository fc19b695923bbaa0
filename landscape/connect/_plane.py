"""The plane through two endpoints and a bend (Garipov et al. 2018, Figs. 1 and 3)."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from landscape import _provenance, grid
from landscape import store as _store
from landscape import tree as _tree
from landscape import validate as _validate
from landscape._result import Result, result, static_field
from landscape.connect._common import as_loss
from landscape.connect._fit import CurveResult
from landscape.connect._profile import REFINE_POINTS, _grid_ts
from landscape.paths import check_path

PyTree = Any

__all__ = ["PlaneResult", "curve_plane"]


@result
class PlaneResult(grid.SplitValues, Result):
    """Loss and metrics on the plane through ``w_0`` (start), ``w_1`` (bend) and ``w_2``
    (end), with the curve drawn on it.

    Coordinates are Euclidean lengths in parameter space along the orthonormal basis
    ``u = (w_2 - w_0) / |w_2 - w_0|`` and ``v`` (the part of ``w_1 - w_0`` orthogonal to
    ``u``, normalised): the point ``(x, y)`` is ``w_0 + x u + y v``.

    Attributes:
      alphas: ``(nx,)`` x coordinates; betas: ``(ny,)`` y coordinates.
      train: ``{"loss", aux...}``, each ``(nx, ny)`` (``[i, j]`` is ``(alphas[i],
        betas[j])``); test: the same or ``None``.
      points: ``(3, 2)`` coordinates of the start, the bend and the end.
      curve: ``(m, 2)`` the curve's points ``phi(t)`` projected on the plane;
        curve_ts: ``(m,)`` their ``t``; curve_offset: ``(m,)`` their distance from the plane
        (zero for a quadratic Bezier curve or a one-bend chain, which lie in the plane).
      kind, bn, settings, provenance: the curve's kind, the batch-norm policy, the settings.

    ``landscape.plot.plot_contour(plane)`` draws it; ``landscape.plot.plot_curve_plane``
    adds the three points and the curve.
    """

    alphas: Any
    betas: Any
    train: dict
    test: dict | None
    points: Any
    curve: Any
    curve_ts: Any
    curve_offset: Any
    kind: str = static_field(default="bezier")
    bn: str = static_field(default="fixed")
    settings: dict = static_field(default_factory=dict)
    provenance: dict = static_field(default_factory=dict)

    def __repr__(self):
        z = self.values()
        return (
            f"PlaneResult({self.kind}, grid {len(self.alphas)}x{len(self.betas)}, bn={self.bn}, "
            f"train loss min {np.nanmin(z):.4g} max {np.nanmax(z):.4g}, "
            f"test={'yes' if self.test is not None else 'no'})"
        )


@functools.partial(jax.jit)
def _project(path, w0, u, v, ts):
    def one(t):
        d = _tree.sub(path(t), w0)
        x, y = _tree.vdot(d, u), _tree.vdot(d, v)
        r = _tree.sub(d, _tree.add(_tree.scale(x, u), _tree.scale(y, v)))
        return jnp.stack([x, y, _tree.norm(r)])

    return jax.lax.map(one, ts)


@_validate.public("landscape.connect.curve_plane")
def curve_plane(
    loss_fn,
    curve,
    data,
    *,
    through: PyTree | None = None,
    num_points: int | tuple[int, int] = 21,
    margin: float = 0.2,
    test_data=None,
    curve_ts=None,
    num_curve_ts: int | None = None,
    bn: str = "auto",
    bn_data=None,
    bn_states=None,
    settings: grid.GridSettings | None = None,
    store=None,
) -> PlaneResult:
    """Loss on the plane through a curve's endpoints and its bend, with the curve on it.

    The plane is spanned by ``w_0`` (start), ``w_2`` (end) and a third point ``w_1``: the bend
    of a one-bend curve, the curve's midpoint ``phi(0.5)`` when it has several bends, or any
    point you pass as ``through`` (e.g. a third trained network). The grid covers the three
    points with ``margin`` (a fraction of the plane's extent) on every side, Garipov et al.'s
    21 x 21 grid with 0.2 margins by default, and is evaluated by the grid evaluator
    (:mod:`landscape.grid`: the affine family ``w_0 + x u + y v``, exact over the data, with the
    same batch-norm policies as :func:`profile`).

    Args:
      loss_fn: ``loss_fn(params, batch)`` (a :class:`landscape.Loss` reports the error too; a
        :class:`landscape.Model` means ``make_loss_fn(model)``).
      curve: a :class:`landscape.paths.Path` (or :class:`CurveResult`); a linear path needs
        ``through``.
      data: training data.
      through: the third point (default: the bend, or ``phi(0.5)``).
      num_points: grid points per axis (an int or ``(nx, ny)``).
      margin: extra extent on each side, as a fraction of the plane's width and height.
      test_data: also evaluated on the grid.
      curve_ts, num_curve_ts: the values of ``t`` at which the curve is projected on the plane,
        or how many equally spaced (default 61).
      bn, bn_data, bn_states, settings, store: as :func:`profile` (default chunk size 32; with
        ``bn="interpolate"``, the weight of B's statistics at ``(x, y)`` is ``x / |w_2 - w_0|``).

    Returns:
      :class:`PlaneResult`.

    Raises:
      TypeError, ValueError: bad inputs; a third point on the line through the endpoints.
      FloatingPointError: a non-finite value on the grid (named).

    Cost: ``nx * ny`` points times the data passes of :func:`profile`.

    References:
      Garipov et al. 2018 (``plane.py``, Figs. 1, 3).
    """
    loss_fn = as_loss(loss_fn, name="loss_fn")
    if isinstance(curve, CurveResult):
        curve = curve.path
    curve = check_path(curve, name="curve")
    if isinstance(num_points, (int, np.integer)) and not isinstance(num_points, bool):
        nx = ny = _validate.check_positive_int(num_points, name="num_points")
    else:
        try:
            nx, ny = (int(r) for r in num_points)
        except (TypeError, ValueError) as e:
            raise TypeError(
                f"{_validate.where()}: num_points must be an int or (nx, ny); got {num_points!r}."
            ) from e
    if nx < 2 or ny < 2:
        raise ValueError(f"{_validate.where()}: num_points must be >= 2 per axis; got {(nx, ny)}.")
    margin = _validate.check_finite_scalar(margin, name="margin")
    if margin < 0:
        raise ValueError(f"{_validate.where()}: margin must be >= 0; got {margin}.")
    cts = _grid_ts(curve_ts, num_curve_ts, names=("curve_ts", "num_curve_ts"))
    w0, w2 = curve.start, curve.end
    if through is not None:
        _validate.check_params(through, name="through")
        _validate.check_same_structure(through, w0, name="through", ref_name="the curve's points",
                                       check_dtypes=True)
        w1 = jax.tree.map(jnp.asarray, through)
        third = "through"
    elif curve.num_bends == 1:
        w1, third = _tree.index(curve.controls, 1), "bend"
    elif curve.num_bends > 1:
        w1, third = curve(0.5), "midpoint"
    else:
        raise ValueError(f"{_validate.where()}: a linear path spans no plane; pass through=<a third point>.")
    e = _tree.sub(w2, w0)
    length = float(_tree.norm(e))
    if length == 0.0:
        raise ValueError(f"{_validate.where()}: the curve's endpoints coincide; no plane is defined.")
    u = _tree.scale(1.0 / length, e)
    d1 = _tree.sub(w1, w0)
    xb = float(_tree.vdot(d1, u))
    r = _tree.sub(d1, _tree.scale(xb, u))
    height = float(_tree.norm(r))
    if height <= 1e-7 * max(length, float(_tree.norm(d1))):
        raise ValueError(
            f"{_validate.where()}: the third point ({third}) lies on the line through the endpoints, so the "
            "three points span no plane."
        )
    v = _tree.scale(1.0 / height, r)

    x_lo, x_hi = min(0.0, xb), max(length, xb)
    w = x_hi - x_lo
    xs = np.linspace(x_lo - margin * w, x_hi + margin * w, nx)
    ys = np.linspace(-margin * height, (1 + margin) * height, ny)
    dt = _tree.dtype_of(w0)
    coords = np.stack(np.meshgrid(xs, ys, indexing="ij"), axis=-1).reshape(-1, 2).astype(dt)
    family = grid.Affine(w0, (u, v), jnp.asarray(length, dt))
    plan = grid.prepare(
        loss_fn, family, data, test_data=test_data, bn=bn, bn_data=bn_data, bn_states=bn_states,
        settings=settings, default_chunk=4 * REFINE_POINTS, fit_chunk=False, desc="curve_plane",
    )
    policy = plan.settings["bn"]
    meta = {"job": _validate.where(), "xs": xs.tolist(), "ys": ys.tolist(),
            "path_hash": _provenance.data_hash(curve.controls), "third": third}
    store = _store.as_store(store, meta)
    values = plan.evaluate(coords, store=store, job=meta)
    bad = values.first_nonfinite()
    if bad is not None:
        i, split, k = bad
        vals = (values.train if split == "train" else values.test)[k]
        raise FloatingPointError(
            f"{_validate.where()}: non-finite {split} {k!r} at {int((~np.isfinite(vals)).sum())} "
            f"of {vals.size} grid points (first at x={xs[i // ny]:.4g}, y={ys[i % ny]:.4g}); "
            "reduce margin."
        )
    train = {k: np.asarray(val).reshape(nx, ny) for k, val in values.train.items()}
    test = None
    if values.test is not None:
        test = {k: np.asarray(val).reshape(nx, ny) for k, val in values.test.items()}
    proj = np.asarray(_project(curve, w0, u, v, jnp.asarray(cts, dt)), np.float64)
    points = np.array([[0.0, 0.0], [xb, height], [length, 0.0]])
    settings_out = {
        "num_points": [nx, ny], "margin": margin, "third": third, "bn": policy,
        "length": length, "height": height, "batch_size": plan.settings["batch_size"],
        "chunk_size": plan.chunk_for(coords.shape[0]), "path_hash": meta["path_hash"],
    }
    prov = _provenance.provenance(
        dtype=dt, data=_provenance.data_hash({"train": data, "test": test_data}),
        settings=settings_out,
    )
    res = PlaneResult(
        alphas=xs, betas=ys, train=train, test=test, points=points, curve=proj[:, :2],
        curve_ts=cts, curve_offset=proj[:, 2], kind=curve.kind, bn=policy,
        settings=settings_out, provenance=prov,
    )
    if store is not None:
        store.save("result", res)
    return res
