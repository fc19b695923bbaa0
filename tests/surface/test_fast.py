"""The first-layer trick found from the traced program: equal to the plain evaluation (float64
1e-12, float32 1e-5 relative) on an MLP, a CNN (convolution first), a batch-norm net, plain
loss functions (data on either side of the product, tied weights); clean fallbacks, with the
reason recorded, where it does not apply."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import landscape
from landscape import grid
from landscape.surface import (
    _fast,
    affine_first_layer,
    interpolate,
    random_directions,
    slice_1d,
    slice_2d,
)
from tests.surface.conftest import as_dtype, tiny_mlp
from tests.surface.test_bn import _model as bn_model

KW = dict(alphas=np.linspace(-1, 1, 4), betas=np.linspace(-1, 1, 3))
# float32: the K products are summed in another order than the point's own product
RTOL32 = 1e-5


def _compare(loss_fn, params, data, *, rtol, atol=0.0, first_layer=True, **kw):
    dirs = random_directions(jax.random.key(0), params, 2, bias_bn="filter")
    plain = slice_2d(loss_fn, params, data, dirs, first_layer=None, **KW, **kw)
    fast = slice_2d(loss_fn, params, data, dirs, first_layer=first_layer, **KW, **kw)
    assert plain.settings["evaluator"] == "engine"
    for k in plain.train:
        np.testing.assert_allclose(fast.train[k], plain.train[k], rtol=rtol, atol=atol, err_msg=k)
    return fast


def test_mlp_float64_and_float32(small_digits):
    with jax.enable_x64(True):
        train = as_dtype(small_digits[0], jnp.float64)
        m = tiny_mlp(jnp.float64)
        loss_fn = landscape.make_loss_fn(m, weight_decay=1e-3)
        fast = _compare(loss_fn, m.params, train, rtol=1e-12, atol=1e-14)
        info = fast.settings["first_layer"]
        assert fast.settings["evaluator"] == "affine-first-layer"
        assert info["applied"] and info["product"] == "dot_general"
        assert info["weight_leaf"] == "['layers'][0]['kernel']" and info["num_basis"] == 3
        assert fast.provenance["settings"]["first_layer"]["applied"]
        # the default ("auto") applies it to the MLP (64 multiply-adds per output >= 4 x 3)
        auto = slice_2d(
            loss_fn, m.params, train, random_directions(jax.random.key(0), m.params, 2), **KW
        )
        assert (
            auto.settings["first_layer"]["applied"]
            and auto.settings["first_layer"]["mode"] == "auto"
        )
        # a path (interpolation): K = 2 end points
        b = tiny_mlp(jnp.float64, seed=1)
        ts = np.linspace(-0.5, 1.5, 5)
        pi = interpolate(loss_fn, m.params, b.params, train, ts=ts, first_layer=None)
        fi = interpolate(loss_fn, m.params, b.params, train, ts=ts, first_layer=True)
        assert fi.settings["first_layer"]["num_basis"] == 2
        np.testing.assert_allclose(fi.loss, pi.loss, rtol=1e-12)
        # built from a model: the loss must be that model's
        with pytest.raises(ValueError, match="another model"):
            slice_1d(
                landscape.make_loss_fn(b),
                m.params,
                train,
                random_directions(jax.random.key(0), m.params, 1)[0],
                first_layer=affine_first_layer(m),
            )
    m32 = tiny_mlp(jnp.float32)
    _compare(landscape.make_loss_fn(m32), m32.params, small_digits[0], rtol=RTOL32, atol=1e-6)


def test_mlp_on_images_flattens_first(small_digits):
    """An MLP on 8x8x1 images: the product's data operand is the reshaped input."""
    with jax.enable_x64(True):
        x, y = small_digits[0]["x"][:120], small_digits[0]["y"][:120]
        data = {"x": jnp.asarray(x.reshape(-1, 8, 8, 1), jnp.float64), "y": jnp.asarray(y)}
        m = landscape.make_model(
            "mlp", input_shape=(8, 8, 1), num_outputs=10, hidden=(9,), param_dtype="float64"
        )
        fast = _compare(landscape.make_loss_fn(m), m.params, data, rtol=1e-12, atol=1e-14)
        assert fast.settings["first_layer"]["contraction"] == 64


