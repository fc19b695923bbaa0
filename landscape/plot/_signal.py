"""Signal propagation and Jacobian spectra at initialisation (:mod:`landscape.diagnostics`):
per-layer second moments and gradient norms against depth (one line per network or per
initialisation), and singular-value histograms (Gaussian against orthogonal weights)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from landscape.plot._style import curve_style, line_kwargs, new_axes, place_legend

__all__ = ["plot_depth_sweep", "plot_jacobian_spectrum", "plot_signal"]

_LABELS = {
    "q": "pre-activation second moment q",
    "q_phi": "second moment of the nonlinearity's input",
    "q_act": "activation second moment",
    "dead_units": "fraction of dead units",
    "zero_fraction": "fraction of zero activations",
    "saturated": "fraction saturated",
    "grad_param_norm": "|grad| w.r.t. the layer's parameters",
    "grad_preact_norm": "|grad| w.r.t. the pre-activation",
}
_LOG = {"q", "q_phi", "q_act", "grad_param_norm", "grad_preact_norm"}


def _as_mapping(results, label, kind: str) -> dict:
    if isinstance(results, Mapping):
        out = dict(results)
    elif isinstance(results, (list, tuple)):
        out = {f"{i}": r for i, r in enumerate(results)}
    else:
        out = {label or "": results}
    for r in out.values():
        if type(r).__name__ != kind:
            raise TypeError(
                f"landscape.plot: expected {kind} result(s) (from landscape.diagnostics); got "
                f"{type(r).__name__}."
            )
    return out


def _check_quantity(q: str, have) -> None:
    if q not in _LABELS:
        raise ValueError(f"landscape.plot: unknown quantity {q!r}; choose from {sorted(_LABELS)}.")
    if have is None:
        raise ValueError(
            f"landscape.plot: the result has no {q!r} (computed only with a loss_fn and targets)."
        )


def _axes_for(ax, n: int, size=(4.5, 3.5)):
    if ax is None:
        _, axes = new_axes((size[0] * n, size[1]), 1, n, squeeze=False)
        return list(axes[0])
    axes = list(np.atleast_1d(ax).ravel())
    if len(axes) != n:
        raise ValueError(f"landscape.plot: need {n} axes for {n} quantities; got {len(axes)}.")
    return axes


def _draw(a, x, v, log: bool, label, kw):
    """One line; on a log axis exact zeros are gaps in it, marked at the axes' bottom (a
    vertical drop to the clip value would read as a steep fall). Returns (line, had zeros)."""
    if not log:
        (line,) = a.plot(x, v, label=label, **kw)
        return line, False
    shown = np.where(v > 0, v, np.nan)
    if np.isfinite(shown).sum() < 2:  # matplotlib's markevery needs a path
        kw = {k: val for k, val in kw.items() if k != "markevery"}
    (line,) = a.plot(x, shown, label=label, **kw)
    z = np.asarray(x)[v == 0]
    if z.size:
        a.plot(
            z,
            np.zeros(z.size),
            ls="none",
            marker="v",
            color=line.get_color(),
            clip_on=False,
            transform=a.get_xaxis_transform(),
        )
    return line, bool(z.size)


def _finish_log(a, log: bool, zeros: bool) -> None:
    if log:
        a.set_yscale("log")
    if zeros:  # a legend entry for the marks (placed with the legend)
        a.plot([], [], ls="none", marker="v", color="0.35", label="exactly 0 (not on a log axis)")


def plot_signal(
    result,
    ax=None,
    *,
    quantities: Sequence[str] | None = None,
    label: str | None = None,
    legend: bool = True,
    **style,
):
    """Per-layer statistics against depth (layer index): the second moment of the
    pre-activations and, when computed, the gradient norm with respect to them.

    Args:
      result: a :class:`~landscape.diagnostics.SignalResult`, or a dict ``{label: result}``
        (one line each, e.g. one per initialisation).
      ax: one axes per quantity (a new figure if ``None``).
      quantities: fields to draw (default ``("q", "grad_preact_norm")``, the latter only when
        every result has it): any of ``q``, ``q_phi``, ``q_act``, ``dead_units``,
        ``zero_fraction``, ``saturated``, ``grad_param_norm``, ``grad_preact_norm``.
      label: the legend label of a single result.
      legend: place legends where they hide no data.
      **style: line keywords.

    Returns:
      The list of axes. Second moments and norms are on a log axis; the title says which batch
      norm mode was used.
    """
    results = _as_mapping(result, label, "SignalResult")
    if quantities is None:
        quantities = ["q"]
        if all(r.grad_preact_norm is not None for r in results.values()):
            quantities.append("grad_preact_norm")
    quantities = list(quantities)
    axes = _axes_for(ax, len(quantities))
    modes = sorted({r.bn_mode for r in results.values()})
    for a, q in zip(axes, quantities):
        values = {}
        for name, r in results.items():
            v = getattr(r, q, None)
            _check_quantity(q, v)
            values[name] = np.asarray(v, np.float64)
        log = q in _LOG and any(np.any(np.isfinite(v) & (v > 0)) for v in values.values())
        zeros = False
        for i, (name, v) in enumerate(values.items()):
            kw = {**curve_style(i), **line_kwargs(style)}
            _, z = _draw(a, np.arange(len(v)), v, log, name or None, kw)
            zeros |= z
        _finish_log(a, log, zeros)
        a.set_xlabel("layer")
        a.set_ylabel(_LABELS[q])
        a.set_title(f"batch norm: {', '.join(modes)}", fontsize="small")
        if legend and any(results):
            place_legend(a)
    return axes


def plot_depth_sweep(
    result,
    ax=None,
    *,
    quantity: str = "q",
    activations: Sequence[str] | None = None,
    legend: bool = True,
    **style,
):
    """``quantity`` at each network's last hidden layer against depth: one line per
    initialisation (the mean over seeds, the seeds' range shaded), one panel per activation.

    Args:
      result: a :class:`~landscape.diagnostics.DepthSweepResult`.
      ax: one axes per activation drawn (a new figure if ``None``).
      quantity: a per-layer field (default ``"q"``; ``"grad_preact_norm"`` with a loss).
      activations: which activations to draw (default all).
      legend: place legends where they hide no data.
      **style: line keywords.

    Returns:
      The list of axes.
    """
    (res,) = _as_mapping(result, None, "DepthSweepResult").values()
    _check_quantity(quantity, getattr(res, quantity, None))
    acts = list(res.activations if activations is None else activations)
    for a_ in acts:
        if a_ not in res.activations:
            raise ValueError(
                f"landscape.plot.plot_depth_sweep: no activation {a_!r} in the sweep."
            )
    values = res.at_last_hidden(quantity)  # (A, I, D, S)
    axes = _axes_for(ax, len(acts))
    depths = np.asarray(res.depths)
    for a, act in zip(axes, acts):
        ai = res.activations.index(act)
        va = values[ai]
        log = quantity in _LOG and bool(np.any(np.isfinite(va) & (va > 0)))
        zeros = False
        for ii, init in enumerate(res.inits):
            v = va[ii]
            with np.errstate(all="ignore"):
                mean = np.nanmean(v, axis=-1) if np.isfinite(v).any() else v[:, 0]
            kw = {**curve_style(ii), **line_kwargs(style)}
            line, z = _draw(a, depths, mean, log, init, kw)
            zeros |= z
            if v.shape[-1] > 1:
                lo, hi = np.nanmin(v, -1), np.nanmax(v, -1)
                if log:
                    lo = np.where(lo > 0, lo, np.nan)
                a.fill_between(depths, lo, hi, alpha=0.15, color=line.get_color())
        _finish_log(a, log, zeros)
        a.set_xlabel("depth")
        a.set_ylabel(f"{_LABELS[quantity]} (last hidden layer)")
        a.set_title(f"{act} (batch norm: {res.bn_mode})", fontsize="small")
        if legend:
            place_legend(a)
    return axes


def plot_jacobian_spectrum(
    result,
    ax=None,
    *,
    bins: int = 40,
    label: str | None = None,
    legend: bool = True,
    **style,
):
    """Histograms of the Jacobian's singular values (pooled over inputs), one per result (e.g.
    ``{"Gaussian": r1, "orthogonal": r2}``), with the mean squared singular value in each label
    and ``s = 1`` (isometry) marked.

    Args:
      result: a :class:`~landscape.diagnostics.JacobianSpectrumResult` or a dict of them.
      ax: axes to draw on (a new figure if ``None``).
      bins: histogram bins over the common range.
      label: the legend label of a single result.
      legend: place a legend where it hides no data.
      **style: line keywords.

    Returns:
      The axes.
    """
    results = _as_mapping(result, label, "JacobianSpectrumResult")
    if ax is None:
        _, ax = new_axes((6, 4))
    top = max(float(r.largest) for r in results.values())
    rng = (0.0, top * 1.02 if top > 0 else 1.0)
    for i, (name, r) in enumerate(results.items()):
        edges, dens = r.histogram(bins=bins, range=rng)
        kw = {**curve_style(i), **line_kwargs(style)}
        kw.pop("marker", None)
        kw.pop("markevery", None)
        text = f"{name + ': ' if name else ''}mean s^2 = {r.mean_sq:.3g} ({r.method})"
        ax.stairs(
            dens,
            edges,
            label=text,
            **{k: v for k, v in kw.items() if k in ("linestyle", "linewidth", "color", "zorder")},
        )
    ax.axvline(1.0, color="0.5", linestyle=":", linewidth=1, label="s = 1 (isometry)")
    ax.set_xlabel("singular value s of the Jacobian")
    ax.set_ylabel("density")
    if legend:
        place_legend(ax)
    return ax
