"""Batch-norm statistics along paths: re-estimated from training batches, or interpolated.

A point on a path between two batch-norm networks has no running statistics of its own.
Garipov et al. 2018 (``utils.update_bn``) re-estimate them at every evaluated ``t`` with one
pass over the training data; without it the curve does not even reproduce its endpoints
(dnn-mode-connectivity#8). The policies here:

* ``"reestimate"``: statistics recomputed at the point from training batches (the average of
  the per-batch statistics, batches weighted by their size, the remainder included);
* ``"interpolate"``: ``(1 - t) s_a + t s_b`` from the endpoints' statistics;
* ``"fixed"``: the loss's own state everywhere (e.g. endpoint A's statistics);
* ``"none"``: the model has no floating state.

Re-estimation uses only the model triple: ``apply_fn(params, state, x, train=True)`` must update
each floating state leaf as a running average ``new = m * old + (1 - m) * batch_stat`` (Flax NNX
and Linen ``BatchNorm``). Calling it from the state ``0`` gives ``(1 - m) * batch_stat``, and
the momentum ``m`` comes from one more call from the state ``1``; the affine form is checked at
the public boundary. Leaves the training step does not change (``m = 1``) keep their values.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from landscape import _tree, _validate, engine
from landscape.connect._common import as_loss, first_examples, float_state, is_float
from landscape.losses import Loss

PyTree = Any

BN_POLICIES = ("auto", "reestimate", "interpolate", "fixed", "none")

__all__ = ["BN_POLICIES", "reestimate_bn"]


def _fill(state, value):
    return jax.tree.map(lambda x: jnp.full_like(x, value) if is_float(x) else x, state)


def _train_state(loss_fn: Loss, params, state, batch):
    _, new = loss_fn.apply_fn(params, state, batch[loss_fn.input_key], train=True)
    return new


def _first_batch(batched: engine.Batched):
    if batched.full is not None:
        return jax.tree.map(lambda x: x[0], batched.full)
    return batched.rest


def reestimated_state(loss_fn: Loss, params: PyTree, batched: engine.Batched) -> PyTree:
    """Traceable: the batch statistics of ``params`` averaged over the batches of ``batched``.

    Cost: one training-mode forward pass per batch plus two on the first batch.
    """
    base = loss_fn.state
    zeros = _fill(base, 0.0)

    def stats(p, batch):
        new = _train_state(loss_fn, p, zeros, batch)
        return [x for x in jax.tree.leaves(new) if is_float(x)]

    mean0, _ = engine.batched_mean(stats, params, batched)
    first = _first_batch(batched)
    n0 = _train_state(loss_fn, params, zeros, first)
    n1 = _train_state(loss_fn, params, _fill(base, 1.0), first)
    leaves, treedef = jax.tree.flatten(base)
    f0 = [x for x in jax.tree.leaves(n0) if is_float(x)]
    f1 = [x for x in jax.tree.leaves(n1) if is_float(x)]
    out, j = [], 0
    for x in leaves:
        if not is_float(x):
            out.append(x)
            continue
        # the momentum is one number per leaf: averaging over the leaf's entries reduces the
        # rounding error of (n1 - n0) in float32
        one_minus_m = 1.0 - jnp.mean(f1[j] - f0[j])
        ok = jnp.abs(one_minus_m) > 1e-3
        est = mean0[j] / jnp.where(ok, one_minus_m, 1.0)
        out.append(jnp.where(ok, est, x).astype(x.dtype))
        j += 1
    return jax.tree.unflatten(treedef, out)


def interpolated_state(t, state_a: PyTree, state_b: PyTree) -> PyTree:
    """Traceable: ``(1 - t) s_a + t s_b`` on floating leaves (others from ``s_a``)."""

    def f(a, b):
        if not is_float(a):
            return a
        tt = jnp.asarray(t, a.dtype)
        return (1 - tt) * a + tt * b

    return jax.tree.map(f, state_a, state_b)


@jax.jit
def _probe(loss_fn, params, batch):
    """Training-mode states from the state filled with 0, 1 and 2 (one compiled program)."""
    return tuple(_train_state(loss_fn, params, _fill(loss_fn.state, v), batch) for v in (0.0, 1.0, 2.0))


def check_reestimable(loss_fn: Loss, params: PyTree, data, *, fn: str) -> None:
    """Check concretely (on a few examples) that the training step updates every floating
    state leaf as a running average, so :func:`reestimated_state` is exact."""
    small = first_examples(data, 8)
    base = loss_fn.state
    try:
        n0, n1, n2 = _probe(loss_fn, params, small)
    except Exception as e:  # noqa: BLE001 - reported with context
        raise ValueError(
            f"{fn}: bn='reestimate' runs the model in training mode (apply_fn(..., train=True)) "
            f"and that failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}"
        ) from e
    if jax.tree.structure(n0) != jax.tree.structure(base):
        raise ValueError(
            f"{fn}: bn='reestimate' needs apply_fn(..., train=True) to return a state with the "
            f"structure of the model's state; got {_validate.describe(n0)}, expected "
            f"{_validate.describe(base)}."
        )
    for path, x, a, b, c in zip(
        _tree.leaf_paths(base), jax.tree.leaves(base), *(jax.tree.leaves(n) for n in (n0, n1, n2))
    ):
        if not is_float(x):
            continue
        a, b, c = (np.asarray(v, np.float64) for v in (a, b, c))
        scale = 1.0 + np.max(np.abs(a))
        if not np.allclose(c - a, 2.0 * (b - a), rtol=1e-3, atol=1e-4 * scale):
            raise ValueError(
                f"{fn}: bn='reestimate' needs every floating state leaf to be a running average "
                f"(new = m * old + (1 - m) * batch_statistic, as in Flax BatchNorm); leaf "
                f"'{path}' is updated differently. Use bn='fixed' or bn='interpolate'."
            )


def reestimate_bn(
    model_or_loss, params: PyTree, data, *, batch_size: int | None = None
) -> PyTree:
    """Batch-norm statistics of ``params`` re-estimated from ``data`` (Garipov's ``update_bn``).

    Runs the model in training mode over ``data`` (the whole set, in batches of
    ``batch_size``) and averages the per-batch statistics (batches weighted by their size).
    Every other analysis in :mod:`landscape.connect` calls the same routine at each point of a
    path when ``bn="reestimate"``.

    Args:
      model_or_loss: a :class:`landscape.Model` (or triple) or a :class:`landscape.Loss`; its
        state gives the structure of the statistics.
      params: the parameters whose statistics are wanted.
      data: training data ``{"x", "y"}`` (targets are not used).
      batch_size: examples per batch (default: the engine's, up to 1024). Variances are the
        mean of within-batch variances, so they depend on it as in PyTorch's ``update_bn``.

    Returns:
      The model state with re-estimated statistics (non-floating leaves unchanged).

    Raises:
      TypeError: the model has no floating state to re-estimate.
      ValueError: the training step does not update the state as a running average.

    Cost: ``ceil(n / batch_size) + 2`` training-mode forward passes, one compiled program.

    References:
      Garipov et al. 2018 (``utils.update_bn``); Ioffe and Szegedy 2015.
    """
    fn = "landscape.connect.reestimate_bn"
    loss_fn = as_loss(model_or_loss, fn=fn)
    if not float_state(loss_fn):
        raise TypeError(
            f"{fn}: model_or_loss must be a landscape.Model or landscape.Loss whose state has "
            "floating leaves (batch-norm statistics)."
        )
    _validate.check_params(params, fn=fn)
    batched = engine.batch(data, batch_size, placement="replicate", fn=fn)
    check_reestimable(loss_fn, params, batched, fn=fn)
    return _reestimate_jit(loss_fn, params, batched)


@jax.jit
def _reestimate_jit(loss_fn, params, batched):
    return reestimated_state(loss_fn, params, batched)
