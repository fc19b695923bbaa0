"""The plane through two endpoints and a bend (Garipov et al. 2018, Figs. 1 and 3)."""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from landscape import _provenance, engine
from landscape import tree as _tree
from landscape import validate as _validate
from landscape._result import Result, result, static_field
from landscape.connect._common import as_loss, check_loss, check_ts
from landscape.connect._fit import CurveResult
from landscape.connect._paths import check_path
from landscape.connect._profile import REFINE_POINTS, make_point, prepare_bn

PyTree = Any

__all__ = ["PlaneResult", "curve_plane"]


@result
class PlaneResult(Result):
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
    bn: str = static_field(default="none")
    settings: dict = static_field(default_factory=dict)
    provenance: dict = static_field(default_factory=dict)

    def values(self, metric: str = "loss", split: str = "train") -> np.ndarray:
        """The ``(nx, ny)`` grid of one metric (``split``: ``"train"`` or ``"test"``)."""
        src = {"train": self.train, "test": self.test}.get(split)
        if src is None:
            raise ValueError(f"PlaneResult.values: no {split!r} values.")
        if metric not in src:
            raise ValueError(f"PlaneResult.values: metric must be one of {sorted(src)}; got {metric!r}.")
        return np.asarray(src[metric])

    @property
    def metrics(self) -> list[str]:
        return sorted(self.train)

    def __repr__(self):
        z = self.values()
        return (
            f"PlaneResult({self.kind}, grid {len(self.alphas)}x{len(self.betas)}, bn={self.bn}, "
            f"train loss min {np.nanmin(z):.4g} max {np.nanmax(z):.4g}, "
            f"test={'yes' if self.test is not None else 'no'})"
        )


def _plane_base(c, w0, u, v):
    return jax.tree.map(
        lambda x, a, b: x + c[0].astype(x.dtype) * a + c[1].astype(x.dtype) * b, w0, u, v
    )


def _plane_alpha(c, w0, u, v, length):
    return c[0] / length


