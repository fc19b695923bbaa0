"""Losses built from a model: conventions, aux metrics, weight decay."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import landscape
from landscape import losses


def test_cross_entropy_and_accuracy_match_manual():
    with jax.enable_x64(True):
        m = landscape.make_model(
            "mlp", input_shape=(5,), num_outputs=3, hidden=(4,), param_dtype=jnp.float64
        )
        x = jax.random.normal(jax.random.key(0), (20, 5), jnp.float64)
        y = jnp.arange(20) % 3
        lf = landscape.make_loss_fn(m)
        loss, aux = lf(m.params, {"x": x, "y": y})
        logits = m(x)
        manual = -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(20), y])
        assert float(loss) == pytest.approx(float(manual), rel=1e-14)
        assert float(aux["accuracy"]) == pytest.approx(float(jnp.mean(jnp.argmax(logits, 1) == y)))
        assert float(aux["error"]) == pytest.approx(1 - float(aux["accuracy"]))


def test_mse_convention_and_regression_aux():
    out = jnp.array([[1.0, 2.0], [3.0, 5.0]])
    tgt = jnp.array([[0.0, 2.0], [3.0, 3.0]])
    # 0.5 * mean over examples and outputs (neural-tangents' 1/(2|Y|) ||f - Y||^2)
    assert float(losses.mse(out, tgt)) == pytest.approx(0.5 * (1 + 0 + 0 + 4) / 4)
    m = landscape.make_model("mlp", input_shape=(3,), num_outputs=2, hidden=(4,))
    lf = landscape.make_loss_fn(m, "mse")
    _, aux = lf(m.params, {"x": jnp.ones((4, 3)), "y": jnp.zeros((4, 2))})
    assert "accuracy" not in aux  # float targets: regression, no accuracy
    _, aux = lf(m.params, {"x": jnp.ones((4, 3)), "y": jnp.zeros((4,), jnp.int32)})
    assert "accuracy" in aux  # integer labels: classification through MSE on one-hot targets


def test_weight_decay_enters_value_and_gradient():
    with jax.enable_x64(True):
        m = landscape.make_model(
            "mlp", input_shape=(5,), num_outputs=3, hidden=(4,), param_dtype=jnp.float64
        )
        batch = {"x": jnp.ones((6, 5), jnp.float64), "y": jnp.zeros((6,), jnp.int32)}
        plain = landscape.make_loss_fn(m)
        wd = landscape.make_loss_fn(m, weight_decay=0.1)
        sq = sum(float(jnp.sum(p**2)) for p in jax.tree.leaves(m.params))
        assert float(wd(m.params, batch)[0]) == pytest.approx(
            float(plain(m.params, batch)[0]) + 0.05 * sq, rel=1e-13
        )
        g0 = jax.grad(lambda p: plain(p, batch)[0])(m.params)
        g1 = jax.grad(lambda p: wd(p, batch)[0])(m.params)
        diff = jax.tree.map(lambda a, b, p: a - b - 0.1 * p, g1, g0, m.params)
        assert max(float(jnp.abs(d).max()) for d in jax.tree.leaves(diff)) < 1e-14
        # aux["loss"] is the data term
        assert float(wd(m.params, batch)[1]["loss"]) == pytest.approx(
            float(plain(m.params, batch)[0])
        )


def test_bad_settings():
    m = landscape.make_model("mlp", input_shape=(5,), num_outputs=3, hidden=(4,))
    with pytest.raises(ValueError, match="kind must be one of"):
        landscape.make_loss_fn(m, "hinge")
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        landscape.make_loss_fn(m, weight_decay=-1.0)
    with pytest.raises(ValueError, match="weight_decay must be finite"):
        landscape.make_loss_fn(m, weight_decay=float("nan"))


def test_loss_is_a_pytree_with_state_leaves(trained_resnet):
    lf = landscape.make_loss_fn(trained_resnet.model)
    leaves = jax.tree.leaves(lf)
    assert len(leaves) == len(jax.tree.leaves(trained_resnet.model.state)) > 0
    assert all(isinstance(x, (jax.Array, np.ndarray)) for x in leaves)
