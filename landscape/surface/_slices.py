"""1-D and 2-D loss-surface slices and linear interpolation: thin callers of the grid evaluator.

Every grid point is the exact full-data-set mean of the loss (and of the loss's aux metrics,
from the same forward pass) on the training data and, if given, the test data, evaluated by
the foundation's grid evaluator (:mod:`landscape.grid`): slices are the affine family
``theta + a d1 + b d2``, an interpolation is the linear path ``(1 - t) a + t b``
(:func:`landscape.paths.linear_path`). Chunking, sharding over devices, progress and resuming
(``store=``) are the grid's; the settings object is :class:`landscape.GridSettings`.

Batch norm (``bn=``, the grid's vocabulary): ``"fixed"`` (the default: the statistics stored in
``loss_fn``, i.e. the centre's for a slice), ``"reestimate"`` (re-estimated at every point from
``bn_data``), ``"auto"`` (``"reestimate"`` for batch-norm models, else ``"fixed"``) and, for
:func:`interpolate` only, ``"interpolate"`` (``(1 - t) s_a + t s_b``, Li et al.'s ``--dir_type
states``). Non-finite points are recorded (``result.finite``) and warned about, not fatal.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from landscape import _provenance, grid
from landscape import paths as _paths
from landscape import store as _store
from landscape import tree as _tree
from landscape import validate as _validate
from landscape._model import Model
from landscape._result import Result, result, static_field
from landscape.surface import _adaptive
from landscape.surface._adaptive import as_adaptive
from landscape.surface._directions import Direction, as_direction
from landscape.surface._fast import as_first_layer
from landscape.surface._pca import PCAResult

PyTree = Any

DEFAULT_CHUNK = 64
"""Points per compiled call of a slice (the unit of saving and progress)."""

__all__ = ["SliceResult", "interpolate", "slice_1d", "slice_2d"]


# --------------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------------
@result
class SliceResult(grid.SplitValues, Result):
    """Values of the loss and its metrics on a 1-D or 2-D grid.

    Attributes:
      alphas: ``(na,)`` first coordinate (``t`` of an interpolation).
      betas: ``(nb,)`` second coordinate (``None`` for 1-D results).
      train: ``{"loss": ..., "accuracy": ..., ...}`` on the training data, each ``(na,)`` or
        ``(na, nb)`` (``[i, j]`` is the point ``alphas[i], betas[j]``).
      test: the same on the test data, or ``None``.
      finite: bool, same shape: all metrics finite (train and test) at that point. Non-finite
        points are recorded, not fatal.
      evaluated: bool, same shape, for an adaptive grid (``adaptive=``): the points evaluated;
        the others are interpolated. ``None`` for a full grid (every point evaluated).
      kind: ``"slice_1d"``, ``"slice_2d"`` or ``"interpolate"``.
      directions: the directions' specs (kind, key and settings, norms, cosine).
      settings: the evaluation settings (batch-norm policy, chunking, hashes of data, params and
        directions).
      provenance: package versions, devices, dtype, seeds, data hash.
    """

    alphas: np.ndarray
    betas: np.ndarray | None
    train: dict
    test: dict | None
    finite: np.ndarray
    evaluated: np.ndarray | None = None
    kind: str = static_field(default="slice_1d")
    directions: tuple = static_field(default=())
    settings: dict = static_field(default_factory=dict)
    provenance: dict = static_field(default_factory=dict)

    @property
    def ndim(self) -> int:
        return 1 if self.betas is None else 2

    @property
    def shape(self) -> tuple:
        return tuple(np.shape(self.finite))

    @property
    def ts(self) -> np.ndarray:
        """The interpolation coefficients (alias of ``alphas``)."""
        return self.alphas

    @property
    def loss(self) -> np.ndarray:
        """Training loss on the grid."""
        return self.train["loss"]

    @property
    def num_nonfinite(self) -> int:
        return int(np.size(self.finite) - np.count_nonzero(self.finite))

    @property
    def num_evaluated(self) -> int:
        """Points evaluated (all of them unless the grid is adaptive)."""
        return int(
            np.size(self.finite) if self.evaluated is None else np.count_nonzero(self.evaluated)
        )

    def __repr__(self):
        grid = "x".join(str(s) for s in self.shape)
        lo = float(np.nanmin(self.loss)) if np.any(np.isfinite(self.loss)) else float("nan")
        return (
            f"SliceResult({self.kind}, grid {grid}, train loss min {lo:.4g}, "
            f"test={'yes' if self.test is not None else 'no'}, bn={self.settings.get('bn')}, "
            f"non-finite={self.num_nonfinite}"
            + ("" if self.evaluated is None else f", evaluated {self.num_evaluated}")
            + ")"
        )


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------
def _coords(x, default, *, name):
    if x is None:
        x = default
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"{_validate.where()}: {name} must be a 1-D array of numbers; got {type(x).__name__}."
        ) from e
    if a.ndim != 1:
        raise ValueError(f"{_validate.where()}: {name} must be 1-D; got shape {a.shape}.")
    if a.size == 0:
        raise ValueError(f"{_validate.where()}: {name} is empty; pass at least one coordinate.")
    if not np.all(np.isfinite(a)):
        raise ValueError(
            f"{_validate.where()}: {name} must be finite; got {a[~np.isfinite(a)][:3]}."
        )
    if a.size > 1 and not np.all(np.diff(a) > 0):
        i = int(np.flatnonzero(np.diff(a) <= 0)[0])
        raise ValueError(
            f"{_validate.where()}: {name} must be strictly increasing; got {name}[{i}]={a[i]} "
            f"followed by {name}[{i + 1}]={a[i + 1]} (use np.linspace(lo, hi, n))."
        )
    return a


def _unpack_model(x):
    if isinstance(x, Model):
        return x.params, x.state
    return x, None


def _dir_meta(d: Direction) -> dict:
    spec = dict(d.spec)
    spec["norm_value"] = d.norm()
    spec["hash"] = _provenance.data_hash(d.vector)
    return spec


def _seeds(specs):
    return [s.get("key_data") for s in specs if s.get("kind") == "random"] or None


def _job_meta(loss_fn, params, data, test_data, specs) -> dict:
    return {
        "job": _validate.where(),
        "loss": repr(loss_fn),
        "dtype": str(np.dtype(_tree.dtype_of(params))),
        "params_hash": _provenance.data_hash(params),
        "data_hash": _provenance.data_hash(data),
        "test_data_hash": None if test_data is None else _provenance.data_hash(test_data),
        "directions": [dict(s) for s in specs],
    }


# --------------------------------------------------------------------------------------------
# The shared evaluation
# --------------------------------------------------------------------------------------------
def _run(
    loss_fn,
    family,
    coords,
    data,
    *,
    test_data,
    bn,
    bn_data,
    bn_states,
    first_layer,
    settings,
    store,
    meta,
    kind,
):
    """Prepare and evaluate the grid; ``(values, settings)``."""
    plan = grid.prepare(
        loss_fn,
        family,
        data,
        test_data=test_data,
        bn=bn,
        bn_data=bn_data,
        bn_states=bn_states,
        first_layer=as_first_layer(first_layer),
        settings=settings,
        default_chunk=DEFAULT_CHUNK,
        desc=kind,
    )
    meta = {**meta, "coords_hash": grid._hash_array(coords)}
    store = _store.as_store(store, meta)
    values = plan.evaluate(coords, store=store, job=meta)
    info = {
        **meta,
        **plan.settings,
        "chunk_size": plan.chunk_for(coords.shape[0]),
        "num_points": int(coords.shape[0]),
    }
    return values, info, store


def _run_adaptive(
    loss_fn,
    family,
    axes,
    data,
    *,
    test_data,
    bn,
    bn_data,
    first_layer,
    settings,
    store,
    meta,
    kind,
    adaptive,
):
    """The adaptive grid (:mod:`landscape.surface._adaptive`) over the full grid ``axes``:
    ``(values on the full grid, evaluated mask, settings, store)``."""
    plan = grid.prepare(
        loss_fn,
        family,
        data,
        test_data=test_data,
        bn=bn,
        bn_data=bn_data,
        first_layer=as_first_layer(first_layer),
        settings=settings,
        default_chunk=adaptive.chunk_size,
        fit_chunk=False,
        desc=kind,
    )
    meta = {
        **meta,
        "axes_hash": [grid._hash_array(a) for a in axes],
        "adaptive": adaptive.describe(),
    }
    store = _store.as_store(store, meta)
    dtype = np.dtype(plan.dtype)

    def evaluate(idx, r):
        coords = np.stack([axes[ax][idx[:, ax]] for ax in range(len(axes))], axis=1)
        sub = None if store is None else store.child(f"round{r}")
        return plan.evaluate(coords.astype(dtype), store=sub, job={**meta, "round": r})

    def metric_of(vals):
        if adaptive.metric not in vals.train:
            raise ValueError(
                f"{_validate.where()}: adaptive.metric must be one of {sorted(vals.train)}; got "
                f"{adaptive.metric!r}."
            )
        return np.asarray(vals.train[adaptive.metric], np.float64)

    train, test, finite, evaluated, summary = _adaptive.run(
        evaluate, [np.asarray(a, np.float64) for a in axes], adaptive, metric_of=metric_of
    )
    values = grid.GridValues(
        {k: v.ravel() for k, v in train.items()},
        None if test is None else {k: v.ravel() for k, v in test.items()},
        finite.ravel(),
    )
    info = {
        **meta,
        **plan.settings,
        "chunk_size": plan.chunk_for(summary["num_evaluated"]),
        "num_points": int(finite.size),
        "adaptive": {**adaptive.describe(), **summary},
    }
    return values, evaluated, info, store


def _finish(
    *, kind, alphas, betas, values, settings, dir_specs, dtype, seeds, store, evaluated=None
):
    shape = (alphas.size,) if betas is None else (alphas.size, betas.size)
    train = {k: np.asarray(v).reshape(shape) for k, v in values.train.items()}
    test = None
    if values.test is not None:
        test = {k: np.asarray(v).reshape(shape) for k, v in values.test.items()}
    finite = values.finite.reshape(shape)
    prov = _provenance.provenance(
        dtype=dtype,
        seeds=seeds,
        data=settings.get("data_hash"),
        settings={k: v for k, v in settings.items() if k != "bn_leaves"},
    )
    res = SliceResult(
        alphas=alphas,
        betas=betas,
        train=train,
        test=test,
        finite=finite,
        evaluated=evaluated,
        kind=kind,
        directions=list(dir_specs),
        settings=settings,
        provenance=prov,
    )
    bad = int(finite.size - finite.sum())
    if bad:
        idx = np.unravel_index(int(np.flatnonzero(~finite.ravel())[0]), shape)
        where = f"alpha={alphas[idx[0]]:.4g}" + (
            f", beta={betas[idx[1]]:.4g}" if betas is not None else ""
        )
        _validate.warn(
            f"{_validate.where()}: {bad} of {finite.size} grid points have non-finite loss or "
            f"metrics (first at {where}); they are recorded as NaN/Inf and flagged in "
            "result.finite.",
            RuntimeWarning,
        )
    if store is not None:
        store.save("result", res)
    return res


def _slice(
    loss_fn,
    params,
    data,
    dirs,
    axes,
    *,
    kind,
    test_data,
    bn,
    bn_data,
    first_layer,
    settings,
    store,
    adaptive=None,
):
    _validate.check_callable(loss_fn, name="loss_fn")
    _validate.check_params(params)
    if bn == "interpolate":
        raise ValueError(
            f"{_validate.where()}: bn='interpolate' applies to landscape.surface.interpolate "
            "(between two models' statistics); use 'fixed' or 'reestimate' for slices."
        )
    dtype = _tree.dtype_of(params)
    grids = np.meshgrid(*axes, indexing="ij")
    coords = np.stack([g.ravel() for g in grids], axis=1).astype(np.dtype(dtype))
    specs = [_dir_meta(d) for d in dirs]
    meta = _job_meta(loss_fn, params, data, test_data, specs)
    if len(dirs) == 2:
        meta["cosine"] = float(_tree.vdot(dirs[0].vector, dirs[1].vector)) / (
            specs[0]["norm_value"] * specs[1]["norm_value"]
        )
    family = grid.Affine(params, tuple(d.vector for d in dirs))
    adaptive = as_adaptive(adaptive)
    evaluated = None
    if adaptive is not None:
        values, evaluated, info, store = _run_adaptive(
            loss_fn,
            family,
            axes,
            data,
            test_data=test_data,
            bn=bn,
            bn_data=bn_data,
            first_layer=first_layer,
            settings=settings,
            store=store,
            meta=meta,
            kind=kind,
            adaptive=adaptive,
        )
    else:
        values, info, store = _run(
            loss_fn,
            family,
            coords,
            data,
            test_data=test_data,
            bn=bn,
            bn_data=bn_data,
            bn_states=None,
            first_layer=first_layer,
            settings=settings,
            store=store,
            meta=meta,
            kind=kind,
        )
    return _finish(
        kind=kind,
        alphas=axes[0],
        betas=axes[1] if len(axes) > 1 else None,
        values=values,
        settings=info,
        dir_specs=specs,
        dtype=dtype,
        seeds=_seeds(specs),
        store=store,
        evaluated=evaluated,
    )


_DOC_TEST = """
      test_data: optional test set (dict of arrays), evaluated at the same points."""
_DOC_BN = """
      bn: batch-norm statistics at each point (:mod:`landscape.grid`): ``"fixed"`` (default:
        the ones stored in ``loss_fn``, the centre's), ``"reestimate"`` (re-estimated at every
        point from ``bn_data`` in training mode) or ``"auto"`` (``"reestimate"`` for
        batch-norm models)."""
_DOC_REST = """
      bn_data: training data for ``bn="reestimate"`` (default: ``data``), in batches of
        ``settings.bn_batch_size`` (default ``min(128, n)``, the training loader batch of
        Garipov et al.'s ``update_bn``; a last smaller batch is weighted by its size);
        ``settings.bn_num_batches`` uses only that many full batches. The statistics are the
        mean over batches of each batch's statistics, so shuffle data that is sorted by class.
      first_layer: the first-layer trick (:mod:`landscape.surface._fast`): ``"auto"`` (the
        default) finds, in the loss's traced program, the first product of the data with a
        parameter leaf (a dense layer, a convolution: any model, never by layer names) and
        precomputes it for the centre and each direction (or each end point), so that each
        point pays a 3-term combination instead of that product; same values up to
        floating-point reassociation. It falls back to the plain evaluation where it does not
        apply (no such product, ``bn="reestimate"``, products above
        ``settings.memory_budget``) or does not pay (a product with fewer than 4
        multiply-adds per output and combination term), and says so:
        ``result.settings["first_layer"]`` (also in the provenance) holds ``applied``, the
        product and leaf, or the ``reason``. ``True`` (or :func:`affine_first_layer`) applies
        it wherever it is exact and warns when it cannot; ``None``/``False`` turns it off.
      settings: a :class:`landscape.GridSettings` (batch size, chunk size (default 64),
        strategy, memory budget, progress bar, re-estimation batches).
      store: a directory (or :class:`landscape.Store`) for resumable results: finished chunks
        are saved atomically with all settings (directions' key and spec, normalisation, data
        hash, batch-norm policy); a restarted call continues where it stopped; the final result
        is saved as the entry ``result``. Another job's store raises ``ValueError`` listing the
        differences (``landscape.Store(path, overwrite=True)`` replaces it)."""


@_validate.public
def slice_1d(
    loss_fn: Callable,
    params: PyTree,
    data: dict,
    direction,
    *,
    alphas=None,
    test_data: dict | None = None,
    bn: str = "fixed",
    bn_data: dict | None = None,
    first_layer="auto",
    settings: grid.GridSettings | None = None,
    store=None,
    adaptive=None,
) -> SliceResult:
    """Loss along a line, ``L(params + alpha d)``, exact over the whole data set.

    Args:
      loss_fn: ``loss_fn(params, batch)`` (a :class:`landscape.Loss` gives accuracy too).
      params: the centre.
      data: training data (dict of arrays with a leading example axis).
      direction: a :class:`Direction` or a params-shaped pytree (e.g.
        :func:`random_direction`).
      alphas: coordinates, strictly increasing (default ``linspace(-1, 1, 51)``, Li et al.)."""
    _validate.check_params(params)
    d = as_direction(direction, params, name="direction")
    a = _coords(alphas, np.linspace(-1, 1, 51), name="alphas")
    return _slice(
        loss_fn,
        params,
        data,
        [d],
        [a],
        kind="slice_1d",
        test_data=test_data,
        bn=bn,
        bn_data=bn_data,
        first_layer=first_layer,
        settings=settings,
        store=store,
        adaptive=adaptive,
    )


def _two_directions(directions, params):
    if isinstance(directions, PCAResult):
        if directions.num_components < 2:
            raise ValueError(
                f"{_validate.where()}: the PCA result has {directions.num_components} component; need 2."
            )
        directions = directions.as_directions()[:2]
    if isinstance(directions, (Direction, Mapping)) or not isinstance(directions, Sequence):
        raise TypeError(
            f"{_validate.where()}: directions must be a pair (d1, d2) of Directions or params-shaped "
            f"pytrees (or a PCAResult); got {type(directions).__name__}."
        )
    if len(directions) != 2:
        raise ValueError(
            f"{_validate.where()}: directions must hold exactly 2 directions; got {len(directions)}."
        )
    d1 = as_direction(directions[0], params, name="directions[0]")
    d2 = as_direction(directions[1], params, name="directions[1]")
    cos = float(_tree.vdot(d1.vector, d2.vector)) / (d1.norm() * d2.norm())
    if abs(cos) > 1 - 1e-6:
        raise ValueError(
            f"{_validate.where()}: the two directions are parallel (cosine {cos:.8f}); the plane is "
            "degenerate. Draw the second with another key or orthogonal_to=d1."
        )
    return d1, d2


@_validate.public
def slice_2d(
    loss_fn: Callable,
    params: PyTree,
    data: dict,
    directions,
    *,
    alphas=None,
    betas=None,
    test_data: dict | None = None,
    bn: str = "fixed",
    bn_data: dict | None = None,
    first_layer="auto",
    settings: grid.GridSettings | None = None,
    store=None,
    adaptive=None,
) -> SliceResult:
    """Loss on a plane, ``L(params + alpha d1 + beta d2)``, exact over the whole data set.

    Args:
      loss_fn: ``loss_fn(params, batch)`` (a :class:`landscape.Loss` gives accuracy too).
      params: the centre.
      data: training data.
      directions: ``(d1, d2)``: :class:`Direction` objects or params-shaped pytrees, or a
        :class:`PCAResult` (its first two components).
      alphas, betas: coordinates, strictly increasing (default ``linspace(-1, 1, 51)`` each,
        the 51 x 51 grid of Li et al.)."""
    _validate.check_params(params)
    d1, d2 = _two_directions(directions, params)
    a = _coords(alphas, np.linspace(-1, 1, 51), name="alphas")
    b = _coords(betas, np.linspace(-1, 1, 51), name="betas")
    return _slice(
        loss_fn,
        params,
        data,
        [d1, d2],
        [a, b],
        kind="slice_2d",
        test_data=test_data,
        bn=bn,
        bn_data=bn_data,
        first_layer=first_layer,
        settings=settings,
        store=store,
        adaptive=adaptive,
    )


@_validate.public
def interpolate(
    loss_fn: Callable,
    params_a,
    params_b,
    data: dict,
    *,
    ts=None,
    test_data: dict | None = None,
    bn: str = "fixed",
    bn_states=None,
    bn_data: dict | None = None,
    first_layer="auto",
    settings: grid.GridSettings | None = None,
    store=None,
) -> SliceResult:
    """Loss along the line through two solutions, ``L((1 - t) a + t b)``, with extrapolation.

    Goodfellow et al. (2015)'s interpolation, and Li et al. (2018)'s 1-D plots between a small-
    and a large-batch solution (``t`` in ``[-0.5, 1.5]``, 401 points). The points are the
    linear path :func:`landscape.paths.linear_path` evaluated by the grid evaluator (no
    refinement, unlike :func:`landscape.connect.profile`).

    Args:
      loss_fn: ``loss_fn(params, batch)``.
      params_a, params_b: the two end points (params pytrees, or :class:`landscape.Model`
        objects, whose states then serve as ``bn_states``).
      data: training data.
      ts: coordinates, strictly increasing (default ``linspace(-0.5, 1.5, 401)``).
      bn: ``"fixed"`` (default: ``loss_fn``'s stored statistics everywhere), ``"interpolate"``
        (``(1 - t) state_a + t state_b``: Li et al.'s ``states`` directions), ``"reestimate"``
        or ``"auto"``.
      bn_states: the end points' model states ``(state_a, state_b)`` for ``bn="interpolate"``
        (default: from :class:`landscape.Model` end points; ``state_a`` defaults to
        ``loss_fn.state``)."""
    pa, sa_model = _unpack_model(params_a)
    pb, sb_model = _unpack_model(params_b)
    _validate.check_callable(loss_fn, name="loss_fn")
    _validate.check_params(pa, name="params_a")
    _validate.check_params(pb, name="params_b")
    _validate.check_same_structure(pb, pa, name="params_b", ref_name="params_a")
    pb = jax.tree.map(lambda b, a: jnp.asarray(b).astype(jnp.result_type(a)), pb, pa)
    t = _coords(ts, np.linspace(-0.5, 1.5, 401), name="ts")
    dtype = _tree.dtype_of(pa)
    if bn == "interpolate":
        sa, sb = (None, None) if bn_states is None else tuple(bn_states)
        sa = (
            sa
            if sa is not None
            else (sa_model if sa_model is not None else getattr(loss_fn, "state", None))
        )
        sb = sb if sb is not None else sb_model
        if sb is None:
            raise ValueError(
                f"{_validate.where()}: bn='interpolate' needs the second model's state: pass "
                "bn_states=(state_a, state_b) or params_b as a landscape.Model."
            )
        bn_states = (sa, sb)
    path = _paths.linear_path(pa, pb)
    between = Direction(jax.tree.map(jnp.subtract, pb, pa), {"kind": "between"})
    spec = _dir_meta(between)
    spec["distance"] = spec["norm_value"]
    meta = _job_meta(loss_fn, pa, data, test_data, [spec])
    meta["params_b_hash"] = _provenance.data_hash(pb)
    coords = t.astype(np.dtype(dtype))[:, None]
    values, info, store = _run(
        loss_fn,
        path,
        coords,
        data,
        test_data=test_data,
        bn=bn,
        bn_data=bn_data,
        bn_states=bn_states,
        first_layer=first_layer,
        settings=settings,
        store=store,
        meta=meta,
        kind="interpolate",
    )
    return _finish(
        kind="interpolate",
        alphas=t,
        betas=None,
        values=values,
        settings=info,
        dir_specs=[spec],
        dtype=dtype,
        seeds=None,
        store=store,
    )


_DOC_ADAPTIVE = """
      adaptive: ``None`` (default: every point of the grid is evaluated), ``True`` or a
        :class:`Adaptive`: an adaptive grid that evaluates a coarse lattice (every
        ``initial_stride``-th coordinate, default 8) and refines, round by round, only the
        cells whose bilinear interpolation misses the evaluated midpoints by more than
        ``atol + rtol |f|`` (``f`` the training loss by default; default: ``atol`` 1% of its
        range on the coarse lattice, ``rtol`` 0).
        The result is the same :class:`SliceResult` on the full grid: evaluated points exact,
        the others interpolated, ``result.evaluated`` marking which, and
        ``result.settings["adaptive"]`` the points evaluated and rounds. The test is an
        estimate, not a bound (a feature narrower than the coarse lattice can be missed);
        ``benchmarks/surface`` reports its error against the full grid."""

for _f in (slice_1d, slice_2d):
    _f.__doc__ += (
        _DOC_TEST
        + _DOC_BN
        + _DOC_REST
        + _DOC_ADAPTIVE
        + """

    Returns:
      A :class:`SliceResult` (train and test loss and metrics on the grid, flags of non-finite
      points, settings and provenance).

    Raises:
      TypeError, ValueError: directions of another structure or shape than ``params``,
        non-finite or zero directions, parallel directions, empty or non-increasing
        coordinates, invalid data or settings, a ``store`` holding another job.

    Cost: one full-data-set forward pass per point and split (less the first layer's product
    with the first-layer trick; plus one training-mode pass per point with
    ``bn="reestimate"``), for every point of the grid or, with ``adaptive=``, only for the
    points evaluated; memory: one point's intermediates (``"map"``) per device, never the
    whole grid's parameters, plus the trick's ``K`` precomputed products.

    References:
      Li, Xu, Taylor, Studer, Goldstein (2018), Visualizing the Loss Landscape of Neural Nets.
    """
    )
interpolate.__doc__ += (
    _DOC_TEST
    + _DOC_REST
    + """

    Returns:
      A :class:`SliceResult` of kind ``"interpolate"`` (``result.ts`` are the coordinates).

    Cost: as :func:`slice_1d`.

    References:
      Goodfellow, Vinyals, Saxe (2015), Qualitatively characterizing neural network
      optimization problems; Li et al. (2018).
    """
)
