"""Plots for :func:`landscape.hessian.head_spectra`: curvature per attention head (a heat map
of blocks by heads, one panel column per group) and the blocks' top eigenvalue through depth.

Every function takes result objects (and an optional ``ax``), returns the axes and never calls
``plt.show()``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from landscape.plot._style import MARKERS, curve_style, new_axes, place_legend

__all__ = ["plot_depth_spectrum", "plot_head_spectra"]

_QUANTITIES = ("top", "trace")


def plot_head_spectra(
    result, ax=None, *, quantity: str = "top", annotate: bool = True, cmap: str = "viridis"
):
    """A heat map of one quantity per block (rows) and head (columns), the groups side by side
    (``qk | vo``), with the values written in the cells.

    Args:
      result: a :class:`~landscape.hessian.HeadSpectraResult`.
      ax: axes to draw on (a new figure if ``None``).
      quantity: ``"top"`` (the top eigenvalue of each head's group block) or ``"trace"``.
      annotate: write each value in its cell.
      cmap: the colour map.

    Returns:
      The axes (with a colour bar).

    Raises:
      ValueError: an unknown ``quantity``.
    """
    if quantity not in _QUANTITIES:
        raise ValueError(
            f"landscape.plot.plot_head_spectra: quantity must be one of {list(_QUANTITIES)}; got {quantity!r}."
        )
    vals = np.asarray(result.top if quantity == "top" else result.traces, np.float64)  # (B, H, G)
    nb, nh, ng = vals.shape
    grid = np.concatenate([vals[:, :, g] for g in range(ng)], axis=1)  # (B, G * H)
    if ax is None:
        _, ax = new_axes((1.2 + 0.9 * grid.shape[1], 1.2 + 0.7 * nb))
    im = ax.imshow(grid, cmap=cmap, aspect="auto", origin="upper")
    ax.figure.colorbar(
        im, ax=ax, label=r"top eigenvalue $\lambda_{\max}$" if quantity == "top" else "trace"
    )
    ax.set_xticks(range(grid.shape[1]))
    ax.set_xticklabels(
        [f"{result.groups[g]} h{h}" for g in range(ng) for h in range(nh)], rotation=0
    )
    ax.set_yticks(range(nb))
    ax.set_yticklabels([f"block {b}" for b in range(nb)])
    for g in range(1, ng):
        ax.axvline(g * nh - 0.5, color="white", lw=2)
    if annotate:
        lo, hi = np.nanmin(grid), np.nanmax(grid)
        mid = 0.5 * (lo + hi)
        for b in range(nb):
            for j in range(grid.shape[1]):
                ax.text(
                    j,
                    b,
                    f"{grid[b, j]:.3g}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="black" if grid[b, j] > mid else "white",
                )
    ax.set_title(
        f"{result.curvature}: {'top eigenvalue' if quantity == 'top' else 'trace'} per head"
    )
    return ax


def plot_depth_spectrum(results, ax=None, *, heads: bool = True, legend: bool = True):
    """The top eigenvalue of each block's whole parameters through depth (one line per result:
    a dict ``{label: result}`` compares, e.g., the Hessian and the GGN), and with ``heads`` the
    largest per-head group eigenvalue of each block (dashed, one per group).

    Args:
      results: a :class:`~landscape.hessian.HeadSpectraResult` or ``{label: result}``.
      ax: axes to draw on (a new figure if ``None``).
      heads: also the per-group maximum over heads.
      legend: place the legend where it hides no data.

    Returns:
      The axes.
    """
    if ax is None:
        _, ax = new_axes((6, 4))
    items = dict(results) if isinstance(results, Mapping) else {results.curvature: results}
    several = len(items) > 1
    for i, (name, r) in enumerate(items.items()):
        lv = np.asarray(r.layer_values, np.float64)
        depth = np.arange(np.asarray(r.top).shape[0])
        suffix = f", {name}" if several else ""
        if lv.size:
            kw = {**(curve_style(i) if several else {"marker": MARKERS[0]}), "color": f"C{i}"}
            ax.plot(depth, lv[:, 0], label=f"whole block{suffix}", **kw)
        if heads:
            top = np.asarray(r.top, np.float64)
            for g, group in enumerate(r.groups):
                ax.plot(
                    depth,
                    top[:, :, g].max(axis=1),
                    color=f"C{i}",
                    ls=("--", ":", "-.")[g % 3],
                    marker=MARKERS[(g + 1) % len(MARKERS)],
                    markerfacecolor="none",
                    label=f"max over heads, {group}{suffix}",
                )
    ax.set_xlabel("block")
    ax.set_ylabel(r"top eigenvalue $\lambda_{\max}$")
    ax.set_xticks(np.arange(np.asarray(next(iter(items.values())).top).shape[0]))
    if legend:
        place_legend(ax)
    return ax
