"""The grid evaluator: the exact loss (and its aux metrics) at the points of a parameterised
family, with one batch-norm vocabulary and one settings object, for every analysis.

A *family* maps coordinates ``c`` (a vector of ``k`` numbers) to parameters, inside compiled
code:

* :class:`Affine`: ``centre + sum_i c_i d_i`` (a 1-D or 2-D slice; a plane through three
  points, whose first coordinate can also weight two end points' batch-norm statistics);
* :class:`landscape.paths.Path`: ``path(t)`` with ``c = (t,)`` (the line between two models,
  a Bezier curve, a polygonal chain).

:func:`prepare` validates everything once (the loss traced on two examples, the data, the
batch-norm policy and its statistics' update form, the chunking) and returns a :class:`Plan`;
``plan.evaluate(coords, store=...)`` evaluates any set of coordinates with it (refinement
rounds reuse the plan and its compiled program). :func:`evaluate` does both in one call.

Every point is the exact full-data-set mean (:func:`landscape.engine.batched_mean`): points
are built from their coordinates inside the compiled program (a 51 x 51 grid never holds 2601
parameter copies), evaluated in chunks of ``chunk_size`` points (``lax.map`` over the points of
a chunk, a scan over the batches), one compiled program per chunk shape, sharded over devices
(``jax.shard_map`` over the points; the data replicated). The chunk loop is the foundation's
chunk driver (:func:`landscape.store.run_chunks`): progress, atomic saving and resuming.

Batch norm (``bn=``), the same words everywhere:

* ``"fixed"``: the statistics stored in ``loss_fn`` (a :class:`landscape.Loss`'s model state)
  at every point;
* ``"interpolate"``: ``(1 - a) s_a + a s_b`` from the end points' states ``bn_states=(s_a,
  s_b)``, ``a`` the family's interpolation weight (``t`` on a path; ``x / |w_2 - w_0|`` on a
  plane through two end points), as Li et al. (2018)'s ``--dir_type states``;
* ``"reestimate"``: re-estimated at every point from training batches of ``bn_data`` in
  training mode (:func:`landscape.batchnorm.reestimated_state`: the mean over batches of each
  batch's statistics, Garipov et al.'s ``update_bn``), inside the compiled program;
* ``"auto"``: ``"reestimate"`` when the model has floating state (batch norm), else
  ``"fixed"``.

Each analysis states its default: slices and interpolation ``"fixed"`` (the centre's, or the
loss's, statistics), paths and planes of the connectivity analysis ``"auto"``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import inspect
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from jax.tree_util import Partial

from landscape import _provenance, engine
from landscape import batchnorm as _batchnorm
from landscape import store as _store
from landscape import tree as _tree
from landscape import validate as _validate
from landscape.losses import Loss
from landscape.paths import Path

PyTree = Any

BN_POLICIES = ("auto", "fixed", "interpolate", "reestimate")
"""The batch-norm vocabulary of every grid, path and plane."""

STRATEGIES = ("auto", "map", "vmap")

DEFAULT_MEMORY_BUDGET = 2 << 30
"""Bytes one chunk's points may hold at once when the backend reports no memory size."""

