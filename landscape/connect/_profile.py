"""Loss and metrics along a path (:func:`profile`) and barrier heights (:func:`barrier`)."""

from __future__ import annotations

import math
from pathlib import Path as _FsPath
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from landscape import _provenance, engine
from landscape import batchnorm as _batchnorm
from landscape import tree as _tree
from landscape import validate as _validate
from landscape._result import Result, result, static_field
from landscape.connect import _bn
from landscape.connect._common import as_loss, check_loss, check_ts, float_state
from landscape.connect._paths import Path, check_path
from landscape.losses import Loss

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
class Profile(Result):
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
      bn: the batch-norm policy used (``"none"``, ``"fixed"``, ``"interpolate"``,
        ``"reestimate"``).
      settings, provenance: what produced it.
    """

    ts: Any
    train: dict
    test: dict | None
    grid: Any
    distance: Any
    kind: str = static_field(default="linear")
    num_bends: int = static_field(default=0)
    bn: str = static_field(default="none")
    settings: dict = static_field(default_factory=dict)
    provenance: dict = static_field(default_factory=dict)

    def values(self, metric: str = "loss", split: str = "train") -> np.ndarray:
        """The metric along the path (``split`` is ``"train"`` or ``"test"``)."""
        d = self.train if split == "train" else self.test
        if d is None:
            raise ValueError(f"Profile.values: this profile has no {split!r} values.")
        if metric not in d:
            raise ValueError(f"Profile.values: no metric {metric!r}; available: {sorted(d)}.")
        return np.asarray(d[metric])

    @property
    def metrics(self) -> list[str]:
        return sorted(self.train)

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
    bn: str = static_field(default="none")
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


# --------------------------------------------------------------------------------------------
# Point functions (module level, so they hash stably: one compilation per shape). ``base``
# builds the parameters from a coordinate (a path's t, a plane's (x, y)); ``alpha`` gives the
# interpolation weight of endpoint B's statistics there.
# --------------------------------------------------------------------------------------------
def _state_loss_dict(loss_fn, point, batch):
    params, state = point
    return engine._loss_dict(loss_fn.with_state(state), params, batch)


def _pt_plain(base, c, base_args):
    return base(c, *base_args)


def _pt_interp(base, alpha, c, base_args, state_a, state_b):
    return base(c, *base_args), _batchnorm.interpolated_state(alpha(c, *base_args), state_a, state_b)


def _pt_reestimate(base, c, base_args, loss_fn, bn):
    form, bn_batched = bn
    params = base(c, *base_args)
    return params, _batchnorm.reestimated_state(loss_fn, form, params, bn_batched)


def _path_base(t, path):
    return path(t)


def _path_alpha(t, path):
    return t


def prepare_bn(bn, loss_fn, params, bn_data, *, bn_states, bn_batch_size):
    """Resolve the batch-norm policy; for ``"reestimate"`` lay out the re-estimation data and
    probe the state's update form once. Returns ``(policy, (form, batched) or None)``."""
    policy = resolve_bn(bn, loss_fn, bn_states=bn_states)
    prepared = None
    if policy == "reestimate":
        if isinstance(bn_data, engine.Batched):
            raise TypeError(f"{_validate.where()}: bn_data must be a dict of arrays (training data), not a Batched.")
        bn_batched = _batchnorm.bn_batches(bn_data, bn_batch_size)
        prepared = (_batchnorm.probe_state(loss_fn, params, bn_batched), bn_batched)
    return policy, prepared


def make_point(bn: str, base, alpha, base_args: tuple, loss_fn, *, bn_states=None, bn_batched=None):
    """``(fn, point_fn, point_args)`` for :func:`landscape.engine.evaluate_points` under a
    batch-norm policy; ``base(c, *base_args)`` builds the parameters at coordinate ``c``."""
    if bn in ("none", "fixed"):
        return Partial(engine._loss_dict, loss_fn), Partial(_pt_plain, base), (base_args,)
    fn = Partial(_state_loss_dict, loss_fn)
    if bn == "interpolate":
        sa, sb = bn_states
        return fn, Partial(_pt_interp, base, alpha), (base_args, sa, sb)
    return fn, Partial(_pt_reestimate, base), (base_args, loss_fn, bn_batched)  # (form, batched)


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


