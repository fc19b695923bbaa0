"""Figures as a new user sees them (saved to a file), through matplotlib's object model:

* every label, tick label, title, colour bar and legend lies inside the saved image;
* the Lanczos eigenvalues on a density plot are labelled as such;
* axis labels are coloured only when a twin axis makes colour tell them apart, then like their
  curves (the report's one-axis slice panels keep black labels);
* curves that coincide (Hessian and GGN, two paths, train and test, two NTK spectra) have
  distinct styles;
* legends cover no curve, marker or bar (or sit outside the axes);
* contour levels and colour-bar ticks are round numbers.
"""

from __future__ import annotations

import io
import re
import types

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib import colors as mcolors  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402

from landscape import connect, plot  # noqa: E402
from landscape.hessian import DensityResult, EigenResult  # noqa: E402
from landscape.hessian._analysis import DecompositionResult  # noqa: E402
from landscape.surface import PCAResult, SliceResult  # noqa: E402

TOP = np.array([0.34, 0.25, 0.18])


# -- small results shaped like the real ones ------------------------------------------------------
def _density(scale_top=1.0):
    grid = np.linspace(-0.05, 0.4, 400)
    dens = 40 * np.exp(-0.5 * (grid / 0.01) ** 2)
    for lam in TOP:
        dens += 0.05 * np.exp(-0.5 * ((grid - lam) / 0.01) ** 2)
    w = np.full((1, 4), 0.25)
    return DensityResult(
        nodes=np.array([[0.0, *TOP]]), weights=w, grid=grid, density=scale_top * dens
    )


def _eigen():
    return EigenResult(
        values=TOP,
        vectors={"w": np.zeros((3, 2))},
        residuals=np.full(3, 1e-3),
        converged=np.ones(3, bool),
        k=3,
    )


def _decomposition():
    d = _density()
    resid = 40 * np.exp(-0.5 * (d.grid / 0.02) ** 2) * 1e-3
    return DecompositionResult(
        grid=d.grid,
        density={"hessian": d.density, "ggn": d.density.copy(), "residual": resid},
        nodes={},
        weights={},
        top_values={},
        bottom_values={},
        traces={"hessian": 2.67, "ggn": 2.65, "residual": 0.02},
    )


def _slice_1d(kind="slice_1d"):
    t = np.linspace(-1, 1, 41) if kind == "slice_1d" else np.linspace(-0.5, 1.5, 41)
    loss = 0.05 + 3 * (t - t.mean()) ** 2
    acc = 1 - 0.5 * loss / loss.max()
    return SliceResult(
        alphas=t,
        betas=None,
        train={"loss": loss, "accuracy": acc},
        test={"loss": loss * 1.1 + 0.1, "accuracy": acc - 0.03},
        finite=np.ones_like(t, bool),
        kind=kind,
    )


def _slice_2d(lo=0.9491, hi=1.7345):
    a, b = np.linspace(-1, 1, 21), np.linspace(-1, 1, 17)
    r = a[:, None] ** 2 + 2 * b[None, :] ** 2
    z = lo + (hi - lo) * r / r.max()
    return SliceResult(
        alphas=a,
        betas=b,
        train={"loss": z},
        test={"loss": z + 0.1},
        finite=np.isfinite(z),
        kind="slice_2d",
    )


def _profile(bump=0.3):
    t = np.linspace(0, 1, 25)
    loss = 0.02 + bump * np.sin(np.pi * t) ** 2
    err = 0.01 + 0.5 * bump * np.sin(np.pi * t) ** 2
    return connect.Profile(
        ts=t,
        train={"loss": loss, "error": err},
        test={"loss": loss + 0.15, "error": err + 0.03},
        grid=np.ones_like(t, bool),
        distance=t * 10.0,
    )


