"""Paths: the Bernstein and hat bases against their formulas, exact endpoints, pytree and jit
behaviour, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import landscape.connect as lc
from tests._util import assert_trees_close


def _points(dtype, seed=0):
    rng = np.random.default_rng(seed)

    def one():
        return {"w": jnp.asarray(rng.normal(size=(3, 4)), dtype), "b": jnp.asarray(rng.normal(size=(4,)), dtype)}

    return one(), one(), one(), one()


@pytest.mark.parametrize("x64", [False, True])
def test_bezier_matches_formula(x64):
    # float64: identical arithmetic up to rounding (1e-12); float32: rounding of the
    # Bernstein weights and the weighted sum (1e-6).
    with jax.enable_x64(x64):
        dtype = jnp.float64 if x64 else jnp.float32
        tol = 1e-12 if x64 else 1e-6
        a, th, th2, b = _points(dtype)
        quad = lc.bezier(a, th, b)
        cubic = lc.bezier(a, th, th2, b)
        for t in (0.0, 0.13, 0.5, 0.77, 1.0):
            want = jax.tree.map(lambda x, y, z, t=t: (1 - t) ** 2 * x + 2 * t * (1 - t) * y + t**2 * z, a, th, b)
            assert_trees_close(quad(t), want, rtol=tol, atol=tol)
            want3 = jax.tree.map(
                lambda x, y, z, w, t=t: (1 - t) ** 3 * x + 3 * t * (1 - t) ** 2 * y + 3 * t**2 * (1 - t) * z + t**3 * w,
                a, th, th2, b)
            assert_trees_close(cubic(t), want3, rtol=tol, atol=tol)
            assert quad(t)["w"].dtype == dtype
        np.testing.assert_allclose(float(jnp.sum(cubic.weights(0.37))), 1.0, rtol=1e-6)


def test_endpoints_exact_and_linear_reproduction():
    a, th, _, b = _points(jnp.float32)
    for path in (lc.linear_path(a, b), lc.bezier(a, th, b), lc.polychain(a, th, b)):
        # the basis is exactly e_0 / e_K at the ends, so the endpoints come back bit for bit
        for t, want in ((0.0, a), (1.0, b)):
            got = jax.jit(lambda p, tt: p(tt))(path, jnp.float32(t))
            for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
                np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    lin = lc.linear_path(a, b)
    for t in (0.25, 0.6):
        assert_trees_close(lin(t), jax.tree.map(lambda x, y, t=t: (1 - t) * x + t * y, a, b))


def test_polychain_segments():
    a, th, th2, b = _points(jnp.float32)
    chain = lc.polychain(a, th, b)
    assert_trees_close(chain(0.5), th)
    assert_trees_close(chain(0.25), jax.tree.map(lambda x, y: 0.5 * (x + y), a, th))
    assert_trees_close(chain(0.75), jax.tree.map(lambda x, y: 0.5 * (x + y), th, b))
    chain2 = lc.polychain(a, th, th2, b)
    assert_trees_close(chain2(1 / 3), th, rtol=1e-6, atol=1e-6)
    assert_trees_close(chain2(2 / 3), th2, rtol=1e-6, atol=1e-6)


def test_controls_one_pytree_with_leading_axis_and_stacked_bends():
    a, th, th2, b = _points(jnp.float32)
    p = lc.bezier(a, th, th2, b)
    assert p.num_controls == 4 and p.num_bends == 2
    assert p.controls["w"].shape == (4, 3, 4)
    stacked = jax.tree.map(lambda x, y: jnp.stack([x, y]), th, th2)
    q = lc.bezier(a, stacked, b)
    assert_trees_close(q.controls, p.controls, rtol=0, atol=0)
    # a path is a pytree: controls are leaves, the kind is static
    leaves, treedef = jax.tree.flatten(p)
    assert len(leaves) == 2
    assert jax.tree.unflatten(treedef, leaves).kind == "bezier"
    assert_trees_close(p.with_bends(p.bends).controls, p.controls, rtol=0, atol=0)
    pts = p.points(jnp.linspace(0, 1, 5))
    assert pts["w"].shape == (5, 3, 4)
    assert "bezier" in repr(p)


def test_path_bad_input():
    a, th, _, b = _points(jnp.float32)
    with pytest.raises(ValueError, match="linear_path: params_b must have the same tree structure"):
        lc.linear_path(a, {"w": b["w"]})
    with pytest.raises(ValueError, match="params_b leaf 'w' has shape"):
        lc.linear_path(a, {"w": b["w"][:2], "b": b["b"]})
    with pytest.raises(TypeError, match="dtype"):
        lc.linear_path(a, {"w": b["w"].astype(jnp.float16), "b": b["b"]})
    with pytest.raises(ValueError, match="params_b must be finite"):
        lc.linear_path(a, {"w": b["w"].at[0, 0].set(jnp.nan), "b": b["b"]})
    with pytest.raises(TypeError, match="bezier: give the end point"):
        lc.bezier(a)
    with pytest.raises(ValueError, match="bend 0 must be shaped like params_a"):
        lc.bezier(a, {"w": jnp.zeros((2, 3, 5)), "b": jnp.zeros((2, 4))}, b)
    with pytest.raises(ValueError, match="polychain: bend 0 must have the same tree structure"):
        lc.polychain(a, {"w": th["w"]}, b)


def test_a_linear_path_has_exactly_two_control_points():
    import jax.numpy as jnp
    import pytest

    from landscape import paths

    a, b = {"w": jnp.zeros(2)}, {"w": jnp.ones(2)}
    line = paths.linear_path(a, b)
    with pytest.raises(ValueError, match="linear path has no bends"):
        line.with_bends({"w": jnp.full((1, 2), 5.0)})
    three = paths.Path({"w": jnp.stack([a["w"], b["w"], b["w"]])}, "linear")
    with pytest.raises(ValueError, match="exactly two control points"):
        paths.check_path(three)
    assert line.with_bends({"w": jnp.zeros((0, 2))}).num_controls == 2
