"""Shared plot conventions (matplotlib only): new figures that keep their labels when saved,
styles that keep coinciding curves visible, and legends placed where they hide no data.

* :func:`new_axes`: figures are made with ``layout="constrained"``, so a plain
  ``fig.savefig(path)`` (no ``bbox_inches``) keeps every axis label, tick label, colour bar and
  outside legend inside the image.
* :func:`curve_style`: the ``i``-th of several curves that may lie on top of each other (the
  Hessian and its GGN, two paths' profiles) gets its own line style, a thinner line than the one
  under it and open markers at offset positions, so both stay visible where they coincide.
* :func:`place_legend`: inside the axes in the first corner (or edge centre) that covers no
  line, marker, bar or annotation of the axes and of axes overlaid on it (a ``twinx``); else
  along the top after raising the top of the y range (a free band); else outside, to the right
  of the axes and of anything drawn there.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import collections as mcoll
from matplotlib import contour as mcontour
from matplotlib import text as mtext
from matplotlib.transforms import Bbox, ScaledTranslation

__all__ = ["place_legend"]

LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P")

# preference order of the places inside the axes
_INSIDE = (
    "upper right",
    "upper left",
    "lower left",
    "lower right",
    "upper center",
    "lower center",
    "center right",
    "center left",
)


def new_axes(figsize, nrows: int = 1, ncols: int = 1, **kwargs):
    """``plt.subplots`` with constrained layout (labels stay inside a saved figure)."""
    return plt.subplots(nrows, ncols, figsize=figsize, layout="constrained", **kwargs)


def line_kwargs(kwargs: dict) -> dict:
    """The user's line keywords with matplotlib's aliases spelled out (``lw`` -> ``linewidth``,
    ``ls`` -> ``linestyle``, ...), so they override a style's entries instead of clashing."""
    from matplotlib import cbook
    from matplotlib.lines import Line2D

    return cbook.normalize_kwargs(kwargs, Line2D)


def curve_style(i: int, *, spacing: float = 0.12) -> dict:
    """Style of the ``i``-th of several curves that may coincide: line style, width, open
    marker every ``spacing`` (a fraction of the axes' diagonal, so any sampling gets the same
    density of markers), offset from the other curves' markers, drawn above the earlier curves."""
    return {
        "linestyle": LINESTYLES[i % len(LINESTYLES)],
        "linewidth": max(2.2 - 0.5 * i, 1.0),
        "marker": MARKERS[i % len(MARKERS)],
        "markevery": ((0.02 + 0.37 * spacing * i) % spacing, spacing),
        "markersize": 5,
        "markerfacecolor": "none",
        "zorder": 2 + 0.1 * i,
    }


def split_style(split: str, i: int = 0, *, spacing: float = 0.12) -> dict:
    """Style of a curve on the ``"train"`` or ``"test"`` split, the ``i``-th of several
    families (paths, metrics) drawn on the same axes: train solid with filled markers, test
    dashed, thinner, with open markers; family ``i`` gets marker ``MARKERS[i]`` and a thinner
    line than family ``i - 1``, above it. Markers sit every ``spacing`` of the axes' diagonal,
    offset by split and family, so train and test curves (and two families) that coincide stay
    visible."""
    test = split == "test"
    k = 2 * i + int(test)
    width = 1.2 if test else 1.8
    return {
        "linestyle": "--" if test else "-",
        "linewidth": max(width - 0.3 * i, 0.8),  # a later family thinner, drawn on top
        "marker": MARKERS[i % len(MARKERS)],
        "markevery": ((0.02 + 0.29 * spacing * k) % spacing, spacing),
        "markersize": 5 if test else 4,
        "markerfacecolor": "none" if test else None,
        "zorder": 2.0 + 0.1 * k,
    }


def _overlaid(ax):
    """``ax`` and the axes drawn on the same area (``twinx``/``twiny``), in drawing order."""
    pos = ax.get_position().bounds
    shared = set(ax.get_shared_x_axes().get_siblings(ax)) | set(
        ax.get_shared_y_axes().get_siblings(ax)
    )
    others = [
        a for a in ax.figure.axes if a is not ax and a in shared and a.get_position().bounds == pos
    ]
    return [ax, *others]


def _obstacles(axes):
    """Everything of ``axes`` that a legend must not cover, in display coordinates: lines
    (segments, or their markers when drawn without a line), line and point collections, bars and
    annotations. Filled contours and images are the background, not obstacles."""
    paths, boxes = [], []
    for a in axes:
        for line in a.get_lines():
            if not line.get_visible() or not len(line.get_xydata()):
                continue
            path = line.get_transform().transform_path(line.get_path())
            if line.get_linestyle() in ("None", "none", "", " "):
                r = 0.5 * line.get_markersize() * a.figure.dpi / 72
                boxes += [Bbox([[x - r, y - r], [x + r, y + r]]) for x, y in path.vertices]
            else:
                paths.append(path)
        for c in a.collections:
            if not c.get_visible() or isinstance(c, mcontour.ContourSet):
                continue
            if isinstance(c, mcoll.LineCollection):
                t = c.get_transform()
                paths += [t.transform_path(p) for p in c.get_paths()]
            elif isinstance(c, mcoll.PathCollection):
                pts = c.get_offset_transform().transform(c.get_offsets())
                r = 3.0 * a.figure.dpi / 72
                boxes += [Bbox([[x - r, y - r], [x + r, y + r]]) for x, y in pts]
            else:
                boxes.append(c.get_window_extent())
        boxes += [p.get_window_extent() for p in a.patches if p.get_visible()]
        boxes += [
            t.get_window_extent()
            for t in a.texts
            if isinstance(t, mtext.Annotation) and t.get_visible()
        ]
    return paths, boxes


