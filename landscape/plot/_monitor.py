"""The training monitor of :func:`landscape.diagnostics.training_monitor`: per-layer gradient
norms and update-to-weight ratios against the step, the divergence marked."""

from __future__ import annotations

import numpy as np

from landscape.plot._style import curve_style, new_axes, place_legend

__all__ = ["plot_monitor"]


def plot_monitor(result, axes=None, *, layers=None, legend: bool = True):
    """Two panels against the step: the gradient norm of each layer, and its update-to-weight
    ratio ``||dw|| / ||w||`` (log scales); the step that diverged as a red vertical line.

    A layer is a parameter path without its last part (``layers/0`` holds ``kernel`` and
    ``bias``); its norms take its leaves together. Non-finite values (the failing step's
    record) are left out of the curves; the divergence line says where they are.

    Args:
      result: a :class:`~landscape.diagnostics.MonitorResult` (``monitor.result()``).
      axes: two axes to draw on (a new figure with two panels if ``None``).
      layers: the layers to draw (default all, in forward order).
      legend: place a legend (one per panel) where it hides no data.

    Returns:
      The two axes (gradient norm, update ratio).
    """
    name = "landscape.plot.plot_monitor"
    if not hasattr(result, "layer_grad_norm") or not hasattr(result, "leaf_layers"):
        raise TypeError(
            f"{name}: result must be a MonitorResult (from landscape.diagnostics."
            f"training_monitor(...).result()); got {type(result).__name__}."
        )
    known = list(result.layers)
    chosen = known if layers is None else list(layers)
    unknown = [x for x in chosen if x not in known]
    if unknown:
        raise ValueError(f"{name}: unknown layers {unknown}; the result has {known}.")
    if not len(result.step):
        raise ValueError(f"{name}: the monitor recorded no steps; train with it first.")
    if axes is None:
        _, axes = new_axes((11, 4.2), 1, 2)
    axes = np.asarray(axes, dtype=object).ravel()
    if axes.size != 2:
        raise ValueError(f"{name}: axes must be two axes; got {axes.size}.")
    steps = np.asarray(result.step)
    panels = (
        (result.layer_grad_norm, "gradient norm ||g|| per layer"),
        (result.layer_update_ratio, "update / weight ||dw|| / ||w|| per layer"),
    )
    div = result.divergence
    for ax, (values, ylabel) in zip(axes, panels):
        for i, lay in enumerate(chosen):
            y = np.asarray(values[:, known.index(lay)], np.float64)
            y = np.where(np.isfinite(y) & (y > 0), y, np.nan)
            style = {**curve_style(i), "color": f"C{i % 10}"}
            if len(steps) < 2:
                style["marker"] = "o"
            ax.plot(steps, y, label=lay, **style)
        if div is not None and div.get("step") is not None:
            ax.axvline(
                div["step"],
                color="C3",
                ls="--",
                lw=1.4,
                label=f"diverged at step {div['step']} ({div.get('stage')})",
            )
            # the failing step is usually the last record: leave room so the line is not the
            # axes' edge
            lo, hi = ax.get_xlim()
            span = max(hi - lo, 1.0)
            if div["step"] >= hi - 0.02 * span:
                ax.set_xlim(lo, div["step"] + 0.06 * span)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        if legend:
            place_legend(ax)
    return axes
