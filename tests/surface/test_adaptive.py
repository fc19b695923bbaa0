"""The adaptive grid: evaluated points equal the full grid's, the interpolated ones are within
the reported error of it, fewer points are evaluated, non-finite regions are refined fully,
results save and resume, bad settings are refused."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import landscape
from landscape.surface import Adaptive, SliceResult, random_directions, slice_1d, slice_2d
from tests.surface.conftest import as_dtype, tiny_mlp

AXES = dict(alphas=np.linspace(-1, 1, 25), betas=np.linspace(-1, 1, 21))


@pytest.fixture(scope="module")
def trained64(small_digits):
    """A trained tiny MLP in float64 (a surface with a basin and steep walls)."""
    with jax.enable_x64(True):
        train = as_dtype(small_digits[0], jnp.float64)
        run = landscape.train(
            tiny_mlp(jnp.float64),
            train,
            optimizer=optax.adam(1e-2),
            num_steps=150,
            batch_size=64,
            seed=0,
            progress=False,
        )
        yield run.model, train


def test_adaptive_equals_full_grid_where_evaluated_and_is_close_elsewhere(trained64):
    m, train = trained64
    with jax.enable_x64(True):
        loss_fn = landscape.make_loss_fn(m)
        dirs = random_directions(jax.random.key(0), m.params, 2)
        full = slice_2d(loss_fn, m.params, train, dirs, **AXES)
        ad = Adaptive(tol=0.02, initial_stride=4)
        res = slice_2d(loss_fn, m.params, train, dirs, adaptive=ad, **AXES)
        assert isinstance(res, SliceResult) and res.shape == full.shape == res.evaluated.shape
        info = res.settings["adaptive"]
        assert info["num_evaluated"] == res.num_evaluated == int(res.evaluated.sum())
        assert 0 < info["fraction_evaluated"] < 0.9, info
        # the coarse lattice (every 4th index and the last) is always evaluated
        lat = lambda n: sorted(set(range(0, n, 4)) | {n - 1})  # noqa: E731
        assert res.evaluated[np.ix_(lat(25), lat(21))].all()
        ev = res.evaluated
        for k in full.train:
            np.testing.assert_allclose(res.train[k][ev], full.train[k][ev], rtol=1e-12, atol=1e-14)
        # the error against the full grid: within the tolerance the refinement test used
        err = np.abs(res.loss - full.loss)
        atol = info["atol_used"]
        assert np.isclose(
            atol,
            0.02
            * (
                full.loss[np.ix_(lat(25), lat(21))].max()
                - full.loss[np.ix_(lat(25), lat(21))].min()
            ),
        )
        assert err.max() <= atol, (err.max(), atol)
        # the other metrics are interpolated in the same cells, refined for the loss: close, not
        # within a tolerance of their own (accuracy on 300 examples moves in steps)
        assert np.abs(res.train["accuracy"] - full.train["accuracy"]).max() < 0.1
        assert res.finite.all() and "evaluated" in repr(res)
        # tol=0: every cell refined to single steps, every point evaluated (the full grid)
        exact = slice_2d(loss_fn, m.params, train, dirs, adaptive=Adaptive(tol=0.0), **AXES)
        assert exact.evaluated.all()
        np.testing.assert_allclose(exact.loss, full.loss, rtol=1e-12)


def test_adaptive_float32_and_1d_and_test_data(small_digits):
    train, test = small_digits
    m = tiny_mlp(jnp.float32)
    loss_fn = landscape.make_loss_fn(m)
    d1 = random_directions(jax.random.key(1), m.params, 1)[0]
    alphas = np.linspace(-1, 1, 33)
    full = slice_1d(loss_fn, m.params, train, d1, alphas=alphas, test_data=test)
    res = slice_1d(loss_fn, m.params, train, d1, alphas=alphas, test_data=test, adaptive=True)
    assert res.evaluated.shape == (33,) and res.evaluated[[0, 8, 16, 24, 32]].all()
    ev = res.evaluated
    np.testing.assert_allclose(res.loss[ev], full.loss[ev], rtol=1e-6)
    np.testing.assert_allclose(res.test["loss"][ev], full.test["loss"][ev], rtol=1e-6)
    assert np.abs(res.loss - full.loss).max() <= res.settings["adaptive"]["atol_used"] * 1.001
    # the default is the full grid
    assert full.evaluated is None and full.num_evaluated == 33 and "adaptive" not in full.settings


def _log_loss(p, b):
    """Finite only where ``1 + w . x_mean > 0``: a non-finite region on the plane."""
    return jnp.log(1.0 + jnp.mean(b["x"] @ p["w"])) + 0.0 * jnp.sum(p["v"])


def test_nonfinite_regions_are_refined_fully():
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        params = {"w": jnp.asarray(rng.normal(size=(6, 1)) / 4), "v": jnp.zeros((3, 2))}
        data = {"x": jnp.asarray(rng.normal(size=(40, 6)) + 1.0)}
        dirs = random_directions(jax.random.key(0), params, 2, norm=None)
        axes = dict(alphas=np.linspace(-3, 3, 17), betas=np.linspace(-3, 3, 17))
        with pytest.warns(RuntimeWarning, match="non-finite"):
            full = slice_2d(_log_loss, params, data, dirs, **axes)
        with pytest.warns(RuntimeWarning, match="non-finite"):
            res = slice_2d(
                _log_loss, params, data, dirs, adaptive=Adaptive(initial_stride=8), **axes
            )
        bad = ~full.finite
        assert bad.any() and not bad.all()
        np.testing.assert_array_equal(res.finite, full.finite)
        # every point next to a non-finite one is evaluated, not interpolated
        near = bad.copy()
        near[1:] |= bad[:-1]
        near[:-1] |= bad[1:]
        near[:, 1:] |= bad[:, :-1]
        near[:, :-1] |= bad[:, 1:]
        assert res.evaluated[near].all()
        assert res.num_evaluated < full.finite.size


def test_adaptive_save_load_and_resume(tmp_path, small_digits):
    train, _ = small_digits
    m = tiny_mlp(jnp.float32)
    loss_fn = landscape.make_loss_fn(m)
    dirs = random_directions(jax.random.key(0), m.params, 2)
    axes = dict(alphas=np.linspace(-1, 1, 9), betas=np.linspace(-1, 1, 9))
    ad = Adaptive(tol=0.05, initial_stride=4)
    res = slice_2d(loss_fn, m.params, train, dirs, adaptive=ad, store=tmp_path / "s", **axes)
    again = slice_2d(loss_fn, m.params, train, dirs, adaptive=ad, store=tmp_path / "s", **axes)
    np.testing.assert_array_equal(again.loss, res.loss)
    np.testing.assert_array_equal(again.evaluated, res.evaluated)
    res.save(tmp_path / "r")
    back = SliceResult.load(tmp_path / "r")
    np.testing.assert_array_equal(back.evaluated, res.evaluated)
    assert back.settings["adaptive"]["num_evaluated"] == res.num_evaluated
    # another tolerance is another job
    with pytest.raises(ValueError, match="another job"):
        slice_2d(
            loss_fn,
            m.params,
            train,
            dirs,
            adaptive=Adaptive(tol=0.01),
            store=tmp_path / "s",
            **axes,
        )


def test_adaptive_settings_checked(small_digits):
    train, _ = small_digits
    m = tiny_mlp(jnp.float32)
    loss_fn = landscape.make_loss_fn(m)
    dirs = random_directions(jax.random.key(0), m.params, 2)
    axes = dict(alphas=np.linspace(-1, 1, 5), betas=np.linspace(-1, 1, 5))
    with pytest.raises(TypeError, match="slice_2d: adaptive must be"):
        slice_2d(loss_fn, m.params, train, dirs, adaptive="yes", **axes)
    with pytest.raises(ValueError, match="adaptive.tol must be >= 0"):
        slice_2d(loss_fn, m.params, train, dirs, adaptive=Adaptive(tol=-1.0), **axes)
    with pytest.raises(ValueError, match="adaptive.initial_stride"):
        slice_2d(loss_fn, m.params, train, dirs, adaptive=Adaptive(initial_stride=0), **axes)
    with pytest.raises(ValueError, match="adaptive.metric must be one of"):
        slice_2d(loss_fn, m.params, train, dirs, adaptive=Adaptive(metric="auc"), **axes)
