"""Batch-norm re-estimation (shared by slices, paths, planes): exact statistics for NNX and
Linen models, interpolation, and refusal of states that are not running averages."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import landscape
from landscape import batchnorm


def test_linen_batchnorm_reestimated_exactly():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            x = nn.Dense(6)(x)
            return nn.Dense(2)(nn.BatchNorm(use_running_average=not train, momentum=0.8)(x))

    with jax.enable_x64(True):
        x = np.random.default_rng(0).normal(size=(37, 3)) * 3 + 1
        net = Net()
        variables = jax.tree.map(lambda a: a.astype(jnp.float64), net.init(jax.random.key(0), jnp.asarray(x)))
        model = landscape.from_linen(net, variables)
        data = {"x": x, "y": np.zeros(37, np.int32)}
        st = batchnorm.reestimate_bn(model, model.params, data, batch_size=10)
        # by hand: pre-BN activations, per-batch mean / biased variance, weighted by batch size
        h = x @ np.asarray(model.params["Dense_0"]["kernel"]) + np.asarray(model.params["Dense_0"]["bias"])
        means, vars_, ws = [], [], []
        for i in range(0, 37, 10):
            hb = h[i : i + 10]
            means.append(hb.mean(0))
            vars_.append(hb.var(0))
            ws.append(len(hb))
        w = np.asarray(ws, float)[:, None] / 37
        got = st["batch_stats"]["BatchNorm_0"]
        # float64, exact up to rounding (the momentum is measured from float64 passes)
        np.testing.assert_allclose(np.asarray(got["mean"]), (w * np.stack(means)).sum(0), rtol=1e-10)
        np.testing.assert_allclose(np.asarray(got["var"]), (w * np.stack(vars_)).sum(0), rtol=1e-10)


def test_interpolated_state_and_errors():
    a = {"m": jnp.asarray([0.0, 2.0]), "n": jnp.asarray(3, jnp.int32)}
    b = {"m": jnp.asarray([4.0, 6.0]), "n": jnp.asarray(5, jnp.int32)}
    mid = batchnorm.interpolated_state(0.25, a, b)
    np.testing.assert_allclose(np.asarray(mid["m"]), [1.0, 3.0])
    assert int(mid["n"]) == 3  # non-floating leaves come from a
    plain = landscape.make_model("mlp", input_shape=(3,), num_outputs=2, hidden=(4,))
    with pytest.raises(TypeError, match="whose model state has floating leaves"):
        batchnorm.reestimate_bn(plain, plain.params, {"x": np.ones((4, 3), np.float32)})

    def counter(params, state, x, *, train=False):
        out = x @ params["w"]
        return (out, {"s": state["s"] ** 2 + 1.0}) if train else (out, state)

    odd = landscape.Model(counter, {"w": jnp.ones((3, 2))}, {"s": jnp.ones(2)})
    with pytest.raises(ValueError, match="leaf 's' is updated differently"):
        batchnorm.reestimate_bn(odd, odd.params, {"x": np.ones((4, 3), np.float32)})
