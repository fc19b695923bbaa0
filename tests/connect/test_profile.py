"""profile and barrier: against direct evaluation (float64 tight, float32), refinement around a
narrow peak, every barrier convention against hand computation, the linear barrier of two
independently trained MLPs, compilation reuse, save/load, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import landscape
import landscape.connect as lc
from landscape import grid


def _tiny(dtype, seed):
    return landscape.make_model("mlp", input_shape=(64,), num_outputs=10, hidden=(8,), seed=seed,
                                param_dtype=dtype)


def _numpy_mlp_loss(params, x, y):
    """Cross-entropy and error of a one-hidden-layer ReLU MLP in NumPy float64."""
    p = jax.tree.map(lambda v: np.asarray(v, np.float64), params)["layers"]
    h = np.maximum(x @ p[0]["kernel"] + p[0]["bias"], 0.0)
    z = h @ p[1]["kernel"] + p[1]["bias"]
    zmax = z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z - zmax).sum(axis=1)) + zmax[:, 0]
    return np.mean(lse - z[np.arange(len(y)), y]), np.mean(np.argmax(z, axis=1) != y)


def test_profile_equals_direct_evaluation_float64(small_train):
    # float64: the engine's batched means against a NumPy float64 forward pass at path(t)
    # (1e-12 relative: summation order only)
    with jax.enable_x64(True):
        data = {"x": jnp.asarray(small_train["x"], jnp.float64), "y": jnp.asarray(small_train["y"])}
        ma, mb, mc = (_tiny(jnp.float64, s) for s in (0, 1, 2))
        loss_fn = landscape.make_loss_fn(ma)
        path = lc.bezier(ma.params, mc.params, mb.params)
        ts = np.array([0.0, 0.1, 0.45, 0.8, 1.0])
        pr = lc.profile(loss_fn, path, data, ts=ts, refine=False,
                        settings=landscape.GridSettings(batch_size=100))
        x, y = np.asarray(small_train["x"], np.float64), np.asarray(small_train["y"])
        for i, t in enumerate(ts):
            w = (1 - t) ** 2, 2 * t * (1 - t), t**2
            point = jax.tree.map(lambda u, v, z, w=w: w[0] * np.asarray(u) + w[1] * np.asarray(v) + w[2] * np.asarray(z),
                                 ma.params, mc.params, mb.params)
            loss, err = _numpy_mlp_loss(point, x, y)
            np.testing.assert_allclose(pr.train["loss"][i], loss, rtol=1e-12)
            np.testing.assert_allclose(pr.train["error"][i], err, rtol=1e-12, atol=1e-15)
        assert pr.ts.dtype == np.float64 and pr.test is None and pr.train["loss"].dtype == np.float64


def test_profile_float32_and_defaults(linear_profile, pair_loss, pair_params, digits_data):
    pr = linear_profile
    # default: 61 grid points, all kept, plus refinement points around the maxima
    assert pr.grid.sum() == 61 and pr.ts.size > 61
    np.testing.assert_allclose(pr.ts[pr.grid], np.linspace(0, 1, 61))
    assert np.all(np.diff(pr.ts) > 0)
    assert set(pr.train) == {"loss", "accuracy", "error"} and set(pr.test) == set(pr.train)
    path = lc.linear_path(*pair_params)
    for t in (0.0, 0.5, 1.0):
        i = int(np.argmin(np.abs(pr.ts - t)))
        want = landscape.evaluate(pair_loss, path(pr.ts[i]), digits_data.test)
        # float32 sums over 360 test examples in a different order: 1e-5 relative
        np.testing.assert_allclose(pr.test["loss"][i], float(want["loss"]), rtol=1e-5)
    # path length: the distance between the endpoints
    np.testing.assert_allclose(pr.distance[-1], float(landscape.tree.norm(
        landscape.tree.sub(pair_params[1], pair_params[0]))), rtol=1e-5)


def test_linear_barrier_between_independent_solutions_is_clearly_positive(linear_profile):
    b = lc.barrier(linear_profile)
    print("\n" + b.table())
    # measured: train loss barrier ~0.8 nats (endpoints ~0.01), error barrier ~25 points
    assert b.get("loss", "train") > 0.3
    assert b.get("error", "train") > 0.1
    assert b.get("loss", "test") > 0.3
    assert 0.3 < b.get("loss", "train", "t_max") < 0.7


def _peak_loss(params, batch):
    # a narrow bump of height 1 at w = 0.5 + 1/240 (between two points of the 61-grid)
    w = params["w"][0]
    return jnp.exp(-(((w - (0.5 + 1 / 240)) / 0.004) ** 2)) + 0.0 * jnp.mean(batch["x"])


def test_refinement_finds_a_peak_between_grid_points():
    data = {"x": np.zeros((4, 1), np.float32)}
    path = lc.linear_path({"w": jnp.zeros(1)}, {"w": jnp.ones(1)})
    coarse = lc.profile(_peak_loss, path, data, refine=False)
    fine = lc.profile(_peak_loss, path, data)
    b0, b1 = lc.barrier(coarse, metrics=("loss",)), lc.barrier(fine, metrics=("loss",))
    assert b0.get() < 0.5  # the grid straddles the bump
    # 3 rounds shrink the bracket 4.5-fold each: the peak is found to ~1e-4 in t
    assert b1.get() > 0.99
    np.testing.assert_allclose(b1.get(convention="t_max"), 0.5 + 1 / 240, atol=3e-4)


def _table_loss(params, batch):
    return params["w"][0] + 0.0 * jnp.mean(batch["x"])


def test_barrier_conventions_by_hand():
    # v(t) = 1 + 3 t + 2 sin(pi t): unequal endpoints (1 and 4), so the conventions differ
    data = {"x": np.zeros((2, 1), np.float32)}
    ts = np.linspace(0, 1, 101)
    path = lc.linear_path({"w": jnp.zeros(1)}, {"w": jnp.ones(1)})
    pr = lc.profile(_table_loss, path, data, ts=ts, refine=False)
    v = 1 + 3 * pr.ts + 2 * np.sin(np.pi * pr.ts)
    pr = pr.replace(train={"loss": v})
    b = lc.barrier(pr, metrics=("loss",))
    d = b.values["train/loss"]
    np.testing.assert_allclose(d["max_minus_mean"], v.max() - 0.5 * (1 + 4))
    np.testing.assert_allclose(d["t_max"], ts[np.argmax(v)])
    excess = v - (1 + 3 * ts)
    np.testing.assert_allclose(d["max_excess"], excess.max())
    np.testing.assert_allclose(d["t_max_excess"], 0.5)
    np.testing.assert_allclose(d["max_excess"], 2.0)
    np.testing.assert_allclose(d["mean"], np.trapezoid(v, ts))
    # straight path at constant speed: the length-weighted mean equals the trapezoid mean
    np.testing.assert_allclose(d["length_mean"], d["mean"], rtol=1e-6)
    assert d["start"] == 1.0 and d["end"] == 4.0
    assert "Entezari" in b.conventions["max_excess"] and "Frankle" in b.conventions["max_minus_mean"]
    assert "max_minus_mean" in b.table()
    with pytest.raises(ValueError, match="convention must be one of"):
        b.get(convention="nope")


def test_no_recompilation_and_save_load(pair_loss, pair_params, trained_pair, digits_data, tmp_path):
    path = lc.bezier(pair_params[0], pair_params[1], pair_params[0])
    lc.profile(pair_loss, path, digits_data.test, num_ts=9, refine=1)
    n = grid._points_jit._cache_size()
    path2 = lc.bezier(pair_params[1], pair_params[0], pair_params[1])
    pr = lc.profile(pair_loss, path2, digits_data.test, num_ts=9, refine=1)
    # a Model means make_loss_fn(model): an equal loss, so the same compiled programs
    pr2 = lc.profile(trained_pair[0].model, path2, digits_data.test, num_ts=9, refine=1)
    assert grid._points_jit._cache_size() == n
    np.testing.assert_array_equal(pr2.train["loss"], pr.train["loss"])
    pr.save(tmp_path / "p.npz")
    back = lc.Profile.load(tmp_path / "p.npz")
    np.testing.assert_array_equal(back.ts, pr.ts)
    np.testing.assert_array_equal(back.train["loss"], pr.train["loss"])
    assert back.test is None and back.kind == "bezier" and back.num_bends == 1
    b = lc.barrier(pr)
    b.save(tmp_path / "b.npz")
    b2 = lc.Barrier.load(tmp_path / "b.npz")
    assert b2.get("error") == b.get("error") and b2.conventions == b.conventions


def test_profile_resumes_from_checkpoint_dir(pair_loss, pair_params, digits_data, tmp_path):
    path = lc.linear_path(*pair_params)
    a = lc.profile(pair_loss, path, digits_data.test, num_ts=17, refine=False, store=tmp_path)
    assert len(list((tmp_path / "train").glob("chunk-*.npz"))) == 3
    b = lc.profile(pair_loss, path, digits_data.test, num_ts=17, refine=False, store=tmp_path)
    np.testing.assert_array_equal(a.train["loss"], b.train["loss"])
    with pytest.raises(ValueError, match="holds results of another job"):
        lc.profile(pair_loss, path, digits_data.test, num_ts=18, refine=False, store=tmp_path)


def test_profile_bad_input(pair_loss, pair_params, digits_data):
    path = lc.linear_path(*pair_params)
    data = digits_data.test
    with pytest.raises(TypeError, match="profile: path must be a landscape.paths.Path"):
        lc.profile(pair_loss, pair_params[0], data)
    with pytest.raises(ValueError, match="num_ts must be >= 2"):
        lc.profile(pair_loss, path, data, num_ts=1)
    with pytest.raises(TypeError, match="for 5 equally spaced values pass num_ts=5"):
        lc.profile(pair_loss, path, data, ts=5)
    with pytest.raises(ValueError, match="not both"):
        lc.profile(pair_loss, path, data, ts=[0.0, 1.0], num_ts=5)
    with pytest.raises(ValueError, match="ts must be finite"):
        lc.profile(pair_loss, path, data, ts=[0.0, np.nan])
    with pytest.raises(ValueError, match="bn must be one of"):
        lc.profile(pair_loss, path, data, bn="magic")
    with pytest.raises(ValueError, match="has no state"):
        lc.profile(pair_loss, path, data, bn="reestimate")
    with pytest.raises(TypeError, match="needs a landscape.Loss"):
        lc.profile(lambda p, b: pair_loss(p, b), path, data, bn="reestimate")
    with pytest.raises(ValueError, match="loss_fn could not be evaluated on data"):
        lc.profile(pair_loss, path, {"x": np.zeros((5, 7), np.float32), "y": np.zeros(5, np.int32)})
    with pytest.raises(ValueError, match="data must be finite"):
        lc.profile(pair_loss, path, {"x": np.full((5, 64), np.nan, np.float32), "y": np.zeros(5, np.int32)})
    with pytest.raises(TypeError, match="profile: loss_fn must be callable"):
        lc.profile("cross_entropy", path, data)
    pr = lc.profile(pair_loss, path, data, ts=np.linspace(0.2, 0.8, 5), refine=False)
    with pytest.raises(ValueError, match="must include t = 0 and t = 1"):
        lc.barrier(pr)
    with pytest.raises(TypeError, match="barrier: profile must be"):
        lc.barrier({"loss": 1})


def _blowup_loss(params, batch):
    w = params["w"][0]
    return jnp.where(w > 0.7, jnp.inf, w) + 0.0 * jnp.mean(batch["x"])


def test_profile_nonfinite_is_named():
    data = {"x": np.zeros((2, 1), np.float32)}
    path = lc.linear_path({"w": jnp.zeros(1)}, {"w": jnp.ones(1)})
    with pytest.raises(FloatingPointError, match=r"non-finite train 'loss' .*first at t=0.8"):
        lc.profile(_blowup_loss, path, data, num_ts=11)