def path_distances(path: Path, ts: np.ndarray) -> np.ndarray:
    """Cumulative Euclidean length of the polygon through ``path(ts)``.

    ``phi(t) - phi(s) = sum_k (w_k(t) - w_k(s)) (c_k - c_0)`` (the weights sum to one), so every
    segment length follows from the small Gram matrix of the control points' differences:
    ``K^2`` inner products once, then host arithmetic in float64 for any number of points.
    """
    ts = np.asarray(ts, np.float64)
    if ts.size < 2:
        return np.zeros_like(ts)
    G = np.asarray(_difference_gram(path.controls), np.float64)
    W = np.asarray(jax.vmap(path.weights)(jnp.asarray(ts, _tree.dtype_of(path.controls))), np.float64)
    dW = np.diff(W[:, 1:], axis=0)
    seg = np.sqrt(np.maximum(np.einsum("ni,ij,nj->n", dW, G, dW), 0.0))
    return np.concatenate([[0.0], np.cumsum(seg)])


# --------------------------------------------------------------------------------------------
def resolve_bn(bn, loss_fn, *, bn_states) -> str:
    _validate.check_choice(bn, _bn.BN_POLICIES, name="bn")
    has_state = float_state(loss_fn)
    if bn == "auto":
        return "reestimate" if has_state else "none"
    if bn == "none":
        if has_state:
            raise ValueError(
                f"{_validate.where()}: bn='none' but the model has batch-norm state; choose 'reestimate' "
                "(Garipov et al.), 'interpolate' or 'fixed'."
            )
        return "none"
    if bn in ("reestimate", "interpolate") and not isinstance(loss_fn, Loss):
        raise TypeError(
            f"{_validate.where()}: bn={bn!r} needs the model triple: pass a landscape.Loss "
            f"(landscape.make_loss_fn(model)) rather than a plain function; got "
            f"{type(loss_fn).__name__}."
        )
    if bn in ("reestimate", "interpolate") and not has_state:
        raise ValueError(f"{_validate.where()}: bn={bn!r} but the model has no floating state (batch norm).")
    if bn == "interpolate":
        if bn_states is None or not isinstance(bn_states, (tuple, list)) or len(bn_states) != 2:
            raise ValueError(
                f"{_validate.where()}: bn='interpolate' needs bn_states=(state_a, state_b), the endpoints' "
                "model states."
            )
        for i, s in enumerate(bn_states):
            _validate.check_same_structure(
                s, loss_fn.state, name=f"bn_states[{i}]", ref_name="the model's state"
            )
    return bn


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


