"""1-D and 2-D loss-surface slices and linear interpolation, on the foundation's engine.

Every grid point is the exact full-data-set mean of the loss (and of the loss's aux metrics,
from the same forward pass) on the training data and, if given, the test data. Points are built
inside the compiled program from their coordinates (``theta + a d1 + b d2`` or
``(1 - t) a + t b``) and evaluated by :func:`landscape.engine.evaluate_points` in chunks: one
compiled program per chunk shape (``lax.map`` over the points of a chunk, a scan over the
batches), a host loop over chunks (progress bar, atomic saving with
:class:`landscape.engine.ChunkStore`), points sharded over devices.

Batch norm (``bn=``):

* ``"centre"``: the statistics stored in ``loss_fn`` (the centre model's) at every point.
* ``"interpolate"`` (:func:`interpolate` only): ``(1 - t) s_a + t s_b``, Li et al.'s
  ``--dir_type states``.
* ``"reestimate"``: re-estimated at every point from training batches in training mode (the
  mean over batches of each batch's statistics, as ``update_bn`` of Garipov et al. and
  PyTorch's cumulative moving average), inside the compiled program, vectorised like the
  points of the chunk. Costs one training-mode forward pass over ``bn_data`` per point (and per
  split: train and test are separate passes).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from landscape import _provenance, engine
from landscape import batchnorm as _batchnorm
from landscape import tree as _tree
from landscape import validate as _validate
from landscape._model import Model
from landscape._result import Result, _freeze, result, static_field
from landscape.losses import Loss
from landscape.surface import _fast
from landscape.surface._directions import Direction, as_direction
from landscape.surface._pca import PCAResult

PyTree = Any

BN_POLICIES = ("centre", "interpolate", "reestimate")
STRATEGIES = ("auto", "map", "vmap")
DEFAULT_CHUNK = 64
DEFAULT_MEMORY_BUDGET = 2 << 30

__all__ = ["SliceResult", "interpolate", "slice_1d", "slice_2d"]


# --------------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------------
@result
class SliceResult(Result):
    """Values of the loss and its metrics on a 1-D or 2-D grid.

    Attributes:
      alphas: ``(na,)`` first coordinate (``t`` of an interpolation).
      betas: ``(nb,)`` second coordinate (``None`` for 1-D results).
      train: ``{"loss": ..., "accuracy": ..., ...}`` on the training data, each ``(na,)`` or
        ``(na, nb)`` (``[i, j]`` is the point ``alphas[i], betas[j]``).
      test: the same on the test data, or ``None``.
      finite: bool, same shape: all metrics finite (train and test) at that point. Non-finite
        points are recorded, not fatal.
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
    def metrics(self) -> list[str]:
        return sorted(self.train)

    def values(self, metric: str = "loss", split: str = "train") -> np.ndarray:
        """The grid of one metric (``split`` is ``"train"`` or ``"test"``)."""
        src = {"train": self.train, "test": self.test}.get(split)
        if src is None:
            allowed = ["train"] + (["test"] if self.test is not None else [])
            raise ValueError(f"SliceResult.values: split must be one of {allowed}; got {split!r}.")
        if metric not in src:
            raise ValueError(
                f"SliceResult.values: metric must be one of {sorted(src)}; got {metric!r}."
            )
        return np.asarray(src[metric])

    def __repr__(self):
        grid = "x".join(str(s) for s in self.shape)
        lo = float(np.nanmin(self.loss)) if np.any(np.isfinite(self.loss)) else float("nan")
        return (
            f"SliceResult({self.kind}, grid {grid}, train loss min {lo:.4g}, "
            f"test={'yes' if self.test is not None else 'no'}, bn={self.settings.get('bn')}, "
            f"non-finite={self.num_nonfinite})"
        )


# --------------------------------------------------------------------------------------------
# Point builders (module-level: static parts of compiled programs)
# --------------------------------------------------------------------------------------------
def _pt_affine(c, centre, dirs):
    """``centre + c[0] d_0 + c[1] d_1 + ...`` leaf by leaf, in the leaves' dtypes."""

    def leaf(x, *ds):
        acc = x
        for k, d in enumerate(ds):
            acc = acc + c[k].astype(x.dtype) * d
        return acc

    return jax.tree.map(leaf, centre, *dirs)