@pytest.mark.parametrize("channels", [1, 3])
def test_cnn_convolution_first(channels, small_digits):
    rng = np.random.default_rng(0)
    x = small_digits[0]["x"][:96].reshape(-1, 8, 8, 1)
    x = np.concatenate([x] + [rng.normal(size=x.shape)] * (channels - 1), axis=-1)
    y = small_digits[0]["y"][:96]
    with jax.enable_x64(True):
        data = {"x": jnp.asarray(x, jnp.float64), "y": jnp.asarray(y)}
        cnn = landscape.make_model(
            "cnn",
            input_shape=(8, 8, channels),
            num_outputs=10,
            channels=(4, 6),
            param_dtype="float64",
        )
        loss_fn = landscape.make_loss_fn(cnn)
        fast = _compare(loss_fn, cnn.params, data, rtol=1e-12, atol=1e-14)
        info = fast.settings["first_layer"]
        assert info["applied"] and info["product"] == "conv_general_dilated"
        assert (
            info["weight_leaf"] == "['convs'][0]['kernel']" and info["contraction"] == 9 * channels
        )
        # "auto" applies it only where it pays: 9 multiply-adds per output < 4 x 3 terms
        auto = slice_2d(
            loss_fn, cnn.params, data, random_directions(jax.random.key(0), cnn.params, 2), **KW
        )
        assert auto.settings["first_layer"]["applied"] == (channels == 3)
        if channels == 1:
            assert "not worth it" in auto.settings["first_layer"]["reason"]
    cnn32 = landscape.make_model(
        "cnn", input_shape=(8, 8, channels), num_outputs=10, channels=(4, 6)
    )
    data32 = {"x": np.asarray(x, np.float32), "y": y}
    _compare(landscape.make_loss_fn(cnn32), cnn32.params, data32, rtol=RTOL32, atol=1e-6)


def test_batch_norm_fixed_applies_reestimate_falls_back(small_digits):
    with jax.enable_x64(True):
        train = as_dtype(small_digits[0], jnp.float64)
        m = bn_model(0, jnp.float64)
        loss_fn = landscape.make_loss_fn(m)
        fast = _compare(loss_fn, m.params, train, rtol=1e-12, atol=1e-14)
        assert fast.settings["first_layer"]["weight_leaf"] == "['l1']['kernel']"
        d = random_directions(jax.random.key(0), m.params, 1)[0]
        alphas = np.linspace(-1, 1, 3)
        with pytest.warns(UserWarning, match="does not apply.*bn='reestimate'"):
            r = slice_1d(
                loss_fn, m.params, train, d, alphas=alphas, bn="reestimate", first_layer=True
            )
        assert r.settings["evaluator"] == "engine"
        assert not r.settings["first_layer"]["applied"]
        assert "bn='reestimate'" in r.provenance["settings"]["first_layer"]["reason"]
        ref = slice_1d(
            loss_fn, m.params, train, d, alphas=alphas, bn="reestimate", first_layer=None
        )
        np.testing.assert_array_equal(r.loss, ref.loss)


# --- plain loss functions (module level: static arguments of compiled code) ----------------
def _lin_loss(p, b):
    """Data on the left: ``x W``."""
    out = jnp.tanh(b["x"] @ p["w"] + p["b"][None]) @ p["v"]
    return jnp.mean((out - b["t"]) ** 2)


def _rhs_loss(p, b):
    """Data on the right: ``W x^T`` (examples on the product's last axis)."""
    h = jnp.tanh(p["w"].T @ b["x"].T + p["b"][:, None])  # (hidden, n)
    return jnp.mean((h.T @ p["v"] - b["t"]) ** 2)


def _tied_loss(p, b):
    """Tied weights: the first layer's kernel is also the decoder (``x W W^T``)."""
    h = jax.nn.relu(b["x"] @ p["w"] + p["b"][None])
    return jnp.mean((h @ p["w"].T - b["x"]) ** 2) + 0.0 * jnp.sum(p["v"]) + 0.0 * jnp.mean(b["t"])


def _standardised_loss(p, b):
    """Weight standardisation: the product's weight is computed from the leaf (not linear)."""
    w = p["w"] / jnp.sqrt(jnp.sum(p["w"] ** 2, axis=0, keepdims=True))
    return _lin_loss({**p, "w": w}, b)


def _mixing_loss(p, b):
    """The data operand is centred by its batch's mean (mixes examples)."""
    x = b["x"] - jnp.mean(b["x"], axis=0, keepdims=True)
    return _lin_loss(p, {**b, "x": x})


