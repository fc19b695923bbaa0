"""curve_plane: grid values against direct evaluation at w0 + x u + y v, the curve and the three
points on the plane, bad input; the plots draw and return axes."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import landscape  # noqa: E402
import landscape.connect as lc  # noqa: E402
from landscape import tree as _tree  # noqa: E402


@pytest.fixture(scope="module")
def plane(bezier_curve, pair_loss, digits_data):
    return lc.curve_plane(pair_loss, bezier_curve, digits_data.train, test_data=digits_data.test,
                          num_points=(9, 7))


def test_plane_geometry_and_values(plane, bezier_curve, pair_loss, digits_data):
    path = bezier_curve.path
    w0, w1, w2 = (_tree.index(path.controls, k) for k in range(3))
    e = _tree.sub(w2, w0)
    length = float(_tree.norm(e))
    u = _tree.scale(1 / length, e)
    d = _tree.sub(w1, w0)
    r = _tree.sub(d, _tree.scale(float(_tree.vdot(d, u)), u))
    v = _tree.scale(1 / float(_tree.norm(r)), r)
    np.testing.assert_allclose(plane.points[2], [length, 0.0], rtol=1e-6)
    np.testing.assert_allclose(plane.points[1], [float(_tree.vdot(d, u)), float(_tree.norm(r))], rtol=1e-5)
    # a quadratic Bezier curve lies in the plane through its control points
    assert np.max(plane.curve_offset) < 1e-4 * length
    np.testing.assert_allclose(plane.curve[0], [0, 0], atol=1e-4)
    np.testing.assert_allclose(plane.curve[-1], [length, 0], rtol=1e-5, atol=1e-4)
    assert plane.values().shape == (9, 7) and plane.test is not None
    # the grid covers the three points with margins
    assert plane.alphas[0] < 0 < length < plane.alphas[-1]
    assert plane.betas[0] < 0 and plane.betas[-1] > plane.points[1, 1]
    for i, j in ((0, 0), (4, 3), (8, 6)):
        p = _tree.add(w0, _tree.add(_tree.scale(plane.alphas[i], u), _tree.scale(plane.betas[j], v)))
        want = landscape.evaluate(pair_loss, p, digits_data.test)
        # float32: the plane point is built in a different order of operations (1e-4 relative)
        np.testing.assert_allclose(plane.values("loss", "test")[i, j], float(want["loss"]), rtol=1e-4)
        np.testing.assert_allclose(plane.values("error", "test")[i, j], float(want["error"]), atol=3e-3)


def test_plane_save_load(plane, tmp_path):
    plane.save(tmp_path / "plane.npz")
    back = lc.PlaneResult.load(tmp_path / "plane.npz")
    np.testing.assert_array_equal(back.values(), plane.values())
    np.testing.assert_array_equal(back.curve, plane.curve)
    assert back.settings["third"] == "bend"


def test_plots(plane, linear_profile, bezier_curve):
    import landscape.plot as lp

    axes = lp.plot_profiles({"linear": linear_profile, "bezier": linear_profile})
    assert len(axes) == 2 and axes[0].get_xlabel() == "t"
    ax = lp.plot_curve_plane(plane)
    assert ax.get_title().startswith("log10 train loss")
    b = lc.barrier(linear_profile)
    ax = lp.plot_barrier_sweep([16, 32], {"naive": [b, b], "aligned": [b, b]})
    assert "barrier" in ax.get_ylabel()
    import matplotlib.pyplot as plt

    plt.close("all")


def test_plane_bad_input(pair_loss, pair_params, digits_data, bezier_curve):
    a, b = pair_params
    data = digits_data.test
    with pytest.raises(ValueError, match="a linear path spans no plane"):
        lc.curve_plane(pair_loss, lc.linear_path(a, b), data)
    with pytest.raises(ValueError, match="lies on the line through the endpoints"):
        lc.curve_plane(pair_loss, lc.linear_path(a, b), data,
                       through=jax.tree.map(lambda x, y: 0.5 * (x + y), a, b))
    with pytest.raises(ValueError, match="num_points must be >= 2"):
        lc.curve_plane(pair_loss, bezier_curve, data, num_points=1)
    with pytest.raises(ValueError, match="through must have the same tree structure"):
        lc.curve_plane(pair_loss, bezier_curve, data, through={"w": jnp.zeros(2)})
    with pytest.raises(ValueError, match="margin must be >= 0"):
        lc.curve_plane(pair_loss, bezier_curve, data, margin=-0.1)