def _covers(box, paths, boxes) -> bool:
    return any(p.intersects_bbox(box, filled=False) for p in paths) or any(
        box.overlaps(b) for b in boxes
    )


def _handles(axes):
    handles, labels = [], []
    for a in axes:
        h, lab = a.get_legend_handles_labels()
        handles += h
        labels += lab
    return handles, labels


def _raise_top(axes, frac):
    """Raise the top of every axes' y range so the old range fills ``1 - frac`` of the height
    (in the axis' scale: decades on a log axis)."""
    for a in axes:
        lo, hi = a.get_ylim()
        t = a.yaxis.get_transform()  # the scale's 1-D transform (log10 on a log axis)
        y0, y1 = np.ravel(t.transform(np.array([[lo], [hi]])))
        top = y0 + (y1 - y0) / (1.0 - frac)
        a.set_ylim(lo, float(np.ravel(t.inverted().transform(np.array([[top]])))[0]), auto=None)


def _has_field(axes) -> bool:
    """Whether a contour set or an image fills the axes (raising the y range would leave an
    empty band above it)."""
    return any(
        a.images or any(isinstance(c, mcontour.ContourSet) for c in a.collections) for a in axes
    )


def _layout(fig):
    """Lay the figure out as saving it will (its layout engine, if any) and bring every axes'
    autoscaled limits up to date."""
    engine = fig.get_layout_engine()
    if engine is not None:
        engine.execute(fig)
    for a in fig.axes:
        a.viewLim  # noqa: B018 (the property applies pending autoscaling)


def place_legend(
    ax, handles=None, labels=None, *, inside: bool = True, headroom: bool | None = None, **kwargs
):
    """Draw the legend of ``ax`` where it hides no data.

    The figure is laid out first (as when it is saved); then the legend goes to the first place
    inside the axes (the corners, then the edges' centres) that covers no line, marker, bar or
    annotation of ``ax`` or of axes overlaid on it (a ``twinx``). When every place covers data,
    the top of the y range is raised (by up to half the axes' height, the twin's too) until a
    place along the top is free; failing that (or with ``inside=False``), the legend goes
    outside, to the right of the axes and of any twin axis' tick labels and label; a figure with
    constrained layout (those of :mod:`landscape.plot`) makes room for it. Call it again after
    drawing more on the axes.

    Args:
      ax: the axes, or a sequence of axes (a figure's panels: laid out once, each given its
        own entries' legend; then ``handles`` and ``labels`` must be ``None``).
      handles, labels: the legend's entries (default: those of ``ax`` and of the axes
        overlaid on it, in that order).
      inside: try the places inside the axes first.
      headroom: may raise the top of the y range to make a free band for the legend (the
        limits are set, autoscaling stays on: more data drawn later rescales the axis);
        default: unless a contour set or an image fills the axes.
      **kwargs: passed to ``ax.legend`` (``fontsize`` defaults to 8).

    Returns:
      The :class:`~matplotlib.legend.Legend`, or ``None`` when there is nothing to label (a
      list of those for a sequence of axes).
    """
    many = not hasattr(ax, "figure") or not hasattr(ax, "legend")
    panels = list(np.ravel(np.asarray(ax, dtype=object))) if many else [ax]
    if many and (handles is not None or labels is not None):
        raise ValueError("landscape.plot.place_legend: handles and labels go with one axes.")
    if not panels:
        return []
    fig = panels[0].figure
    entries = []
    for a in panels:
        old = a.get_legend()
        if old is not None:
            old.remove()
        h, lab = (handles, labels) if handles is not None else _handles(_overlaid(a))
        if handles is not None and labels is None:
            lab = [x.get_label() for x in h]
        entries.append((h, lab))
    _layout(fig)
    kwargs.setdefault("fontsize", 8)
    legends = [
        _place(a, h, lab, inside=inside, headroom=headroom, **kwargs) if h else None
        for a, (h, lab) in zip(panels, entries)
    ]
    return legends if many else legends[0]


def _place(ax, handles, labels, *, inside, headroom, **kwargs):
    axes = _overlaid(ax)
    fig = ax.figure
    if inside:
        leg = ax.legend(handles, labels, loc=_INSIDE[0], **kwargs)
        pad = 3.0 * fig.dpi / 72
        tries = [(0.0, _INSIDE)]
        if headroom if headroom is not None else not _has_field(axes):
            tries += [(f, _INSIDE[:2] + _INSIDE[4:5]) for f in (0.1, 0.2, 0.3, 0.4, 0.5)]
        limits = [a.get_ylim() for a in axes]
        for frac, places in tries:
            if frac:
                for a, lim in zip(axes, limits):
                    a.set_ylim(lim, auto=None)
                _raise_top(axes, frac)
            paths, boxes = _obstacles(axes)
            for loc in places:
                leg.set_loc(loc)
                if not _covers(leg.get_window_extent().padded(pad), paths, boxes):
                    return leg
        for a, lim in zip(axes, limits):
            a.set_ylim(lim, auto=None)
        leg.remove()
    # outside on the right: beyond the ticks and label of a twin axis drawn there
    right = max([a.get_tightbbox().x1 for a in axes[1:]], default=ax.bbox.x1)
    dx = (max(right, ax.bbox.x1) - ax.bbox.x1) * 72 / fig.dpi + 6.0
    return ax.legend(
        handles,
        labels,
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        bbox_transform=ax.transAxes + ScaledTranslation(dx / 72, 0.0, fig.dpi_scale_trans),
        borderaxespad=0.0,
        **kwargs,
    )
