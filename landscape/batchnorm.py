"""Batch-norm statistics at arbitrary parameter points: re-estimated, or interpolated.

A point that is not a trained model (a grid point of a slice, a point on a path between two
models) has no running statistics of its own. Every analysis that evaluates such points uses
the routines here (one implementation for slices, paths, planes and curves):

* :func:`reestimated_state` (traceable) / :func:`reestimate_bn` (one-shot): the statistics of
  the point recomputed from training batches in training mode -- the mean over batches of each
  batch's statistics, batches weighted by their size (Garipov et al. 2018's ``update_bn``,
  PyTorch's cumulative moving average);
* :func:`interpolated_state`: ``(1 - t) s_a + t s_b`` between two models' statistics (Li et al.
  2018's ``--dir_type states``).

Re-estimation needs only the model triple: the training-mode ``apply_fn(params, state, x,
train=True)`` must update each statistic as a running average
``new = m * old + (1 - m) * batch_statistic`` (Flax NNX and Linen ``BatchNorm``). Starting from
the state ``0`` then gives ``(1 - m) * batch_statistic``. :func:`probe_state` measures ``m`` for
every floating state leaf once, on a few examples (three training-mode passes from the states
0, 1 and 2, which also check the affine form), so the per-point cost is one training-mode
forward pass per batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from landscape import engine
from landscape import tree as _tree
from landscape import validate as _validate
from landscape._model import Model, as_model
from landscape.losses import Loss, make_loss_fn

PyTree = Any

DEFAULT_BN_BATCH_SIZE = 128
"""Default batch size of re-estimation (a typical training batch; statistics depend on it)."""

__all__ = [
    "BNForm",
    "DEFAULT_BN_BATCH_SIZE",
    "bn_batches",
    "interpolated_state",
    "probe_state",
    "reestimate_bn",
    "reestimated_state",
]


def _is_float(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.floating)


def has_float_state(loss_fn) -> bool:
    """Whether ``loss_fn`` is a :class:`Loss` whose model state has floating leaves."""
    return isinstance(loss_fn, Loss) and any(_is_float(x) for x in jax.tree.leaves(loss_fn.state))


@dataclasses.dataclass(frozen=True)
class BNForm:
    """How the training step updates the state (measured by :func:`probe_state`).

    Attributes:
      mask: per state leaf, whether it is a running-average statistic to re-estimate.
      names: the paths of those leaves.
      inv_scale: ``1 / (1 - m)`` per re-estimated leaf (``m`` its momentum).
      zero_state: the state with every floating leaf set to 0 (start of the re-estimation).
    """

    inv_scale: tuple
    zero_state: PyTree
    mask: tuple = dataclasses.field(metadata=dict(static=True))
    names: tuple = dataclasses.field(metadata=dict(static=True))


jax.tree_util.register_dataclass(
    BNForm, data_fields=["inv_scale", "zero_state"], meta_fields=["mask", "names"]
)


def _fill(state, value):
    return jax.tree.map(lambda x: jnp.full_like(x, value) if _is_float(x) else x, state)


def _train_state(loss_fn: Loss, params, state, batch):
    _, new = loss_fn.apply_fn(params, state, batch[loss_fn.input_key], train=True)
    return new


@jax.jit
def _probe(loss_fn, params, batch):
    return tuple(_train_state(loss_fn, params, _fill(loss_fn.state, v), batch) for v in (0.0, 1.0, 2.0))


@_validate.public("landscape.batchnorm.probe_state")
def probe_state(loss_fn: Loss, params: PyTree, data, *, num_examples: int = 128) -> BNForm:
    """Measure which state leaves the training step updates as running averages, and how.

    Three training-mode passes on the first ``num_examples`` examples of ``data``, from the
    state filled with 0, 1 and 2 (one compiled program). A leaf the step leaves unchanged
    (``m = 1``: not a statistic) is kept as stored; a leaf it changes in a way that is not a
    running average raises, rather than being silently re-estimated wrongly.

    Raises:
      TypeError: ``loss_fn`` is not a :class:`landscape.Loss` with floating state.
      ValueError: the training-mode pass fails, changes the state's structure, updates a leaf
        in another form, or updates no leaf at all.
    """
    if not has_float_state(loss_fn):
        raise TypeError(
            f"{_validate.where()}: re-estimating batch-norm statistics needs a landscape.Loss "
            "(landscape.make_loss_fn(model)) whose model state has floating leaves (batch-norm "
            f"statistics); got {type(loss_fn).__name__}"
            + (" without such state." if isinstance(loss_fn, Loss) else ".")
        )
    if isinstance(data, engine.Batched):
        small = jax.tree.map(lambda x: x[0], data.full) if data.full is not None else data.rest
    else:
        _validate.num_examples(data, name="bn_data")
        small = data
    small = jax.tree.map(lambda x: jnp.asarray(x[:num_examples]), small)
    base = loss_fn.state
    try:
        n0, n1, n2 = _probe(loss_fn, params, small)
    except Exception as e:  # reported with context
        raise ValueError(
            f"{_validate.where()}: re-estimating batch-norm statistics runs the model in training mode "
            f"(apply_fn(..., train=True)) and that failed: {type(e).__name__}: "
            f"{str(e).splitlines()[0][:300]}"
        ) from e
    if jax.tree.structure(n0) != jax.tree.structure(base):
        raise ValueError(
            f"{_validate.where()}: apply_fn(..., train=True) must return a state with the structure of the "
            f"model's state; got {_validate.describe(n0)}, expected {_validate.describe(base)}."
        )
    mask, names, inv = [], [], []
    for path, x, a, b, c in zip(
        _tree.leaf_paths(base), jax.tree.leaves(base), *(jax.tree.leaves(n) for n in (n0, n1, n2))
    ):
        if not _is_float(x):
            mask.append(False)
            continue
        a, b, c = (np.asarray(v, np.float64) for v in (a, b, c))
        scale = 1.0 + np.max(np.abs(a)) if a.size else 1.0
        if not np.allclose(c - a, 2.0 * (b - a), rtol=1e-3, atol=1e-4 * scale):
            raise ValueError(
                f"{_validate.where()}: re-estimation needs every floating state leaf to be a running average "
                "(new = m * old + (1 - m) * batch_statistic, as in Flax BatchNorm); leaf "
                f"'{path}' is updated differently. Use the stored or interpolated statistics."
            )
        m = float(np.mean(b - a)) if a.size else 1.0
        if abs(1.0 - m) < 1e-6:  # the step leaves it alone: not a statistic
            mask.append(False)
            continue
        mask.append(True)
        names.append(path)
        inv.append(jnp.asarray(1.0 / (1.0 - m), jnp.result_type(x)))
    if not names:
        raise ValueError(
            f"{_validate.where()}: no state leaf is updated by a training-mode pass; the model has no batch "
            "statistics to re-estimate."
        )
    return BNForm(tuple(inv), _fill(base, 0.0), tuple(mask), tuple(names))


@_validate.public("landscape.batchnorm.bn_batches")
def bn_batches(
    data, batch_size: int | None = None, num_batches: int | None = None
) -> engine.Batched:
    """Lay out the re-estimation data: all of ``data`` in batches of ``batch_size`` (default
    ``min(128, n)``; the remainder weighted by its size), or only the first ``num_batches`` full
    batches. Replicated over devices when the points are sharded."""
    if isinstance(data, engine.Batched):
        return data
    n = _validate.check_data(data, name="bn_data")
    bs = min(DEFAULT_BN_BATCH_SIZE, n) if batch_size is None else batch_size
    bs = _validate.check_batch_size(bs, n, name="bn_batch_size")
    if num_batches is not None:
        num_batches = _validate.check_positive_int(num_batches, name="bn_num_batches")
        if num_batches > n // bs:
            raise ValueError(
                f"{_validate.where()}: bn_num_batches={num_batches} but bn_data holds only {n // bs} full "
                f"batches of {bs}."
            )
        data = {k: np.asarray(v)[: num_batches * bs] for k, v in data.items()}
    placement = "replicate" if jax.device_count() > 1 else "shard"
    return engine.batch(data, bs, placement=placement, check_finite=False)


def _stats(loss_fn, mask, params, batch, zero_state):
    new = _train_state(loss_fn, params, zero_state, batch)
    return [x for x, m in zip(jax.tree.leaves(new), mask) if m]


def reestimated_state(loss_fn: Loss, form: BNForm, params: PyTree, batched: engine.Batched) -> PyTree:
    """Traceable: the model state at ``params`` with its statistics re-estimated over
    ``batched`` (one training-mode forward pass per batch; leaves outside ``form.mask`` keep
    ``loss_fn.state``'s values)."""
    stats, _ = engine.batched_mean(Partial(_stats, loss_fn, form.mask), params, batched, form.zero_state)
    leaves, treedef = jax.tree.flatten(loss_fn.state)
    it = iter(zip(stats, form.inv_scale))
    out = []
    for x, m in zip(leaves, form.mask):
        if m:
            s, inv = next(it)
            out.append((s * inv).astype(x.dtype))
        else:
            out.append(x)
    return jax.tree.unflatten(treedef, out)


def interpolated_state(t, state_a: PyTree, state_b: PyTree) -> PyTree:
    """Traceable: ``(1 - t) s_a + t s_b`` on floating leaves (other leaves from ``s_a``)."""

    def f(a, b):
        if not _is_float(a):
            return a
        tt = jnp.asarray(t, a.dtype)
        return (1 - tt) * a + tt * b

    return jax.tree.map(f, state_a, state_b)


@jax.jit
def _reestimate_jit(loss_fn, form, params, batched):
    return reestimated_state(loss_fn, form, params, batched)


@_validate.public("landscape.reestimate_bn")
def reestimate_bn(
    model_or_loss: Model | Loss,
    params: PyTree,
    data,
    *,
    batch_size: int | None = None,
    num_batches: int | None = None,
) -> PyTree:
    """Batch-norm statistics of ``params`` re-estimated from ``data`` (Garipov's ``update_bn``).

    Runs the model in training mode over ``data`` in batches of ``batch_size`` and averages the
    per-batch statistics, batches weighted by their size. Slices, paths, planes and curves call
    the same routine at every point with their batch-norm policy ``"reestimate"``.

    Args:
      model_or_loss: a :class:`landscape.Model` (or triple) or a :class:`landscape.Loss`; its
        state gives the structure of the statistics.
      params: the parameters whose statistics are wanted.
      data: training data ``{"x", ...}`` (targets unused).
      batch_size: examples per batch (default ``min(128, n)``). Variances are means of
        within-batch variances, so they depend on it, as in PyTorch's ``update_bn``.
      num_batches: use only the first ``num_batches`` full batches (default: all the data).

    Returns:
      The model state with re-estimated statistics (other leaves unchanged).

    Raises:
      TypeError: no floating state to re-estimate.
      ValueError: the training step does not update the state as a running average.

    Cost: ``ceil(n / batch_size)`` training-mode forward passes (plus three on a few examples
    to probe the momentum), one compiled program.

    References:
      Garipov et al. 2018, "Loss Surfaces, Mode Connectivity, and Fast Ensembling of DNNs"
      (``utils.update_bn``); Ioffe and Szegedy 2015.
    """
    if isinstance(model_or_loss, Loss):
        loss_fn = model_or_loss
    else:
        try:
            loss_fn = make_loss_fn(as_model(model_or_loss))
        except TypeError as e:
            raise TypeError(
                f"{_validate.where()}: model_or_loss must be a landscape.Model or landscape.Loss whose state has "
                f"floating leaves (batch-norm statistics); got {type(model_or_loss).__name__}."
            ) from e
    _validate.check_params(params)
    batched = bn_batches(data, batch_size, num_batches)
    form = probe_state(loss_fn, params, batched)
    return _reestimate_jit(loss_fn, form, params, batched)
