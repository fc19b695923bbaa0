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
    """Parameters of another model are blamed on the parameters, not on the data (issue 11),
    including those that would evaluate without error: a narrower network of the same depth."""
    m, lf, data = small
    with pytest.raises(ValueError, match=r"landscape.evaluate: params do not match the model this loss "
                       r"was built from \(missing leaves \['layers/1/bias', 'layers/1/kernel'\]\)"):
        landscape.evaluate(lf, {"layers": {0: m.params["layers"][0]}}, data)
    other = landscape.make_model("mlp", input_shape=(4,), num_outputs=3, hidden=(6,))
    with pytest.raises(ValueError, match=r"other shapes: 'layers/0/bias': \(6,\) \(the model's is \(5,\)\)"):
        landscape.evaluate(
            lf,
            {**m.params, "layers": {0: other.params["layers"][0], 1: m.params["layers"][1]}},
            data,
        )
    with pytest.raises(ValueError, match="params do not match the model"):  # ran silently before
        landscape.value_and_grad(lf, other.params, data)


@pytest.mark.parametrize(
    "data,err,match",
    [
        ({"inputs": np.ones((10, 4), np.float32), "labels": np.zeros(10, np.int32)}, ValueError,
         r"the data has keys \['inputs', 'labels'\], but this loss reads its inputs from 'x' and its "
         r"targets from 'y' \(missing: 'x'\)\. Rename the entries .* input_key=\.\.\., target_key"),
        ({"x": np.ones((10, 4), np.float32), "label": np.zeros(10, np.int32)}, ValueError,
         r"\(missing: 'y'\)"),
        ({"x": np.ones((10, 4), np.float32), "y": np.zeros((10, 1), np.int32)}, ValueError,
         r"integer class labels 'y' have shape \(N, 1\) for N examples, but the model's outputs have "
         r"shape \(N, 3\): labels need shape \(N,\) \(a trailing axis of length 1: use y\[\.\.\., 0\]"),
        ({"x": np.ones((10, 4), np.float32), "y": np.zeros(10, np.float32)}, ValueError,
         r"cross-entropy needs integer class labels of shape \(2,\) or one-hot/soft labels of shape "
         r"\(2, 3\); 'y' has dtype float32 .* y\.astype\(np\.int32\)"),
        ({"x": np.ones((10, 4), np.float32).tolist(), "y": np.zeros(10, np.int32)}, TypeError,
         r"data\['x'\] is a Python list of numbers; .* np\.asarray\(data\['x'\]\)"),
    ],
    ids=["renamed-keys", "missing-target", "labels-n-1", "float-labels", "python-list"],
)
def test_unclear_data_errors_are_clear(small, data, err, match):
    """Inputs a new user tried (issue 11): a bare ``KeyError: 'x'``, JAX indexing and
    broadcasting messages or a 'leaf x/0/0 is a scalar' before; now the argument, what was
    expected and the fix."""
    m, lf, _ = small
    with pytest.raises(err, match=match):
        landscape.evaluate(lf, m.params, data)
    if err is ValueError:  # the same message from training (a different code path)
        import optax

        with pytest.raises(err, match=match):
            landscape.train(m, data, optimizer=optax.sgd(0.1), num_steps=1, batch_size=2, progress=False)


def test_mse_targets_of_the_wrong_shape():
    m = landscape.make_model("mlp", input_shape=(4,), num_outputs=3, hidden=(5,))
    lf = landscape.make_loss_fn(m, "mse")
    x = np.ones((10, 4), np.float32)
    with pytest.raises(ValueError, match=r"regression targets 'y' have shape \(2, 2\), but the model's "
                       r"outputs have shape \(2, 3\)"):
        landscape.evaluate(lf, m.params, {"x": x, "y": np.zeros((10, 2), np.float32)})
    # integer labels are one-hot encoded; float targets of the outputs' shape are fine
    landscape.evaluate(lf, m.params, {"x": x, "y": np.zeros((10,), np.int32)})
    landscape.evaluate(lf, m.params, {"x": x, "y": np.zeros((10, 3), np.float32)})


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


def test_parameter_and_target_checks_accept_valid_inputs():
    """The checks must not refuse what worked before them: an ``nnx.State`` of the model's
    parameters (paths end in ``/value``), a per-example ``vmap`` (no batch axis), multi-output
    regression, one-hot labels."""
    import jax
    from flax import nnx

    m = landscape.make_model("mlp", input_shape=(4,), num_outputs=3, hidden=(5,), seed=0)
    lf = landscape.make_loss_fn(m)
    d = {"x": np.linspace(-1, 1, 24, dtype=np.float32).reshape(6, 4), "y": np.arange(6, dtype=np.int32) % 3}
    state = nnx.state(nnx.merge(m.apply_fn.graphdef_eval, m.params, m.state), nnx.Param)
    np.testing.assert_allclose(lf(state, d)[0], lf(m.params, d)[0], rtol=1e-6)
    onehot = {"x": d["x"], "y": np.eye(3, dtype=np.float32)[d["y"]]}
    np.testing.assert_allclose(lf(m.params, onehot)[0], lf(m.params, d)[0], rtol=1e-6)
    lin = landscape.from_nnx(nnx.Linear(4, 1, rngs=nnx.Rngs(0)))
    mse = landscape.make_loss_fn(lin, "mse")
    per = jax.vmap(lambda b: mse(lin.params, b)[0])({"x": d["x"], "y": np.ones(6, np.float32)})
    assert per.shape == (6,)
    two = landscape.from_nnx(nnx.Linear(4, 2, rngs=nnx.Rngs(0)))
    landscape.evaluate(landscape.make_loss_fn(two, "mse"), two.params, {"x": d["x"], "y": np.ones((6, 2), np.float32)})
