"""Plots for :mod:`landscape.sparsity` (matplotlib only): lottery tickets and instability.

Each function takes a result object (:class:`~landscape.sparsity.PruningResult`,
:class:`~landscape.sparsity.InstabilityResult`) and an optional ``ax``, and returns the axes.
"""

from __future__ import annotations

import numpy as np

from landscape.plot._style import LINESTYLES, MARKERS, new_axes, place_legend

__all__ = ["plot_instability", "plot_pruning"]

_LABELS = {
    "ticket": "IMP ticket (rewound)",
    "random_mask": "random mask",
    "reinit": "random re-initialisation",
}


def _style(i: int, **kwargs) -> dict:
    # curves may coincide (round 0 is shared): own line style and marker each, open after the first
    return {
        "color": f"C{i % 10}",
        "linestyle": LINESTYLES[i % len(LINESTYLES)],
        "marker": MARKERS[i % len(MARKERS)],
        "markerfacecolor": "none" if i else None,
        "markersize": 7 - min(i, 3),
        "zorder": 2 + 0.1 * i,
        **kwargs,
    }


def plot_pruning(result, *, split: str = "test", ax=None, legend: bool = True, **kwargs):
    """Accuracy against the fraction of prunable weights remaining, ticket vs. controls
    (Frankle & Carbin 2019, Fig. 3): logarithmic x axis, dense network on the left.

    Args:
      result: a :class:`~landscape.sparsity.PruningResult`.
      split: ``"test"`` or ``"train"`` accuracy.
      ax: axes (default: a new figure); legend: place the legend where it hides no data.
      **kwargs: passed to ``ax.plot``.

    Returns:
      The axes.
    """
    if split not in ("test", "train"):
        raise ValueError(
            f"landscape.plot.plot_pruning: split must be 'test' or 'train'; got {split!r}."
        )
    accs = result.test_accuracy if split == "test" else result.train_accuracy
    x = 100.0 * np.asarray(result.remaining, float)
    if ax is None:
        _, ax = new_axes((4.8, 3.6))
    for i, (name, ys) in enumerate(accs.items()):
        ax.plot(x, np.asarray(ys, float), label=_LABELS.get(name, name), **_style(i, **kwargs))
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")  # 100, 60, 30 rather than 6 x 10^1
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.invert_xaxis()
    ax.set_xlabel("prunable weights remaining (%)")
    ax.set_ylabel(f"{split} accuracy")
    ax.set_title(f"rewind to step {result.rewind_step}, {result.scope} pruning", fontsize=9)
    ax.grid(alpha=0.3)
    if legend:
        place_legend(ax)
    return ax


def plot_instability(
    result,
    *,
    metric: str = "test/error",
    threshold: float | None = 0.02,
    ax=None,
    legend: bool = True,
    labels=None,
    **kwargs,
):
    """Linear-path barrier between the two spawned copies against the spawn step (Frankle et
    al. 2020, Fig. 3), one line per network (mask).

    Args:
      result: a :class:`~landscape.sparsity.InstabilityResult`.
      metric: ``"test/error"`` (default), ``"train/error"``, ``"test/loss"``, ``"train/loss"``.
      threshold: a dotted line at Frankle et al.'s stability threshold (2% error); ``None``:
        none.
      labels: one name per network (per mask of :func:`~landscape.sparsity.instability`, in
        order, e.g. ``["dense", "ticket", "random mask"]``); default: each by its sparsity
        ("dense", or "x% weights remaining": two masks of one sparsity then share a label).
      ax, legend, **kwargs: as in :func:`plot_pruning`.

    Returns:
      The axes.
    """
    if metric not in result.barrier:
        raise ValueError(
            f"landscape.plot.plot_instability: metric must be one of {sorted(result.barrier)}; "
            f"got {metric!r}."
        )
    xs = np.asarray(result.spawn_steps, float)
    b = np.asarray(result.barrier[metric], float)
    if ax is None:
        _, ax = new_axes((4.8, 3.6))
    sp = np.asarray(result.sparsity, float).reshape(-1)
    if labels is not None:
        labels = [labels] if isinstance(labels, str) else list(labels)
        if len(labels) != sp.size or not all(isinstance(t, str) for t in labels):
            raise ValueError(
                f"landscape.plot.plot_instability: labels must be {sp.size} strings (one per "
                f"network of the result); got {labels!r}."
            )
    for i, s in enumerate(sp):
        label = (labels[i] if labels is not None else
                 "dense" if s == 0 else f"{100 * (1 - s):.1f}% weights remaining")
        ax.plot(xs, b[i], label=label, **_style(i, **kwargs))
    if xs.size > 1 and xs.min() > 0:
        ax.set_xscale("log")
    ax.axhline(0.0, color="0.6", linewidth=0.8)
    if threshold is not None and metric.endswith("error"):
        ax.axhline(threshold, color="0.4", linestyle=":", linewidth=0.9)
    ax.set_xlabel("spawn step")
    ax.set_ylabel(f"{metric} barrier (max minus mean)")
    ax.grid(alpha=0.3)
    if legend:
        place_legend(ax)
    return ax
