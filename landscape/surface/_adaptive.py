"""An adaptive grid: evaluate a coarse lattice, then refine only the cells where the surface
bends, and fill the rest of the full grid by multilinear interpolation.

The full grid is the one the slice would evaluate (e.g. 51 x 51). Cells live in its index
space. Start: every ``initial_stride``-th index on each axis (and the last), the cells between
them. A cell of more than one step is split at its middle index on every axis: the points of
the ``3 x 3`` lattice (corners, edge midpoints, centre; ``3`` on a line) are evaluated, and the
cell's bilinear (linear) interpolation from its corners is compared with them. If every new
point satisfies ``|f - interp| <= atol + rtol |f|`` (``f`` the chosen metric, by default the
training loss; ``atol`` by default ``tol`` times the metric's range on the coarse lattice, a
picture-level tolerance: a contour plot's levels are a few percent of the range apart) the
children are accepted; otherwise each child is refined in the next round. A point that is not finite forces refinement down to single steps. Each round is one
call of the prepared grid plan (one compiled program for all rounds).

The result has every point of the full grid: evaluated points exact, the others interpolated
inside the smallest accepted cell containing them; ``result.evaluated`` marks which. The error
estimate is the refinement test itself (the interpolation error at a cell's midpoints, before
the children's finer interpolation), not a bound: a feature narrower than a cell of the
coarse lattice can be missed. The benchmark and tests report the error against the full grid.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from landscape import validate as _validate

__all__ = ["Adaptive", "as_adaptive", "run"]


@dataclasses.dataclass(frozen=True)
class Adaptive:
    """Settings of the adaptive grid (pass as ``adaptive=`` to :func:`slice_1d` /
    :func:`slice_2d`; ``adaptive=True`` uses these defaults).

    Attributes:
      tol: the default ``atol`` as a fraction of the metric's range (max - min) on the coarse
        lattice (default 0.01).
      rtol, atol: a cell is accepted when its interpolation error at every midpoint is at most
        ``atol + rtol * |f|`` (``f`` the metric there); ``atol=None`` (default): ``tol`` times
        the range; ``rtol`` default 0.
      initial_stride: grid steps between the points of the first, coarse lattice.
      metric: the metric the test reads (of the training data): ``"loss"`` (default) or an aux
        metric such as ``"accuracy"``.
      chunk_size: points per compiled call in every round (default 16: rounds have few
        points; ``settings.chunk_size`` overrides it).
    """

    tol: float = 1e-2
    rtol: float = 0.0
    atol: float | None = None
    initial_stride: int = 8
    metric: str = "loss"
    chunk_size: int = 16

    def checked(self) -> Adaptive:
        for name in ("tol", "rtol", "atol"):
            if getattr(self, name) is None:
                continue
            v = _validate.check_finite_scalar(getattr(self, name), name=f"adaptive.{name}")
            if v < 0:
                raise ValueError(f"{_validate.where()}: adaptive.{name} must be >= 0; got {v}.")
        _validate.check_positive_int(self.initial_stride, name="adaptive.initial_stride")
        _validate.check_positive_int(self.chunk_size, name="adaptive.chunk_size")
        if not isinstance(self.metric, str):
            raise TypeError(
                f"{_validate.where()}: adaptive.metric must be a metric name; got {self.metric!r}."
            )
        return self

    def describe(self) -> dict:
        return dataclasses.asdict(self)


def as_adaptive(adaptive) -> Adaptive | None:
    if adaptive is None or adaptive is False:
        return None
    if adaptive is True:
        return Adaptive()
    if isinstance(adaptive, Adaptive):
        return adaptive.checked()
    raise TypeError(
        f"{_validate.where()}: adaptive must be None/False (the full grid), True or a "
        f"landscape.surface.Adaptive(rtol=..., atol=..., initial_stride=...); got {adaptive!r}."
    )


def _lattice(n: int, stride: int) -> list[int]:
    return sorted(set(range(0, n, stride)) | {n - 1})


def _axis_points(lo: int, hi: int) -> list[int]:
    return [lo, (lo + hi) // 2, hi] if hi - lo >= 2 else sorted({lo, hi})


def _children(cell):
    per_axis = []
    for lo, hi in cell:
        pts = _axis_points(lo, hi)
        per_axis.append(list(zip(pts[:-1], pts[1:])) if len(pts) > 1 else [(lo, hi)])
    return [tuple(c) for c in itertools.product(*per_axis)]


def _interp(cell, axes, corner_value, points):
    """Multilinear interpolation inside ``cell`` from its corners at ``points`` (index tuples):
    ``corner_value(corner) -> value``."""
    out = []
    for pt in points:
        v = 0.0
        for corner in itertools.product(*[(0, 1)] * len(cell)):
            w = 1.0
            idx = []
            for ax, ((lo, hi), side) in enumerate(zip(cell, corner)):
                i = (lo, hi)[side]
                idx.append(i)
                if hi == lo:
                    w *= 1.0 if side == 0 else 0.0
                    continue
                t = (axes[ax][pt[ax]] - axes[ax][lo]) / (axes[ax][hi] - axes[ax][lo])
                w *= t if side == 1 else 1.0 - t
            if w != 0.0:
                v = v + w * corner_value(tuple(idx))
        out.append(v)
    return np.asarray(out)


def _fill(cell, axes, grid_values: dict, known: np.ndarray):
    """Interpolate every metric on the box of ``cell`` (in place)."""
    sl = tuple(slice(lo, hi + 1) for lo, hi in cell)
    ts = []
    for ax, (lo, hi) in enumerate(cell):
        a = axes[ax][lo : hi + 1]
        ts.append(np.zeros_like(a) if hi == lo else (a - a[0]) / (a[-1] - a[0]))
    mesh = np.meshgrid(*ts, indexing="ij")
    for vals in grid_values.values():
        acc = np.zeros(mesh[0].shape, np.float64)
        for corner in itertools.product(*[(0, 1)] * len(cell)):
            w = np.ones_like(acc)
            idx = []
            for ax, side in enumerate(corner):
                lo, hi = cell[ax]
                idx.append((lo, hi)[side])
                if hi == lo:  # a degenerate axis: only its first corner counts
                    w = w * (1.0 if side == 0 else 0.0)
                else:
                    w = w * (mesh[ax] if side == 1 else 1.0 - mesh[ax])
            if np.any(w):
                acc = acc + w * np.float64(vals[tuple(idx)])
        box = vals[sl]
        keep = known[sl]
        vals[sl] = np.where(keep, box, acc.astype(vals.dtype))


def run(evaluate, axes: list[np.ndarray], ad: Adaptive, *, metric_of):
    """The adaptive refinement.

    Args:
      evaluate: ``evaluate(index_array (m, d), round) -> GridValues`` of those grid points.
      axes: the full grid's coordinates per axis.
      ad: the settings.
      metric_of: ``metric_of(GridValues) -> (m,)`` the values the test reads.

    Returns:
      ``(train, test, finite, evaluated, info)``: full-grid dicts of metrics, the finite flags,
      the evaluated mask and a summary (points evaluated, rounds, cells).
    """
    shape = tuple(len(a) for a in axes)
    d = len(shape)
    train: dict | None = None
    test: dict | None = None
    finite = np.zeros(shape, bool)
    known = np.zeros(shape, bool)
    test_value = np.zeros(shape, np.float64)
    rounds = 0
    per_round = []

    def eval_points(points):
        nonlocal train, test, rounds
        points = sorted(set(points))
        points = [p for p in points if not known[p]]
        if not points:
            return
        idx = np.asarray(points, dtype=np.int64).reshape(len(points), d)
        vals = evaluate(idx, rounds)
        rounds += 1
        per_round.append(len(points))
        if train is None:
            train = {k: np.full(shape, np.nan, np.asarray(v).dtype) for k, v in vals.train.items()}
            if vals.test is not None:
                test = {
                    k: np.full(shape, np.nan, np.asarray(v).dtype) for k, v in vals.test.items()
                }
        sel = tuple(idx.T)
        for k, v in vals.train.items():
            train[k][sel] = v
        if test is not None:
            for k, v in vals.test.items():
                test[k][sel] = v
        finite[sel] = vals.finite
        test_value[sel] = metric_of(vals)
        known[sel] = True

    lat = [_lattice(n, ad.initial_stride) for n in shape]
    eval_points(itertools.product(*lat))
    coarse = test_value[known & finite]
    scale = float(coarse.max() - coarse.min()) if coarse.size else 0.0
    atol = ad.tol * scale if ad.atol is None else float(ad.atol)
    cells = [
        tuple(c)
        for c in itertools.product(
            *[list(zip(p[:-1], p[1:])) if len(p) > 1 else [(0, 0)] for p in lat]
        )
    ]
    done = []
    while cells:
        split = [c for c in cells if any(hi - lo >= 2 for lo, hi in c)]
        done += [c for c in cells if not any(hi - lo >= 2 for lo, hi in c)]
        new = []
        for c in split:
            new.extend(itertools.product(*[_axis_points(lo, hi) for lo, hi in c]))
        eval_points(new)
        cells = []
        for c in split:
            pts = [
                p
                for p in itertools.product(*[_axis_points(lo, hi) for lo, hi in c])
                if any(p[ax] not in (lo, hi) for ax, (lo, hi) in enumerate(c))
            ]
            corners = list(itertools.product(*[sorted({lo, hi}) for lo, hi in c]))
            ok = all(finite[q] for q in corners) and all(finite[q] for q in pts)
            if ok:
                f = np.asarray([test_value[q] for q in pts])
                approx = _interp(c, axes, lambda q: test_value[q], pts)
                ok = bool(np.all(np.abs(f - approx) <= atol + ad.rtol * np.abs(f)))
            (done if ok else cells).extend(_children(c))
    # the full grid: largest cells first, so smaller (finer) cells overwrite
    done.sort(key=lambda c: -np.prod([hi - lo + 1 for lo, hi in c]))
    for c in done:
        _fill(c, axes, train, known)
        if test is not None:
            _fill(c, axes, test, known)
    interp_finite = np.ones(shape, bool)
    for vals in (train, test or {}):
        for v in vals.values():
            interp_finite &= np.isfinite(v)
    finite = np.where(known, finite, interp_finite)
    info = {
        "atol_used": atol,
        "num_evaluated": int(known.sum()),
        "fraction_evaluated": float(known.mean()),
        "rounds": rounds,
        "points_per_round": per_round,
        "num_cells": len(done),
    }
    return train, test, finite, known, info