@_validate.public("landscape.connect.profile")
def profile(
    loss_fn,
    path: Path,
    data,
    *,
    ts=DEFAULT_NUM_TS,
    test_data=None,
    refine: bool | int = True,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    bn: str = "auto",
    bn_data=None,
    bn_states=None,
    bn_batch_size: int | None = None,
    progress: bool = False,
    checkpoint_dir=None,
) -> Profile:
    """Loss and aux metrics along a path, over the whole training (and test) set.

    The values of ``t`` are evaluated through the engine
    (:func:`landscape.engine.evaluate_points`): the path builds each point inside one compiled
    program, points are evaluated in chunks, every data set mean is exact. With ``refine``,
    local searches around the maxima then add points so a coarse grid does not hide the peak:
    each round evaluates ``8`` new points inside the bracket ``[t_{i-1}, t_{i+1}]`` around the
    current maximum of the training loss and around the maximum of its excess over the straight
    line between the endpoint values (and the same on the test loss), shrinking the bracket
    4.5-fold per round.

    Args:
      loss_fn: ``loss_fn(params, batch)`` returning the batch mean, or ``(loss, aux)`` with
        metrics (a :class:`landscape.Loss` reports ``accuracy`` and ``error``); a
        :class:`landscape.Model` means its cross-entropy loss (``make_loss_fn(model)``).
      path: a :class:`Path` (:func:`linear_path`, :func:`bezier`, :func:`polychain`,
        ``fit_curve(...).path``).
      data: training data ``{"x", "y"}`` (or a prepared :class:`landscape.engine.Batched`).
      ts: number of equally spaced ``t`` in ``[0, 1]`` (default 61, Garipov et al.'s grid) or
        the values themselves (any finite values; the barrier needs ``0`` and ``1``).
      test_data: also evaluated at every ``t``.
      refine: ``True`` (3 rounds), an int (that many rounds), or ``False``.
      batch_size: examples per batch of the data means (default: the engine's).
      chunk_size: points per compiled call (default 8, rounded up to a multiple of the device
        count; refinement rounds use the same size, so one program serves both).
      bn: batch-norm policy: ``"auto"`` (``"reestimate"`` if the model has floating state,
        else ``"none"``), ``"reestimate"`` (statistics recomputed at each ``t`` from
        ``bn_data``, Garipov et al.), ``"interpolate"`` (``(1 - t) s_a + t s_b`` from
        ``bn_states``), ``"fixed"`` (the loss's own state everywhere), ``"none"``.
      bn_data: the data statistics are re-estimated from (default: ``data``; it should be
        training data even when profiling test data).
      bn_states: ``(state_a, state_b)`` for ``bn="interpolate"``.
      bn_batch_size: batch size of the re-estimation (default: the engine's).
      progress: progress bar over chunks.
      checkpoint_dir: save finished chunks of the grid there (atomically) and resume from them
        (:class:`landscape.engine.ChunkStore`; a directory holding another job's chunks raises).

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
    grid_ts = check_ts(ts)
    if isinstance(refine, bool):
        rounds = 3 if refine else 0
    else:
        rounds = _validate.check_positive_int(refine, name="refine", allow_zero=True)
    ndev = jax.device_count()
    placement = "replicate" if ndev > 1 else "shard"
    train_b = engine.batch(data, batch_size, placement=placement)
    test_b = None
    if test_data is not None:
        test_b = engine.batch(test_data, batch_size, placement=placement)
    start = path.start
    check_loss(loss_fn, start, train_b)
    if test_b is not None:
        check_loss(loss_fn, start, test_b, name="test_data")
    policy, bn_batched = prepare_bn(
        bn, loss_fn, start, data if bn_data is None else bn_data, bn_states=bn_states,
        bn_batch_size=bn_batch_size,
    )
    if chunk_size is None:
        # one chunk shape serves the grid and the refinement rounds; without refinement a short
        # grid is not padded
        chunk_size = REFINE_POINTS if rounds else min(REFINE_POINTS, grid_ts.size)
    chunk_size = _validate.check_positive_int(chunk_size, name="chunk_size")
    chunk_size = int(math.ceil(chunk_size / ndev) * ndev)
    evfn, point_fn, point_args = make_point(
        policy, _path_base, _path_alpha, (path,), loss_fn, bn_states=bn_states,
        bn_batched=bn_batched,
    )
    dt = _tree.dtype_of(path.controls)

    def run(ts_arr, batched, name, store_name=None):
        store = None
        if checkpoint_dir is not None and store_name is not None:
            meta = {
                "what": "landscape.connect.profile", "split": store_name,
                "ts": np.asarray(ts_arr).tolist(), "path_hash": _provenance.data_hash(path.controls),
                "kind": path.kind, "bn": policy, "chunk_size": chunk_size,
                "batch_size": batched.batch_size, "num_examples": batched.num_examples,
            }
            store = engine.ChunkStore(_FsPath(checkpoint_dir) / store_name, meta)
        out = engine.evaluate_points(
            evfn, point_fn, np.asarray(ts_arr, dt), batched, point_args=point_args,
            chunk_size=chunk_size, store=store, progress=progress, desc=f"profile ({name})",
        )
        out = {k: np.asarray(v) for k, v in out.items()}
        for k, v in out.items():
            bad = ~np.isfinite(v)
            if bad.any():
                tb = np.asarray(ts_arr)[bad]
                raise FloatingPointError(
                    f"{_validate.where()}: non-finite {name} {k!r} at {int(bad.sum())} of {v.size} values of t "
                    f"(first at t={float(tb[0]):.6g}); the parameters along the path (or bn "
                    "statistics) overflow there."
                )
        return out

    all_ts = grid_ts
    train = run(grid_ts, train_b, "train", "train")
    test = run(grid_ts, test_b, "test", "test") if test_b is not None else None
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
        tr = run(new, train_b, "train")
        te = run(new, test_b, "test") if test_b is not None else None
        all_ts = np.concatenate([all_ts, new])
        order = np.argsort(all_ts, kind="stable")
        all_ts = all_ts[order]
        is_grid = np.concatenate([is_grid, np.zeros(new.size, bool)])[order]
        train = {k: np.concatenate([train[k], tr[k]])[order] for k in train}
        if test is not None:
            test = {k: np.concatenate([test[k], te[k]])[order] for k in test}
    distance = path_distances(path, all_ts)
    settings = {
        "num_grid": int(grid_ts.size), "refine_rounds": rounds, "refine_points": REFINE_POINTS,
        "batch_size": train_b.batch_size, "chunk_size": chunk_size, "bn": policy,
        "bn_batch_size": None if bn_batched is None else bn_batched[1].batch_size,
        "num_train": train_b.num_examples,
        "num_test": None if test_b is None else test_b.num_examples,
        "path_hash": _provenance.data_hash(path.controls),
    }
    prov = _provenance.provenance(
        dtype=dt, data=_provenance.data_hash({"train": data, "test": test_data})
        if not isinstance(data, engine.Batched) else None, settings=settings,
    )
    return Profile(
        ts=all_ts, train=train, test=test, grid=is_grid, distance=distance, kind=path.kind,
        num_bends=path.num_bends, bn=policy, settings=settings, provenance=prov,
    )


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
