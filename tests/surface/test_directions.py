"""Directions: normalisations, the Flax filter axis, 1-D leaf policies, overrides, zero-norm
filters, orthogonalisation, reproducibility, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import landscape
from landscape import tree as _tree
from landscape.surface import (
    Direction,
    direction_between,
    direction_from_spec,
    filter_norms,
    normalize_direction,
    random_direction,
    random_directions,
)
from landscape.surface._directions import _draw
from tests.surface.conftest import tiny_mlp


def _params(rng, shapes):
    return {
        f"l{i}": {"kernel": rng.normal(size=s).astype(np.float32)} for i, s in enumerate(shapes)
    }


def _per_filter(x, axis=-1):
    x = np.asarray(x, np.float64)
    axes = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
    return np.sqrt(np.sum(x**2, axis=axes))


dense = st.tuples(st.integers(1, 7), st.integers(2, 7))
conv = st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 4), st.integers(2, 5))


@settings(max_examples=15)  # each example compiles one small program for its shapes
@given(shapes=st.lists(st.one_of(dense, conv), min_size=1, max_size=3), seed=st.integers(0, 99))
def test_filter_norms_equal_weights_filter_norms_property(shapes, seed):
    # Property: for Dense (in, out) and Conv (h, w, in, out) kernels, every filter (a slice along
    # the LAST axis) of the normalised direction has the norm of the same filter of the weights.
    # float32 throughout: rtol 1e-5 covers the rounding of the per-filter sums of squares.
    # (The Gaussian is drawn with NumPy here: the property is the normalisation's; the JAX draw
    # of random_direction is checked on real models below.)
    rng = np.random.default_rng(seed)
    params = _params(rng, shapes)
    raw = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)
    d = Direction(normalize_direction(raw, params, norm="filter"))
    for name, leaf in params.items():
        got = _per_filter(d.vector[name]["kernel"])
        want = _per_filter(leaf["kernel"])
        np.testing.assert_allclose(got, want, rtol=1e-5)


def test_filter_axis_is_the_last_axis_of_flax_kernels():
    # A real Flax CNN (Conv kernels HWIO, Dense kernels (in, out)): per-output-channel norms match
    # the weights', and per-axis-0 norms (PyTorch's convention) do not.
    model = landscape.make_model("cnn", input_shape=(8, 8, 1), num_outputs=10, channels=(4, 6))
    d = random_direction(jax.random.key(3), model.params)
    for path, w, v in zip(
        _tree.leaf_paths(model.params), jax.tree.leaves(model.params), jax.tree.leaves(d.vector)
    ):
        if np.ndim(w) < 2:
            assert np.all(np.asarray(v) == 0), path  # bias_bn="zero" (default)
            continue
        np.testing.assert_allclose(_per_filter(v, -1), _per_filter(w, -1), rtol=1e-5)
        assert not np.allclose(_per_filter(v, 0), _per_filter(w, 0), rtol=1e-2), path
    # filter_norms reports the same per-filter norms
    fn = filter_norms(d.vector)
    np.testing.assert_allclose(
        np.asarray(fn["convs"][0]["kernel"]),
        _per_filter(model.params["convs"][0]["kernel"]),
        rtol=1e-5,
    )


def test_layer_model_weight_and_none_normalisations():
    rng = np.random.default_rng(0)
    params = {"a": {"kernel": rng.normal(size=(5, 4))}, "b": {"kernel": rng.normal(size=(4, 3))}}
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    key = jax.random.key(7)
    # the Gaussian random_direction draws (every leaf takes part here)
    raw = _draw(key, params)
    lay = random_direction(key, params, norm="layer").vector
    for k in params:
        np.testing.assert_allclose(
            np.linalg.norm(lay[k]["kernel"]), np.linalg.norm(params[k]["kernel"]), rtol=1e-6
        )
        # same direction up to a positive factor per leaf
        cos = float(_tree.vdot(lay[k], raw[k]) / (_tree.norm(lay[k]) * _tree.norm(raw[k])))
        assert cos == pytest.approx(1.0, abs=1e-6)
    mod = random_direction(key, params, norm="model").vector
    np.testing.assert_allclose(float(_tree.norm(mod)), float(_tree.norm(params)), rtol=1e-6)
    wt = random_direction(key, params, norm="weight").vector
    _assert_close(wt, jax.tree.map(jnp.multiply, raw, params))
    none = random_direction(key, params, norm=None).vector
    _assert_close(none, raw)


def _assert_close(a, b, rtol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=1e-7)


def test_one_dimensional_leaf_policies():
    m = tiny_mlp(jnp.float32)
    p = jax.tree.map(lambda x: x + 0.3, m.params)  # non-zero biases
    key = jax.random.key(2)
    zero = random_direction(key, p, bias_bn="zero").vector
    copy = random_direction(key, p, bias_bn="copy").vector
    filt = random_direction(key, p, bias_bn="filter").vector
    for i in range(2):
        b = p["layers"][i]["bias"]
        assert np.all(np.asarray(zero["layers"][i]["bias"]) == 0)
        np.testing.assert_array_equal(np.asarray(copy["layers"][i]["bias"]), np.asarray(b))
        fb = np.asarray(filt["layers"][i]["bias"])
        np.testing.assert_allclose(np.linalg.norm(fb), np.linalg.norm(b), rtol=1e-6)
        # the whole leaf is one group: not the per-scalar +-|b| of loss-landscapes issue #3
        assert not np.allclose(np.abs(fb), np.abs(np.asarray(b)), rtol=1e-3)
        # kernels are the same under every policy
        np.testing.assert_array_equal(
            np.asarray(zero["layers"][i]["kernel"]), np.asarray(filt["layers"][i]["kernel"])
        )


def test_per_path_overrides():
    rng = np.random.default_rng(1)
    params = {
        "embed": {"embedding": jnp.asarray(rng.normal(size=(11, 4)), jnp.float32)},
        "attn": {"qkv": jnp.asarray(rng.normal(size=(4, 2, 3)), jnp.float32)},
        "out": {"kernel": jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)},
    }
    d = random_direction(
        jax.random.key(0),
        params,
        overrides={"embed/*": {"filter_axis": 0}, "attn/qkv": "layer"},
    ).vector
    # embeddings: one filter per token row (axis 0)
    np.testing.assert_allclose(
        _per_filter(d["embed"]["embedding"], 0),
        _per_filter(params["embed"]["embedding"], 0),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        np.linalg.norm(d["attn"]["qkv"]), np.linalg.norm(params["attn"]["qkv"]), rtol=1e-6
    )
    np.testing.assert_allclose(
        _per_filter(d["out"]["kernel"]), _per_filter(params["out"]["kernel"]), rtol=1e-5
    )
    z = random_direction(jax.random.key(0), params, overrides={"embed/*": "zero"}).vector
    assert np.all(np.asarray(z["embed"]["embedding"]) == 0)
    with pytest.raises(ValueError, match="match no parameter path"):
        random_direction(jax.random.key(0), params, overrides={"emebd/*": "layer"})
    with pytest.raises(ValueError, match="overrides"):
        random_direction(jax.random.key(0), params, overrides={"embed/*": "fliter"})


def test_zero_norm_filters_give_zero_not_nan():
    rng = np.random.default_rng(2)
    k = rng.normal(size=(6, 4)).astype(np.float32)
    k[:, 1] = 0.0  # a dead neuron
    params = {
        "d": {"kernel": jnp.asarray(k), "bias": jnp.zeros(4, jnp.float32)},
        "z": jnp.zeros((3, 2)),
    }
    for norm in ("filter", "layer", "model", "weight"):
        d = random_direction(jax.random.key(1), params, norm=norm, bias_bn="filter").vector
        for leaf in jax.tree.leaves(d):
            assert np.all(np.isfinite(np.asarray(leaf))), norm
        if norm in ("filter", "weight"):
            assert np.all(np.asarray(d["d"]["kernel"])[:, 1] == 0), norm
        if norm != "model":
            assert np.all(np.asarray(d["d"]["bias"]) == 0), norm  # zero bias, zero direction
            assert np.all(np.asarray(d["z"]) == 0), norm
    # all-zero weights: the normalised direction is zero, and a slice refuses it clearly
    zeros = jax.tree.map(jnp.zeros_like, params)
    dz = random_direction(jax.random.key(1), zeros)
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(dz.vector))
    loss = lambda p, b: jnp.mean(b["x"]) * 0 + _tree.vdot(p, p)  # noqa: E731
    with pytest.raises(ValueError, match="direction is zero"):
        landscape.surface.slice_1d(loss, zeros, {"x": np.ones((4, 1))}, dz)


@pytest.mark.parametrize("norm", ["filter", "layer", "model", "weight", None])
def test_orthogonalisation_is_exact_and_keeps_the_normalisation(norm):
    p = tiny_mlp(jnp.float32).params
    d1, d2 = random_directions(jax.random.key(5), p, 2, orthogonalize=True, norm=norm)
    plain = random_direction(jax.random.split(jax.random.key(5), 2)[1], p, norm=norm)
    cos = float(_tree.vdot(d1.vector, d2.vector) / (_tree.norm(d1.vector) * _tree.norm(d2.vector)))
    # float32 inner products of ~100 terms: |cos| below 1e-6 means orthogonal to rounding
    assert abs(cos) < 1e-6
    assert abs(d2.spec["cosine"]) < 1e-6
    want_before = float(
        _tree.vdot(d1.vector, plain.vector) / (_tree.norm(d1.vector) * _tree.norm(plain.vector))
    )
    assert d2.spec["cosine_before"] == pytest.approx(want_before, abs=1e-6)
    assert abs(want_before) > 1e-4  # the orthogonalisation did something
    if norm == "filter":
        for i in range(2):
            np.testing.assert_allclose(
                _per_filter(d2.vector["layers"][i]["kernel"]),
                _per_filter(p["layers"][i]["kernel"]),
                rtol=1e-5,
            )
    if norm == "model":
        np.testing.assert_allclose(float(_tree.norm(d2.vector)), float(_tree.norm(p)), rtol=1e-5)


def test_reproducible_from_spec_and_saved_file(tmp_path):
    m = tiny_mlp(jnp.float32)
    d1 = random_direction(jax.random.key(11), m.params, norm="layer", bias_bn="filter")
    d2 = random_direction(jax.random.key(12), m.params, orthogonal_to=d1)
    for d in (d1, d2):
        again = direction_from_spec(d.spec, m.params)
        _assert_close(again.vector, d.vector, rtol=0)
        d.save(tmp_path / "d.npz")
        loaded = Direction.load(tmp_path / "d.npz")
        _assert_close(loaded.vector, d.vector, rtol=0)
        _assert_close(direction_from_spec(loaded.spec, m.params).vector, d.vector, rtol=0)
    with pytest.raises(ValueError, match="only random directions"):
        direction_from_spec({"kind": "pca"}, m.params)


def test_direction_between_and_normalize_direction():
    a = tiny_mlp(jnp.float32, seed=0).params
    b = tiny_mlp(jnp.float32, seed=1).params
    d = direction_between(a, b)
    _assert_close(jax.tree.map(jnp.add, a, d.vector), b)
    assert d.spec["kind"] == "between" and d.spec["distance"] == pytest.approx(d.norm())
    n = normalize_direction(d, a, norm="filter")
    np.testing.assert_allclose(
        _per_filter(n["layers"][0]["kernel"]), _per_filter(a["layers"][0]["kernel"]), rtol=1e-5
    )


def test_bad_inputs():
    p = tiny_mlp(jnp.float32).params
    key = jax.random.key(0)
    with pytest.raises(TypeError, match="random_direction: key is required"):
        random_direction(None, p)
    with pytest.raises(ValueError, match="norm must be one of"):
        random_direction(key, p, norm="filters")
    with pytest.raises(ValueError, match="bias_bn must be one of"):
        random_direction(key, p, bias_bn="ignore")
    with pytest.raises(ValueError, match="filter_axis 3 is out of range"):
        random_direction(key, p, filter_axis=3)
    with pytest.raises(ValueError, match="same tree structure"):
        random_direction(key, p, orthogonal_to={"w": jnp.ones(3)})
    bad = jax.tree.map(lambda x: x, p)
    bad["layers"][0]["kernel"] = jnp.ones((8, 7))
    with pytest.raises(ValueError, match=r"leaf 'layers/0/kernel' has shape \(8, 7\)"):
        normalize_direction(bad, p)
    nan = jax.tree.map(lambda x: x, p)
    nan["layers"][1]["kernel"] = p["layers"][1]["kernel"].at[0, 0].set(jnp.nan)
    with pytest.raises(ValueError, match="orthogonal_to must be finite"):
        random_direction(key, p, orthogonal_to=nan)