# (also used by tests/surface/test_plots.py)
def example_pca():
    coords = np.stack([np.linspace(0.8, 0, 6), np.sin(np.linspace(0, 3, 6)) * 0.3], axis=1)
    return PCAResult(
        vectors={"w": np.zeros((2, 3))},
        explained_variance=np.array([2.0, 0.5]),
        explained_variance_ratio=np.array([0.8, 0.2]),
        singular_values=np.array([1.0, 0.5]),
        coords=coords,
        steps=np.arange(6),
    )


def _report_inputs():
    steps = np.arange(0, 201)
    train_loss = 2.5 * np.exp(-steps / 30) + 0.01
    history = {
        "step": steps,
        "batch_loss": train_loss * (1 + 0.2 * np.sin(steps)),
        "eval_step": steps[::20],
        "train_loss": train_loss[::20],
        "test_loss": train_loss[::20] + 0.2,
    }
    k0 = np.diag(np.geomspace(100, 8, 16))
    out = {
        "density": _density(),
        "eigenvalues": _eigen(),
        "slice": _slice_1d(),
        "interpolation": _slice_1d("interpolate"),
        "connectivity": {"linear": _profile(0.3), "aligned": _profile(0.02)},
        "ntk": (k0, k0.copy()),
    }  # a lazy network: the two spectra coincide
    return types.SimpleNamespace(history=history), out


@pytest.fixture(scope="module")
def report_figure(tmp_path_factory):
    """The report's figure object, captured where ``_figure`` saves it, and the keyword
    arguments of that ``savefig`` call."""
    from landscape.study._overview import overview_figure

    seen = {}
    original = Figure.savefig

    def spy(self, fname, **kwargs):
        seen["fig"], seen["kwargs"] = self, kwargs
        return original(self, fname, **kwargs)

    result, out = _report_inputs()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Figure, "savefig", spy)
        path = overview_figure(tmp_path_factory.mktemp("report") / "overview.png", result, out)
    assert path.exists()
    return seen["fig"], seen["kwargs"]


# -- helpers on matplotlib's object model -------------------------------------------------------
def _save(fig, **kwargs):
    """Save as a user's script does (``fig.savefig(path)``), return the saved area in display
    coordinates."""
    fig.savefig(io.BytesIO(), format="png", **kwargs)
    fig.draw_without_rendering()
    if kwargs.get("bbox_inches") == "tight":
        pad = kwargs.get("pad_inches", matplotlib.rcParams["savefig.pad_inches"])
        box = fig.get_tightbbox().padded(pad)
        return Bbox(box.get_points() * fig.dpi)
    return fig.bbox


def _texts(fig):
    """(description, artist) of every text a reader needs: axis labels, tick labels, titles,
    texts on the axes, legends (colour bars are axes of the figure too)."""
    out = []
    for i, ax in enumerate(fig.axes):
        for name, t in (
            ("xlabel", ax.xaxis.label),
            ("ylabel", ax.yaxis.label),
            ("title", ax.title),
        ):
            out.append((f"axes {i} {name} {t.get_text()!r}", t))
        for axis in (ax.xaxis, ax.yaxis):  # the ticks drawn: those inside the view limits
            scale = axis.get_transform()  # compared in the axis' scale (decades on a log axis)
            lo, hi = sorted(
                np.ravel(scale.transform(np.reshape(axis.get_view_interval(), (2, 1))))
            )
            tol = 1e-9 * (hi - lo)
            for tick in axis.get_major_ticks():
                loc = float(np.ravel(scale.transform(np.array([[tick.get_loc()]])))[0])
                if lo - tol <= loc <= hi + tol:
                    out += [
                        (f"axes {i} tick {t.get_text()!r}", t) for t in (tick.label1, tick.label2)
                    ]
        out += [(f"axes {i} text {t.get_text()!r}", t) for t in ax.texts]
        if ax.get_legend() is not None:
            out.append((f"axes {i} legend", ax.get_legend()))
    return [
        (d, a) for d, a in out if a.get_visible() and (not hasattr(a, "get_text") or a.get_text())
    ]


