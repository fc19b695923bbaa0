"""Plots for :mod:`landscape.hessian`: spectral densities, eigenvalues, per-layer traces,
sharpness through training, the GGN + residual split.

Every function takes result objects (and an optional ``ax``), returns the axes and never calls
``plt.show()``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from landscape.plot._style import MARKERS, curve_style, line_kwargs, new_axes, place_legend

__all__ = [
    "plot_decomposition",
    "plot_density",
    "plot_eigenvalues",
    "plot_sharpness",
    "plot_trace_layers",
]


def _ax(ax):
    if ax is None:
        _, ax = new_axes((6, 4))
    return ax


def _as_mapping(results, label):
    if isinstance(results, Mapping):
        return dict(results)
    if isinstance(results, (list, tuple)):
        return {f"{i}": r for i, r in enumerate(results)}
    return {label: results}


def _eigen_marks(e):
    """The values to mark and what they are: an EigenResult's largest (else smallest) values,
    found by the Lanczos eigensolver; plain numbers as given."""
    if hasattr(e, "largest"):
        top = np.asarray(e.largest)
        if top.size:
            return top, "top", " (Lanczos)"
        return np.asarray(e.values), "bottom", " (Lanczos)"
    return np.atleast_1d(np.asarray(e, np.float64)), None, ""


def _eigen_label(n, end, source, name):
    what = f"{end}-{n} eigenvalues" if end else ("eigenvalue" if n == 1 else f"{n} eigenvalues")
    return f"{what}{', ' + name if name else ''}{source}"


def plot_density(
    density,
    ax=None,
    *,
    yscale: str = "linear",
    eigen=None,
    label: str | None = None,
    floor: float = 1e-7,
    show_nodes: bool = False,
    legend: bool = True,
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
        or a dict of those with the same keys as ``density``: marked by vertical dashed lines
        (from the bottom up to the densities' maximum), labelled ``"top-5 eigenvalues
        (Lanczos)"`` for an ``EigenResult`` (``"top-5 eigenvalues, <key> (Lanczos)"`` when
        several densities are compared; ``"5 eigenvalues"`` for plain numbers).
      show_nodes: also draw the raw Gauss nodes (weights as stems, first probe).
      legend: draw the legend where it hides no data (:func:`place_legend`); ``False``
        leaves it to the caller (one ``place_legend`` call for all of a figure's panels).

    Several densities get distinct line styles and markers (they often coincide: a Hessian and
    its GGN), and their eigenvalue marks distinct dash patterns.
    """
    ax = _ax(ax)
    items = _as_mapping(density, label or "density")
    eig_map = eigen if isinstance(eigen, Mapping) else ({k: eigen for k in items} if eigen is not None else {})
    several = len(items) > 1
    colors, bottom, top = {}, (floor if yscale == "log" else 0.0), -np.inf
    for i, (name, d) in enumerate(items.items()):
        y = np.asarray(d.density)
        if yscale == "log":
            y = np.maximum(y, floor)
        top = max(top, float(np.nanmax(y)))
        kw = {**curve_style(i), **line_kwargs(style)} if several else line_kwargs(style)
        kw.setdefault("color", f"C{i}")
        colors[name] = kw["color"]
        ax.plot(d.grid, y, label=name if several or label else None, **kw)
        if show_nodes:
            ax.vlines(d.nodes[0], bottom, np.maximum(d.weights[0], floor),
                      color=kw["color"], alpha=0.4, lw=0.8)
    for i, (name, d) in enumerate(items.items()):
        e = eig_map.get(name)
        if e is None:
            continue
        marks, end, source = _eigen_marks(e)
        if d.scale == "log":
            marks = np.log10(marks[marks > 0])
        text = _eigen_label(len(marks), end, source, name if several else "")
        ls = ("--", ":", "-.", (0, (5, 1, 1, 1)))[i % 4]
        # up to the densities' maximum, not the axes' top: the band above is free for the legend
        for j, x in enumerate(marks):
            ax.plot([x, x], [bottom, top], color=colors[name], ls=ls, lw=0.9, alpha=0.8,
                    label=text if j == 0 else None)
    ax.set_yscale(yscale)
    scale = next(iter(items.values())).scale
    ax.set_xlabel(r"$\log_{10}\lambda$" if scale == "log" else r"eigenvalue $\lambda$")
    ax.set_ylabel("density")
    if legend:
        place_legend(ax)
    return ax


def plot_eigenvalues(eigen, ax=None, *, label: str | None = None, legend: bool = True, **style):
    """Eigenvalues of an :class:`~landscape.hessian.EigenResult` by index, with their true
    residuals as error bars (a dict ``{label: result}`` compares several: each its own marker,
    open after the first, shifted a little along the index so equal values stay visible)."""
    ax = _ax(ax)
    items = _as_mapping(eigen, label or "eigenvalues")
    n = len(items)
    for i, (name, e) in enumerate(items.items()):
        kw = dict(style)
        kw.setdefault("color", f"C{i}")
        kw.setdefault("marker", MARKERS[i % len(MARKERS)])
        kw.setdefault("ls", "none")
        if i > 0:
            kw.setdefault("markerfacecolor", "none")
        shift = 0.12 * (i - (n - 1) / 2) if n > 1 else 0.0
        idx = np.arange(1, len(e.values) + 1) + shift
        ax.errorbar(idx, e.values, yerr=e.residuals, label=name if n > 1 or label else None, **kw)
    ax.set_xlabel("index")
    ax.set_ylabel("eigenvalue")
    if legend:
        place_legend(ax)
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
                   yscale: str = "linear", label: str | None = None, legend: bool = True,
                   **style):
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
        # grey and dashed, under the sharpness: at the edge of stability the two coincide
        ax.plot(steps, np.asarray(h[thr_key], float), ls="--", color="0.35", lw=1.2, zorder=1.9,
                label="stability threshold")
    ax.set_yscale(yscale)
    ax.set_xlabel("step")
    ax.set_ylabel(r"top eigenvalue $\lambda_{\max}$")
    if legend:
        place_legend(ax)
    return ax


def plot_decomposition(decomposition, ax=None, *, yscale: str = "log", floor: float = 1e-7,
                       legend: bool = True, **style):
    """Densities of the Hessian, its GGN part and the residual (a
    :class:`~landscape.hessian.DecompositionResult`) on one axis.

    The Hessian and GGN densities usually coincide (the residual is small): the Hessian is a
    thick solid line, the GGN a thinner dashed one above it, the residual dash-dotted, each
    with its own open markers, so every curve stays visible.
    """
    ax = _ax(ax)
    for i, part in enumerate(("hessian", "ggn", "residual")):
        y = np.asarray(decomposition.density[part])
        if yscale == "log":
            y = np.maximum(y, floor)
        kw = {**curve_style(i), **line_kwargs(style)}
        kw.setdefault("color", f"C{i}")
        ax.plot(decomposition.grid, y, label=f"{part} (trace {float(decomposition.traces[part]):.3g})", **kw)
    ax.set_yscale(yscale)
    ax.set_xlabel(r"eigenvalue $\lambda$")
    ax.set_ylabel("density")
    if legend:
        place_legend(ax)
    return ax
