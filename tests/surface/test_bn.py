"""Batch-norm policies: centre statistics, interpolated statistics, statistics re-estimated at
every point (checked against statistics computed by hand)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import landscape
from landscape.surface import interpolate, random_direction, slice_1d
from tests.surface.conftest import as_dtype


class _BNNet(nnx.Module):
    """Linear -> BatchNorm -> ReLU -> Linear: the BN statistics are those of ``x W1 + b1``."""

    def __init__(self, *, rngs, dtype):
        self.l1 = nnx.Linear(64, 6, param_dtype=dtype, rngs=rngs)
        self.bn = nnx.BatchNorm(6, param_dtype=dtype, rngs=rngs)
        self.l2 = nnx.Linear(6, 10, param_dtype=dtype, rngs=rngs)

    def __call__(self, x):
        return self.l2(jax.nn.relu(self.bn(self.l1(x))))


def _model(seed, dtype):
    m = landscape.from_nnx(_BNNet(rngs=nnx.Rngs(seed), dtype=dtype))
    # non-trivial stored statistics, different per model
    rng = np.random.default_rng(seed)
    state = {
        "bn": {
            "mean": jnp.asarray(rng.normal(size=6), dtype),
            "var": jnp.asarray(rng.uniform(0.5, 2, size=6), dtype),
        }
    }
    return m.replace(state=state)


def _stats_by_hand(params, data, bs, nb):
    """Mean over batches of each batch's mean and (biased) variance of x W1 + b1."""
    x = np.asarray(data["x"], np.float64)[: bs * nb]
    h = x @ np.asarray(params["l1"]["kernel"]) + np.asarray(params["l1"]["bias"])
    hb = h.reshape(nb, bs, -1)
    return {"bn": {"mean": hb.mean(axis=1).mean(axis=0), "var": hb.var(axis=1).mean(axis=0)}}


def test_bn_policies_float64(small_digits):
    with jax.enable_x64(True):
        train, test = (as_dtype(d, jnp.float64) for d in small_digits)
        a, b = _model(0, jnp.float64), _model(1, jnp.float64)
        loss_fn = landscape.make_loss_fn(a)
        d = random_direction(jax.random.key(0), a.params, bias_bn="filter")
        alphas = np.array([-0.5, 0.0, 0.75])

        # centre: the stored statistics everywhere (1e-10: direct evaluation, same formula)
        r = slice_1d(loss_fn, a.params, train, d, alphas=alphas)
        for i, al in enumerate(alphas):
            p = jax.tree.map(lambda x, v, al=al: x + al * v, a.params, d.vector)
            assert r.loss[i] == pytest.approx(
                float(landscape.evaluate(loss_fn, p, train)["loss"]), abs=1e-10
            )

        # reestimate: statistics of the point, from 4 training batches of 50, by hand
        rr = slice_1d(
            loss_fn,
            a.params,
            train,
            d,
            alphas=alphas,
            test_data=test,
            bn="reestimate",
            settings=landscape.GridSettings(bn_batch_size=50, bn_num_batches=4),
        )
        assert rr.settings["bn_leaves"] == ("bn/mean", "bn/var")
        assert rr.settings["bn_batch_size"] == 50 and rr.settings["bn_num_batches"] == 4
        for i, al in enumerate(alphas):
            p = jax.tree.map(lambda x, v, al=al: x + al * v, a.params, d.vector)
            ref_loss = loss_fn.with_state(_stats_by_hand(p, train, 50, 4))
            for split, data in (("train", train), ("test", test)):
                ref = landscape.evaluate(ref_loss, p, data)
                # float64: the momentum is probed from three training-mode passes (error
                # ~1e-14 relative), then the mean of batch statistics; 1e-9 bounds both
                assert getattr(rr, split)["loss"][i] == pytest.approx(float(ref["loss"]), abs=1e-9)
        assert not np.allclose(rr.loss, r.loss)  # the policy matters

        # interpolate: (1 - t) state_a + t state_b with (1 - t) a + t b
        ts = np.array([-0.25, 0.0, 0.5, 1.0])
        ri = interpolate(loss_fn, a, b, train, ts=ts, bn="interpolate")
        for i, t in enumerate(ts):
            p = jax.tree.map(lambda x, y, t=t: (1 - t) * x + t * y, a.params, b.params)
            s = jax.tree.map(lambda x, y, t=t: (1 - t) * x + t * y, a.state, b.state)
            ref = landscape.evaluate(loss_fn.with_state(s), p, train)
            assert ri.loss[i] == pytest.approx(float(ref["loss"]), abs=1e-10)
        # the end t = 1 is model b with its own statistics
        end = landscape.evaluate(landscape.make_loss_fn(b), b.params, train)["loss"]
        assert ri.loss[-1] == pytest.approx(float(end), abs=1e-12)

        # reestimate along an interpolation too (both ends re-estimated)
        rir = interpolate(
            loss_fn,
            a.params,
            b.params,
            train,
            ts=[0.0, 1.0],
            bn="reestimate",
            settings=landscape.GridSettings(bn_batch_size=100, bn_num_batches=3),
        )
        ref = landscape.evaluate(
            loss_fn.with_state(_stats_by_hand(b.params, train, 100, 3)), b.params, train
        )
        assert rir.loss[1] == pytest.approx(float(ref["loss"]), abs=1e-9)


def test_bn_reestimate_float32_and_bad_inputs(small_digits):
    train, _ = small_digits
    a = _model(0, jnp.float32)
    loss_fn = landscape.make_loss_fn(a)
    d = random_direction(jax.random.key(0), a.params)
    r = slice_1d(loss_fn, a.params, train, d, alphas=[0.0, 0.5], bn="reestimate", settings=landscape.GridSettings(bn_batch_size=100))
    p = jax.tree.map(lambda x, v: x + 0.5 * v, a.params, d.vector)
    ref = landscape.evaluate(
        loss_fn.with_state(
            jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), _stats_by_hand(p, train, 100, 3))
        ),
        p,
        train,
    )
    # float32: the probed momentum carries ~1e-5 relative error into the statistics (1 - m is
    # 0.01, differences of O(1) numbers); 1e-4 relative on the loss
    assert r.loss[1] == pytest.approx(float(ref["loss"]), rel=1e-4)
    with pytest.raises(ValueError, match="bn_num_batches=9 but bn_data holds only 3 full batches"):
        slice_1d(loss_fn, a.params, train, d, bn="reestimate", settings=landscape.GridSettings(bn_batch_size=100, bn_num_batches=9))
    with pytest.raises(ValueError, match="bn_batch_size=500 is larger than the data set"):
        slice_1d(loss_fn, a.params, train, d, bn="reestimate", settings=landscape.GridSettings(bn_batch_size=500))
    with pytest.raises(TypeError, match="needs a landscape.Loss"):
        slice_1d(lambda p, b: loss_fn(p, b), a.params, train, d, bn="reestimate")