def _pt_lerp(c, a, b):
    """``(1 - t) a + t b``: exact at ``t = 0`` and ``t = 1``."""
    t = c[0]
    return jax.tree.map(lambda x, y: (1 - t.astype(x.dtype)) * x + t.astype(x.dtype) * y, a, b)


def _lerp_state(t, sa, sb):
    def leaf(x, y):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            return x
        return (1 - t.astype(x.dtype)) * x + t.astype(x.dtype) * y

    return jax.tree.map(leaf, sa, sb)


def _pt_lerp_state(c, a, b, sa, sb):
    return _pt_lerp(c, a, b), _lerp_state(c[0], sa, sb)


def _weights(mode, c):
    one = jnp.ones((1,), c.dtype)
    if mode == "lerp":
        return jnp.concatenate([one - c[:1], c[:1]])
    return jnp.concatenate([one, c])


def _pt_with_weights(base, mode, c, *args):
    """``(weights of the first-layer basis, params)`` for the first-layer trick."""
    return _weights(mode, c), base(c, *args)


def _pt_reestimate(base, num_base, loss_fn, c, *args):
    """Params at ``c`` and batch-norm statistics re-estimated there from training batches
    (:func:`landscape.batchnorm.reestimated_state`)."""
    base_args, (form, bn_batched) = args[:num_base], args[num_base:]
    params = base(c, *base_args)
    return params, _batchnorm.reestimated_state(loss_fn, form, params, bn_batched)


def _loss_dict(loss_fn, params, batch):
    loss, aux = engine.loss_and_aux(loss_fn, params, batch)
    return {**aux, "loss": loss}


def _loss_dict_state(loss_fn, point, batch):
    params, state = point
    return _loss_dict(loss_fn.with_state(state), params, batch)


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
        raise ValueError(f"{_validate.where()}: {name} must be finite; got {a[~np.isfinite(a)][:3]}.")
    if a.size > 1 and not np.all(np.diff(a) > 0):
        i = int(np.flatnonzero(np.diff(a) <= 0)[0])
        raise ValueError(
            f"{_validate.where()}: {name} must be strictly increasing; got {name}[{i}]={a[i]} followed by "
            f"{name}[{i + 1}]={a[i + 1]} (use np.linspace(lo, hi, n))."
        )
    return a


def _hash_tree(tree) -> str:
    return _provenance.data_hash(tree)


def _hash_array(a) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


def _check_loss(loss_fn, params, data, *, name):
    """Trace the loss on two examples (no compilation): model/data mismatches raise a clear
    ValueError at the boundary instead of deep inside a compiled scan."""
    engine.check_loss(loss_fn, params, data, name=name)


def _unpack_model(x):
    if isinstance(x, Model):
        return x.params, x.state
    return x, None


def _device_chunk(chunk_size: int) -> int:
    ndev = jax.device_count()
    return int(math.ceil(chunk_size / ndev) * ndev)


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


def _bytes_per_point(fn, point_fn, point_args, c0, batched) -> int:
    """Upper bound of one point's working memory: the sum of the sizes of every intermediate
    of ``fn(point_fn(c), batch)`` on one batch (XLA reuses buffers, so the truth is lower)."""
    b0 = jax.tree.map(lambda x: x[0], batched.full) if batched.full is not None else batched.rest
    try:
        jaxpr = jax.make_jaxpr(lambda c, a, b: fn(point_fn(c, *a), b))(c0, point_args, b0)
    except Exception:  # pragma: no cover - estimation must never break an evaluation
        return 0
    return _jaxpr_bytes(jaxpr.jaxpr)