def _plane_base_l(c, w0, u, v, length):
    return _plane_base(c, w0, u, v)


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
    resolution: int | tuple[int, int] = 21,
    margin: float = 0.2,
    test_data=None,
    curve_ts=61,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    bn: str = "auto",
    bn_data=None,
    bn_states=None,
    bn_batch_size: int | None = None,
    progress: bool = False,
    checkpoint_dir=None,
) -> PlaneResult:
    """Loss on the plane through a curve's endpoints and its bend, with the curve on it.

    The plane is spanned by ``w_0`` (start), ``w_2`` (end) and a third point ``w_1``: the bend
    of a one-bend curve, the curve's midpoint ``phi(0.5)`` when it has several bends, or any
    point you pass as ``through`` (e.g. a third trained network). The grid covers the three
    points with ``margin`` (a fraction of the plane's extent) on every side, Garipov et al.'s
    21 x 21 grid with 0.2 margins by default, and is evaluated through the engine
    (:func:`landscape.engine.evaluate_points`, exact over the data, with the same batch-norm
    policies as :func:`profile`).

    Args:
      loss_fn: ``loss_fn(params, batch)`` (a :class:`landscape.Loss` reports the error too; a
        :class:`landscape.Model` means ``make_loss_fn(model)``).
      curve: a :class:`Path` (or :class:`CurveResult`); a linear path needs ``through``.
      data: training data.
      through: the third point (default: the bend, or ``phi(0.5)``).
      resolution: grid points per axis (an int or ``(nx, ny)``).
      margin: extra extent on each side, as a fraction of the plane's width and height.
      test_data: also evaluated on the grid.
      curve_ts: values of ``t`` at which the curve is projected on the plane.
      batch_size, chunk_size, bn, bn_data, bn_states, bn_batch_size, progress,
        checkpoint_dir: as :func:`profile` (with ``bn="interpolate"``, the weight of B's
        statistics at ``(x, y)`` is ``x / |w_2 - w_0|``).

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
    if isinstance(resolution, (int, np.integer)) and not isinstance(resolution, bool):
        nx = ny = _validate.check_positive_int(resolution, name="resolution")
    else:
        try:
            nx, ny = (int(r) for r in resolution)
        except (TypeError, ValueError) as e:
            raise TypeError(f"{_validate.where()}: resolution must be an int or (nx, ny); got {resolution!r}.") from e
    if nx < 2 or ny < 2:
        raise ValueError(f"{_validate.where()}: resolution must be >= 2 per axis; got {(nx, ny)}.")
    margin = _validate.check_finite_scalar(margin, name="margin")
    if margin < 0:
        raise ValueError(f"{_validate.where()}: margin must be >= 0; got {margin}.")
    cts = check_ts(curve_ts, name="curve_ts")
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
            f"{_validate.where()}: the third point ({third}) lies on the line through the endpoints, so the three "
            "points span no plane."
        )
    v = _tree.scale(1.0 / height, r)

    x_lo, x_hi = min(0.0, xb), max(length, xb)
    w = x_hi - x_lo
    xs = np.linspace(x_lo - margin * w, x_hi + margin * w, nx)
    ys = np.linspace(-margin * height, (1 + margin) * height, ny)
    dt = _tree.dtype_of(w0)
    coords = np.stack(np.meshgrid(xs, ys, indexing="ij"), axis=-1).reshape(-1, 2).astype(dt)

    ndev = jax.device_count()
    placement = "replicate" if ndev > 1 else "shard"
    train_b = engine.batch(data, batch_size, placement=placement)
    test_b = engine.batch(test_data, batch_size, placement=placement) if test_data is not None else None
    check_loss(loss_fn, w0, train_b)
    if test_b is not None:
        check_loss(loss_fn, w0, test_b, name="test_data")
    policy, bn_batched = prepare_bn(
        bn, loss_fn, w0, data if bn_data is None else bn_data, bn_states=bn_states,
        bn_batch_size=bn_batch_size,
    )
    if chunk_size is None:
        chunk_size = 4 * REFINE_POINTS
    chunk_size = _validate.check_positive_int(chunk_size, name="chunk_size")
    chunk_size = int(math.ceil(chunk_size / ndev) * ndev)
    base_args = (w0, u, v, jnp.asarray(length, dt))
    evfn, point_fn, point_args = make_point(
        policy, _plane_base_l, _plane_alpha, base_args, loss_fn, bn_states=bn_states,
        bn_batched=bn_batched,
    )

    def run(batched, name):
        store = None
        if checkpoint_dir is not None:
            from pathlib import Path as _FsPath

            meta = {"what": "landscape.connect.curve_plane", "split": name, "xs": xs.tolist(),
                    "ys": ys.tolist(), "path_hash": _provenance.data_hash(curve.controls),
                    "third": third, "bn": policy, "chunk_size": chunk_size,
                    "batch_size": batched.batch_size, "num_examples": batched.num_examples}
            store = engine.ChunkStore(_FsPath(checkpoint_dir) / name, meta)
        out = engine.evaluate_points(
            evfn, point_fn, coords, batched, point_args=point_args, chunk_size=chunk_size,
            store=store, progress=progress, desc=f"curve_plane ({name})",
        )
        out = {k: np.asarray(val).reshape(nx, ny) for k, val in out.items()}
        for k, val in out.items():
            bad = ~np.isfinite(val)
            if bad.any():
                i, j = np.argwhere(bad)[0]
                raise FloatingPointError(
                    f"{_validate.where()}: non-finite {name} {k!r} at {int(bad.sum())} of {val.size} grid points "
                    f"(first at x={xs[i]:.4g}, y={ys[j]:.4g}); reduce margin."
                )
        return out

    train = run(train_b, "train")
    test = run(test_b, "test") if test_b is not None else None
    proj = np.asarray(_project(curve, w0, u, v, jnp.asarray(cts, dt)), np.float64)
    points = np.array([[0.0, 0.0], [xb, height], [length, 0.0]])
    settings = {
        "resolution": [nx, ny], "margin": margin, "third": third, "bn": policy,
        "length": length, "height": height, "batch_size": train_b.batch_size,
        "chunk_size": chunk_size, "path_hash": _provenance.data_hash(curve.controls),
    }
    prov = _provenance.provenance(
        dtype=dt, data=_provenance.data_hash({"train": data, "test": test_data}), settings=settings
    )
    return PlaneResult(
        alphas=xs, betas=ys, train=train, test=test, points=points, curve=proj[:, :2],
        curve_ts=cts, curve_offset=proj[:, 2], kind=curve.kind, bn=policy, settings=settings,
        provenance=prov,
    )