__all__ = [
    "Affine",
    "BN_POLICIES",
    "GridSettings",
    "GridValues",
    "Plan",
    "SplitValues",
    "evaluate",
    "evaluate_points",
    "loss_points",
    "prepare",
    "resolve_bn",
]


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class GridSettings:
    """How a grid is evaluated (never what: results do not depend on these, except the
    batch-norm re-estimation batches).

    Attributes:
      batch_size: examples per batch of each full-data-set mean (default: the engine's,
        :data:`landscape.engine.DEFAULT_BATCH_SIZE`), capped at each data set's size.
      chunk_size: points per compiled call (default: the analysis's, e.g. 64 for slices, 8 for
        paths), rounded up to a multiple of the device count. Chunks are also the unit of
        saving and progress.
      strategy: ``"auto"`` (= ``"map"``, chosen by measurement: one point's intermediates at a
        time, as fast per point as one jitted loss on CPU), ``"map"`` or ``"vmap"`` (all points
        of a chunk at once; the chunk size is then bounded by ``memory_budget``).
      map_batch: with ``"map"``, points vectorised together inside the map
        (``lax.map(batch_size=...)``), bounded by ``memory_budget``.
      memory_budget: bytes a chunk may hold (default: a quarter of the device memory where the
        backend reports it, else 2 GiB).
      progress: show a progress bar over chunks.
      bn_batch_size: batch size of batch-norm re-estimation (default ``min(128, n)``, a
        training batch as in Garipov et al.'s ``update_bn``; variances depend on it).
      bn_num_batches: re-estimate from only this many full batches (default: all of
        ``bn_data``).

    Example:
      >>> fast = landscape.GridSettings(batch_size=512, progress=True)
      >>> landscape.surface.slice_2d(loss_fn, params, data, dirs, settings=fast)
    """

    batch_size: int | None = None
    chunk_size: int | None = None
    strategy: str = "auto"
    map_batch: int | None = None
    memory_budget: int | None = None
    progress: bool = False
    bn_batch_size: int | None = None
    bn_num_batches: int | None = None

    def replace(self, **changes) -> GridSettings:
        return dataclasses.replace(self, **changes)

    def checked(self) -> GridSettings:
        """Validated copy (the memory budget resolved); errors name the public function."""
        _validate.check_choice(self.strategy, STRATEGIES, name="settings.strategy")
        for name in ("batch_size", "chunk_size", "map_batch", "bn_batch_size", "bn_num_batches"):
            v = getattr(self, name)
            if v is not None:
                _validate.check_positive_int(v, name=f"settings.{name}")
        if not isinstance(self.progress, bool):
            raise TypeError(
                f"{_validate.where()}: settings.progress must be a bool; got {self.progress!r}."
            )
        budget = _default_memory_budget() if self.memory_budget is None else self.memory_budget
        budget = _validate.check_positive_int(budget, name="settings.memory_budget")
        if self.map_batch is not None and self.strategy == "vmap":
            raise ValueError(
                f"{_validate.where()}: settings.map_batch applies to strategy='map' only; got "
                "strategy='vmap'."
            )
        return dataclasses.replace(self, memory_budget=budget)


def as_settings(settings) -> GridSettings:
    if settings is None:
        return GridSettings().checked()
    if not isinstance(settings, GridSettings):
        raise TypeError(
            f"{_validate.where()}: settings must be a landscape.GridSettings (e.g. "
            f"GridSettings(batch_size=256, progress=True)); got {type(settings).__name__}."
        )
    return settings.checked()


