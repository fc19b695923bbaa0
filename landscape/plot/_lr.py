"""The learning-rate range of :func:`landscape.diagnostics.learning_rate_range`: the loss after a
fixed number of steps against the learning rate, the rates that diverged, and the stability
limit of the initial curvature."""

from __future__ import annotations

import math

import numpy as np

from landscape.plot._style import new_axes, place_legend

__all__ = ["plot_learning_rate_range"]


def plot_learning_rate_range(
    result,
    ax=None,
    *,
    yscale: str = "auto",
    initial: bool = True,
    limit: bool = True,
    label: str | None = None,
    legend: bool = True,
    **style,
):
    """Loss after ``steps`` steps against the learning rate (log x), diverged rates marked, and
    the initial-curvature limit as a vertical line.

    The line is the stability limit of the **quadratic model at initialisation** (``2 /
    lambda_max`` for gradient descent, ``(2 + 2 beta) / lambda_max`` with heavy-ball momentum,
    the preconditioned limit for Adam); its legend entry says so: it is not a bound on the rates
    that train (above it training can converge after a catapult, Lewkowycz et al. 2020; the
    sharpness changes during training, Cohen et al. 2021).

    Args:
      result: a :class:`~landscape.diagnostics.LearningRateRangeResult`.
      ax: axes to draw on (a new figure if ``None``).
      yscale: ``"log"``, ``"linear"`` or ``"auto"`` (log when every loss drawn is positive).
      initial: draw the initial loss as a dotted horizontal line.
      limit: draw the limit (when the result has one).
      label: the loss curve's legend label.
      legend: place a legend where it hides no data.
      **style: line keywords for the loss curve.

    Diverged rates (final loss not finite or above ``divergence_factor`` times the initial
    loss) are red crosses drawn at that threshold, so one exploding run does not stretch the
    axis to 1e30.

    Returns:
      The axes.
    """
    if not hasattr(result, "lrs") or not hasattr(result, "diverged"):
        raise TypeError(
            "landscape.plot.plot_learning_rate_range: result must be a LearningRateRangeResult "
            f"(from landscape.diagnostics.learning_rate_range); got {type(result).__name__}."
        )
    if yscale not in ("auto", "log", "linear"):
        raise ValueError(
            f"landscape.plot.plot_learning_rate_range: yscale must be 'auto', 'log' or 'linear'; got {yscale!r}."
        )
    if ax is None:
        _, ax = new_axes((7.5, 4.5))
    lrs = np.asarray(result.lrs, np.float64)
    final = np.asarray(result.final_loss, np.float64)
    div = np.asarray(result.diverged, bool)
    s = result.settings
    steps, mode = s.get("steps"), s.get("mode", "")
    factor = float(s.get("divergence_factor", 10.0))
    l0 = float(result.initial_loss)
    kw = {"color": "C0", "marker": "o", "markersize": 4, **style}
    ys = np.where(div, np.nan, final)  # breaks the curve at diverged rates
    ax.plot(lrs, ys, label=label or f"loss after {steps} {mode} steps (full data)", **kw)
    ceiling = (
        factor * l0
        if l0 > 0
        else (np.nanmax(final[np.isfinite(final)]) if np.isfinite(final).any() else 1.0)
    )
    if div.any():
        ax.plot(
            lrs[div],
            np.full(int(div.sum()), ceiling),
            ls="none",
            marker="x",
            color="C3",
            markersize=7,
            mew=1.8,
            label=f"diverged (loss > {factor:g} x initial or not finite)",
        )
    if initial:
        ax.axhline(l0, ls=":", color="0.45", lw=1.0, zorder=1.5, label=f"initial loss {l0:.3g}")
    lim = float(result.limit)
    if limit and math.isfinite(lim):
        ax.axvline(
            lim,
            ls="--",
            color="C1",
            lw=1.6,
            zorder=1.8,
            label=(
                f"initial-curvature limit {result.limit_rule.split(',')[0]} = {lim:.3g}\n"
                "(initial quadratic model, not a bound: training can\n"
                "converge above it; sharpness changes in training)"
            ),
        )
    ax.set_xscale("log")
    drawn = np.concatenate(
        [ys[np.isfinite(ys)], [ceiling] if div.any() else [], [l0] if initial else []]
    )
    use_log = yscale == "log" or (yscale == "auto" and drawn.size and (drawn > 0).all())
    ax.set_yscale("log" if use_log else "linear")
    ax.set_xlabel("learning rate")
    ax.set_ylabel(f"loss after {steps} steps")
    if legend:
        place_legend(ax)
    return ax
