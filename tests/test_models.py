"""Models: registry, initialisation schemes, the model triple from NNX and Linen."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import landscape
from landscape import models


def test_registry_and_errors():
    assert models.model_names() == ["cnn", "mlp", "resnet"]
    with pytest.raises(ValueError, match="unknown model 'vgg'.*cnn, mlp, resnet"):
        landscape.make_model("vgg", input_shape=(64,), num_outputs=10)
    with pytest.raises(ValueError, match="unknown init"):
        landscape.make_model("mlp", input_shape=(64,), num_outputs=10, init="kaiming")
    with pytest.raises(ValueError, match="input_shape must be"):
        landscape.make_model("cnn", input_shape=(64,), num_outputs=10)


@pytest.mark.parametrize(
    "init,expected_var",
    [
        ("lecun_normal", lambda fi, fo: 1 / fi),
        ("he_normal", lambda fi, fo: 2 / fi),
        ("he_uniform", lambda fi, fo: 2 / fi),
        ("glorot_normal", lambda fi, fo: 2 / (fi + fo)),
        ("xavier_uniform", lambda fi, fo: 2 / (fi + fo)),
    ],
)
def test_init_variances(init, expected_var):
    m = landscape.make_model(
        "mlp", input_shape=(400,), num_outputs=10, hidden=(300,), init=init, seed=1
    )
    k = np.asarray(m.params["layers"][0]["kernel"])
    # 120k samples: the sample variance is within 2% of the target (truncated normals included)
    assert np.var(k) == pytest.approx(expected_var(400, 300), rel=0.02)
    assert np.all(np.asarray(m.params["layers"][0]["bias"]) == 0)


def test_orthogonal_and_zero_init_symmetry(digits_data):
    m = landscape.make_model(
        "mlp", input_shape=(64,), num_outputs=10, hidden=(32,), init="orthogonal"
    )
    k = np.asarray(m.params["layers"][0]["kernel"])  # (64, 32): orthonormal columns
    np.testing.assert_allclose(k.T @ k, np.eye(32), atol=1e-5)
    z = landscape.make_model(
        "mlp", input_shape=(64,), num_outputs=10, hidden=(16,), init="zeros", activation="tanh"
    )
    r = landscape.train(
        z, digits_data.train, optimizer=optax.sgd(0.5), num_steps=50, progress=False
    )
    h = np.asarray(r.params["layers"][0]["kernel"])
    # the symmetry failure: every hidden unit receives the same update, so all columns stay equal
    assert np.allclose(h, h[:, :1])


def test_resnet_switches():
    shape = dict(input_shape=(8, 8, 1), num_outputs=10, widths=(4, 8))
    with_all = landscape.make_model("resnet", **shape)
    no_skip = landscape.make_model("resnet", skip=False, **shape)
    no_bn = landscape.make_model("resnet", batch_norm=False, **shape)
    assert with_all.state and not no_bn.state
    assert "proj" in str(jax.tree_util.tree_structure(with_all.params))
    assert "proj" not in str(jax.tree_util.tree_structure(no_skip.params))
    x = jnp.ones((3, 8, 8, 1))
    for m in (with_all, no_skip, no_bn):
        assert m(x).shape == (3, 10)


def test_nnx_eval_and_train_modes():
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(4, 8, rngs=rngs)
            self.bn = nnx.BatchNorm(8, rngs=rngs)
            self.drop = nnx.Dropout(0.5, rngs=rngs)
            self.out = nnx.Linear(8, 3, rngs=rngs)

        def __call__(self, x):
            return self.out(self.drop(self.bn(self.lin(x))))

    model = landscape.from_nnx(Net(nnx.Rngs(0)))
    apply_fn, params, state = model  # unpacks as a triple
    x = jax.random.normal(jax.random.key(0), (16, 4))
    y1, s1 = apply_fn(params, state, x)
    y2, _ = apply_fn(params, state, x)
    assert s1 is state and np.array_equal(y1, y2)  # evaluation mode: deterministic, no update
    yt, st = apply_fn(params, state, x, train=True)
    assert not np.allclose(np.asarray(st["bn"]["mean"]), np.asarray(state["bn"]["mean"]))
    assert not np.allclose(yt, y1)  # dropout + batch statistics in training mode
    yt2, _ = apply_fn(params, st, x, train=True)
    assert not np.array_equal(yt, yt2)  # the dropout RNG advanced through the state
    assert "kernel" in params["lin"] and "mean" in state["bn"]


def test_from_linen_batchnorm_dropout():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            x = nn.Dense(8)(x)
            x = nn.BatchNorm(use_running_average=not train)(x)
            x = nn.Dropout(0.5, deterministic=not train)(x)
            return nn.Dense(2)(x)

    net = Net()
    x = jnp.ones((5, 3))
    variables = net.init(jax.random.key(0), x)
    model = landscape.from_linen(net, variables, dropout_key=jax.random.key(1))
    y, s = model.apply_fn(model.params, model.state, x)
    assert y.shape == (5, 2) and s is model.state
    yt, st = model.apply_fn(model.params, model.state, x * jnp.arange(5.0)[:, None], train=True)
    assert "batch_stats" in st and not np.allclose(
        np.asarray(st["batch_stats"]["BatchNorm_0"]["mean"]), 0.0
    )
    loss_fn = landscape.make_loss_fn(model)
    v = landscape.evaluate(
        loss_fn, model.params, {"x": np.ones((7, 3), np.float32), "y": np.zeros(7, np.int32)}
    )
    assert np.isfinite(float(v["loss"]))


def test_model_triple_acceptance():
    m = landscape.make_model("mlp", input_shape=(4,), num_outputs=2, hidden=(3,))
    lf = landscape.make_loss_fn((m.apply_fn, m.params, m.state))
    assert lf.kind == "cross_entropy"
    with pytest.raises(TypeError, match="model must be a landscape.Model"):
        landscape.make_loss_fn(lambda x: x)


def test_same_architecture_shares_compiled_programs(digits_data):
    from landscape import engine

    a = landscape.make_model("mlp", input_shape=(64,), num_outputs=10, hidden=(13,), seed=0)
    b = landscape.make_model("mlp", input_shape=(64,), num_outputs=10, hidden=(13,), seed=1)
    c = landscape.make_model("mlp", input_shape=(64,), num_outputs=10, hidden=(14,), seed=1)
    assert a.apply_fn == b.apply_fn and hash(a.apply_fn) == hash(b.apply_fn)
    assert a.apply_fn != c.apply_fn
    landscape.evaluate(landscape.make_loss_fn(a), a.params, digits_data.test)
    n = engine._mean_jit._cache_size()
    landscape.evaluate(landscape.make_loss_fn(b), b.params, digits_data.test)
    assert engine._mean_jit._cache_size() == n  # another seed: no new compilation


def test_spec_records_callables_only_when_the_registry_rebuilds_them():
    """jax.nn.gelu (tanh approximation) is not the registry's exact "gelu": recording it by name
    would silently change the architecture on load, so such a model has no spec (load_run then
    asks for a template); the registry's own objects and names are recorded."""
    from landscape import models

    m = landscape.make_model("mlp", input_shape=(4,), num_outputs=2, hidden=(3,), activation=jax.nn.gelu)
    assert m.spec is None
    m = landscape.make_model("mlp", input_shape=(4,), num_outputs=2, hidden=(3,),
                             activation=models.ACTIVATIONS["gelu"])
    assert m.spec["kwargs"]["activation"] == "gelu"
    m = landscape.make_model("mlp", input_shape=(4,), num_outputs=2, hidden=(3,), activation="tanh")
    assert m.spec["kwargs"]["activation"] == "tanh"
    rebuilt = models.model_from_spec(m.spec)
    x = jnp.ones((1, 4))
    np.testing.assert_array_equal(np.asarray(rebuilt(x)), np.asarray(m(x)))