def _default_memory_budget() -> int:
    """A quarter of the first device's memory where the backend reports it (GPUs), else
    :data:`DEFAULT_MEMORY_BUDGET`."""
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:  # backends without memory statistics
        stats = {}
    limit = stats.get("bytes_limit")
    return int(limit // 4) if limit else DEFAULT_MEMORY_BUDGET


# --------------------------------------------------------------------------------------------
# Families of points
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Affine:
    """``centre + sum_i c_i d_i``: a slice (one or two directions) or a plane.

    Attributes:
      centre: the point at ``c = 0`` (params-shaped).
      directions: tuple of params-shaped directions.
      length: optional scalar: on a plane through two end points ``w_0`` (the centre) and
        ``w_2 = w_0 + length * d_0``, the weight of ``w_2``'s batch-norm statistics at ``c`` is
        ``c_0 / length`` (policy ``"interpolate"``); ``None``: the family has no end points.
    """

    centre: PyTree
    directions: tuple
    length: Any = None

    def point(self, c) -> PyTree:
        """``centre + c[0] d_0 + c[1] d_1 + ...`` leaf by leaf, in the leaves' dtypes."""

        def leaf(x, *ds):
            acc = x
            for k, d in enumerate(ds):
                acc = acc + c[k].astype(x.dtype) * d
            return acc

        return jax.tree.map(leaf, self.centre, *self.directions)

    def alpha(self, c):
        return c[0] / self.length

    @property
    def interpolates(self) -> bool:
        return self.length is not None

    def basis(self) -> list[PyTree]:
        return [self.centre, *self.directions]

    def basis_weights(self, c) -> jax.Array:
        return jnp.concatenate([jnp.ones((1,), c.dtype), c])

    @property
    def num_coords(self) -> int:
        return len(self.directions)

    @property
    def origin(self) -> PyTree:
        return self.centre

    def describe(self) -> dict:
        return {
            "family": "affine",
            "num_directions": len(self.directions),
            "interpolates": self.interpolates,
        }


jax.tree_util.register_dataclass(
    Affine, data_fields=["centre", "directions", "length"], meta_fields=[]
)


def _family_info(family):
    """``(num_coords, interpolates)`` of a family (Affine or Path)."""
    if isinstance(family, Path):
        return 1, True
    if isinstance(family, Affine):
        return family.num_coords, family.interpolates
    raise TypeError(
        f"{_validate.where()}: family must be a landscape.grid.Affine or a landscape.paths.Path; "
        f"got {type(family).__name__}."
    )


# --------------------------------------------------------------------------------------------
# Point builders and per-batch functions (module level: stable static parts)
# --------------------------------------------------------------------------------------------
def _pt_fixed(c, family):
    return family.point(c)


def _pt_interpolate(c, family, state_a, state_b):
    return family.point(c), _batchnorm.interpolated_state(family.alpha(c), state_a, state_b)


def _pt_reestimate(c, family, loss_fn, form, bn_batched):
    params = family.point(c)
    return params, _batchnorm.reestimated_state(loss_fn, form, params, bn_batched)


def _pt_basis_weights(c, family):
    return family.basis_weights(c), family.point(c)


def _state_loss_dict(loss_fn, point, batch):
    params, state = point
    return engine.loss_dict(loss_fn.with_state(state), params, batch)


# --------------------------------------------------------------------------------------------
# Batch norm
# --------------------------------------------------------------------------------------------
def _has_float_state(loss_fn) -> bool:
    return _batchnorm.has_float_state(loss_fn)


@_validate.public("landscape.grid.resolve_bn")
def resolve_bn(bn, loss_fn, *, bn_states=None, interpolates: bool = True) -> str:
    """The batch-norm policy to use (``"auto"`` resolved), after checking that it applies.

    Raises:
      TypeError: ``"interpolate"``/``"reestimate"`` with a plain function instead of a
        :class:`landscape.Loss`.
      ValueError: an unknown policy; ``"interpolate"`` or ``"reestimate"`` on a model without
        floating state; ``"interpolate"`` on a family without end points or without
        ``bn_states=(state_a, state_b)`` matching the model's state.
    """
    _validate.check_choice(bn, BN_POLICIES, name="bn")
    has_state = _has_float_state(loss_fn)
    if bn == "auto":
        return "reestimate" if has_state else "fixed"
    if bn in ("reestimate", "interpolate"):
        if not isinstance(loss_fn, Loss):
            raise TypeError(
                f"{_validate.where()}: bn={bn!r} needs a landscape.Loss "
                "(landscape.make_loss_fn(model)) that carries the model, not a plain function; "
                f"got {type(loss_fn).__name__}."
            )
        if not has_state:
            raise ValueError(
                f"{_validate.where()}: bn={bn!r} but the model has no state (no floating "
                "batch-norm statistics)."
            )
    if bn == "interpolate":
        if not interpolates:
            raise ValueError(
                f"{_validate.where()}: bn='interpolate' needs two end points whose statistics to "
                "interpolate (an interpolation, a path or a plane through two models); use "
                "'fixed' or 'reestimate' here."
            )
        if bn_states is None or not isinstance(bn_states, (tuple, list)) or len(bn_states) != 2:
            raise ValueError(
                f"{_validate.where()}: bn='interpolate' needs bn_states=(state_a, state_b), the "
                "end points' model states."
            )
        for i, s in enumerate(bn_states):
            _validate.check_same_structure(
                s, loss_fn.state, name=f"bn_states[{i}]", ref_name="the model's state"
            )
            _validate.check_finite(s, name=f"bn_states[{i}]")
    return bn


def _bn_reestimation(loss_fn, params, bn_data, settings: GridSettings):
    """Lay out the re-estimation batches and probe the state's update form once."""
    if isinstance(bn_data, engine.Batched):
        raise TypeError(
            f"{_validate.where()}: bn_data must be a dict of arrays (training data), not a Batched."
        )
    bn_batched = _batchnorm.bn_batches(bn_data, settings.bn_batch_size, settings.bn_num_batches)
    form = _batchnorm.probe_state(loss_fn, params, bn_batched)
    info = {
        "bn_batch_size": bn_batched.batch_size,
        "bn_num_batches": bn_batched.num_batches + (1 if bn_batched.rest_size else 0),
        "bn_leaves": list(form.names),
    }
    return form, bn_batched, info


# --------------------------------------------------------------------------------------------
# Memory estimate and chunk plan
# --------------------------------------------------------------------------------------------
def _jaxpr_bytes(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            aval = getattr(v, "aval", None)
            if aval is not None and hasattr(aval, "shape") and hasattr(aval, "dtype"):
                with contextlib.suppress(TypeError):  # extended dtypes (keys) are skipped
                    total += int(np.prod(aval.shape)) * np.dtype(aval.dtype).itemsize
        for p in eqn.params.values():
            sub = getattr(p, "jaxpr", p)
            if hasattr(sub, "eqns"):
                total += _jaxpr_bytes(sub)
    return total


def _bytes_per_point(value_fn, point_fn, point_args, c0, batched) -> int:
    """Upper bound of one point's working memory: the sum of the sizes of every intermediate
    of ``value_fn(point_fn(c), batch)`` on one batch (XLA reuses buffers, so the truth is lower)."""
    b0 = jax.tree.map(lambda x: x[0], batched.full) if batched.full is not None else batched.rest
    try:
        jaxpr = jax.make_jaxpr(lambda c, a, b: value_fn(point_fn(c, *a), b))(c0, point_args, b0)
    except Exception:  # pragma: no cover - estimation must never break an evaluation
        return 0
    return _jaxpr_bytes(jaxpr.jaxpr)


def _device_multiple(n: int) -> int:
    ndev = jax.device_count()
    return int(math.ceil(n / ndev) * ndev)


# --------------------------------------------------------------------------------------------
# The chunked evaluation at many points
# --------------------------------------------------------------------------------------------
def _points_core(value_fn, point_fn, point_args, coords, batched, strategy, map_batch):
    def one(c):
        return engine.batched_mean(value_fn, point_fn(c, *point_args), batched)[0]

    if strategy == "vmap":
        return jax.vmap(one)(coords)
    return jax.lax.map(one, coords, batch_size=map_batch)


@functools.partial(
    jax.jit, static_argnames=("fn_static", "pf_static", "strategy", "map_batch", "sharded")
)
def _points_jit(
    fn_static, fn_dyn, pf_static, pf_dyn, point_args, coords, batched, strategy, map_batch, sharded
):
    fn = engine.merge_fn(fn_static, fn_dyn)
    point_fn = engine.merge_fn(pf_static, pf_dyn)
    if not sharded:
        return _points_core(fn, point_fn, point_args, coords, batched, strategy, map_batch)

    def local(c, pa, b):
        return _points_core(fn, point_fn, pa, c, b, strategy, map_batch)

    return jax.shard_map(
        local,
        mesh=engine.mesh(),
        in_specs=(P(engine.DATA_AXIS), P(), P()),
        out_specs=P(engine.DATA_AXIS),
        check_vma=False,
    )(coords, point_args, batched)


def _hash_array(a) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


def layout(value_fn, point_fn, point_args, coords, batched, chunk_size) -> dict:
    """What a chunked evaluation computes, on what, split how: the description a store is
    bound to (chunks of another job or layout are never mixed in)."""
    fs, fd = engine.split_fn(value_fn)
    ps, pd = engine.split_fn(point_fn)
    return {
        "num_points": int(coords.shape[0]),
        "chunk_size": int(chunk_size),
        "coords_hash": _hash_array(coords),
        "coords_dtype": str(coords.dtype),
        # the function (static description and arrays, e.g. a Loss's model state), the point
        # builder and its arguments, the data
        "value_fn": _store.stable_text(fs),
        "fn_arrays": _provenance.data_hash(fd),
        "point_fn": _store.stable_text(ps),
        "point_arrays": _provenance.data_hash((pd, point_args)),
        # static parts of the point arguments (a path's kind, the family's structure)
        "point_structure": _store.stable_text(jax.tree.structure(point_args)),
        "data": _provenance.data_hash((batched.full, batched.rest)),
        "num_examples": int(batched.num_examples),
        "batch_size": int(batched.batch_size),
    }


@_validate.public("landscape.grid.evaluate_points")
def evaluate_points(
    value_fn: Callable,
    point_fn: Callable,
    coords,
    data: PyTree,
    *,
    point_args: tuple = (),
    batch_size: int | None = None,
    chunk_size: int | None = None,
    strategy: str = "map",
    map_batch: int | None = None,
    store=None,
    job: dict | None = None,
    progress: bool = False,
    desc: str = "points",
) -> PyTree:
    """Exact data-set means of ``value_fn(point, batch)`` at many points, in compiled chunks (the
    low-level driver under :func:`evaluate`; use that for losses).

    Args:
      value_fn: ``value_fn(point, batch) -> pytree of batch means`` (e.g.
        ``Partial(landscape.engine.loss_dict, loss_fn)``).
      point_fn: ``point_fn(coord, *point_args) -> point``; builds each point inside the compiled
        program (e.g. ``params + a d1 + b d2``), so points are never materialised on the host.
      coords: array ``(num_points, ...)`` of coordinates.
      data: dict of arrays or a :class:`landscape.engine.Batched` (laid out with
        ``placement="replicate"`` when several devices share the points).
      point_args: dynamic arguments of ``point_fn`` (centre parameters, directions).
      batch_size: examples per batch (when ``data`` is not laid out yet).
      chunk_size: points per compiled call (default: up to 64), rounded up to a multiple of the
        device count. The last chunk is padded, so one compilation serves all.
      strategy: ``"map"`` (``lax.map`` over the points of a chunk) or ``"vmap"``.
      map_batch: with ``"map"``, vectorise this many points inside the map.
      store: a path or :class:`landscape.Store`: finished chunks are saved atomically and
        loaded on restart; the store is bound to ``job`` and to what is computed (function, its
        arrays, point builder and arguments, data, coordinates, chunking).
      job: extra description of the job for the store.
      progress: progress bar over chunks.
      desc: the progress bar's label.

    Returns:
      The pytree returned by ``value_fn`` with a leading ``num_points`` axis, as NumPy arrays.
    """
    _validate.check_choice(strategy, ("map", "vmap"), name="strategy")
    coords = np.asarray(coords)
    if coords.ndim == 0 or coords.shape[0] == 0:
        raise ValueError(
            f"{_validate.where()}: coords must have a non-empty leading axis of points; got shape "
            f"{coords.shape}."
        )
    if not np.all(np.isfinite(coords)):
        raise ValueError(f"{_validate.where()}: coords must be finite.")
    num_points = coords.shape[0]
    sharded = jax.device_count() > 1
    batched = engine.batch(data, batch_size, placement="replicate" if sharded else "shard")
    if sharded and batched.placement != "replicate":
        raise ValueError(
            f"{_validate.where()}: with {jax.device_count()} devices the points are sharded, so data "
            "must be laid out with placement='replicate' (pass the raw data or "
            "engine.batch(data, placement='replicate'))."
        )
    chunk_size = min(num_points, 64) if chunk_size is None else chunk_size
    chunk_size = _device_multiple(_validate.check_positive_int(chunk_size, name="chunk_size"))
    num_chunks = int(math.ceil(num_points / chunk_size))
    fs, fd = engine.split_fn(value_fn)
    ps, pd = engine.split_fn(point_fn)
    coord_sharding = NamedSharding(engine.mesh(), P(engine.DATA_AXIS)) if sharded else None
    if store is not None:
        store = _store.as_store(store)
        store.bind(
            {**(job or {}), **layout(value_fn, point_fn, point_args, coords, batched, chunk_size)}
        )

    def compute(ids):
        (ci,) = ids
        start, stop = ci * chunk_size, min((ci + 1) * chunk_size, num_points)
        c = coords[start:stop]
        if c.shape[0] < chunk_size:  # pad so every chunk has one shape
            c = np.concatenate([c, np.repeat(c[-1:], chunk_size - c.shape[0], axis=0)], axis=0)
        c = engine.place(c, coord_sharding) if sharded else jax.device_put(c)
        out = _points_jit(fs, fd, ps, pd, point_args, c, batched, strategy, map_batch, sharded)
        return [jax.tree.map(lambda x: np.asarray(x)[: stop - start], out)]

    results = _store.run_chunks(compute, num_chunks, store=store, progress=progress, desc=desc)
    return jax.tree.map(lambda *xs: np.concatenate(xs, axis=0), *results)


@_validate.public("landscape.grid.loss_points")
def loss_points(loss_fn: Callable, point_fn: Callable, coords, data: PyTree, **settings) -> dict:
    """:func:`evaluate_points` of ``{"loss": ..., aux...}`` for a ``loss_fn(params, batch)``
    (the same keyword-only settings; the signature shows them)."""
    return evaluate_points(Partial(engine.loss_dict, loss_fn), point_fn, coords, data, **settings)


_ep = inspect.signature(evaluate_points)
loss_points.__signature__ = _ep.replace(
    parameters=[
        inspect.Parameter("loss_fn", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Callable),
        *list(_ep.parameters.values())[1:],
    ]
)
del _ep


# --------------------------------------------------------------------------------------------
# What every grid result shares
# --------------------------------------------------------------------------------------------
class SplitValues:
    """Mixin of results holding ``train`` and ``test`` dicts of metric arrays (slices, profiles,
    planes): one accessor for all of them."""

    @property
    def metrics(self) -> list[str]:
        """The metrics evaluated (``"loss"``, and the loss's aux metrics)."""
        return sorted(self.train)

    def values(self, metric: str = "loss", split: str = "train") -> np.ndarray:
        """The values of one metric on one split (``"train"`` or ``"test"``)."""
        name = f"{type(self).__name__}.values"
        src = {"train": self.train, "test": self.test}.get(split)
        if src is None:
            allowed = ["train"] + (["test"] if self.test is not None else [])
            raise ValueError(f"{name}: split must be one of {allowed}; got {split!r}.")
        if metric not in src:
            raise ValueError(f"{name}: metric must be one of {sorted(src)}; got {metric!r}.")
        return np.asarray(src[metric])


# --------------------------------------------------------------------------------------------
# The plan: everything validated once, then any coordinates
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class GridValues:
    """Values of one evaluation: ``{split: {metric: (n,)}}`` plus flags.

    Attributes:
      train: ``{"loss", aux...}`` on the training data, each ``(n,)``.
      test: the same on the test data, or ``None``.
      finite: ``(n,)`` bool, every metric of every split finite at that point.
    """

    train: dict
    test: dict | None
    finite: np.ndarray

    def first_nonfinite(self) -> tuple[int, str, str] | None:
        """``(index, split, metric)`` of the first non-finite value, or ``None``."""
        for i in np.flatnonzero(~self.finite)[:1]:
            for split, vals in (("train", self.train), ("test", self.test or {})):
                for k, v in vals.items():
                    if not np.isfinite(v[i]):
                        return int(i), split, k
        return None


@dataclasses.dataclass(frozen=True)
class Plan:
    """A prepared grid evaluation (from :func:`prepare`): call :meth:`evaluate` with any
    coordinates. ``settings`` records what was chosen (policy, chunking, batch sizes)."""

    value_fn: Callable
    point_fn: Callable
    point_args: tuple
    splits: tuple  # ((name, Batched), ...)
    strategy: str
    chunk_size: int | None
    fit_chunk: int | None
    map_batch: int | None
    num_coords: int
    dtype: Any
    progress: bool
    desc: str
    settings: dict

    def chunk_for(self, num_points: int) -> int:
        if self.chunk_size is not None:
            return self.chunk_size
        return _device_multiple(min(num_points, self.fit_chunk))

    @_validate.public("landscape.grid.Plan.evaluate")
    def evaluate(self, coords, *, store=None, job: dict | None = None) -> GridValues:
        """Evaluate the plan at ``coords`` (``(n, num_coords)``, or ``(n,)`` for one coordinate).

        ``store`` (a bound :class:`landscape.Store` or ``None``): each split is saved in its own
        sub-store (``train``, ``test``), bound to ``job`` and to the evaluation's layout.
        """
        if store is not None and (not isinstance(store, _store.Store) or store.meta is None):
            store = _store.as_store(store, {"job": "landscape.grid.Plan.evaluate", **(job or {})})
        coords = np.asarray(coords)
        if coords.ndim == 1:
            coords = coords[:, None]
        coords = coords.astype(np.dtype(self.dtype))
        if coords.ndim != 2 or coords.shape[1] != self.num_coords:
            raise ValueError(
                f"{_validate.where()}: coords must have shape (n, {self.num_coords}); got "
                f"{coords.shape}."
            )
        chunk = self.chunk_for(coords.shape[0])
        out = {}
        for name, batched in self.splits:
            sub = None
            if store is not None:
                sub = store.child(name)
            out[name] = evaluate_points(
                self.value_fn,
                self.point_fn,
                coords,
                batched,
                point_args=self.point_args,
                chunk_size=chunk,
                strategy=self.strategy,
                map_batch=self.map_batch,
                store=sub,
                job={**(job or {}), "split": name, "settings": self.settings},
                progress=self.progress,
                desc=f"{self.desc} ({name})",
            )
        out = {k: {m: np.asarray(v) for m, v in vals.items()} for k, vals in out.items()}
        finite = np.ones(coords.shape[0], bool)
        for vals in out.values():
            for v in vals.values():
                finite &= np.isfinite(v)
        return GridValues(out["train"], out.get("test"), finite)


def _check_first_layer(first_layer):
    if not callable(getattr(first_layer, "prepare", None)):
        raise TypeError(
            f"{_validate.where()}: first_layer must come from "
            "landscape.surface.affine_first_layer(...); got "
            f"{type(first_layer).__name__}."
        )


@_validate.public("landscape.grid.prepare")
def prepare(
    loss_fn: Callable,
    family,
    data: dict,
    *,
    test_data: dict | None = None,
    bn: str = "fixed",
    bn_data: dict | None = None,
    bn_states=None,
    first_layer=None,
    settings: GridSettings | None = None,
    default_chunk: int = 64,
    fit_chunk: bool = True,
    desc: str = "grid",
) -> Plan:
    """Validate and lay out a grid evaluation once; see :func:`evaluate` for the arguments.

    Args:
      default_chunk: the chunk size when ``settings.chunk_size`` is not set.
      fit_chunk: with the default chunk size, shrink it to the number of points of each
        evaluation (no padding for short grids); ``False`` keeps one chunk shape for every
        evaluation of the plan (one compiled program for a grid and its refinement rounds).
    """
    _validate.check_callable(loss_fn, name="loss_fn")
    settings = as_settings(settings)
    num_coords, interpolates = _family_info(family)
    origin = family.origin
    _validate.check_params(origin, name="params")
    dtype = _tree.dtype_of(origin)
    splits_raw = [("train", data)] + ([("test", test_data)] if test_data is not None else [])
    for name, d in splits_raw:
        if isinstance(d, engine.Batched):
            continue
        _validate.check_data(
            d, name=name if name == "test_data" else ("data" if name == "train" else "test_data")
        )
    engine.check_loss(loss_fn, origin, data, name="data")
    if test_data is not None:
        engine.check_loss(loss_fn, origin, test_data, name="test_data")
    policy = resolve_bn(bn, loss_fn, bn_states=bn_states, interpolates=interpolates)
    info: dict = {"bn": policy}
    if policy == "reestimate":
        form, bn_batched, bn_info = _bn_reestimation(
            loss_fn, origin, data if bn_data is None else bn_data, settings
        )
        info.update(bn_info)
        point_fn, point_args = _pt_reestimate, (family, loss_fn, form, bn_batched)
        fn = Partial(_state_loss_dict, loss_fn)
    elif policy == "interpolate":
        sa, sb = (jax.tree.map(jnp.asarray, s) for s in bn_states)
        info.update(state_a_hash=_provenance.data_hash(sa), state_b_hash=_provenance.data_hash(sb))
        point_fn, point_args = _pt_interpolate, (family, sa, sb)
        fn = Partial(_state_loss_dict, loss_fn)
    else:
        point_fn, point_args = _pt_fixed, (family,)
        fn = Partial(engine.loss_dict, loss_fn)
    evaluator = "engine"
    if first_layer is not None:
        _check_first_layer(first_layer)
        prepared = first_layer.prepare(
            loss_fn, family, splits_raw, policy=policy, memory_budget=settings.memory_budget
        )
        info["first_layer"] = dict(prepared.info)
        if prepared.applied:  # else: the plain evaluation, the reason recorded
            splits_raw = prepared.splits
            fn = prepared.value_fn
            point_fn, point_args = _pt_basis_weights, (family,)
            evaluator = "affine-first-layer"
    placement = "replicate" if jax.device_count() > 1 else "shard"
    splits = []
    for name, d in splits_raw:
        bs = settings.batch_size
        if bs is not None and not isinstance(d, engine.Batched):
            bs = min(bs, _validate.num_examples(d, name=name))  # capped per data set
        splits.append((name, engine.batch(d, bs, placement=placement)))
    strategy = "map" if settings.strategy == "auto" else settings.strategy
    per_point = 0  # only needed where memory grows with the points held at once
    if strategy == "vmap" or settings.map_batch is not None:
        c0 = jnp.zeros((num_coords,), dtype)
        per_point = _bytes_per_point(fn, point_fn, point_args, c0, splits[0][1])
    cap = max(1, int(settings.memory_budget // per_point)) if per_point > 0 else 256
    map_batch = None if settings.map_batch is None else min(settings.map_batch, cap)
    chunk_size = None if settings.chunk_size is None else _device_multiple(settings.chunk_size)
    fit = default_chunk if strategy == "map" else min(cap, 256)
    if chunk_size is None and not fit_chunk:  # one shape for every evaluation of the plan
        chunk_size = _device_multiple(
            default_chunk if strategy == "map" else min(cap, default_chunk)
        )
    info.update(
        evaluator=evaluator,
        strategy=strategy,
        chunk_size=chunk_size,
        map_batch=map_batch,
        batch_size=splits[0][1].batch_size,
        bytes_per_point=int(per_point) or None,
        num_train=splits[0][1].num_examples,
        num_test=None if test_data is None else splits[1][1].num_examples,
    )
    return Plan(
        value_fn=fn,
        point_fn=point_fn,
        point_args=point_args,
        splits=tuple(splits),
        strategy=strategy,
        chunk_size=chunk_size,
        fit_chunk=fit,
        map_batch=map_batch,
        num_coords=num_coords,
        dtype=dtype,
        progress=settings.progress,
        desc=desc,
        settings=info,
    )


@_validate.public("landscape.grid.evaluate")
def evaluate(
    loss_fn: Callable,
    family,
    coords,
    data: dict,
    *,
    store=None,
    job: dict | None = None,
    **options,
) -> GridValues:
    """The exact loss and aux metrics at the points ``family.point(c)`` for every ``c`` in
    ``coords``, on the training data and, if given, the test data: ``prepare(loss_fn, family,
    data, **options).evaluate(coords, store=store, job=job)``.

    Args:
      loss_fn: ``loss_fn(params, batch)`` (a :class:`landscape.Loss` gives accuracy and error).
      family: an :class:`Affine` family or a :class:`landscape.paths.Path`.
      coords: ``(n, k)`` coordinates (``(n,)`` for a path's ``t``).
      data: dict of arrays with a leading example axis (training data).
      store: a path or :class:`landscape.Store` (bound to ``job`` and the evaluation): finished
        chunks are saved and reused.
      job: a description of the job for the store (e.g. directions' specs).
      **options: the keyword arguments of :func:`prepare`: ``test_data``, ``bn`` (``"fixed"``
        by default, ``"interpolate"``, ``"reestimate"``, ``"auto"``), ``bn_data`` (default
        ``data``), ``bn_states`` (``(state_a, state_b)`` for ``"interpolate"``),
        ``first_layer`` (:func:`landscape.surface.affine_first_layer`), ``settings`` (a
        :class:`GridSettings`), ``default_chunk``, ``fit_chunk``.

    Returns:
      :class:`GridValues`.

    Cost: one forward pass over each data set per point (plus one training-mode pass over
    ``bn_data`` per point and split with ``"reestimate"``); memory: one point's intermediates
    per device with the default strategy.
    """
    plan = prepare(loss_fn, family, data, **options)
    store = _store.as_store(store, {"job": "landscape.grid.evaluate", **(job or {})})
    return plan.evaluate(coords, store=store, job=job)


def _evaluate_signature():
    import inspect

    base = inspect.signature(evaluate)
    params = [p for p in base.parameters.values() if p.kind != inspect.Parameter.VAR_KEYWORD]
    extra = [
        p
        for n, p in inspect.signature(prepare).parameters.items()
        if p.kind == inspect.Parameter.KEYWORD_ONLY and n != "desc"
    ]
    return base.replace(parameters=params + extra)


evaluate.__signature__ = _evaluate_signature()
