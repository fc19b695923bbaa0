"""Bad input at the public boundary: clear errors naming the function and the argument."""

from __future__ import annotations

import numpy as np
import pytest

import landscape
from landscape import grid


@pytest.fixture(scope="module")
def small():
    m = landscape.make_model("mlp", input_shape=(4,), num_outputs=3, hidden=(5,))
    data = {"x": np.ones((10, 4), np.float32), "y": np.zeros((10,), np.int32)}
    return m, landscape.make_loss_fn(m), data


def test_nonfinite_data_and_params(small):
    m, lf, data = small
    bad = {"x": data["x"].copy(), "y": data["y"]}
    bad["x"][2, 1] = np.inf
    with pytest.raises(
        ValueError,
        match=r"landscape.evaluate: data must be finite; found 0 NaN and 1 Inf values at leaf 'x'",
    ):
        landscape.evaluate(lf, m.params, bad)
    p = {
        **m.params,
        "layers": {
            **m.params["layers"],
            0: {**m.params["layers"][0], "bias": m.params["layers"][0]["bias"].at[0].set(np.nan)},
        },
    }
    with pytest.raises(
        ValueError,
        match=r"landscape.value_and_grad: params must be finite; found 1 NaN .* at leaf 'layers/0/bias'",
    ):
        landscape.value_and_grad(lf, p, data)


def test_wrong_params_structure_and_shapes(small):
    m, lf, data = small
    with pytest.raises(ValueError, match="could not be evaluated"):
        landscape.evaluate(lf, {"layers": {0: m.params["layers"][0]}}, data)
    other = landscape.make_model("mlp", input_shape=(4,), num_outputs=3, hidden=(6,))
    with pytest.raises(ValueError, match="could not be evaluated"):
        landscape.evaluate(
            lf,
            {**m.params, "layers": {0: other.params["layers"][0], 1: m.params["layers"][1]}},
            data,
        )


def test_model_data_shape_mismatch(small):
    m, lf, _ = small
    with pytest.raises(
        ValueError,
        match=r"landscape.evaluate: loss_fn could not be evaluated on data \(per-example shapes \{'x': \(7,\)",
    ):
        landscape.evaluate(
            lf, m.params, {"x": np.ones((10, 7), np.float32), "y": np.zeros(10, np.int32)}
        )


@pytest.mark.parametrize(
    "data,match",
    [
        (
            {"x": np.ones((0, 4), np.float32), "y": np.zeros((0,), np.int32)},
            "is empty \\(0 examples\\)",
        ),
        (
            {"x": np.ones((10, 4), np.float32), "y": np.zeros((9,), np.int32)},
            "same number of examples",
        ),
        ([np.ones((10, 4))], "must be a dict of arrays"),
        ({}, "is empty \\(no arrays\\)"),
        ({"x": np.float32(1.0)}, "is a scalar"),
    ],
)
def test_malformed_data(small, data, match):
    m, lf, _ = small
    with pytest.raises((ValueError, TypeError), match=match):
        landscape.evaluate(lf, m.params, data)


@pytest.mark.parametrize(
    "bs,err,match",
    [
        (0, ValueError, "batch_size must be positive; got 0"),
        (-3, ValueError, "must be positive"),
        (11, ValueError, "batch_size=11 is larger than the data set \\(10 examples\\)"),
        (2.5, TypeError, "batch_size must be a positive int"),
    ],
)
def test_batch_size(small, bs, err, match):
    m, lf, data = small
    with pytest.raises(err, match=match):
        landscape.evaluate(lf, m.params, data, batch_size=bs)


def test_engine_points_and_store_errors(tmp_path):
    with pytest.raises(ValueError, match="coords must have a non-empty leading axis"):
        grid.evaluate_points(
            lambda p, b: {"v": p}, lambda c: c, np.zeros((0, 2)), {"x": np.ones(3)}
        )
    with pytest.raises(ValueError, match="coords must be finite"):
        grid.evaluate_points(
            lambda p, b: {"v": p}, lambda c: c, np.array([[np.nan]]), {"x": np.ones(3)}
        )
    with pytest.raises(ValueError, match="strategy must be one of"):
        grid.evaluate_points(
            lambda p, b: {"v": p}, lambda c: c, np.ones((2, 1)), {"x": np.ones(3)}, strategy="pmap"
        )
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        landscape.evaluate(3, {"w": np.ones(2)}, {"x": np.ones(3)})
    with pytest.raises(ValueError, match="params must be a non-empty pytree"):
        landscape.evaluate(lambda p, b: 0.0, {}, {"x": np.ones(3)})


def test_class_labels_out_of_range_are_refused(digits_data):
    """Cross-entropy would silently read label -1 as the last class and give NaN for 10; MSE
    would use an all-zero target. Both are refused at the boundary, naming the range."""
    m = landscape.make_model("mlp", input_shape=(64,), num_outputs=10, hidden=(8,))
    x = digits_data.train["x"][:32]
    for y in (np.full(32, 10), np.full(32, -1)):
        for kind in ("cross_entropy", "mse"):
            with pytest.raises(ValueError, match=r"class labels in \[-?\d+, -?\d+\].*10 outputs"):
                landscape.evaluate(landscape.make_loss_fn(m, kind), m.params, {"x": x, "y": y})
    ok = landscape.evaluate(landscape.make_loss_fn(m), m.params, {"x": x, "y": np.arange(32) % 10})
    assert np.isfinite(float(ok["loss"]))


def test_keys_and_curve_values_are_checked(digits_data):
    import jax

    import landscape.connect as lc

    with pytest.raises(TypeError, match="must be one PRNG key; got a batch of keys"):
        landscape.surface.random_direction(jax.random.split(jax.random.key(0), 3),
                                           {"w": np.ones(2, np.float32)})
    a = {"w": np.zeros(2, np.float32)}
    curve = lc.bezier(a, {"w": np.ones(2, np.float32)}, {"w": np.full(2, 2.0, np.float32)})
    with pytest.raises(TypeError, match="pass num_curve_ts=61"):
        lc.curve_plane(lambda p, b: 0.0, curve, {"x": np.ones((2, 1))}, curve_ts=61)
    with pytest.raises(TypeError, match="num_ts must be an int"):
        lc.profile(lambda p, b: 0.0, curve, {"x": np.ones((2, 1))}, num_ts=6.0)