def _assert_inside(fig, saved):
    for what, artist in _texts(fig):
        box = artist.get_window_extent()
        assert (
            box.x0 >= saved.x0 - 1
            and box.x1 <= saved.x1 + 1
            and box.y0 >= saved.y0 - 1
            and box.y1 <= saved.y1 + 1
        ), f"{what} at {box.bounds} is cut off the saved {saved.bounds}"


def _overlaid(ax):
    pos = ax.get_position().bounds
    return [ax] + [
        a
        for a in ax.figure.axes
        if a is not ax
        and a.get_position().bounds == pos
        and (a in ax.get_shared_x_axes().get_siblings(ax))
    ]


def _assert_legend_clear(ax):
    """The legend covers no line (segments, or markers of marker-only lines), errorbar and no
    bar of the axes or its twin, or it lies outside the axes."""
    leg = ax.get_legend()
    assert leg is not None
    box = leg.get_window_extent()
    if not box.overlaps(ax.bbox):
        return
    for a in _overlaid(ax):
        for line in a.get_lines():
            path = line.get_transform().transform_path(line.get_path())
            if line.get_linestyle() == "None":
                hit = any(box.contains(x, y) for x, y in path.vertices)
            else:
                hit = path.intersects_bbox(box, filled=False)
            assert not hit, f"the legend {box.bounds} covers the line {line.get_label()!r}"
        for c in a.collections:
            if hasattr(c, "get_segments"):
                t = c.get_transform()
                for p in c.get_paths():
                    assert not t.transform_path(p).intersects_bbox(box, filled=False), (
                        "covers error bars"
                    )
        for p in a.patches:
            assert not box.overlaps(p.get_window_extent()), "the legend covers a bar"


def _style(line):
    return (
        line.get_linestyle(),
        line.get_marker() if line.get_marker() not in (None, "None", "") else None,
    )


def _assert_distinct(under, over):
    """Two curves that may coincide: different line styles and markers, and the one on top is
    not a solid line at least as wide as the one below (which would hide it)."""
    assert _style(under) != _style(over), (
        f"{under.get_label()!r} and {over.get_label()!r} look the same"
    )
    assert under.get_linestyle() != over.get_linestyle() or (
        over.get_marker() not in (None, "None", "") and over.get_markevery() is not None
    ), f"{over.get_label()!r} hides {under.get_label()!r}"
    top, low = (over, under) if over.get_zorder() >= under.get_zorder() else (under, over)
    assert top.get_linestyle() != "-" or top.get_linewidth() < low.get_linewidth()


def _number(label: str) -> float:
    """A tick label's value (plain, or mathtext ``$\\mathdefault{1.5\\times10^{-1}}$``)."""
    s = label.replace("\u2212", "-").replace("$", "").replace("\\mathdefault", "").strip("{}")
    s = re.sub(r"\{?\\times\s*10\^\{?(-?\d+)\}?\}?", r"e\1", s).replace("{", "").replace("}", "")
    s = re.sub(r"^10\^(-?\d+)$", r"1e\1", s)
    return float(s)


def _is_round(values, *, log: bool):
    """Linear: multiples of a step 1, 2, 2.5 or 5 x 10^k; log: at most two significant digits."""
    v = np.asarray(values, float)
    if log:
        return all(abs(float(f"{x:.2g}") - x) <= 1e-9 * abs(x) for x in v)
    step = np.min(np.diff(np.sort(v)))
    mant = step / 10 ** np.floor(np.log10(step))
    ok_step = any(abs(mant - m) < 1e-6 for m in (1, 2, 2.5, 5, 10))
    return ok_step and np.allclose(v / step, np.round(v / step), atol=1e-6)


