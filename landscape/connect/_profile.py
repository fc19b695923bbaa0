"""Loss and metrics along a path (:func:`profile`) and barrier heights (:func:`barrier`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from landscape import _provenance, engine, grid
from landscape import store as _store
from landscape import tree as _tree
from landscape import validate as _validate
from landscape._result import Result, result, static_field
from landscape.connect._common import as_loss, check_ts
from landscape.paths import Path, check_path, path_distances

PyTree = Any

DEFAULT_NUM_TS = 61
"""Garipov et al.'s evaluation grid (61 values of t)."""

REFINE_POINTS = 8
"""New points per refinement round and bracket (also the default chunk size)."""

CONVENTIONS = {
    "max_minus_mean": (
        "max_t v(t) - (v(0) + v(1)) / 2 [Frankle et al. 2020; Ainsworth et al. 2022, Git Re-Basin]"
    ),
    "max_excess": "max_t [v(t) - ((1 - t) v(0) + t v(1))] [Entezari et al. 2022]",
}
"""The barrier conventions :func:`barrier` reports, with their formulas and papers."""

__all__ = ["CONVENTIONS", "Barrier", "Profile", "barrier", "profile"]


# --------------------------------------------------------------------------------------------
# Result objects
# --------------------------------------------------------------------------------------------
@result
class Profile(grid.SplitValues, Result):
    """Loss and metrics along a path, over whole data sets.

    Attributes:
      ts: sorted values of ``t`` (the grid plus refinement points), shape ``(n,)``.
      train: ``{"loss", aux metrics ("accuracy", "error", ...)}`` on the training data, each
        shape ``(n,)``. ``"loss"`` is the loss function's value (including its weight decay).
      test: the same on ``test_data``, or ``None``.
      grid: ``(n,)`` bool, True where ``t`` came from the requested grid (False: refinement).
      distance: ``(n,)`` Euclidean length of the path from ``t = ts[0]`` to each ``t``,
        accumulated over the evaluated points (a polygonal approximation of arc length).
      kind, num_bends: the path's kind and number of bends.
      bn: the batch-norm policy used (``"fixed"``, ``"interpolate"`` or ``"reestimate"``).
      settings, provenance: what produced it.
    """

    ts: Any
    train: dict
    test: dict | None
    grid: Any
    distance: Any
    kind: str = static_field(default="linear")
    num_bends: int = static_field(default=0)
    bn: str = static_field(default="fixed")
    settings: dict = static_field(default_factory=dict)
    provenance: dict = static_field(default_factory=dict)

    def __repr__(self):
        v = self.values()
        i = int(np.argmax(v))
        return (
            f"Profile({self.kind}, num_bends={self.num_bends}, n={len(np.asarray(self.ts))}, "
            f"bn={self.bn}, train loss max {v[i]:.4g} at t={float(np.asarray(self.ts)[i]):.4f}, "
            f"ends {v[0]:.4g}/{v[-1]:.4g}, test={'yes' if self.test is not None else 'no'})"
        )


@result
class Barrier(Result):
    """Barrier heights along a path in every convention in use, labelled.

    Attributes:
      values: ``{"train/loss": {...}, "train/error": {...}, "test/loss": ..., ...}``; each inner
        dict holds scalars:

        * ``"max_minus_mean"``: ``max_t v(t) - (v(0) + v(1)) / 2`` (Frankle et al. 2020 for
          the error; Ainsworth et al. 2022, Git Re-Basin, for the loss),
        * ``"t_max"``: where ``max_t v(t)`` is attained,
        * ``"max_excess"``: ``max_t [v(t) - ((1 - t) v(0) + t v(1))]`` (Entezari et al. 2022),
        * ``"t_max_excess"``: where that maximum is attained,
        * ``"max"``, ``"min"``, ``"start"``, ``"end"``: ``max_t v``, ``min_t v``, ``v(0)``, ``v(1)``,
        * ``"mean"``: the trapezoid mean over ``t``; ``"length_mean"``: the mean weighted by
          path length (Garipov et al.'s ``eval_curve`` integral).

      conventions: the formulas and papers of ``"max_minus_mean"`` and ``"max_excess"``.
      kind, bn: the path's kind and the batch-norm policy of the profile.
    """

    values: dict
    conventions: dict = static_field(default_factory=lambda: dict(CONVENTIONS))
    kind: str = static_field(default="linear")
    bn: str = static_field(default="fixed")
    provenance: dict = static_field(default_factory=dict)

    def get(self, metric: str = "loss", split: str = "train", convention: str = "max_minus_mean"):
        """One number, e.g. ``b.get("error", "test", "max_excess")``."""
        key = f"{split}/{metric}"
        if key not in self.values:
            raise ValueError(f"Barrier.get: no {key!r}; available: {sorted(self.values)}.")
        if convention not in self.values[key]:
            raise ValueError(
                f"Barrier.get: convention must be one of {sorted(self.values[key])}; "
                f"got {convention!r}."
            )
        return float(self.values[key][convention])

    def table(self) -> str:
        """A text table: one row per split/metric, one column per convention."""
        cols = ["max_minus_mean", "t_max", "max_excess", "t_max_excess", "start", "end", "max"]
        lines = [f"{'':<12}" + "".join(f"{c:>16}" for c in cols)]
        for key, d in self.values.items():
            lines.append(f"{key:<12}" + "".join(f"{float(d[c]):>16.5g}" for c in cols))
        lines.append("max_minus_mean: " + self.conventions["max_minus_mean"])
        lines.append("max_excess:     " + self.conventions["max_excess"])
        return "\n".join(lines)

    def __repr__(self):
        parts = []
        for key, d in self.values.items():
            parts.append(
                f"{key}: {float(d['max_minus_mean']):.4g} (excess {float(d['max_excess']):.4g}, "
                f"t={float(d['t_max']):.3f})"
            )
        return f"Barrier({self.kind}, bn={self.bn}; " + "; ".join(parts) + ")"


