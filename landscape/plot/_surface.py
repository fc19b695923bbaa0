"""Plots of loss-surface slices (matplotlib only): 1-D curves, contours, filled contours, 3-D
surfaces and trajectory PCA paths.

Every function takes a result object (:class:`landscape.surface.SliceResult`,
:class:`landscape.surface.PCAResult`) and an optional ``ax``, and returns the axes it drew on,
in data coordinates of the grid, so callers can draw more on it (points, paths, curves:
``ax.plot(xs, ys)``). The 2-D functions also accept a plain ``(x, y, Z)`` tuple with
``Z[i, j]`` the value at ``(x[i], y[j])``, or any object with ``alphas``, ``betas`` and a
``values(metric, split)`` method, so other analyses (mode-connectivity planes) can reuse them.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import colors as mcolors
from matplotlib import ticker

from landscape import validate as _validate
from landscape.plot._style import line_kwargs, new_axes, place_legend, split_style

__all__ = [
    "plot_contour",
    "plot_contourf",
    "plot_slice",
    "plot_surface3d",
    "plot_trajectory",
]


def _grid(result, metric, split):
    if isinstance(result, tuple) and len(result) == 3:
        x, y, z = (np.asarray(v, dtype=float) for v in result)
        label = metric
    else:
        if getattr(result, "betas", None) is None:
            raise ValueError(
                f"landscape.plot.{_validate.where()}: needs a 2-D result (slice_2d) or an (x, y, Z) tuple; got "
                f"{type(result).__name__}{' of a 1-D slice' if hasattr(result, 'alphas') else ''}."
            )
        x = np.asarray(result.alphas, dtype=float)
        y = np.asarray(result.betas, dtype=float)
        z = np.asarray(result.values(metric, split), dtype=float)
        label = f"{split} {metric}"
    if z.shape != (x.size, y.size):
        raise ValueError(
            f"landscape.plot.{_validate.where()}: Z must have shape (len(x), len(y)) = {(x.size, y.size)}; got "
            f"{z.shape}."
        )
    return x, y, z, label


def _axis_labels(result):
    spec = getattr(result, "directions", ()) or ()
    kinds = [d.get("kind") for d in spec] if spec else []
    if kinds and all(k == "pca" for k in kinds):
        return tuple(
            f"PC{d.get('component', i) + 1} "
            f"({100 * d.get('explained_variance_ratio', float('nan')):.1f}%)"
            for i, d in enumerate(spec)
        )
    return (r"$\alpha$", r"$\beta$")


def _levels(z, levels, log, vmin, vmax):
    """Contour levels: explicit values as given; else about ``levels`` (default 20) round
    values covering ``[vmin, vmax]`` (the data's range by default): multiples of 1, 2, 2.5 or 5
    times a power of ten, or for log levels 1-2-5-style values per decade, so level labels and
    colour-bar ticks read 0.95, 1, 1.05 and 0.02, 0.05, 0.1 (not 0.9491)."""
    finite = z[np.isfinite(z)]
    if finite.size == 0:
        raise ValueError("landscape.plot: the grid has no finite values to draw.")
    lo = float(finite.min()) if vmin is None else float(vmin)
    hi = float(finite.max()) if vmax is None else float(vmax)
    if not np.isscalar(levels) and levels is not None:
        return np.asarray(levels, dtype=float), lo, hi
    n = 20 if levels is None else int(levels)
    if hi <= lo:
        hi = lo + 1e-12 + abs(lo) * 1e-6
    if log:
        lo = max(lo, np.finfo(float).tiny)
        if hi <= lo:
            hi = lo * 10
        return _log_levels(lo, hi, n), lo, hi
    return _linear_levels(lo, hi, n), lo, hi


def _linear_levels(lo, hi, n):
    lv = ticker.MaxNLocator(nbins=max(n - 1, 1), steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)
    step = lv[1] - lv[0] if lv.size > 1 else 1.0
    lv = np.round(lv / step) * step  # exact multiples of the step (no 0.30000000000000004)
    return np.unique(np.where(np.abs(lv) < 1e-9 * step, 0.0, lv))


_LOG_MANTISSAS = ((1.0,), (1.0, 3.0), (1.0, 2.0, 5.0), (1.0, 1.5, 2.0, 3.0, 5.0, 7.0),
                  (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0))


def _log_levels(lo, hi, n):
    """The densest 1-2-5-style set of round values with at most ``n`` inside ``[lo, hi]``, plus
    one on each side so the levels cover the range; a narrow range (under a decade or so) gets
    round linear levels instead (positive ones: the colour scale stays logarithmic)."""
    e0, e1 = int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi)))
    best = None
    for mant in _LOG_MANTISSAS:
        cand = np.array([float(f"{m:g}e{e}") for e in range(e0 - 1, e1 + 1) for m in mant])
        inside = cand[(cand >= lo * (1 - 1e-12)) & (cand <= hi * (1 + 1e-12))]
        if inside.size > n and best is not None:
            break
        below, above = cand[cand <= lo * (1 + 1e-12)], cand[cand >= hi * (1 - 1e-12)]
        best = np.unique(np.concatenate([below[-1:], inside, above[:1]]))
    if best.size >= min(n, 5):
        return best
    lv = _linear_levels(lo, hi, n)
    lv = lv[lv > 0]
    return lv if lv.size >= 2 else np.array([lo, hi])


def _colorbar_ticks(levels, log):
    """Round tick values of a log colour bar (the levels are round): those with mantissa 1, 2
    or 5 when a few of them are there, else the levels themselves (at most about 8)."""
    lv = np.asarray(levels, float)
    if log:
        mant = lv / 10.0 ** np.floor(np.log10(lv) + 1e-9)
        for keep in ((1.0, 2.0, 5.0), (1.0,)):
            sel = lv[np.isin(np.round(mant, 6), keep)]
            if 3 <= sel.size <= 9:
                return sel
    step = max(1, int(np.ceil(lv.size / 8)))
    return lv[::step]


@_validate.public("landscape.plot.plot_contour")
def plot_contour(
    result,
    *,
    metric: str = "loss",
    split: str = "train",
    levels=None,
    log: bool | str = "auto",
    vmin: float | None = None,
    vmax: float | None = None,
    filled: bool = False,
    labels: bool = True,
    colorbar: bool | None = None,
    mark_center: bool = True,
    cmap: str = "viridis",
    ax=None,
    **kwargs,
):
    """Contour plot of a 2-D slice, levels labelled (Li et al. 2018, Figs. 1, 5, 7).

    Args:
      result: a 2-D :class:`~landscape.surface.SliceResult`, an object with ``alphas``,
        ``betas`` and ``values(metric, split)``, or an ``(x, y, Z)`` tuple.
      metric, split: what to draw (``"loss"``/``"accuracy"``/...; ``"train"``/``"test"``).
      levels: number of levels (default 20) or explicit level values.
      log: logarithmically spaced levels (and colour scale); ``"auto"`` (default): when the
        values are positive and span more than two decades (typical of losses around a
        minimum; linear levels would put the whole basin inside the first level).
      vmin, vmax: clip the level range (e.g. ``vmax=5`` to hide the rim of a wide plane).
      filled: ``contourf`` instead of ``contour``.
      labels: label the contour lines with their values (``clabel``).
      colorbar: draw a colour bar (default: for filled plots).
      mark_center: mark ``(0, 0)`` when it lies in the grid.
      ax: axes to draw on (default: a new figure).
      **kwargs: passed to ``contour``/``contourf``.

    Returns:
      The axes (data coordinates are the grid's, so extra points and paths can be drawn on it).
    """
    x, y, z, label = _grid(result, metric, split)
    if ax is None:
        _, ax = new_axes((5, 4.2))
    if log == "auto":
        fin = z[np.isfinite(z)]
        top = float(vmax) if vmax is not None else (float(fin.max()) if fin.size else 0.0)
        log = bool(fin.size) and fin.min() > 0 and top / fin.min() > 100
    lv, lo, hi = _levels(z, levels, log, vmin, vmax)
    zz = np.ma.masked_invalid(np.minimum(z, hi) if vmax is not None else z)
    norm = mcolors.LogNorm(vmin=lv[0], vmax=lv[-1]) if log else None
    xx, yy = np.meshgrid(x, y, indexing="ij")
    if filled:
        cs = ax.contourf(
            xx,
            yy,
            zz,
            levels=lv,
            cmap=cmap,
            norm=norm,
            extend="max" if vmax is not None else "neither",
            **kwargs,
        )
        if labels:
            lines = ax.contour(xx, yy, zz, levels=lv, colors="k", linewidths=0.4, norm=norm)
            ax.clabel(lines, inline=True, fontsize=7, fmt=_fmt)
    else:
        cs = ax.contour(xx, yy, zz, levels=lv, cmap=cmap, norm=norm, **kwargs)
        if labels:
            ax.clabel(cs, inline=True, fontsize=7, fmt=_fmt)
    if colorbar if colorbar is not None else filled:
        cb = ax.figure.colorbar(cs, ax=ax, label=label)
        if log:  # a log colour bar labels only decades (or one odd value): label round levels
            ticks = _colorbar_ticks(lv, log)
            cb.set_ticks(ticks, labels=[_fmt(t) for t in ticks])
            cb.minorticks_off()
    if mark_center and x[0] <= 0 <= x[-1] and y[0] <= 0 <= y[-1]:
        ax.plot([0], [0], marker="*", color="k", markersize=8, linestyle="none")
    xl, yl = _axis_labels(result)
    ax.set_xlabel(xl)
    ax.set_ylabel(yl)
    ax.set_title(label)
    return ax


@_validate.public("landscape.plot.plot_contourf")
def plot_contourf(result, **kwargs):
    """Filled contour plot of a 2-D slice (see :func:`plot_contour`; colour bar by default)."""
    kwargs.setdefault("labels", False)
    return plot_contour(result, filled=True, **kwargs)


def _fmt(v):
    return f"{v:.3g}"


@_validate.public("landscape.plot.plot_surface3d")
def plot_surface3d(
    result,
    *,
    metric: str = "loss",
    split: str = "train",
    log: bool = False,
    vmax: float | None = None,
    cmap: str = "viridis",
    ax=None,
    **kwargs,
):
    """3-D surface of a 2-D slice (Li et al. 2018, Fig. 1).

    Args:
      result: as :func:`plot_contour`.
      log: plot ``log10`` of the values.
      vmax: clip values above (the rim of a wide plane dwarfs the basin otherwise).
      ax: a 3-D axes (``projection="3d"``); default: a new figure.

    Returns:
      The 3-D axes.
    """
    x, y, z, label = _grid(result, metric, split)
    if ax is None:
        fig = plt.figure(figsize=(6, 4.5), layout="constrained")
        ax = fig.add_subplot(projection="3d")
    elif getattr(ax, "name", "") != "3d":
        raise ValueError("landscape.plot.plot_surface3d: ax must be a 3-D axes (projection='3d').")
    zz = np.array(z, dtype=float)
    if vmax is not None:
        zz = np.minimum(zz, vmax)
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            zz = np.log10(zz)
        label = f"log10 {label}"
    zz = np.ma.masked_invalid(zz)
    xx, yy = np.meshgrid(x, y, indexing="ij")
    ax.plot_surface(xx, yy, zz, cmap=cmap, linewidth=0, antialiased=True, **kwargs)
    xl, yl = _axis_labels(result)
    ax.set_xlabel(xl)
    ax.set_ylabel(yl)
    ax.set_zlabel(label)
    return ax


def plot_slice(
    result,
    *,
    metrics=("loss", "accuracy"),
    splits=("train", "test"),
    log: bool = False,
    ax=None,
    legend: bool = True,
    **kwargs,
):
    """1-D curves of a slice or an interpolation: loss (left axis) and accuracy (right axis),
    train (solid) and test (dashed, open markers: visible where it coincides with train), as Li
    et al. (2018) Fig. 2/3 and Goodfellow et al. (2015). With two metrics each axis label and
    its tick labels take the colour of the curves they measure; with one they stay black. The
    legend goes where it hides no curve (:func:`place_legend`).

    Args:
      result: a 1-D :class:`~landscape.surface.SliceResult` (``slice_1d`` or ``interpolate``).
      metrics: the first goes on the left axis, a second (e.g. accuracy) on a twin right axis.
      splits: which of ``"train"``/``"test"`` to draw (missing ones are skipped).
      log: logarithmic scale for the left axis.
      ax: axes (default: a new figure).
      legend: draw the legend where it hides no data (:func:`place_legend`); ``False``
        leaves it to the caller (one ``place_legend`` call for all of a figure's panels).
      **kwargs: passed to ``ax.plot`` (``label=`` prefixes the curves' labels; ``color=``
        sets the first metric's colour).

    Returns:
      The left axes (the twin axis, if any, is ``ax.right_ax``).
    """
    if getattr(result, "betas", None) is not None or not hasattr(result, "alphas"):
        raise ValueError(
            "landscape.plot.plot_slice: needs a 1-D result (slice_1d or interpolate); use "
            "plot_contour for 2-D results."
        )
    if isinstance(metrics, str):
        metrics = (metrics,)
    if ax is None:
        _, ax = new_axes((5.5, 3.8))
    x = np.asarray(result.alphas, dtype=float)
    axes = [ax]
    if len(metrics) > 1:
        right = ax.twinx()
        axes.append(right)
        ax.right_ax = right
    colors = ["C0", "C3", "C2", "C1"]
    if "color" in kwargs:
        colors[0] = kwargs.pop("color")
    prefix = kwargs.pop("label", None)
    handles = []
    for i, (a, metric) in enumerate(zip(axes, metrics)):
        for split in splits:
            src = getattr(result, split, None)
            if src is None or metric not in src:
                continue
            y = np.asarray(src[metric], dtype=float)
            name = f"{split} {metric}"
            style = {**split_style(split, i), "color": colors[i % 4], **line_kwargs(kwargs)}
            (h,) = a.plot(x, y, label=name if prefix is None else f"{prefix} ({name})", **style)
            handles.append(h)
        a.set_ylabel(metric)
        if len(axes) > 1:  # two y axes: each label says which curves it measures
            a.yaxis.label.set_color(colors[i % 4])
            a.tick_params(axis="y", labelcolor=colors[i % 4])
    if log:
        ax.set_yscale("log")
    kind = getattr(result, "kind", "")
    if kind == "interpolate":
        ax.set_xlabel("t  (0: a, 1: b)")
        for t in (0.0, 1.0):
            if x[0] <= t <= x[-1]:
                ax.axvline(t, color="0.7", linewidth=0.8, linestyle=":")
    else:
        ax.set_xlabel(r"$\alpha$")
    if handles and legend:
        place_legend(ax, handles)
    return ax


def plot_trajectory(
    pca,
    surface=None,
    *,
    metric: str = "loss",
    split: str = "train",
    annotate: bool = True,
    ax=None,
    legend: bool = True,
    contour_kwargs: dict | None = None,
    **kwargs,
):
    """The projected training path of :func:`~landscape.surface.pca_directions`, over the
    contour plot of the slice along the same two directions (Li et al. 2018, Fig. 9).

    Args:
      pca: a :class:`~landscape.surface.PCAResult`.
      surface: the 2-D slice through the final point along ``pca``'s first two directions
        (optional: without it only the path is drawn).
      annotate: mark the start and the end and label the axes with the explained variance.
      legend: label the start and the end in a legend where it hides no data
        (:func:`place_legend`); ``False`` leaves it to the caller.
      contour_kwargs: passed to :func:`plot_contour`.
      **kwargs: passed to the path's ``ax.plot``.

    Returns:
      The axes.
    """
    coords = np.asarray(pca.coords, dtype=float)
    if coords.ndim != 2 or coords.shape[1] < 2:
        raise ValueError("landscape.plot.plot_trajectory: the PCA result needs 2 components.")
    if surface is not None:
        ax = plot_contour(surface, metric=metric, split=split, ax=ax, **(contour_kwargs or {}))
    elif ax is None:
        _, ax = new_axes((5, 4.2))
    kwargs.setdefault("color", "C3")
    kwargs.setdefault("marker", ".")
    kwargs.setdefault("linewidth", 1.2)
    ax.plot(coords[:, 0], coords[:, 1], **kwargs)
    if annotate:
        ax.plot(
            coords[0, 0], coords[0, 1], "o", color=kwargs["color"], markersize=6, label="start"
        )
        ax.plot(coords[-1, 0], coords[-1, 1], "s", color="k", markersize=5, label="end")
        r = np.asarray(pca.explained_variance_ratio, dtype=float)
        ax.set_xlabel(f"PC1 ({100 * r[0]:.1f}%)")
        ax.set_ylabel(f"PC2 ({100 * r[1]:.1f}%)")
    ax.xaxis.set_major_locator(ticker.MaxNLocator(6))
    if annotate and legend:
        place_legend(ax, framealpha=0.85)  # over the contour field, off the path
    return ax