def _figures():
    """The standard plots of the test modules, each on a new figure."""
    r1, r2 = _slice_1d(), _slice_2d()
    prof = {"linear": _profile(0.3), "aligned": _profile(0.05)}
    bar = connect.barrier(prof["linear"])
    hist = {
        "sharpness_step": np.arange(0, 100, 10),
        "sharpness": np.linspace(1, 4, 10),
        "sharpness_threshold": np.full(10, 4.0),
    }
    return {
        "plot_contour": lambda: plot.plot_contour(r2),
        "plot_contourf": lambda: plot.plot_contourf(r2),
        "plot_contour log": lambda: plot.plot_contourf(_slice_2d(0.0123, 45.6)),
        "plot_slice": lambda: plot.plot_slice(r1),
        "plot_slice interpolate": lambda: plot.plot_slice(
            _slice_1d("interpolate"), metrics="loss"
        ),
        "plot_trajectory": lambda: plot.plot_trajectory(example_pca(), r2),
        "plot_density": lambda: plot.plot_density(_density(), eigen=_eigen(), yscale="log"),
        "plot_density dict": lambda: plot.plot_density(
            {"a": _density(), "b": _density()}, eigen={"a": _eigen(), "b": _eigen()}
        ),
        "plot_decomposition": lambda: plot.plot_decomposition(_decomposition()),
        "plot_eigenvalues": lambda: plot.plot_eigenvalues({"a": _eigen(), "b": _eigen()}),
        "plot_sharpness": lambda: plot.plot_sharpness(hist),
        "plot_profiles": lambda: plot.plot_profiles(prof)[0],
        "plot_barrier_sweep": lambda: plot.plot_barrier_sweep(
            [16, 32], {"naive": [bar, bar], "aligned": [bar, bar]}
        ),
    }


# -- 1. saved figures keep their labels ----------------------------------------------------------
@pytest.mark.parametrize("name", list(_figures()))
def test_saved_figure_contains_every_label(name):
    ax = _figures()[name]()
    fig = ax.figure
    _assert_inside(fig, _save(fig))  # plain savefig, as the README's examples are saved
    plt.close("all")


def test_contour_beta_label_inside_saved_figure():
    ax = plot.plot_contour(_slice_2d())
    saved = _save(ax.figure)
    label = ax.yaxis.label
    assert label.get_text() == r"$\beta$"
    box = label.get_window_extent()
    assert saved.x0 <= box.x0 and box.x1 <= saved.x1
    plt.close("all")


def test_report_figure_contains_every_label(report_figure):
    fig, kwargs = report_figure
    assert fig.get_layout_engine() is not None or kwargs.get("bbox_inches") == "tight"
    _assert_inside(fig, _save(fig, **kwargs))


# -- 2. the Lanczos eigenvalues are labelled as such ---------------------------------------------
def test_density_labels_lanczos_eigenvalues():
    ax = plot.plot_density(_density(), eigen=_eigen(), yscale="log")
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["top-3 eigenvalues (Lanczos)"]
    ax = plot.plot_density(
        {"trained": _density(), "init": _density(0.5)},
        eigen={"trained": _eigen(), "init": _eigen()},
    )
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "top-3 eigenvalues, trained (Lanczos)" in labels
    assert "top-3 eigenvalues, init (Lanczos)" in labels
    assert not any("density" in lab for lab in labels)
    ax = plot.plot_density(_density(), eigen=TOP[:2])  # plain numbers: no claim of their source
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["2 eigenvalues"]
    plt.close("all")


# -- 3. coloured axis labels only for twin axes ---------------------------------------------------
def _rgba(c):
    return mcolors.to_rgba(c)


def test_slice_labels_coloured_only_with_a_twin_axis():
    ax = plot.plot_slice(_slice_1d(), metrics="loss")
    assert _rgba(ax.yaxis.label.get_color()) == _rgba(matplotlib.rcParams["axes.labelcolor"])
    assert all(
        _rgba(t.get_color())
        == _rgba(
            matplotlib.rcParams["ytick.labelcolor"]
            if matplotlib.rcParams["ytick.labelcolor"] != "inherit"
            else matplotlib.rcParams["ytick.color"]
        )
        for t in ax.get_yticklabels()
    )
    ax = plot.plot_slice(_slice_1d())
    for a in (ax, ax.right_ax):
        line_colours = {
            _rgba(line.get_color())
            for line in a.get_lines()
            if not line.get_label().startswith("_")
        }
        assert len(line_colours) == 1
        assert _rgba(a.yaxis.label.get_color()) in line_colours
        a.figure.canvas.draw()
        assert {_rgba(t.get_color()) for t in a.get_yticklabels()} == line_colours
    plt.close("all")