def _brackets(ts: np.ndarray, vals: np.ndarray) -> list[tuple[float, float]]:
    out = []
    n = ts.size
    if n < 3:
        return out
    excess = vals - ((1 - (ts - ts[0]) / (ts[-1] - ts[0])) * vals[0]
                     + (ts - ts[0]) / (ts[-1] - ts[0]) * vals[-1])
    for i in {int(np.argmax(vals)), int(np.argmax(excess))}:
        lo, hi = ts[max(i - 1, 0)], ts[min(i + 1, n - 1)]
        if (lo, hi) not in out:
            out.append((float(lo), float(hi)))
    return out


def _check_finite(values: grid.GridValues, ts: np.ndarray) -> None:
    """Paths raise on a non-finite value (a barrier of a diverged point is meaningless)."""
    for split, vals in (("train", values.train), ("test", values.test or {})):
        for k, v in vals.items():
            bad = ~np.isfinite(v)
            if bad.any():
                raise FloatingPointError(
                    f"{_validate.where()}: non-finite {split} {k!r} at {int(bad.sum())} of {v.size} "
                    f"values of t (first at t={float(ts[bad][0]):.6g}); the parameters along the "
                    "path (or bn statistics) overflow there."
                )


def _grid_ts(ts, num_ts, names=("ts", "num_ts")) -> np.ndarray:
    """Values of ``t`` from ``ts`` (the values) or ``num_ts`` (how many, equally spaced on
    ``[0, 1]``; default 61); ``names`` are the public arguments' names for the messages."""
    vname, nname = names
    if ts is not None and num_ts is not None:
        raise ValueError(
            f"{_validate.where()}: give {vname} (the values of t) or {nname} (how many, equally "
            "spaced on [0, 1]), not both."
        )
    if ts is None:
        n = DEFAULT_NUM_TS if num_ts is None else num_ts
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
            raise TypeError(f"{_validate.where()}: {nname} must be an int >= 2; got {n!r}.")
        return check_ts(int(n), name=nname)
    if isinstance(ts, (int, np.integer)) and not isinstance(ts, bool):
        raise TypeError(
            f"{_validate.where()}: {vname} are the values of t (an array); for {ts} equally spaced "
            f"values pass {nname}={ts}."
        )
    return check_ts(ts, name=vname)


