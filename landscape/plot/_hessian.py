"""Plots for :mod:`landscape.hessian`: spectral densities, eigenvalues, per-layer traces,
sharpness through training, the GGN + residual split.

Every function takes result objects (and an optional ``ax``), returns the axes and never calls
``plt.show()``.
"""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np

__all__ = [
    "plot_decomposition",
    "plot_density",
    "plot_eigenvalues",
    "plot_sharpness",
    "plot_trace_layers",
]


def _ax(ax):
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    return ax


def _as_mapping(results, label):
    if isinstance(results, Mapping):
        return dict(results)
    if isinstance(results, (list, tuple)):
        return {f"{i}": r for i, r in enumerate(results)}
    return {label: results}


def plot_density(
    density,
    ax=None,
    *,
    yscale: str = "linear",
    eigen=None,
    label: str | None = None,
    floor: float = 1e-7,
    show_nodes: bool = False,
    **style,
):
    """Spectral density (one :class:`~landscape.hessian.DensityResult`, or a dict ``{label:
    result}`` to compare), on a linear or log y axis, with the top-k eigenvalues marked.

    Args:
      density: result(s) of :func:`landscape.hessian.spectral_density`.
      ax: axes to draw on (a new figure if ``None``).
      yscale: ``"linear"`` or ``"log"`` (densities floored at ``floor``, as PyHessian's
        plots; the outliers' small mass is visible only there).
      eigen: an :class:`~landscape.hessian.EigenResult` or eigenvalues (a number or an array),
        or a dict of those with the same keys as ``density``: marked by vertical dashed lines.
      show_nodes: also draw the raw Gauss nodes (weights as stems, first probe).
    """
    ax = _ax(ax)
    items = _as_mapping(density, label or "density")
    eig_map = eigen if isinstance(eigen, Mapping) else ({k: eigen for k in items} if eigen is not None else {})
    for i, (name, d) in enumerate(items.items()):
        y = np.asarray(d.density)
        if yscale == "log":
            y = np.maximum(y, floor)
        kw = dict(style)
        kw.setdefault("color", f"C{i}")
        ax.plot(d.grid, y, label=name if len(items) > 1 or label else None, **kw)
        if show_nodes:
            ax.vlines(d.nodes[0], floor if yscale == "log" else 0, np.maximum(d.weights[0], floor),
                      color=kw["color"], alpha=0.4, lw=0.8)
        e = eig_map.get(name)
        if e is not None:
            if hasattr(e, "largest"):
                marks = np.asarray(e.largest) if len(e.largest) else np.asarray(e.values)
            else:
                marks = np.atleast_1d(np.asarray(e, np.float64))
            if d.scale == "log":
                marks = np.log10(marks[marks > 0])
            for j, x in enumerate(marks):
                ax.axvline(x, color=kw["color"], ls="--", lw=0.8, alpha=0.7,
                           label=f"top-{len(marks)} ({name})" if j == 0 else None)
    ax.set_yscale(yscale)
    scale = next(iter(items.values())).scale
    ax.set_xlabel(r"$\log_{10}\lambda$" if scale == "log" else r"eigenvalue $\lambda$")
    ax.set_ylabel("density")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return ax


def plot_eigenvalues(eigen, ax=None, *, label: str | None = None, **style):
    """Eigenvalues of an :class:`~landscape.hessian.EigenResult` by index, with their true
    residuals as error bars (a dict ``{label: result}`` compares several)."""
    ax = _ax(ax)
    items = _as_mapping(eigen, label or "eigenvalues")
    for i, (name, e) in enumerate(items.items()):
        kw = dict(style)
        kw.setdefault("color", f"C{i}")
        kw.setdefault("marker", "o")
        kw.setdefault("ls", "none")
        idx = np.arange(1, len(e.values) + 1)
        ax.errorbar(idx, e.values, yerr=e.residuals, label=name if len(items) > 1 or label else None, **kw)
    ax.set_xlabel("index")
    ax.set_ylabel("eigenvalue")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return ax


def plot_trace_layers(trace_result, ax=None, **style):
    """Per-layer traces of a :class:`~landscape.hessian.TraceResult` as bars with 2 standard
    errors."""
    ax = _ax(ax)
    names = list(trace_result.per_layer)
    vals = np.array([float(trace_result.per_layer[n]) for n in names])
    err = np.array([float(trace_result.per_layer_se[n]) for n in names])
    kw = dict(style)
    kw.setdefault("color", "C0")
    ax.bar(np.arange(len(names)), vals, yerr=2 * np.nan_to_num(err), capsize=3, **kw)
    ax.set_xticks(np.arange(len(names)))
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("trace of the layer's block")
    ax.set_title(f"total {float(trace_result.estimate):.4g} ± {float(trace_result.std_error):.2g}", fontsize=9)
    return ax


def plot_sharpness(train_result, ax=None, *, name: str = "sharpness", threshold: bool = True,
                   yscale: str = "linear", label: str | None = None, **style):
    """Sharpness logged by :func:`landscape.hessian.sharpness_callback` against training steps,
    with the stability threshold (``2/lr`` for GD, ``38/lr`` preconditioned Adam) dashed.

    Args:
      train_result: a :class:`landscape.train.TrainResult` (or its ``history`` dict).
      name: the callback's ``name``.
    """
    ax = _ax(ax)
    h = getattr(train_result, "history", train_result)
    if name not in h:
        raise ValueError(
            f"landscape.plot.plot_sharpness: no '{name}' in the history (keys: {sorted(h)}); train with "
            f"callbacks=[landscape.hessian.sharpness_callback(every=..., key=...)]."
        )
    steps = np.asarray(h[f"{name}_step"])
    kw = dict(style)
    kw.setdefault("color", "C0")
    kw.setdefault("marker", ".")
    ax.plot(steps, np.asarray(h[name]), label=label or "sharpness", **kw)
    thr_key = f"{name}_threshold"
    if threshold and thr_key in h and np.isfinite(np.asarray(h[thr_key], float)).any():
        ax.plot(steps, np.asarray(h[thr_key], float), ls="--", color=kw["color"], alpha=0.6, label="stability threshold")
    ax.set_yscale(yscale)
    ax.set_xlabel("step")
    ax.set_ylabel(r"top eigenvalue $\lambda_{\max}$")
    ax.legend(fontsize=8)
    return ax


def plot_decomposition(decomposition, ax=None, *, yscale: str = "log", floor: float = 1e-7, **style):
    """Densities of the Hessian, its GGN part and the residual (a
    :class:`~landscape.hessian.DecompositionResult`) on one axis."""
    ax = _ax(ax)
    for i, part in enumerate(("hessian", "ggn", "residual")):
        y = np.asarray(decomposition.density[part])
        if yscale == "log":
            y = np.maximum(y, floor)
        kw = dict(style)
        kw.setdefault("color", f"C{i}")
        ax.plot(decomposition.grid, y, label=f"{part} (trace {float(decomposition.traces[part]):.3g})", **kw)
    ax.set_yscale(yscale)
    ax.set_xlabel(r"eigenvalue $\lambda$")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    return ax