def test_report_slice_panels_have_black_loss_labels(report_figure):
    fig, _ = report_figure
    black = _rgba(matplotlib.rcParams["axes.labelcolor"])
    panels = {ax.get_title(): ax for ax in fig.axes}
    for title in (
        "1-D slice, filter-normalised direction",
        "initialisation (t=0) to solution (t=1)",
    ):
        ax = panels[title]
        assert (
            len([a for a in fig.axes if a.get_position().bounds == ax.get_position().bounds]) == 1
        )
        assert ax.get_ylabel() == "loss" and _rgba(ax.yaxis.label.get_color()) == black


# -- 4. curves that coincide stay visible ---------------------------------------------------------
def test_decomposition_hessian_and_ggn_distinct():
    ax = plot.plot_decomposition(_decomposition())
    lines = {line.get_label().split()[0]: line for line in ax.get_lines()}
    _assert_distinct(lines["hessian"], lines["ggn"])
    _assert_distinct(lines["ggn"], lines["residual"])
    plt.close("all")


def test_overlaid_curves_distinct_everywhere():
    d = _density()
    ax = plot.plot_density({"hessian": d, "ggn": d})
    a, b = ax.get_lines()[:2]
    _assert_distinct(a, b)
    prof = _profile()
    (ax, _) = plot.plot_profiles({"before": prof, "after": prof})
    by = {line.get_label(): line for line in ax.get_lines()}
    _assert_distinct(by["before (train)"], by["after (train)"])  # paths that coincide
    _assert_distinct(by["before (test)"], by["after (test)"])
    _assert_distinct(by["before (train)"], by["before (test)"])  # train and test
    r = _slice_1d()
    same = r.replace(test=dict(r.train))
    ax = plot.plot_slice(same, metrics="loss")
    by = {line.get_label(): line for line in ax.get_lines()}
    _assert_distinct(by["train loss"], by["test loss"])
    ax = plot.plot_eigenvalues({"a": _eigen(), "b": _eigen()})
    ea, eb = (c.lines[0] for c in ax.containers)  # the data lines of the two error-bar plots
    assert ea.get_marker() != eb.get_marker() and eb.get_markerfacecolor() == "none"
    assert not np.allclose(ea.get_xdata(), eb.get_xdata())  # side by side at each index
    hist = {
        "sharpness_step": np.arange(3),
        "sharpness": np.full(3, 4.0),
        "sharpness_threshold": np.full(3, 4.0),
    }
    ax = plot.plot_sharpness(hist)
    s, t = ax.get_lines()
    assert _rgba(s.get_color()) != _rgba(t.get_color()) and _style(s) != _style(t)
    b = connect.barrier(prof)
    ax = plot.plot_barrier_sweep([16, 32], {"naive": [b, b], "aligned": [b, b]})
    _assert_distinct(*[ln for ln in ax.get_lines() if ln.get_label() in ("naive", "aligned")])
    plt.close("all")


def test_report_coinciding_curves_distinct(report_figure):
    fig, _ = report_figure
    panels = {ax.get_title(): ax for ax in fig.axes}
    by = {
        ln.get_label(): ln for ln in panels["empirical NTK eigenvalues (test inputs)"].get_lines()
    }
    _assert_distinct(by["initialisation"], by["trained"])
    by = {ln.get_label(): ln for ln in panels["training"].get_lines()}
    _assert_distinct(by["train (exact)"], by["test (exact)"])