@_validate.public
def profile(
    loss_fn,
    path: Path,
    data,
    *,
    ts=None,
    num_ts: int | None = None,
    test_data=None,
    refine: bool | int = True,
    bn: str = "auto",
    bn_data=None,
    bn_states=None,
    settings: grid.GridSettings | None = None,
    store=None,
) -> Profile:
    """Loss and aux metrics along a path, over the whole training (and test) set.

    The values of ``t`` are evaluated by the grid evaluator (:mod:`landscape.grid`): the path
    builds each point inside one compiled program, points are evaluated in chunks, every data
    set mean is exact. With ``refine``, local searches around the maxima then add points so a
    coarse grid does not hide the peak: each round evaluates ``8`` new points inside the bracket
    ``[t_{i-1}, t_{i+1}]`` around the current maximum of the training loss and around the
    maximum of its excess over the straight line between the endpoint values (and the same on
    the test loss), shrinking the bracket 4.5-fold per round.

    Args:
      loss_fn: ``loss_fn(params, batch)`` returning the batch mean, or ``(loss, aux)`` with
        metrics (a :class:`landscape.Loss` reports ``accuracy`` and ``error``); a
        :class:`landscape.Model` means its cross-entropy loss (``make_loss_fn(model)``).
      path: a :class:`landscape.paths.Path` (:func:`linear_path`, :func:`bezier`,
        :func:`polychain`, ``fit_curve(...).path``).
      data: training data ``{"x", "y"}`` (or a prepared :class:`landscape.engine.Batched`).
      ts: the values of ``t`` (any finite values; the barrier needs ``0`` and ``1``).
      num_ts: or how many equally spaced ``t`` in ``[0, 1]`` (default 61, Garipov et al.'s
        grid).
      test_data: also evaluated at every ``t``.
      refine: ``True`` (3 rounds), an int (that many rounds), or ``False``.
      bn: batch-norm policy (:mod:`landscape.grid`): ``"auto"`` (the default: ``"reestimate"``
        if the model has floating state, else ``"fixed"``), ``"reestimate"`` (statistics
        recomputed at each ``t`` from ``bn_data``, Garipov et al.), ``"interpolate"``
        (``(1 - t) s_a + t s_b`` from ``bn_states``), ``"fixed"`` (the loss's own state
        everywhere).
      bn_data: the data statistics are re-estimated from (default: ``data``; it should be
        training data even when profiling test data).
      bn_states: ``(state_a, state_b)`` for ``bn="interpolate"``.
      settings: a :class:`landscape.GridSettings` (batch size, chunk size (default 8, rounded up
        to a multiple of the device count; refinement rounds use the same size, so one program
        serves both), progress bar, re-estimation batch size).
      store: a directory (or :class:`landscape.Store`): the grid's chunks are saved atomically
        and reused when called again; the profile is saved as the entry ``result``.

    Returns:
      :class:`Profile`; pass it to :func:`barrier` and ``landscape.plot.plot_profiles``.

    Raises:
      TypeError, ValueError: a bad path, data, ``ts`` or batch-norm policy (e.g.
        ``"reestimate"`` with a plain function instead of a :class:`landscape.Loss`).
      FloatingPointError: a non-finite value at some ``t`` (named).

    Cost: ``(len(ts) + refinement points) x (n_train + n_test) / batch_size`` batch
    evaluations; with ``bn="reestimate"`` each point adds one training-mode pass over
    ``bn_data`` per data set. Memory: one point (a parameter copy) at a time per device plus
    one batch of activations.

    References:
      Garipov et al. 2018 (61-point evaluation, ``update_bn``); Frankle et al. 2020;
      Ainsworth et al. 2022; Entezari et al. 2022.
    """
    loss_fn = as_loss(loss_fn, name="loss_fn")
    path = check_path(path)
    grid_ts = _grid_ts(ts, num_ts)
    if isinstance(refine, bool):
        rounds = 3 if refine else 0
    else:
        rounds = _validate.check_positive_int(refine, name="refine", allow_zero=True)
    plan = grid.prepare(
        loss_fn, path, data, test_data=test_data, bn=bn, bn_data=bn_data, bn_states=bn_states,
        settings=settings, default_chunk=REFINE_POINTS, fit_chunk=rounds == 0, desc="profile",
    )
    policy = plan.settings["bn"]
    meta = {
        "job": _validate.where(), "path_hash": _provenance.data_hash(path.controls),
        "kind": path.kind, "ts": grid_ts.tolist(), "refine_rounds": rounds,
    }
    store = _store.as_store(store, meta)
    values = plan.evaluate(grid_ts, store=store, job=meta)
    _check_finite(values, grid_ts)
    train, test = values.train, values.test
    all_ts = grid_ts
    is_grid = np.ones(grid_ts.size, bool)
    for _ in range(rounds):
        brackets = _brackets(all_ts, train["loss"])
        if test is not None:
            for br in _brackets(all_ts, test["loss"]):
                if br not in brackets:
                    brackets.append(br)
        new = []
        for lo, hi in brackets:
            cand = np.linspace(lo, hi, REFINE_POINTS + 2)[1:-1]
            new.extend(c for c in cand if not np.any(np.isclose(c, all_ts, rtol=0, atol=1e-12)))
        new = np.unique(np.asarray(new, np.float64))
        if new.size == 0:
            break
        more = plan.evaluate(new)
        _check_finite(more, new)
        all_ts = np.concatenate([all_ts, new])
        order = np.argsort(all_ts, kind="stable")
        all_ts = all_ts[order]
        is_grid = np.concatenate([is_grid, np.zeros(new.size, bool)])[order]
        train = {k: np.concatenate([train[k], more.train[k]])[order] for k in train}
        if test is not None:
            test = {k: np.concatenate([test[k], more.test[k]])[order] for k in test}
    distance = path_distances(path, all_ts)
    info = plan.settings
    out_settings = {
        "num_grid": int(grid_ts.size), "refine_rounds": rounds, "refine_points": REFINE_POINTS,
        "batch_size": info["batch_size"], "chunk_size": plan.chunk_for(grid_ts.size),
        "bn": policy, "bn_batch_size": info.get("bn_batch_size"),
        "num_train": info["num_train"], "num_test": info["num_test"],
        "path_hash": meta["path_hash"],
    }
    prov = _provenance.provenance(
        dtype=_tree.dtype_of(path.controls),
        data=_provenance.data_hash({"train": data, "test": test_data})
        if not isinstance(data, engine.Batched) else None,
        settings=out_settings,
    )
    res = Profile(
        ts=all_ts, train=train, test=test, grid=is_grid, distance=distance, kind=path.kind,
        num_bends=path.num_bends, bn=policy, settings=out_settings, provenance=prov,
    )
    if store is not None:
        store.save("result", res)
    return res


