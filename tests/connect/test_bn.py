"""Batch norm along paths: re-estimated statistics against an independent NNX computation, a
batch-norm curve reproducing its endpoints' losses (and failing to without re-estimation),
interpolated statistics, models whose state is not a running average."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import landscape
import landscape.connect as lc
from landscape.grid import resolve_bn


def _reference_stats(model, x, batch_size):
    """Batch statistics by NNX itself: momentum set to 0, one training-mode call per batch,
    averaged with batch-size weights (remainder included)."""
    acc, n = None, x.shape[0]
    for i in range(0, n, batch_size):
        mod = nnx.merge(model.apply_fn.graphdef_train, model.params, model.state)
        for _, sub in nnx.iter_modules(mod):
            if isinstance(sub, nnx.BatchNorm):
                sub.momentum = 0.0
        xb = jnp.asarray(x[i:i + batch_size])
        mod(xb)
        _, _, st = nnx.split(mod, nnx.Param, ...)
        st = jax.tree.map(lambda v, w=xb.shape[0]: np.asarray(v, np.float64) * w, nnx.to_pure_dict(st))
        acc = st if acc is None else jax.tree.map(np.add, acc, st)
    return jax.tree.map(lambda v: v / n, acc)


def test_reestimate_bn_matches_nnx(bn_trained, digits_data):
    m = bn_trained.model
    x = digits_data.train["x"][:700]
    got = landscape.reestimate_bn(m, m.params, {"x": x, "y": digits_data.train["y"][:700]}, batch_size=128)
    want = _reference_stats(m, x, 128)
    # float32 statistics; the momentum is recovered from two float32 training steps, which
    # costs ~1e-6 relative (see landscape.batchnorm)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(g), w, rtol=2e-5, atol=1e-6)
    # stored running averages differ from the re-estimated statistics
    assert not np.allclose(np.asarray(jax.tree.leaves(m.state)[0]), np.asarray(jax.tree.leaves(got)[0]),
                           rtol=1e-4)


def test_bn_curve_reproduces_endpoint_losses_with_reestimated_statistics(bn_pair, digits_data):
    a, b = bn_pair
    train = digits_data.train
    loss_fn = landscape.make_loss_fn(a)
    curve = lc.fit_curve(loss_fn, a.params, b.params, train, num_steps=20, batch_size=64, num_ts=2,
                         optimizer=optax.adam(1e-3), progress=False, key=jax.random.key(0))
    ts = np.array([0.0, 0.5, 1.0])
    pr = lc.profile(loss_fn, curve.path, train, ts=ts, refine=False, bn="reestimate")
    assert pr.bn == "reestimate"
    ends = []
    for m in (a, b):
        st = landscape.reestimate_bn(loss_fn, m.params, train)
        ends.append(float(landscape.evaluate(loss_fn.with_state(st), m.params, train)["loss"]))
    # the check: within 1e-5 relative at t = 0 and t = 1
    np.testing.assert_allclose(pr.train["loss"][0], ends[0], rtol=1e-5)
    np.testing.assert_allclose(pr.train["loss"][-1], ends[1], rtol=1e-5)
    # B is A with permuted units: the same function, so the same loss
    np.testing.assert_allclose(ends[1], ends[0], rtol=1e-5)
    # without re-estimation (A's statistics everywhere) the curve misses endpoint B entirely
    fixed = lc.profile(loss_fn, curve.path, train, ts=ts, refine=False, bn="fixed")
    assert fixed.train["loss"][-1] > 2 * ends[1]
    # "auto" means "reestimate" for batch-norm models
    assert resolve_bn("auto", loss_fn, bn_states=None) == "reestimate"


def _counter_apply(params, state, x, *, train=False):
    out = x @ params["w"]
    if train:
        return out, {"s": state["s"] ** 2 + jnp.mean(out)}
    return out, state


def _scaled_apply(params, state, x, *, train=False):
    return (x @ params["w"]) * state["s"][None, :], state


def test_interpolated_statistics():
    # outputs scaled by a state leaf: with (1 - t) s_a + t s_b the ends see their own state
    sa, sb = {"s": jnp.asarray([1.0, 2.0])}, {"s": jnp.asarray([3.0, 0.5])}
    pa, pb = {"w": jnp.ones((3, 2))}, {"w": jnp.full((3, 2), -1.0)}
    m = landscape.Model(_scaled_apply, pa, sa)
    loss_fn = landscape.make_loss_fn(m)
    data = {"x": np.linspace(-1, 1, 24, dtype=np.float32).reshape(8, 3), "y": np.arange(8) % 2}
    pr = lc.profile(loss_fn, lc.linear_path(pa, pb), data, num_ts=5, refine=False, bn="interpolate",
                    bn_states=(sa, sb))
    want = [float(landscape.evaluate(loss_fn.with_state(s), p, data)["loss"]) for p, s in ((pa, sa), (pb, sb))]
    np.testing.assert_allclose(pr.train["loss"][[0, -1]], want, rtol=1e-6)
    mid = {"s": 0.5 * (sa["s"] + sb["s"])}
    pm = {"w": jnp.zeros((3, 2))}
    np.testing.assert_allclose(pr.train["loss"][2], float(landscape.evaluate(loss_fn.with_state(mid), pm, data)["loss"]),
                               rtol=1e-6)


def test_state_that_is_not_a_running_average_is_rejected():
    m = landscape.Model(_counter_apply, {"w": jnp.ones((3, 2))}, {"s": jnp.ones(2)})
    loss_fn = landscape.make_loss_fn(m)
    data = {"x": np.ones((8, 3), np.float32), "y": np.zeros(8, np.int32)}
    path = lc.linear_path(m.params, {"w": jnp.zeros((3, 2))})
    with pytest.raises(ValueError, match="leaf 's' is updated differently"):
        lc.profile(loss_fn, path, data, bn="reestimate")
    with pytest.raises(ValueError, match="needs bn_states"):
        lc.profile(loss_fn, path, data, bn="interpolate")
    with pytest.raises(ValueError, match="bn must be one of"):  # one vocabulary: no "none"
        lc.profile(loss_fn, path, data, bn="none")
    with pytest.raises(TypeError, match="reestimate_bn: model_or_loss must be"):
        landscape.reestimate_bn(lambda p, b: 0.0, m.params, data)