# -- 5. legends hide no data ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "name", [n for n in _figures() if "contour" not in n or n == "plot_trajectory"]
)
def test_legend_covers_no_data(name):
    ax = _figures()[name]()
    _save(ax.figure)
    _assert_legend_clear(ax)
    plt.close("all")


def test_report_legends_cover_no_data(report_figure):
    fig, kwargs = report_figure
    _save(fig, **kwargs)
    with_legend = [ax for ax in fig.axes if ax.get_legend() is not None]
    assert len(with_legend) == 6
    for ax in with_legend:
        _assert_legend_clear(ax)


def test_place_legend_goes_outside_when_data_fill_the_axes():
    fig, ax = plt.subplots(layout="constrained")
    rng = np.random.default_rng(0)
    for i in range(4):
        ax.plot(rng.uniform(size=60), label=f"noise {i}")
    leg = plot.place_legend(ax, headroom=False)
    saved = _save(fig)
    assert not leg.get_window_extent().overlaps(ax.bbox)
    _assert_inside(fig, saved)
    plt.close("all")


# -- 6. round contour levels and colour-bar ticks -------------------------------------------------
@pytest.mark.parametrize("lo, hi, log", [(0.9491, 1.7345, False), (0.0123, 45.6, True)])
def test_colorbar_ticks_and_levels_round(lo, hi, log):
    ax = plot.plot_contourf(_slice_2d(lo, hi))
    fig = ax.figure
    _save(fig)
    cax = fig.axes[-1]
    labels = [t.get_text() for t in cax.get_yticklabels() if t.get_text()]
    assert len(labels) >= 3, labels
    assert _is_round([_number(s) for s in labels], log=log), labels
    assert all(len(s.lstrip("-").replace(".", "").strip("0")) <= 3 for s in labels), labels
    cs = next(c for c in ax.collections if hasattr(c, "levels"))
    assert _is_round(cs.levels, log=log), cs.levels
    assert cs.levels[0] <= lo and cs.levels[-1] >= hi  # the levels cover the values
    plt.close("all")


def test_contour_line_labels_round():
    ax = plot.plot_contour(_slice_2d(), levels=10)
    values = np.unique([_number(t.get_text()) for t in ax.texts])  # a level may be labelled twice
    assert values.size >= 3 and _is_round(values, log=False), values
    plt.close("all")


def test_ntk_accuracy_infinite_width_lines_both_visible_when_equal():
    """``ntk.plot.plot_accuracy``: "infinite width (same time)" lay exactly under "NTK regression
    (t = inf)" when training had converged (issue 11); now a wide light band under a thin
    dash-dot line, so both show."""
    from types import SimpleNamespace

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ntk import plot as ntk_plot

    res = SimpleNamespace(widths=np.array([64, 256, 1024]), finite_accuracy=np.array([0.9, 0.85, 0.8]),
                          linear_accuracy=np.array([0.92, 0.9, 0.9]), infinite_accuracy=0.96,
                          infinite_converged_accuracy=0.96)
    fig, ax = plt.subplots()
    ntk_plot.plot_accuracy(res, ax=ax)
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    same_time, regression = lines["infinite width (same time)"], lines["NTK regression (t = inf)"]
    assert same_time.get_ydata()[0] == regression.get_ydata()[0]
    assert same_time.get_linewidth() >= 3 * regression.get_linewidth()  # the band shows around it
    assert regression.get_zorder() > same_time.get_zorder() and regression.get_linestyle() == "-."
    plt.close(fig)


def test_matplotlib_aliases_override_the_styles():
    """``lw=``/``ls=`` clashed with the styles' ``linewidth``/``linestyle`` (TypeError: got both)."""
    from landscape.plot._style import line_kwargs, split_style

    kw = {**split_style("train", 0), **line_kwargs({"lw": 3, "ls": ":"})}
    assert kw["linewidth"] == 3 and kw["linestyle"] == ":" and "lw" not in kw
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 2], **kw)
    plt.close(fig)
