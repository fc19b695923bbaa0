"""Slices and interpolation: numerical truth against direct evaluation, the ReLU rescaling
invariance, no recompilation, results, non-finite points, bad input (the first-layer trick:
test_fast.py; the adaptive grid: test_adaptive.py)."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import landscape
from landscape import grid
from landscape.surface import (
    SliceResult,
    interpolate,
    random_direction,
    random_directions,
    slice_1d,
    slice_2d,
)
from tests.surface.conftest import as_dtype, tiny_mlp


def _at(params, ds, cs):
    out = params
    for c, d in zip(cs, ds):
        out = jax.tree.map(lambda x, v, c=c: x + jnp.asarray(c, x.dtype) * v, out, d.vector)
    return out


def _lerp(a, b, t):
    return jax.tree.map(
        lambda x, y: (1 - jnp.asarray(t, x.dtype)) * x + jnp.asarray(t, x.dtype) * y, a, b
    )


def test_slice_2d_equals_direct_evaluation_float64(small_digits):
    with jax.enable_x64(True):
        train, test = (as_dtype(d, jnp.float64) for d in small_digits)
        m = tiny_mlp(jnp.float64)
        loss_fn = landscape.make_loss_fn(m)
        d1, d2 = random_directions(jax.random.key(0), m.params, 2)
        alphas, betas = np.linspace(-1, 1, 5), np.linspace(-0.5, 1.0, 4)
        r = slice_2d(
            loss_fn,
            m.params,
            train,
            (d1, d2),
            alphas=alphas,
            betas=betas,
            test_data=test,
            settings=landscape.GridSettings(chunk_size=6, batch_size=128),
        )
        assert r.shape == (5, 4) and r.train["loss"].dtype == np.float64
        # the origin is the loss at params; 1e-12: same formula, reassociated sums only
        ref0 = landscape.evaluate(loss_fn, m.params, train)
        i0 = int(np.flatnonzero(alphas == 0)[0])
        r0 = slice_1d(loss_fn, m.params, train, d1, alphas=[-0.5, 0.0, 0.5])
        assert r0.train["loss"][1] == pytest.approx(float(ref0["loss"]), abs=1e-12)
        # grid points against direct evaluation at params + a d1 + b d2: 1e-10 (float64; the
        # point is built by the same formula, and the batched mean differs only in summation
        # order)
        for i, j in [(0, 0), (i0, 1), (3, 2), (4, 3)]:
            p = _at(m.params, (d1, d2), (alphas[i], betas[j]))
            for split, data in (("train", train), ("test", test)):
                ref = landscape.evaluate(loss_fn, p, data)
                for k in ("loss", "accuracy", "error"):
                    got = getattr(r, split)[k][i, j]
                    assert got == pytest.approx(float(ref[k]), abs=1e-10), (split, k, i, j)
        assert r.num_nonfinite == 0 and r.finite.all()


def test_slice_1d_and_interpolate_float64(small_digits):
    with jax.enable_x64(True):
        train, test = (as_dtype(d, jnp.float64) for d in small_digits)
        a = tiny_mlp(jnp.float64, seed=0)
        b = tiny_mlp(jnp.float64, seed=1)
        loss_fn = landscape.make_loss_fn(a)
        ts = np.linspace(-0.5, 1.5, 9)
        r = interpolate(loss_fn, a.params, b.params, train, ts=ts, test_data=test)
        assert r.kind == "interpolate" and np.array_equal(r.ts, ts)
        # ends: (1 - t) a + t b is exactly a at t = 0 and b at t = 1
        for t, p in ((0.0, a.params), (1.0, b.params)):
            i = int(np.flatnonzero(ts == t)[0])
            for split, data in (("train", train), ("test", test)):
                ref = landscape.evaluate(loss_fn, p, data)
                assert getattr(r, split)["loss"][i] == pytest.approx(float(ref["loss"]), abs=1e-12)
        for i in (0, 3, 8):  # extrapolated and inner points
            ref = landscape.evaluate(loss_fn, _lerp(a.params, b.params, ts[i]), train)
            assert r.train["loss"][i] == pytest.approx(float(ref["loss"]), abs=1e-10)
        d = random_direction(jax.random.key(3), a.params, norm="layer")
        s = slice_1d(loss_fn, a.params, train, d, alphas=np.linspace(-1, 1, 7))
        for i in (0, 2, 6):
            ref = landscape.evaluate(loss_fn, _at(a.params, (d,), (s.alphas[i],)), train)
            assert s.train["loss"][i] == pytest.approx(float(ref["loss"]), abs=1e-10)
            assert s.train["accuracy"][i] == pytest.approx(float(ref["accuracy"]), abs=1e-12)


def test_float32_slice_matches_direct_evaluation(small_digits):
    train, test = small_digits
    model = tiny_mlp(jnp.float32)
    loss_fn = landscape.make_loss_fn(model)
    d1, d2 = random_directions(jax.random.key(1), model.params, 2)
    r = slice_2d(
        loss_fn,
        model.params,
        train,
        (d1, d2),
        alphas=np.linspace(-1, 1, 4),
        betas=np.linspace(-1, 1, 3),
        test_data=test,
    )
    for i, j in [(0, 0), (1, 2), (3, 1)]:
        p = _at(model.params, (d1, d2), (np.float32(r.alphas[i]), np.float32(r.betas[j])))
        ref = landscape.evaluate(loss_fn, p, test)
        # float32: different summation order over 100-300 examples; rtol 1e-5
        assert r.test["loss"][i, j] == pytest.approx(float(ref["loss"]), rel=1e-5)
        assert r.test["accuracy"][i, j] == pytest.approx(float(ref["accuracy"]), abs=1e-6)


@pytest.mark.parametrize("norm", ["filter", "layer"])
def test_relu_rescaling_invariance(norm, small_digits):
    # ReLU is positively homogeneous: (c W0, c b0, W1 / c) computes the same function as
    # (W0, b0, W1). Filter- and layer-normalised directions scale the same way, so the 1-D slice
    # with the same key is unchanged (Li et al. 2018, section 4). float64: 1e-10.
    with jax.enable_x64(True):
        train, _ = (as_dtype(d, jnp.float64) for d in small_digits)
        m = tiny_mlp(jnp.float64)
        loss_fn = landscape.make_loss_fn(m)
        p = jax.tree.map(lambda x: x + 0.05, m.params)  # non-zero biases
        c = 3.7
        q = jax.tree.map(lambda x: x, p)
        q["layers"][0] = {
            "kernel": c * p["layers"][0]["kernel"],
            "bias": c * p["layers"][0]["bias"],
        }
        q["layers"][1] = {"kernel": p["layers"][1]["kernel"] / c, "bias": p["layers"][1]["bias"]}
        alphas = np.linspace(-1, 1, 7)
        out = {}
        for bias_bn in ("zero", "filter"):
            for name, params in (("p", p), ("q", q)):
                d = random_direction(jax.random.key(4), params, norm=norm, bias_bn=bias_bn)
                out[name, bias_bn] = slice_1d(loss_fn, params, train, d, alphas=alphas).loss
            np.testing.assert_allclose(out["q", bias_bn], out["p", bias_bn], rtol=1e-10, atol=0)
        assert np.ptp(out["p", "zero"]) > 1e-2  # the slice is not flat
        # and the invariance is a property of the normalisation: without it the slices differ
        raw = {
            n: slice_1d(
                loss_fn,
                params,
                train,
                random_direction(jax.random.key(4), params, norm=None),
                alphas=alphas,
            ).loss
            for n, params in (("p", p), ("q", q))
        }
        assert np.max(np.abs(raw["p"] - raw["q"])) > 1e-3


def test_no_recompilation_on_second_call(small_digits):
    train, _ = small_digits
    m = tiny_mlp(jnp.float32)
    loss_fn = landscape.make_loss_fn(m)
    d1, d2 = random_directions(jax.random.key(0), m.params, 2)
    kw = dict(alphas=np.linspace(-1, 1, 3), betas=np.linspace(-1, 1, 3))
    slice_2d(loss_fn, m.params, train, (d1, d2), **kw)
    before = grid._points_jit._cache_size()
    e1, e2 = random_directions(jax.random.key(1), m.params, 2)  # new directions, same shapes
    slice_2d(loss_fn, m.params, train, (e1, e2), **kw)
    slice_2d(loss_fn, jax.tree.map(lambda x: 0.9 * x, m.params), train, (d1, d2), **kw)
    assert grid._points_jit._cache_size() == before


def test_result_save_load_roundtrip(tmp_path, small_digits):
    train, test = small_digits
    m = tiny_mlp(jnp.float32)
    loss_fn = landscape.make_loss_fn(m)
    d1, d2 = random_directions(jax.random.key(0), m.params, 2)
    r = slice_2d(
        loss_fn,
        m.params,
        train,
        (d1, d2),
        alphas=np.linspace(-1, 1, 3),
        betas=np.linspace(-1, 1, 2),
        test_data=test,
    )
    r.save(tmp_path / "r.npz")
    back = SliceResult.load(tmp_path / "r.npz")
    assert back.kind == "slice_2d" and back.shape == (3, 2)
    for k in r.train:
        np.testing.assert_array_equal(back.train[k], r.train[k])
        np.testing.assert_array_equal(back.test[k], r.test[k])
    np.testing.assert_array_equal(back.betas, r.betas)
    assert back.directions[0]["key_data"] == tuple(d1.spec["key_data"])
    assert back.settings["bn"] == "fixed" and back.settings["data_hash"] == r.settings["data_hash"]
    assert "SliceResult(slice_2d, grid 3x2" in repr(back)
    # defaults: lax.map over one chunk holding the whole (small) grid, no memory estimate needed
    assert back.settings["strategy"] == "map" and back.settings["chunk_size"] == 6
    assert back.settings["bytes_per_point"] is None
    r1 = slice_1d(loss_fn, m.params, train, d1, alphas=[-1.0, 1.0])
    r1.save(tmp_path / "r1.npz")
    b1 = SliceResult.load(tmp_path / "r1.npz")
    assert b1.betas is None and b1.test is None and b1.ndim == 1


def _log_loss(params, batch):
    # finite only where w[0] > 0; aux from the same pass
    v = jnp.log(params["w"][0]) + jnp.mean(batch["x"]) * params["w"][1]
    return v, {"w0": params["w"][0]}


def test_nonfinite_points_are_recorded_not_fatal():
    params = {"w": jnp.asarray([0.5, 1.0], jnp.float32)}
    data = {"x": np.linspace(0, 1, 10, dtype=np.float32)[:, None]}
    d = {"w": jnp.asarray([1.0, 0.0], jnp.float32)}
    alphas = np.linspace(-1, 1, 9)  # w0 = 0.5 + alpha <= 0 for alpha <= -0.5
    with pytest.warns(RuntimeWarning, match="3 of 9 grid points have non-finite"):
        r = slice_1d(_log_loss, params, data, d, alphas=alphas)
    assert r.num_nonfinite == 3
    np.testing.assert_array_equal(r.finite, 0.5 + alphas > 0)
    ok = r.finite
    np.testing.assert_allclose(r.loss[ok], np.log(0.5 + alphas[ok]) + 0.5, rtol=1e-6)
    np.testing.assert_allclose(r.train["w0"], 0.5 + alphas, rtol=1e-6, atol=1e-7)


def test_bad_inputs(small_digits):
    train, _ = small_digits
    m = tiny_mlp(jnp.float32)
    loss_fn = landscape.make_loss_fn(m)
    d1, d2 = random_directions(jax.random.key(0), m.params, 2)
    fn = "landscape.surface.slice_2d"
    with pytest.raises(ValueError, match=f"{fn}: alphas must be strictly increasing"):
        slice_2d(loss_fn, m.params, train, (d1, d2), alphas=[0.0, 1.0, 0.5])
    with pytest.raises(ValueError, match="betas is empty"):
        slice_2d(loss_fn, m.params, train, (d1, d2), betas=[])
    with pytest.raises(ValueError, match="alphas must be 1-D"):
        slice_1d(loss_fn, m.params, train, d1, alphas=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="ts must be finite"):
        interpolate(loss_fn, m.params, m.params, train, ts=[0.0, np.nan])
    bad = {"layers": {0: m.params["layers"][0]}}
    with pytest.raises(
        ValueError, match=r"directions\[1\] must have the same tree structure as params"
    ):
        slice_2d(loss_fn, m.params, train, (d1, bad))
    shape = jax.tree.map(lambda x: x, m.params)
    shape["layers"][2]["kernel"] = jnp.ones((10, 3))
    with pytest.raises(ValueError, match=r"direction leaf 'layers/2/kernel' has shape \(10, 3\)"):
        slice_1d(loss_fn, m.params, train, shape)
    with pytest.raises(ValueError, match="parallel"):
        slice_2d(loss_fn, m.params, train, (d1, jax.tree.map(lambda x: 2 * x, d1.vector)))
    with pytest.raises(ValueError, match="exactly 2 directions"):
        slice_2d(loss_fn, m.params, train, (d1, d2, d1))
    with pytest.raises(TypeError, match="must be a pair"):
        slice_2d(loss_fn, m.params, train, d1)
    with pytest.raises(ValueError, match="bn must be one of"):
        slice_1d(loss_fn, m.params, train, d1, bn="running")
    with pytest.raises(ValueError, match="bn='interpolate' applies to"):
        slice_1d(loss_fn, m.params, train, d1, bn="interpolate")
    with pytest.raises(ValueError, match="bn='reestimate' but the model has no state"):
        slice_1d(loss_fn, m.params, train, d1, bn="reestimate")
    with pytest.raises(ValueError, match="strategy must be one of"):
        slice_1d(loss_fn, m.params, train, d1, settings=landscape.GridSettings(strategy="pmap"))
    with pytest.raises(TypeError, match="data must be a dict"):
        slice_1d(loss_fn, m.params, [1, 2], d1)
    with pytest.raises(ValueError, match="slice_1d: loss_fn could not be evaluated on test_data"):
        slice_1d(loss_fn, m.params, train, d1, test_data={"x": np.ones((4, 7)), "y": np.zeros(4)})
    with pytest.raises(
        ValueError, match="interpolate: bn='interpolate' needs the second model's state"
    ):
        interpolate(loss_fn, m.params, m.params, train, bn="interpolate")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a valid call warns about nothing
        slice_1d(loss_fn, m.params, train, d1, alphas=[0.0])


def test_chunks_sized_from_the_memory_estimate(small_digits):
    train, _ = small_digits
    m = tiny_mlp(jnp.float32)
    loss_fn = landscape.make_loss_fn(m)
    d = random_direction(jax.random.key(0), m.params)
    a = np.linspace(-1, 1, 9)
    big = slice_1d(
        loss_fn, m.params, train, d, alphas=a, settings=landscape.GridSettings(strategy="vmap")
    )
    per_point = big.settings["bytes_per_point"]
    # one batch of 300 examples through a 64-12-10-10 MLP: at least the first layer's
    # activations (300 x 12 floats), far below the default budget: the whole grid in one chunk
    assert per_point >= 300 * 12 * 4 and big.settings["chunk_size"] == 9
    small = slice_1d(
        loss_fn,
        m.params,
        train,
        d,
        alphas=a,
        settings=landscape.GridSettings(strategy="vmap", memory_budget=3 * per_point),
    )
    assert small.settings["chunk_size"] == 3
    # float32, the same points vectorised in chunks of 3 or 9: rtol 1e-6
    np.testing.assert_allclose(small.loss, big.loss, rtol=1e-6)
