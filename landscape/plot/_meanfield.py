"""The mean-field phase diagram of :func:`landscape.diagnostics.phase_diagram`: ``chi_1`` over
``(sigma_w2, sigma_b2)`` with the order-to-chaos line, and trained networks placed on it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from landscape.plot._style import new_axes

__all__ = ["plot_phase_diagram"]

_NAME = "landscape.plot.plot_phase_diagram"


def _final_loss(train_result) -> float:
    h = train_result.history
    for k in ("train_loss", "batch_loss"):
        if k in h and len(h[k]):
            return float(np.asarray(h[k])[-1])
    raise ValueError(f"{_NAME}: a TrainResult in trained has no train_loss or batch_loss history.")


def _trained_points(trained):
    """``(sigma_w2, sigma_b2, final_loss)`` arrays from the accepted forms of ``trained``."""
    if isinstance(trained, Mapping):
        try:
            cols = [
                np.asarray(trained[k], np.float64).ravel()
                for k in ("sigma_w2", "sigma_b2", "loss")
            ]
        except KeyError as e:
            raise ValueError(
                f"{_NAME}: trained as a dict needs the keys 'sigma_w2', 'sigma_b2' and 'loss'; "
                f"got {sorted(trained)}."
            ) from e
        if len({c.size for c in cols}) != 1:
            raise ValueError(
                f"{_NAME}: trained's 'sigma_w2', 'sigma_b2' and 'loss' differ in length."
            )
        return cols
    if not isinstance(trained, Sequence) or isinstance(trained, str):
        raise TypeError(
            f"{_NAME}: trained must be a sequence of (sigma_w2, sigma_b2, final_loss) or "
            f"TrainResults, or a dict of arrays; got {type(trained).__name__}."
        )
    rows = []
    for item in trained:
        if hasattr(item, "history") and hasattr(item, "spec"):
            kw = (item.spec or {}).get("kwargs", {})
            if kw.get("sigma_w2") is None:
                raise ValueError(
                    f"{_NAME}: a TrainResult in trained was not built with make_model(..., "
                    "sigma_w2=...): its place on the diagram is unknown; pass (sigma_w2, "
                    "sigma_b2, final_loss) instead."
                )
            rows.append(
                (float(kw["sigma_w2"]), float(kw.get("sigma_b2") or 0.0), _final_loss(item))
            )
        elif isinstance(item, (tuple, list)) and len(item) == 3:
            rows.append(tuple(float(v) for v in item))
        else:
            raise TypeError(
                f"{_NAME}: each entry of trained must be (sigma_w2, sigma_b2, final_loss) or a "
                f"TrainResult; got {item!r}."
            )
    a = np.asarray(rows, np.float64).reshape(-1, 3)
    return a[:, 0], a[:, 1], a[:, 2]


def plot_phase_diagram(
    result,
    ax=None,
    *,
    trained=None,
    cmap: str = "RdBu_r",
    loss_cmap: str = "viridis",
    colorbar: bool = True,
    legend: bool = True,
):
    """``chi_1`` over ``(sigma_w2, sigma_b2)`` (colour centred at ``chi_1 = 1``: blue ordered,
    red chaotic), the critical line ``chi_1 = 1`` found by root finding (ReLU: the single
    critical point ``(2, 0)``), the region without a finite fixed point in grey, and optionally
    trained networks placed at their initialisation's ``(sigma_w2, sigma_b2)``, coloured by
    their final loss (non-finite losses as red crosses).

    Args:
      result: a :class:`~landscape.diagnostics.PhaseDiagramResult`.
      ax: axes to draw on (a new figure if ``None``).
      trained: ``[(sigma_w2, sigma_b2, final_loss), ...]``, a dict of arrays ``{"sigma_w2",
        "sigma_b2", "loss"}``, or :class:`~landscape.TrainResult` objects of models built with
        ``make_model(..., sigma_w2=..., sigma_b2=...)`` (their last ``train_loss``, else last
        batch loss).
      cmap: colour map of ``chi_1``; loss_cmap: of the trained networks' losses.
      colorbar: draw colour bars (``chi_1``, and the loss when ``trained`` is given).
      legend: place a legend (the line, the grey region, the diverged runs).

    Returns:
      The axes.
    """
    import matplotlib.colors as mcolors
    from matplotlib.patches import Patch

    needed = ("chi_1", "sigma_w2s", "sigma_b2s", "critical_sigma_w2", "status")
    if not all(hasattr(result, k) for k in needed):
        raise TypeError(
            f"{_NAME}: result must be a PhaseDiagramResult (from "
            f"landscape.diagnostics.phase_diagram); got {type(result).__name__}."
        )
    if ax is None:
        _, ax = new_axes((6.4, 4.2))
    sw = np.asarray(result.sigma_w2s, np.float64)
    sb = np.asarray(result.sigma_b2s, np.float64)
    chi = np.asarray(result.chi_1, np.float64)
    status = np.asarray(result.status)
    shown = np.where(status == 0, chi, np.nan)
    finite = shown[np.isfinite(shown)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.5, 1.5)
    if lo < 1 < hi:
        norm = mcolors.TwoSlopeNorm(vcenter=1.0, vmin=lo, vmax=hi)
    else:
        norm = mcolors.Normalize(vmin=min(lo, 1.0), vmax=max(hi, 1.0))
    ax.set_facecolor("0.82")  # undefined points (no finite fixed point) show the background
    shading = "nearest" if len(sw) > 1 and len(sb) > 1 else "auto"
    mesh = ax.pcolormesh(
        sw, sb, np.ma.masked_invalid(shown), cmap=cmap, norm=norm, shading=shading
    )
    handles = []
    if colorbar:
        ax.figure.colorbar(mesh, ax=ax, label=r"$\chi_1$")
    crit_w, crit_b = result.critical_line
    if result.activation == "relu" or len(crit_w) == 1:
        if len(crit_w):
            (h,) = ax.plot(
                crit_w,
                crit_b,
                "k*",
                markersize=12,
                clip_on=False,
                label=r"critical point $\chi_1 = 1$",
            )
            handles.append(h)
    elif len(crit_w):
        (h,) = ax.plot(
            crit_w, crit_b, "k-", linewidth=2, label=r"critical line $\chi_1 = 1$ (root finding)"
        )
        handles.append(h)
    if np.any(status == 1):
        handles.append(Patch(facecolor="0.82", label="no finite fixed point"))
    if np.any(status == 3):
        handles.append(Patch(facecolor="0.82", hatch="//", label="not converged"))
    if trained is not None:
        w, b, loss = _trained_points(trained)
        ok = np.isfinite(loss)
        if ok.any():
            sc = ax.scatter(
                w[ok],
                b[ok],
                c=loss[ok],
                cmap=loss_cmap,
                edgecolors="k",
                s=60,
                zorder=3,
                label="trained (colour: final loss)",
                clip_on=False,
            )
            handles.append(sc)
            if colorbar:
                ax.figure.colorbar(sc, ax=ax, label="final loss")
        if (~ok).any():
            (h,) = ax.plot(
                w[~ok],
                b[~ok],
                "rx",
                markersize=9,
                markeredgewidth=2,
                zorder=3,
                linestyle="none",
                label="trained: diverged",
                clip_on=False,
            )
            handles.append(h)
    ax.set_xlabel(r"$\sigma_w^2$")
    ax.set_ylabel(r"$\sigma_b^2$")
    ax.set_title(f"mean-field phase diagram: {result.activation}")
    if legend and handles:  # below the axes: the map fills them, the colour bars are right
        ax.legend(
            handles,
            [h.get_label() for h in handles],
            loc="upper center",
            bbox_to_anchor=(0.5, -0.16),
            ncols=min(len(handles), 2),
            fontsize=8,
            frameon=False,
        )
    return ax
