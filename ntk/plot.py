"""Plots of ``ntk`` results (matplotlib; the only module of ``ntk`` that imports it).

Every function takes a result object and an optional ``ax`` and returns the axes; none calls
``plt.show()``.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np


def _ax(ax):
    return plt.gca() if ax is None else ax


def plot_convergence(result, *, ax=None, kernel: str = "ntk", label: str | None = None, **style):
    """Distance to the analytic kernel against width (log-log): mean over seeds (with the
    standard deviation) and the distance of the seed-averaged kernel (bootstrap spread)."""
    ax = _ax(ax)
    w = np.asarray(result.widths)
    m, s = getattr(result, f"{kernel}_mean"), getattr(result, f"{kernel}_std")
    a, sa = getattr(result, f"{kernel}_avg_distance"), getattr(result, f"{kernel}_avg_spread")
    name = label or result.label or kernel.upper()
    ax.errorbar(w, m, yerr=s, marker="o", capsize=3, label=f"{name}: each seed", **style)
    ax.errorbar(
        w, a, yerr=sa, marker="s", ls="--", capsize=3, label=f"{name}: seed average", **style
    )
    ref = m[0] * np.sqrt(w[0] / w)
    ax.plot(w, ref, ":", color="gray", label="slope -1/2")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("width")
    ax.set_ylabel(r"$\|K_{emp} - K_\infty\|_F / \|K_\infty\|_F$")
    ax.legend(fontsize="small")
    return ax


def plot_drift(result, *, ax=None, **style):
    """Relative kernel change during training, one curve per width."""
    ax = _ax(ax)
    for w, row in zip(result.widths, result.drift):
        ax.plot(result.steps, row, marker="o", label=f"width {int(w)}", **style)
    ax.set_xlabel("step")
    ax.set_ylabel(r"$\|K_t - K_0\|_F / \|K_0\|_F$")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.legend(fontsize="small")
    return ax


def plot_drift_vs_width(result, *, ax=None, **style):
    """Final relative kernel change against width (log-log)."""
    ax = _ax(ax)
    ax.loglog(result.widths, result.final_drift, marker="o", **style)
    w = np.asarray(result.widths, float)
    ax.loglog(w, result.final_drift[0] * np.sqrt(w[0] / w), ":", color="gray", label="slope -1/2")
    ax.set_xlabel("width")
    ax.set_ylabel("kernel drift at the end")
    ax.legend(fontsize="small")
    return ax


def plot_spectra(result, *, ax=None, **style):
    """Eigenvalues in decreasing order, one curve per kernel (log scale)."""
    ax = _ax(ax)
    for name, ev in result.eigenvalues.items():
        ax.semilogy(np.arange(1, len(ev) + 1), np.maximum(ev, 1e-16), label=name, **style)
    ax.set_xlabel("index")
    ax.set_ylabel("eigenvalue")
    ax.legend(fontsize="small")
    return ax


def plot_kernel(kernel, *, ax=None, title: str | None = None, **style):
    """A kernel matrix as an image: an :class:`ntk.EmpiricalKernel` (from
    :func:`ntk.empirical_ntk` or :func:`ntk.empirical_nngp`), or a matrix such as
    ``ntk.kernel(...).ntk``."""
    ax = _ax(ax)
    im = ax.imshow(np.asarray(kernel), cmap=style.pop("cmap", "viridis"), **style)
    ax.figure.colorbar(im, ax=ax, fraction=0.046)
    if title:
        ax.set_title(title)
    return ax


def plot_finite_vs_infinite(result, *, ax=None, output: int = 0, **style):
    """Test outputs of finite networks against the infinite-width prediction (one output)."""
    ax = _ax(ax)
    for w, fo, io in zip(result.widths, result.finite_outputs, result.infinite_outputs):
        ax.scatter(io[:, output], fo[:, output], s=8, alpha=0.6, label=f"width {int(w)}", **style)
    lo = min(ax.get_xlim()[0], ax.get_ylim()[0])
    hi = max(ax.get_xlim()[1], ax.get_ylim()[1])
    ax.plot([lo, hi], [lo, hi], "k:", lw=1)
    ax.set_xlabel("infinite-width prediction")
    ax.set_ylabel("trained finite network")
    ax.legend(fontsize="small")
    return ax


def plot_accuracy(result, *, ax=None, **style):
    """Test accuracy of finite and linearised networks against width, with the
    infinite-width accuracies as horizontal lines."""
    ax = _ax(ax)
    w = result.widths
    ax.semilogx(w, result.finite_accuracy, marker="o", label="finite network", **style)
    ax.semilogx(
        w, result.linear_accuracy, marker="s", ls="--", label="linearised network", **style
    )
    # the two infinite-width lines often coincide (training converged): a wide light band
    # under a thin dash-dot line keeps both visible
    ax.axhline(result.infinite_accuracy, color="0.55", ls="-", lw=4, alpha=0.5, zorder=1,
               label="infinite width (same time)")
    ax.axhline(
        result.infinite_converged_accuracy, color="k", ls="-.", lw=1.0, zorder=1.1,
        label="NTK regression (t = inf)",
    )
    ax.set_xlabel("width")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize="small")
    return ax
