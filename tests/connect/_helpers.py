"""Test helpers: models built without eager initialisation, a small batch-norm network, and the
multi-device workload of test_multidevice (the same computations on 1 and 4 devices)."""

from __future__ import annotations

import jax
import numpy as np
import optax
from flax import nnx


def fast_model(name: str, *, input_shape, num_outputs: int = 10, seed: int = 0, **kwargs):
    """A registry model (``landscape.make_model``'s architectures) with random parameters and
    batch-norm statistics drawn on the host: NNX's own initialisation runs op by op and
    compiles a truncated normal per kernel shape (seconds each on a busy CPU), which the tests
    do not need. Kernels ~ N(0, 2 / fan_in), vectors ~ N(0, 0.1^2), scales and variances in
    [0.5, 1.5]."""
    from landscape import models

    builder = models._MODELS[name]
    return fast_nnx(lambda: builder(tuple(input_shape), num_outputs, nnx.Rngs(0), **kwargs), seed)


def fast_nnx(make_module, seed: int = 0):
    """``landscape.from_nnx(make_module())`` with host-drawn values (see :func:`fast_model`)."""
    import math

    import landscape

    abstract = nnx.eval_shape(make_module)
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    rng = np.random.default_rng(seed)

    def fill(path, x):
        name_ = str(path[-1]) if path else ""
        if len(x.shape) >= 2:
            v = rng.normal(size=x.shape) * math.sqrt(2.0 / math.prod(x.shape[:-1]))
        elif any(k in name_ for k in ("scale", "var")):
            v = rng.uniform(0.5, 1.5, size=x.shape)
        else:
            v = rng.normal(size=x.shape) * 0.1
        return np.asarray(v, x.dtype)

    pd = jax.tree_util.tree_map_with_path(fill, nnx.to_pure_dict(params))
    rd = jax.tree_util.tree_map_with_path(fill, nnx.to_pure_dict(rest))
    nnx.replace_by_pure_dict(params, pd)
    nnx.replace_by_pure_dict(rest, rd)
    module = nnx.merge(graphdef, params, rest)
    return landscape.from_nnx(module)


class BNNet(nnx.Module):
    """Dense -> BatchNorm -> ReLU, twice, then Dense: a small batch-norm model on digits."""

    def __init__(self, rngs, hidden=(32,)):
        widths = (64, *hidden)
        self.dense = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])])
        self.bns = nnx.List([nnx.BatchNorm(b, rngs=rngs) for b in widths[1:]])
        self.head = nnx.Linear(widths[-1], 10, rngs=rngs)

    def __call__(self, x):
        for dense, bn in zip(self.dense, self.bns):
            x = jax.nn.relu(bn(dense(x)))
        return self.head(x)


def workload() -> dict:
    """A batch-norm network's profile with statistics re-estimated at every point (points
    sharded over devices, re-estimation data replicated inside the shard map), its barrier, and
    curve training in training mode (values of t sharded over devices)."""
    import landscape
    import landscape.connect as lc

    d = landscape.load_data("digits")
    train = {k: np.asarray(v[:300]) for k, v in d.train.items()}
    a = fast_nnx(lambda: BNNet(nnx.Rngs(0)), seed=0)
    b = fast_nnx(lambda: BNNet(nnx.Rngs(0)), seed=1)
    loss_fn = landscape.make_loss_fn(a)
    out = {}
    pr = lc.profile(loss_fn, lc.linear_path(a.params, b.params), train, num_ts=9, refine=1,
                    bn="reestimate", settings=landscape.GridSettings(bn_batch_size=64))
    out["ts"] = pr.ts
    out["loss"] = pr.train["loss"]
    out["error"] = pr.train["error"]
    out["barrier"] = np.asarray(lc.barrier(pr).get("loss", "train", "max_excess"))
    # num_ts = 4: the values of t are sharded over the 4 devices. SGD, not Adam: the dense
    # biases before batch norm have zero gradient up to rounding, which Adam would blow up to
    # full-size steps of either sign
    cr = lc.fit_curve(loss_fn, a.params, b.params, train, num_steps=8, batch_size=60, num_ts=4,
                      optimizer=optax.sgd(0.1), progress=False, key=jax.random.key(0))
    out["curve_bend"] = np.concatenate([np.ravel(x) for x in jax.tree.leaves(cr.bends)])
    out["curve_hist"] = cr.history["batch_loss"]
    return {k: np.asarray(v).tolist() for k, v in out.items()}
