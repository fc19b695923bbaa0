"""Plots for :mod:`landscape.connect` (matplotlib only): metrics along paths, the curve plane,
barrier sweeps.

Each function takes result objects (:class:`~landscape.connect.Profile`,
:class:`~landscape.connect.PlaneResult`, :class:`~landscape.connect.Barrier`) and an optional
``ax``, and returns the axes it drew on. The curve-plane contour is drawn by the surface
module's public :func:`landscape.plot.plot_contour` (the plane result has its ``alphas``,
``betas`` and ``values(metric, split)``); this module adds the three points and the curve.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from landscape.plot._style import (
    LINESTYLES,
    MARKERS,
    line_kwargs,
    new_axes,
    place_legend,
    split_style,
)

__all__ = ["plot_barrier_sweep", "plot_curve_plane", "plot_profiles"]


def _as_labelled(profiles) -> list[tuple[str, object]]:
    if isinstance(profiles, Mapping):
        return [(str(k), v) for k, v in profiles.items()]
    if isinstance(profiles, Sequence) and not isinstance(profiles, str):
        return [(_default_label(p, i), p) for i, p in enumerate(profiles)]
    return [(_default_label(profiles, 0), profiles)]


def _default_label(p, i) -> str:
    kind = getattr(p, "kind", f"path {i}")
    nb = getattr(p, "num_bends", 0)
    return kind if not nb else f"{kind} ({nb} bend{'s' if nb > 1 else ''})"


def plot_profiles(
    profiles,
    *,
    metrics: Sequence[str] | str = ("loss", "error"),
    splits: Sequence[str] | str = ("train", "test"),
    mark_max: bool = True,
    log: bool = False,
    ax=None,
    legend: bool = True,
    **kwargs,
):
    """Loss and error along several paths on one figure (one panel per metric).

    Args:
      profiles: a :class:`~landscape.connect.Profile`, a list of them, or a dict
        ``{label: profile}`` (e.g. ``{"linear": ..., "aligned linear": ..., "Bezier": ...}``).
      metrics: one panel per metric (those a profile lacks are skipped for it).
      splits: ``"train"`` (solid, filled markers) and/or ``"test"`` (dashed, open markers).
        Each path has its colour and marker shape, so paths whose profiles coincide (a linear
        path before and after an alignment that changed nothing) and train and test curves
        that coincide all stay visible.
      mark_max: mark each curve's maximum (the barrier's ``t_max``) with a star.
      log: logarithmic y axis for the loss panel.
      ax: an axes (one metric) or a sequence of axes, one per metric; default: a new figure.
      legend: draw the legend (on the first panel) where it hides no data
        (:func:`place_legend`); ``False`` leaves it to the caller (one ``place_legend`` call
        for all of a figure's panels).
      **kwargs: passed to ``ax.plot``.

    Returns:
      The axes: a single axes for one metric, else a list.
    """
    if isinstance(metrics, str):
        metrics = (metrics,)
    if isinstance(splits, str):
        splits = (splits,)
    items = _as_labelled(profiles)
    if not items:
        raise ValueError("landscape.plot.plot_profiles: no profiles given.")
    if ax is None:
        _, axes = new_axes((4.8 * len(metrics), 3.6), 1, len(metrics), squeeze=False)
        axes = list(axes[0])
    else:
        axes = list(ax) if isinstance(ax, (list, tuple, np.ndarray)) else [ax]
        if len(axes) != len(metrics):
            raise ValueError(
                f"landscape.plot.plot_profiles: got {len(axes)} axes for {len(metrics)} metrics."
            )
    for a, metric in zip(axes, metrics):
        for i, (label, p) in enumerate(items):
            color = f"C{i % 10}"
            for split in splits:
                src = getattr(p, split, None)
                if src is None or metric not in src:
                    continue
                t = np.asarray(p.ts, float)
                y = np.asarray(src[metric], float)
                style = {**split_style(split, i), "color": color, **line_kwargs(kwargs)}
                a.plot(t, y, label=f"{label} ({split})", **style)
                if mark_max:
                    inside = (t >= 0) & (t <= 1)
                    j = np.flatnonzero(inside)[np.argmax(y[inside])]
                    a.plot(t[j], y[j], "*", color=color, markersize=9, markeredgecolor="k",
                           markeredgewidth=0.5, zorder=3)
        a.set_xlabel("t")
        a.set_ylabel(metric)
        if log and metric == "loss":
            a.set_yscale("log")
        a.grid(alpha=0.3)
    if legend:
        place_legend(axes[0], fontsize=7)
    return axes[0] if len(axes) == 1 else axes


def plot_curve_plane(
    plane,
    *,
    metric: str = "loss",
    split: str = "train",
    log: bool = True,
    levels=20,
    vmax: float | None = None,
    show_curve: bool = True,
    point_labels: Sequence[str] = ("A", "bend", "B"),
    ax=None,
    legend: bool = True,
    **contour_kwargs,
):
    """Filled contour of the curve plane with the two endpoints, the bend and the curve
    (Garipov et al. 2018, Fig. 1).

    Args:
      plane: a :class:`~landscape.connect.PlaneResult`.
      metric, split: what to draw.
      log: logarithmic levels (the basin spans decades).
      levels: number of levels or their values.
      vmax: clip the colour range (the rim of a wide plane dwarfs the valley otherwise).
      show_curve: draw the curve projected on the plane.
      point_labels: labels of the start, the third point and the end.
      ax: axes (default: a new figure).
      legend: draw the legend where it hides no data (:func:`place_legend`); ``False``
        leaves it to the caller (one ``place_legend`` call for all of a figure's panels).
      **contour_kwargs: passed to :func:`landscape.plot.plot_contour`.

    Returns:
      The axes (coordinates: Euclidean lengths in parameter space along the plane's
      orthonormal basis).
    """
    from landscape.plot import plot_contour  # the surface module's public contour plot

    z = np.asarray(plane.values(metric, split), float)
    label = f"{split} {metric}"
    if vmax is not None:
        z = np.minimum(z, vmax)
    if log:
        # log10 of the values: evenly spaced colours over decades, readable colour-bar ticks
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.log10(np.maximum(z, np.finfo(float).tiny))
        label = f"log10 {label}"
    if ax is None:
        _, ax = new_axes((7.0, 4.2))
    contour_kwargs.setdefault("filled", True)
    contour_kwargs.setdefault("labels", False)
    ax = plot_contour((np.asarray(plane.alphas), np.asarray(plane.betas), z), metric=label,
                      levels=levels, mark_center=False, ax=ax, **contour_kwargs)
    pts = np.asarray(plane.points, float)
    if show_curve:
        c = np.asarray(plane.curve, float)
        ax.plot(c[:, 0], c[:, 1], "-", color="w", linewidth=2.0)
        ax.plot(c[:, 0], c[:, 1], "--", color="k", linewidth=1.0, label=f"{plane.kind} curve")
        ax.plot(
            [pts[0, 0], pts[2, 0]], [pts[0, 1], pts[2, 1]], ":", color="0.3", linewidth=1.0,
            label="linear",
        )
    markers = ("o", "s", "o")
    for (x, y), lab, m in zip(pts, point_labels, markers):
        ax.plot(x, y, m, color="k", markersize=7, markerfacecolor="w")
        ax.annotate(lab, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=9)
    ax.set_xlabel("along B - A")
    ax.set_ylabel("towards the bend")
    ax.set_aspect("equal", adjustable="box")
    if legend:
        place_legend(ax, fontsize=7, framealpha=0.85)  # over the contour field, off the curves
    return ax


def plot_barrier_sweep(
    xs,
    barriers: Mapping[str, Sequence],
    *,
    metric: str = "loss",
    split: str = "train",
    convention: str = "max_minus_mean",
    xlabel: str = "width",
    log_x: bool = True,
    ax=None,
    legend: bool = True,
    **kwargs,
):
    """Barrier height against a setting (e.g. width), one line per family of paths (Git
    Re-Basin's Fig. 4: naive vs. weight-matched linear barriers).

    Args:
      xs: the setting's values.
      barriers: ``{label: [Barrier per x]}``, e.g. ``{"linear": [...], "weight matching":
        [...]}``.
      metric, split, convention: which number of each :class:`~landscape.connect.Barrier`.
      xlabel: the x axis label; log_x: logarithmic x axis.
      ax: axes (default: a new figure).
      legend: draw the legend where it hides no data (:func:`place_legend`); ``False``
        leaves it to the caller (one ``place_legend`` call for all of a figure's panels).
      **kwargs: passed to ``ax.plot``.

    Each family has its own colour, line style and marker (open after the first), so families
    whose barriers coincide stay visible.

    Returns:
      The axes.
    """
    xs = np.asarray(xs, float)
    if ax is None:
        _, ax = new_axes((4.8, 3.6))
    for i, (label, bs) in enumerate(barriers.items()):
        if len(bs) != xs.size:
            raise ValueError(
                f"landscape.plot.plot_barrier_sweep: {label!r} has {len(bs)} barriers for "
                f"{xs.size} x values."
            )
        ys = [b.get(metric, split, convention) for b in bs]
        # families often coincide (both barriers near zero): own line style and marker each
        style = {"color": f"C{i % 10}", "linestyle": LINESTYLES[i % len(LINESTYLES)],
                 "marker": MARKERS[i % len(MARKERS)], "markerfacecolor": "none" if i else None,
                 "markersize": 7 - min(i, 3), "zorder": 2 + 0.1 * i, **kwargs}
        ax.plot(xs, ys, label=label, **style)
    if log_x:
        ax.set_xscale("log", base=2)
    ax.axhline(0.0, color="0.6", linewidth=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{split} {metric} barrier ({convention})")
    ax.grid(alpha=0.3)
    if legend:
        place_legend(ax)
    return ax