def _no_data_product_loss(p, b):
    """No product of the data with a parameter: the parameters scale the data elementwise."""
    return jnp.mean((jnp.sum(b["x"] * p["w"][None, :, 0], axis=1) - b["t"][:, 0]) ** 2) + 0.0 * (
        jnp.sum(p["b"]) + jnp.sum(p["v"])
    )


def _plain_problem(dtype):
    rng = np.random.default_rng(1)
    params = {
        "w": jnp.asarray(rng.normal(size=(20, 24)) / 4, dtype),
        "b": jnp.asarray(rng.normal(size=24) / 4, dtype),
        "v": jnp.asarray(rng.normal(size=(24, 20)) / 4, dtype),
    }
    data = {
        "x": jnp.asarray(rng.normal(size=(50, 20)), dtype),
        "t": jnp.asarray(rng.normal(size=(50, 20)), dtype),
    }
    return params, data


@pytest.mark.parametrize("loss", [_lin_loss, _rhs_loss, _tied_loss])
def test_plain_loss_functions_float64(loss):
    with jax.enable_x64(True):
        params, data = _plain_problem(jnp.float64)
        fast = _compare(loss, params, data, rtol=1e-12, atol=1e-14)
        assert fast.settings["first_layer"]["applied"]
        assert fast.settings["first_layer"]["weight_leaf"] == "['w']"


@pytest.mark.parametrize(
    "loss, reason",
    [
        (_standardised_loss, "computed from the parameters"),
        (_mixing_loss, "mixes examples"),
        (_no_data_product_loss, "no dot_general or convolution"),
    ],
)
def test_falls_back_where_it_does_not_apply(loss, reason):
    with jax.enable_x64(True):
        params, data = _plain_problem(jnp.float64)
        dirs = random_directions(jax.random.key(0), params, 2)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # "auto": silent
            auto = slice_2d(loss, params, data, dirs, **KW)
        info = auto.settings["first_layer"]
        assert auto.settings["evaluator"] == "engine" and not info["applied"]
        assert (
            reason in info["reason"]
            and reason in auto.provenance["settings"]["first_layer"]["reason"]
        )
        with pytest.warns(UserWarning, match=reason):
            forced = slice_2d(loss, params, data, dirs, first_layer=True, **KW)
        plain = slice_2d(loss, params, data, dirs, first_layer=None, **KW)
        np.testing.assert_array_equal(forced.loss, plain.loss)
        np.testing.assert_array_equal(auto.loss, plain.loss)


def test_memory_budget_falls_back(small_digits):
    m = tiny_mlp(jnp.float32)
    loss_fn = landscape.make_loss_fn(m)
    dirs = random_directions(jax.random.key(0), m.params, 2)
    r = slice_2d(
        loss_fn,
        m.params,
        small_digits[0],
        dirs,
        **KW,
        settings=landscape.GridSettings(memory_budget=1000),
    )
    assert not r.settings["first_layer"]["applied"]
    assert "memory budget" in r.settings["first_layer"]["reason"]


def test_no_recompilation_and_jit_of_features(small_digits):
    train, _ = small_digits
    m = tiny_mlp(jnp.float32)
    loss_fn = landscape.make_loss_fn(m)
    kw = dict(alphas=np.linspace(-1, 1, 3), betas=np.linspace(-1, 1, 3))
    slice_2d(loss_fn, m.params, train, random_directions(jax.random.key(0), m.params, 2), **kw)
    before = grid._points_jit._cache_size(), _fast._features._cache_size()
    e1, e2 = random_directions(jax.random.key(1), m.params, 2)  # new directions, same shapes
    r = slice_2d(loss_fn, m.params, train, (e1, e2), **kw)
    slice_2d(loss_fn, jax.tree.map(lambda x: 0.9 * x, m.params), train, (e1, e2), **kw)
    assert r.settings["first_layer"]["applied"]
    assert (grid._points_jit._cache_size(), _fast._features._cache_size()) == before


def test_first_layer_argument_checked(small_digits):
    m = tiny_mlp(jnp.float32)
    loss_fn = landscape.make_loss_fn(m)
    dirs = random_directions(jax.random.key(0), m.params, 2)
    with pytest.raises(TypeError, match="slice_2d: first_layer must be 'auto', True"):
        slice_2d(loss_fn, m.params, small_digits[0], dirs, first_layer="yes", **KW)
    with pytest.raises(ValueError, match="mode"):
        affine_first_layer(mode="sometimes")
    with pytest.raises(TypeError, match="model must be a landscape.Model"):
        affine_first_layer(loss_fn)
