"""Surface plots: each returns the axes it drew on, in the grid's data coordinates."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from landscape import plot  # noqa: E402
from landscape.surface import SliceResult  # noqa: E402


def _result_2d():
    a, b = np.linspace(-1, 1, 7), np.linspace(-1, 1, 5)
    z = 0.5 + a[:, None] ** 2 + 2 * b[None, :] ** 2
    z[0, 0] = np.nan  # a non-finite point is masked, not fatal
    acc = 1 - z / 10
    return SliceResult(
        alphas=a,
        betas=b,
        train={"loss": z, "accuracy": acc},
        test={"loss": z + 0.1, "accuracy": acc - 0.05},
        finite=np.isfinite(z),
        kind="slice_2d",
    )


def _result_1d(kind="slice_1d"):
    t = np.linspace(-0.5, 1.5, 21)
    loss = 0.1 + (t - 0.5) ** 2
    return SliceResult(
        alphas=t,
        betas=None,
        train={"loss": loss, "accuracy": 1 - loss / 3},
        test={"loss": loss * 1.2, "accuracy": 1 - loss / 2.5},
        finite=np.ones_like(t, bool),
        kind=kind,
    )


def test_plot_slice_curves_and_log():
    ax = plot.plot_slice(_result_1d("interpolate"), log=True)
    assert ax.get_yscale() == "log"
    labels = [line.get_label() for line in ax.get_lines() + ax.right_ax.get_lines()]
    assert {"train loss", "test loss", "train accuracy", "test accuracy"} <= set(labels)
    assert "t" in ax.get_xlabel()
    ax2 = plot.plot_slice(_result_1d(), metrics="loss", splits=("train",))
    assert len(ax2.get_lines()) == 1
    with pytest.raises(ValueError, match="needs a 1-D result"):
        plot.plot_slice(_result_2d())
    plt.close("all")


def test_contours_labelled_filled_3d_and_extra_paths():
    r = _result_2d()
    ax = plot.plot_contour(r, levels=8)
    assert ax.texts, "contour levels are labelled"
    ax.plot([0.0, 0.5], [0.0, -0.5], "r-")  # callers draw on the returned axes
    assert ax.get_xlim()[0] <= -1 and ax.get_xlim()[1] >= 1
    axf = plot.plot_contourf(r, metric="accuracy", split="test", vmax=0.9)
    assert axf.figure.axes[-1] is not axf  # a colour bar was added
    axl = plot.plot_contour(r, log=True, filled=True, labels=True)
    assert axl.texts
    ax3 = plot.plot_surface3d(r, log=True, vmax=2.0)
    assert ax3.name == "3d"
    with pytest.raises(ValueError, match="3-D axes"):
        plot.plot_surface3d(r, ax=plt.subplots()[1])
    # a plain (x, y, Z) grid (e.g. a mode-connectivity plane) works too
    x, y = np.linspace(0, 1, 4), np.linspace(-1, 1, 3)
    axg = plot.plot_contour((x, y, np.add.outer(x, y) ** 2))
    assert axg.get_xlabel()
    with pytest.raises(ValueError, match=r"Z must have shape"):
        plot.plot_contour((x, y, np.zeros((3, 4))))
    with pytest.raises(ValueError, match="needs a 2-D result"):
        plot.plot_contour(_result_1d())
    plt.close("all")


def test_trajectory_over_contour():
    r = _result_2d()
    from tests.test_plot_defects import example_pca

    pca = example_pca()
    ax = plot.plot_trajectory(pca, r)
    path = [ln for ln in ax.get_lines() if len(ln.get_xdata()) == 6]
    assert path and np.allclose(path[0].get_xdata(), pca.coords[:, 0])
    assert "80.0%" in ax.get_xlabel()
    ax2 = plot.plot_trajectory(pca)  # the path alone
    assert ax2.get_lines()
    plt.close("all")
