"""Per-example Jacobians and their Grams against explicit jax.jacobian on a tiny model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from landscape import jacobians


def mlp(params, x):
    h = jnp.tanh(x @ params["w1"] + params["b1"][None])
    return h @ params["w2"]["kernel"]  # (n, 2)


def mlp1(params, x):
    return mlp(params, x)[:, 0]  # (n,): one output


def _inputs():
    rng = np.random.default_rng(0)
    params = {
        "w1": rng.standard_normal((3, 4)),
        "b1": rng.standard_normal(4),
        "w2": {"kernel": rng.standard_normal((4, 2))},
    }
    return params, rng.standard_normal((5, 3)), rng.standard_normal((2, 3))


def _dense(f, params, x):
    """(n, O, P) from the explicit Jacobian of the whole batch (examples do not interact)."""
    flat, unravel = ravel_pytree(params)
    return jax.jacobian(lambda v: f(unravel(v), x))(flat)


def _all(params, x, x2):
    j1, j2 = jacobians.per_example(mlp, params, x), jacobians.per_example(mlp, params, x2)
    j_one = jacobians.per_example(mlp1, params, x)
    return {
        "j1": j1,
        "explicit": jax.jacobian(lambda p: mlp(p, x))(params),  # leaves (n, O, *leaf)
        "d1": _dense(mlp, params, x),
        "d2": _dense(mlp, params, x2),
        "d_one": _dense(mlp1, params, x),
        "full": jacobians.gram(j1, trace_outputs=False),
        "traced": jacobians.gram(j1),
        "cross": jacobians.gram(j1, j2, trace_outputs=False),
        "one": jacobians.gram(j_one),
        "b1_one": j_one["b1"],
    }


@pytest.fixture(scope="module")
def res():
    """Every quantity of the tests in ONE compiled float64 program."""
    with jax.enable_x64(True):
        return jax.tree.map(np.asarray, jax.jit(_all)(*_inputs()))


def test_per_example_equals_explicit_jacobian(res):
    j = res["j1"]
    assert jax.tree.structure(j) == jax.tree.structure(_inputs()[0])
    assert j["w1"].shape == (5, 2, 3, 4) and j["w1"].dtype == np.float64
    for a, b in zip(jax.tree.leaves(j), jax.tree.leaves(res["explicit"])):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)


def test_gram_equals_dense_j_jt(res):
    d1, d2 = res["d1"], res["d2"]
    np.testing.assert_allclose(
        res["full"], np.einsum("iok,jrk->ijor", d1, d1), rtol=1e-12, atol=1e-14
    )
    np.testing.assert_allclose(res["traced"], np.einsum("iok,jok->ij", d1, d1) / 2, rtol=1e-12)
    np.testing.assert_allclose(
        res["cross"], np.einsum("iok,jrk->ijor", d1, d2), rtol=1e-12, atol=1e-14
    )
    np.testing.assert_array_equal(res["traced"], res["traced"].T)
    # (n,) outputs: one output per example
    assert res["b1_one"].shape == (5, 1, 4)
    np.testing.assert_allclose(res["one"], res["d_one"] @ res["d_one"].T, rtol=1e-12)


def test_row_grams():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((4, 3, 2)), rng.standard_normal((6, 3, 2))
    with jax.enable_x64(True):
        out = jax.jit(
            lambda a, b: (
                jacobians.row_gram(a, b),
                jacobians.row_gram(a),
                jacobians.row_gram_per_output(a, b),
                jacobians.row_gram_per_output(a),
            )
        )(a, b)
    np.testing.assert_allclose(out[0], a.reshape(4, -1) @ b.reshape(6, -1).T, rtol=1e-13)
    np.testing.assert_allclose(out[1], a.reshape(4, -1) @ a.reshape(4, -1).T, rtol=1e-13)
    np.testing.assert_allclose(out[2], np.einsum("iok,jrk->ijor", a, b), rtol=1e-13)
    np.testing.assert_allclose(out[3], np.einsum("iok,jrk->ijor", a, a), rtol=1e-13)


def test_float32_eager_and_errors(res):
    params, x, _ = _inputs()
    p32 = jax.tree.map(lambda a: a.astype(np.float32), params)
    j = jacobians.per_example(mlp, p32, x.astype(np.float32))  # eager
    k32 = jacobians.gram(j)
    assert k32.dtype == jnp.float32
    # float32 round-off of O(1) sums over 26 parameters
    np.testing.assert_allclose(k32, res["traced"], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"landscape.jacobians.per_example: f\(params, x\) must"):
        jacobians.per_example(lambda p, xx: mlp(p, xx)[:, :, None], params, x)
    with pytest.raises(ValueError, match="landscape.jacobians.gram: j2 must have j1's tree"):
        jacobians.gram(j, {"w1": j["w1"]})