# --------------------------------------------------------------------------------------------
def _barrier_of(ts, v, dist) -> dict:
    ts = np.asarray(ts, np.float64)
    v = np.asarray(v, np.float64)
    i0 = np.flatnonzero(ts == 0.0)
    i1 = np.flatnonzero(ts == 1.0)
    inside = (ts >= 0.0) & (ts <= 1.0)
    t, w = ts[inside], v[inside]
    d = np.asarray(dist, np.float64)[inside]
    a, b = v[i0[0]], v[i1[0]]
    excess = w - ((1 - t) * a + t * b)
    im, ie = int(np.argmax(w)), int(np.argmax(excess))
    mean = float(np.trapezoid(w, t)) if t.size > 1 else float(w[0])
    dl = np.diff(d)
    length_mean = (
        float(np.sum(0.5 * (w[1:] + w[:-1]) * dl) / np.sum(dl)) if np.sum(dl) > 0 else mean
    )
    return {
        "max_minus_mean": w[im] - 0.5 * (a + b),
        "t_max": t[im],
        "max_excess": excess[ie],
        "t_max_excess": t[ie],
        "max": w[im],
        "min": np.min(w),
        "start": a,
        "end": b,
        "mean": mean,
        "length_mean": length_mean,
    }


@_validate.public("landscape.connect.barrier")
def barrier(profile: Profile, *, metrics=("loss", "error")) -> Barrier:
    """Barrier heights of a :class:`Profile` in every convention, labelled.

    For each split (train, and test if profiled) and each metric (loss and error when the loss
    reports it), with ``v(t)`` the metric along the path restricted to ``t in [0, 1]``:

    * ``max_minus_mean = max_t v(t) - (v(0) + v(1)) / 2``: Frankle et al. 2020 (error; a pair
      is "stable" below 2%) and Ainsworth et al. 2022 (Git Re-Basin; loss);
    * ``max_excess = max_t [v(t) - ((1 - t) v(0) + t v(1))]``: Entezari et al. 2022;
    * ``t_max`` and ``t_max_excess``: where each maximum is; plus max, min, start, end, the
      mean over ``t`` and the path-length-weighted mean (Garipov et al.).

    The two conventions agree when ``v(0) = v(1)``. Both are computed from the evaluated points
    (with :func:`profile`'s refinement around the maxima).

    Args:
      profile: from :func:`profile`; must contain ``t = 0`` and ``t = 1``.
      metrics: which metrics to report (those the profile has).

    Returns:
      :class:`Barrier`: ``b.get("loss", "train", "max_minus_mean")``, ``print(b.table())``.

    Raises:
      TypeError: ``profile`` is not a :class:`Profile`.
      ValueError: the profile lacks ``t = 0`` or ``t = 1``.
    """
    if not isinstance(profile, Profile):
        raise TypeError(f"{_validate.where()}: profile must be a landscape.connect.Profile; got {type(profile).__name__}.")
    ts = np.asarray(profile.ts, np.float64)
    if not (np.any(ts == 0.0) and np.any(ts == 1.0)):
        raise ValueError(
            f"{_validate.where()}: the profile must include t = 0 and t = 1 (the endpoints); got t in "
            f"[{ts.min():.4g}, {ts.max():.4g}] without one of them."
        )
    values = {}
    for split, d in (("train", profile.train), ("test", profile.test)):
        if d is None:
            continue
        for m in metrics:
            if m in d:
                values[f"{split}/{m}"] = {
                    k: np.asarray(x) for k, x in _barrier_of(ts, d[m], profile.distance).items()
                }
    if not values:
        raise ValueError(f"{_validate.where()}: none of the metrics {list(metrics)} is in the profile ({profile.metrics}).")
    return Barrier(values=values, kind=profile.kind, bn=profile.bn, provenance=profile.provenance)