def _plan_chunks(strategy, chunk_size, map_batch, num_points, per_point, memory_budget):
    """Chunking and strategy, from measurements and a memory estimate.

    ``"map"`` (lax.map over the points of a chunk) holds one point's intermediates at a time;
    measured on CPU it matches one jitted loss per point, while ``vmap`` over 16-64 points was
    2-3x slower per point (benchmarks/surface/RESULTS.md), so ``"auto"`` is ``"map"``. With
    ``"map"`` the chunk size only sets the saving/progress granularity (default 64); with
    ``"vmap"`` the chunk size (and with ``"map"`` the ``map_batch``) is bounded by
    ``memory_budget / bytes_per_point``, ``bytes_per_point`` being the sum of the sizes of all
    intermediates of one point on one batch (an upper bound: XLA reuses buffers).
    """
    if strategy == "auto":
        strategy = "map"
    cap = max(1, int(memory_budget // per_point)) if per_point > 0 else 256
    if chunk_size is None:
        chunk_size = (
            min(num_points, DEFAULT_CHUNK) if strategy == "map" else min(num_points, cap, 256)
        )
    chunk_size = _validate.check_positive_int(chunk_size, name="chunk_size")
    if map_batch is not None:
        map_batch = _validate.check_positive_int(map_batch, name="map_batch")
        if strategy != "map":
            raise ValueError(
                f"{_validate.where()}: map_batch applies to strategy='map' only; got strategy={strategy!r}."
            )
        map_batch = min(map_batch, cap)  # points vectorised together must fit the budget
    return strategy, _device_chunk(chunk_size), map_batch


# --------------------------------------------------------------------------------------------
# The shared evaluation
# --------------------------------------------------------------------------------------------
def _bn_setup(loss_fn, params, bn_data, bn_batch_size, bn_num_batches):
    """Lay out the re-estimation batches and probe the state's update form once
    (:mod:`landscape.batchnorm`)."""
    if not isinstance(loss_fn, Loss):
        raise TypeError(
            f"{_validate.where()}: bn='reestimate' needs a landscape.Loss (make_loss_fn(model)) whose model runs "
            f"in training mode; got {type(loss_fn).__name__}."
        )
    if not jax.tree.leaves(loss_fn.state):
        raise ValueError(f"{_validate.where()}: bn='reestimate' but the model has no state (no batch norm).")
    bn_batched = _batchnorm.bn_batches(bn_data, bn_batch_size, bn_num_batches)
    form = _batchnorm.probe_state(loss_fn, params, bn_batched)
    info = {
        "bn_batch_size": bn_batched.batch_size,
        "bn_num_batches": bn_batched.num_batches + (1 if bn_batched.rest_size else 0),
        "bn_leaves": form.names,
    }
    return form, bn_batched, info


def _evaluate(
    *,
    loss_fn,
    mode: str,
    base_args: tuple,
    coords: np.ndarray,
    data,
    test_data,
    bn: str,
    bn_extra: tuple | None,
    bn_setup: dict | None,
    first_layer,
    batch_size,
    chunk_size,
    strategy,
    map_batch,
    memory_budget,
    run_dir,
    overwrite,
    progress,
    meta: dict,
):
    """Run the engine on train (and test) data; returns ``(train, test, settings)``."""
    base = _pt_affine if mode == "affine" else _pt_lerp
    splits = [("train", data)] + ([("test", test_data)] if test_data is not None else [])
    if first_layer is not None:
        basis = [base_args[0], *base_args[1]] if mode == "affine" else list(base_args)
        basis_first = [{"layers": {0: p["layers"][0]}} for p in basis]
        point_fn = Partial(_pt_with_weights, base, mode)
        point_args = base_args
        fn = Partial(_fast.loss_dict, loss_fn, first_layer)
        splits = [
            (name, _fast.make_data(first_layer, d, basis_first, input_key=loss_fn.input_key))
            for name, d in splits
        ]
        evaluator = "affine-first-layer"
    elif bn == "centre":
        point_fn, point_args, fn = base, base_args, Partial(_loss_dict, loss_fn)
        evaluator = "engine"
    elif bn == "interpolate":
        point_fn, point_args = _pt_lerp_state, (*base_args, *bn_extra)
        fn = Partial(_loss_dict_state, loss_fn)
        evaluator = "engine"
    else:  # reestimate
        point_fn = Partial(_pt_reestimate, base, len(base_args), loss_fn)
        point_args = (*base_args, *bn_extra)
        fn = Partial(_loss_dict_state, loss_fn)
        evaluator = "engine"

    num_points = coords.shape[0]
    placement = "replicate" if jax.device_count() > 1 else "shard"
    batched = {}
    for name, d in splits:
        n = _validate.num_examples(d, name=name)
        bs = None if batch_size is None else min(batch_size, n)  # capped per data set
        batched[name] = engine.batch(d, bs, placement=placement)
    per_point = 0  # only needed where memory grows with the points held at once
    if strategy == "vmap" or map_batch is not None:
        per_point = _bytes_per_point(
            fn, point_fn, point_args, jnp.asarray(coords[0]), batched["train"]
        )
    strat, cs, mb = _plan_chunks(
        strategy, chunk_size, map_batch, num_points, per_point, memory_budget
    )
    settings = {
        **meta,
        "bn": bn,
        **(bn_setup or {}),
        "evaluator": evaluator,
        "strategy": strat,
        "chunk_size": cs,
        "map_batch": mb,
        "batch_size": batched["train"].batch_size,
        "bytes_per_point": int(per_point) or None,
        "num_points": int(num_points),
        "coords_hash": _hash_array(coords),
    }
    out = {}
    for name, _ in splits:
        store = None
        if run_dir is not None:
            smeta = {**settings, "split": name, "batch_size": batched[name].batch_size}
            store = engine.ChunkStore(Path(run_dir) / name, smeta, overwrite=overwrite)
        out[name] = engine.evaluate_points(
            fn,
            point_fn,
            coords,
            batched[name],
            point_args=point_args,
            chunk_size=cs,
            strategy=strat,
            map_batch=mb,
            store=store,
            progress=progress,
            desc=f"{_validate.where().rsplit('.', 1)[-1]} ({name})",
        )
    return out["train"], out.get("test"), settings


def _finish(
    *, kind, alphas, betas, train, test, settings, dir_specs, dtype, seeds, run_dir
):
    shape = (alphas.size,) if betas is None else (alphas.size, betas.size)
    train = {k: np.asarray(v).reshape(shape) for k, v in train.items()}
    if test is not None:
        test = {k: np.asarray(v).reshape(shape) for k, v in test.items()}
    finite = np.ones(shape, bool)
    for src in (train, test or {}):
        for v in src.values():
            finite &= np.isfinite(v)
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
        kind=kind,
        directions=_freeze(list(dir_specs)),
        settings=_freeze(settings),
        provenance=_freeze(prov),
    )
    bad = int(finite.size - finite.sum())
    if bad:
        idx = np.unravel_index(int(np.flatnonzero(~finite.ravel())[0]), shape)
        where = f"alpha={alphas[idx[0]]:.4g}" + (
            f", beta={betas[idx[1]]:.4g}" if betas is not None else ""
        )
        warnings.warn(
            f"{_validate.where()}: {bad} of {finite.size} grid points have non-finite loss or metrics "
            f"(first at {where}); they are recorded as NaN/Inf and flagged in result.finite.",
            RuntimeWarning,
            stacklevel=3,
        )
    if run_dir is not None:
        res.save(Path(run_dir) / "result.npz")
    return res


def _default_memory_budget() -> int:
    """A quarter of the first device's memory limit where the backend reports one (GPUs),
    else :data:`DEFAULT_MEMORY_BUDGET`."""
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:  # backends without memory statistics
        stats = {}
    limit = stats.get("bytes_limit")
    return int(limit // 4) if limit else DEFAULT_MEMORY_BUDGET


def _common_checks(loss_fn, params, data, test_data, bn, strategy, memory_budget, run_dir):
    _validate.check_callable(loss_fn, name="loss_fn")
    _validate.check_params(params)
    _validate.check_choice(bn, BN_POLICIES, name="bn")
    _validate.check_choice(strategy, STRATEGIES, name="strategy")
    if memory_budget is None:
        memory_budget = _default_memory_budget()
    memory_budget = _validate.check_positive_int(memory_budget, name="memory_budget")
    _validate.check_data(data, name="data")
    _check_loss(loss_fn, params, data, name="data")
    if test_data is not None:
        _validate.check_data(test_data, name="test_data")
        _check_loss(loss_fn, params, test_data, name="test_data")
    if run_dir is not None and not isinstance(run_dir, (str, os.PathLike)):
        raise TypeError(f"{_validate.where()}: run_dir must be a path; got {type(run_dir).__name__}.")
    if bn != "centre" and not isinstance(loss_fn, Loss):
        raise TypeError(
            f"{_validate.where()}: bn={bn!r} needs a landscape.Loss (from landscape.make_loss_fn(model)) that "
            f"carries the model state; got {type(loss_fn).__name__}."
        )
    return memory_budget


def _dir_meta(d: Direction) -> dict:
    spec = dict(d.spec)
    spec["norm_value"] = d.norm()
    spec["hash"] = _hash_tree(d.vector)
    return spec


def _seeds(specs):
    return [s.get("key_data") for s in specs if s.get("kind") == "random"] or None


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
    bn_batch_size,
    bn_num_batches,
    first_layer,
    batch_size,
    chunk_size,
    strategy,
    map_batch,
    memory_budget,
    run_dir,
    overwrite,
    progress,
):
    memory_budget = _common_checks(loss_fn, params, data, test_data, bn, strategy, memory_budget, run_dir
    )
    if bn == "interpolate":
        raise ValueError(
            f"{_validate.where()}: bn='interpolate' applies to landscape.surface.interpolate (between two "
            "models' statistics); use 'centre' or 'reestimate' for slices."
        )
    dtype = _tree.dtype_of(params)
    bn_extra = bn_setup = None
    if bn == "reestimate":
        *bn_extra, bn_setup = _bn_setup(
            loss_fn,
            params,
            data if bn_data is None else bn_data,
            bn_batch_size,
            bn_num_batches,
        )
        bn_extra = tuple(bn_extra)
    if first_layer is not None:
        _fast.check_compatible(first_layer, loss_fn, params)
        if bn != "centre":
            raise ValueError(f"{_validate.where()}: first_layer needs bn='centre'; got bn={bn!r}.")
    grids = np.meshgrid(*axes, indexing="ij")
    coords = np.stack([g.ravel() for g in grids], axis=1).astype(np.dtype(dtype))
    specs = [_dir_meta(d) for d in dirs]
    meta = {
        "function": _validate.where(),
        "loss": repr(loss_fn),
        "dtype": str(np.dtype(dtype)),
        "params_hash": _hash_tree(params),
        "data_hash": _hash_tree(data),
        "test_data_hash": None if test_data is None else _hash_tree(test_data),
        "directions": [{k: v for k, v in s.items()} for s in specs],
    }
    if len(dirs) == 2:
        meta["cosine"] = float(_tree.vdot(dirs[0].vector, dirs[1].vector)) / (
            specs[0]["norm_value"] * specs[1]["norm_value"]
        )
    train, test, settings = _evaluate(
        loss_fn=loss_fn,
        mode="affine",
        base_args=(params, tuple(d.vector for d in dirs)),
        coords=coords,
        data=data,
        test_data=test_data,
        bn=bn,
        bn_extra=bn_extra,
        bn_setup=bn_setup,
        first_layer=first_layer,
        batch_size=batch_size,
        chunk_size=chunk_size,
        strategy=strategy,
        map_batch=map_batch,
        memory_budget=memory_budget,
        run_dir=run_dir,
        overwrite=overwrite,
        progress=progress,
        meta=meta,
    )
    return _finish(
        kind=kind,
        alphas=axes[0],
        betas=axes[1] if len(axes) > 1 else None,
        train=train,
        test=test,
        settings=settings,
        dir_specs=specs,
        dtype=dtype,
        seeds=_seeds(specs),
        run_dir=run_dir,
    )


_DOC_TEST = """
      test_data: optional test set (dict of arrays), evaluated at the same points."""
_DOC_BN = """
      bn: batch-norm statistics at each point: ``"centre"`` (the ones stored in ``loss_fn``),
        ``"reestimate"`` (re-estimated at every point from ``bn_data`` in training mode)."""
_DOC_REST = """
      bn_data: training data for ``bn="reestimate"`` (default: ``data``), in batches of
        ``bn_batch_size`` (default ``min(128, n)``, the training loader batch of Garipov et
        al.'s ``update_bn``; a last smaller batch is weighted by its size);
        ``bn_num_batches`` uses only that many full batches (default: all the data).
        The statistics are the mean over batches of each batch's statistics, so shuffle data
        that is sorted by class.
      first_layer: :func:`affine_first_layer` of the model (foundation MLPs): the first layer's
        pre-activations are precomputed for the basis points (faster, same values).
      batch_size: examples per batch of the full-data-set mean (default: the engine's),
        capped at each data set's size.
      chunk_size: points per compiled call (default: 64 with ``"map"``, from the memory estimate
        with ``"vmap"``), rounded up to a multiple of the device count.
      strategy: ``"auto"`` (= ``"map"``, chosen by measurement), ``"map"`` or ``"vmap"``.
      map_batch: with ``"map"``, points vectorised together inside the map.
      memory_budget: bytes a chunk may use (sets the ``"vmap"`` chunk size; default a quarter
        of the device's memory where reported, else 2 GiB).
      run_dir: directory for resumable results: finished chunks are saved atomically with all
        settings (directions' key and spec, normalisation, data hash, batch-norm policy); a
        restarted call continues where it stopped; the final result is saved as
        ``run_dir/result.npz``. Different settings in the same directory raise ``ValueError``.
      overwrite: discard chunks of different settings found in ``run_dir``.
      progress: show a progress bar over chunks."""


@_validate.public("landscape.surface.slice_1d")
def slice_1d(
    loss_fn: Callable,
    params: PyTree,
    data: dict,
    direction,
    *,
    alphas=None,
    test_data: dict | None = None,
    bn: str = "centre",
    bn_data: dict | None = None,
    bn_batch_size: int | None = None,
    bn_num_batches: int | None = None,
    first_layer=None,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    strategy: str = "auto",
    map_batch: int | None = None,
    memory_budget: int | None = None,
    run_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = False,
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
        bn_batch_size=bn_batch_size,
        bn_num_batches=bn_num_batches,
        first_layer=first_layer,
        batch_size=batch_size,
        chunk_size=chunk_size,
        strategy=strategy,
        map_batch=map_batch,
        memory_budget=memory_budget,
        run_dir=run_dir,
        overwrite=overwrite,
        progress=progress,
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
            f"{_validate.where()}: directions must be a pair (d1, d2) of Directions or params-shaped pytrees "
            f"(or a PCAResult); got {type(directions).__name__}."
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
            f"{_validate.where()}: the two directions are parallel (cosine {cos:.8f}); the plane is degenerate. "
            "Draw the second with another key or orthogonal_to=d1."
        )
    return d1, d2


@_validate.public("landscape.surface.slice_2d")
def slice_2d(
    loss_fn: Callable,
    params: PyTree,
    data: dict,
    directions,
    *,
    alphas=None,
    betas=None,
    test_data: dict | None = None,
    bn: str = "centre",
    bn_data: dict | None = None,
    bn_batch_size: int | None = None,
    bn_num_batches: int | None = None,
    first_layer=None,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    strategy: str = "auto",
    map_batch: int | None = None,
    memory_budget: int | None = None,
    run_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = False,
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
        bn_batch_size=bn_batch_size,
        bn_num_batches=bn_num_batches,
        first_layer=first_layer,
        batch_size=batch_size,
        chunk_size=chunk_size,
        strategy=strategy,
        map_batch=map_batch,
        memory_budget=memory_budget,
        run_dir=run_dir,
        overwrite=overwrite,
        progress=progress,
    )


@_validate.public("landscape.surface.interpolate")
def interpolate(
    loss_fn: Callable,
    params_a,
    params_b,
    data: dict,
    *,
    ts=None,
    test_data: dict | None = None,
    bn: str = "centre",
    state_a: PyTree | None = None,
    state_b: PyTree | None = None,
    bn_data: dict | None = None,
    bn_batch_size: int | None = None,
    bn_num_batches: int | None = None,
    first_layer=None,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    strategy: str = "auto",
    map_batch: int | None = None,
    memory_budget: int | None = None,
    run_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> SliceResult:
    """Loss along the line through two solutions, ``L((1 - t) a + t b)``, with extrapolation.

    Goodfellow et al. (2015)'s interpolation, and Li et al. (2018)'s 1-D plots between a small-
    and a large-batch solution (``t`` in ``[-0.5, 1.5]``, 401 points).

    Args:
      loss_fn: ``loss_fn(params, batch)``.
      params_a, params_b: the two end points (params pytrees, or :class:`landscape.Model` objects,
        whose states then serve as ``state_a``/``state_b``).
      data: training data.
      ts: coordinates, strictly increasing (default ``linspace(-0.5, 1.5, 401)``).
      bn: ``"centre"`` (``loss_fn``'s stored statistics everywhere), ``"interpolate"``
        (``(1 - t) state_a + t state_b``: Li et al.'s ``states`` directions) or
        ``"reestimate"``.
      state_a, state_b: the end points' model states for ``bn="interpolate"`` (default
        ``state_a``: ``loss_fn.state``)."""
    pa, sa_model = _unpack_model(params_a)
    pb, sb_model = _unpack_model(params_b)
    _validate.check_params(pa, name="params_a")
    _validate.check_params(pb, name="params_b")
    _validate.check_same_structure(pb, pa, name="params_b", ref_name="params_a")
    pb = jax.tree.map(lambda b, a: jnp.asarray(b).astype(jnp.result_type(a)), pb, pa)
    t = _coords(ts, np.linspace(-0.5, 1.5, 401), name="ts")
    memory_budget = _common_checks(loss_fn, pa, data, test_data, bn, strategy, memory_budget, run_dir
    )
    dtype = _tree.dtype_of(pa)
    bn_extra = bn_setup = None
    if bn == "interpolate":
        sa = (
            state_a
            if state_a is not None
            else (sa_model if sa_model is not None else loss_fn.state)
        )
        sb = state_b if state_b is not None else sb_model
        if sb is None:
            raise ValueError(
                f"{_validate.where()}: bn='interpolate' needs the second model's state: pass state_b=... or "
                "params_b as a landscape.Model."
            )
        _validate.check_same_structure(
            sa, loss_fn.state, name="state_a", ref_name="loss_fn.state"
        )
        _validate.check_same_structure(
            sb, loss_fn.state, name="state_b", ref_name="loss_fn.state"
        )
        _validate.check_finite(sb, name="state_b")
        bn_extra = (sa, sb)
        bn_setup = {"state_a_hash": _hash_tree(sa), "state_b_hash": _hash_tree(sb)}
    elif bn == "reestimate":
        *bn_extra, bn_setup = _bn_setup(
            loss_fn, pa, data if bn_data is None else bn_data, bn_batch_size, bn_num_batches
        )
        bn_extra = tuple(bn_extra)
    if first_layer is not None:
        _fast.check_compatible(first_layer, loss_fn, pa)
        if bn != "centre":
            raise ValueError(f"{_validate.where()}: first_layer needs bn='centre'; got bn={bn!r}.")
    between = Direction(jax.tree.map(jnp.subtract, pb, pa), {"kind": "between"})
    spec = _dir_meta(between)
    spec["distance"] = spec["norm_value"]
    meta = {
        "function": _validate.where(),
        "loss": repr(loss_fn),
        "dtype": str(np.dtype(dtype)),
        "params_hash": _hash_tree(pa),
        "params_b_hash": _hash_tree(pb),
        "data_hash": _hash_tree(data),
        "test_data_hash": None if test_data is None else _hash_tree(test_data),
        "directions": [spec],
    }
    coords = t.astype(np.dtype(dtype))[:, None]
    train, test, settings = _evaluate(
        loss_fn=loss_fn,
        mode="lerp",
        base_args=(pa, pb),
        coords=coords,
        data=data,
        test_data=test_data,
        bn=bn,
        bn_extra=bn_extra,
        bn_setup=bn_setup,
        first_layer=first_layer,
        batch_size=batch_size,
        chunk_size=chunk_size,
        strategy=strategy,
        map_batch=map_batch,
        memory_budget=memory_budget,
        run_dir=run_dir,
        overwrite=overwrite,
        progress=progress,
        meta=meta,
    )
    return _finish(
        kind="interpolate",
        alphas=t,
        betas=None,
        train=train,
        test=test,
        settings=settings,
        dir_specs=[spec],
        dtype=dtype,
        seeds=None,
        run_dir=run_dir,
    )


for _f in (slice_1d, slice_2d):
    _f.__doc__ += (
        _DOC_TEST
        + _DOC_BN
        + _DOC_REST
        + """

    Returns:
      A :class:`SliceResult` (train and test loss and metrics on the grid, flags of non-finite
      points, settings and provenance).

    Raises:
      TypeError, ValueError: directions of another structure or shape than ``params``,
        non-finite or zero directions, parallel directions, empty or non-increasing
        coordinates, invalid data or settings, a ``run_dir`` holding other settings.

    Cost: one full-data-set forward pass per point and split (plus one training-mode pass per
    point with ``bn="reestimate"``); memory: one point's intermediates (``"map"``) per device,
    never the whole grid's parameters.

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
