"""Plots of :func:`landscape.hessian.spectra_callback`'s :class:`SpectraResult`: the density
heat map over steps, the top curvature and NTK eigenvalues against step, and an animation of the
density (GIF with Pillow, MP4 with ffmpeg, else PNG frames).

Every function takes the result (and an optional ``ax``), returns the axes (the animation
writer: what it wrote) and never calls ``plt.show()``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from landscape.plot._style import curve_style, new_axes, place_legend

__all__ = ["animate_spectra", "plot_spectra_eigenvalues", "plot_spectra_heatmap"]

_WRITERS = ("auto", "gif", "mp4", "frames")


def _check(res, fname):
    if not all(hasattr(res, a) for a in ("steps", "grid", "density", "values", "ntk_values")):
        raise TypeError(
            f"landscape.plot.{fname}: expected a landscape.hessian.SpectraResult (from "
            f"spectra_callback(...).result()); got {type(res).__name__}."
        )
    if len(res.steps) == 0:
        raise ValueError(f"landscape.plot.{fname}: the result has no records.")


def _mode_text(res) -> str:
    return {
        "batch": "batch statistics",
        "eval": "population statistics",
        "none": "no batch norm",
    }.get(res.bn_mode, res.bn_mode)


def _log_density(res, floor: float):
    d = np.asarray(res.density, np.float64)
    top = float(d.max()) if d.size else 1.0
    return np.log10(np.maximum(d, floor * max(top, 1e-300)))


def plot_spectra_heatmap(
    res, ax=None, *, floor: float = 1e-6, cmap: str = "magma", colorbar: bool = True
):
    """The SLQ density of every record as a heat map: step on x, eigenvalue on y, colour
    ``log10(density)`` (floored at ``floor`` times the largest density), the top-k eigenvalues
    overlaid as white dots. The title says which curvature and batch-norm mode.

    Args:
      res: a :class:`landscape.hessian.SpectraResult`.
      floor: the colour scale's floor relative to the maximum density.
    """
    _check(res, "plot_spectra_heatmap")
    if ax is None:
        _, ax = new_axes((6.5, 4))
    steps = np.asarray(res.steps, np.float64)
    if len(steps) > 1:
        mid = 0.5 * (steps[1:] + steps[:-1])
        edges = np.concatenate([[2 * steps[0] - mid[0]], mid, [2 * steps[-1] - mid[-1]]])
    else:
        edges = np.array([steps[0] - 0.5, steps[0] + 0.5])
    g = np.asarray(res.grid, np.float64)
    gm = 0.5 * (g[1:] + g[:-1])
    gedges = np.concatenate([[2 * g[0] - gm[0]], gm, [2 * g[-1] - gm[-1]]])
    mesh = ax.pcolormesh(edges, gedges, _log_density(res, floor).T, cmap=cmap, shading="flat")
    for j in range(np.shape(res.values)[1]):
        ax.plot(
            steps,
            np.asarray(res.values)[:, j],
            ".",
            color="white",
            ms=3,
            label=f"top-{res.k} eigenvalues" if j == 0 else None,
        )
    if colorbar:
        ax.figure.colorbar(mesh, ax=ax, label=r"$\log_{10}$ density")
    ax.set_xlabel("step")
    ax.set_ylabel(f"{res.curvature} eigenvalue")
    ax.set_title(f"{res.curvature} spectrum ({_mode_text(res)})", fontsize="medium")
    return ax


def plot_spectra_eigenvalues(
    res, ax=None, *, kind: str = "curvature", yscale: str = "log", legend: bool = True
):
    """Top eigenvalues against step: ``kind="curvature"`` the top-k Hessian/GGN eigenvalues,
    ``"ntk"`` the empirical NTK's top eigenvalues on the probe set."""
    _check(res, "plot_spectra_eigenvalues")
    if kind not in ("curvature", "ntk"):
        raise ValueError(
            f"landscape.plot.plot_spectra_eigenvalues: kind must be 'curvature' or 'ntk'; got {kind!r}."
        )
    if ax is None:
        _, ax = new_axes((6, 4))
    vals = np.asarray(res.values if kind == "curvature" else res.ntk_values, np.float64)
    name = res.curvature if kind == "curvature" else "NTK"
    steps = np.asarray(res.steps)
    for j in range(vals.shape[1]):
        y = vals[:, j]
        if yscale == "log":
            y = np.where(y > 0, y, np.nan)  # negative curvature has no place on a log axis
        ax.plot(steps, y, label=f"{name} $\\lambda_{{{j + 1}}}$", **curve_style(j))
    ax.set_yscale(yscale)
    ax.set_xlabel("step")
    ax.set_ylabel(f"top {name} eigenvalues")
    ntk_mode = "probe set" if res.ntk_bn_mode == "none" else f"probe set, {res.ntk_bn_mode} mode"
    mode = _mode_text(res) if kind == "curvature" else ntk_mode
    ax.set_title(f"{name} ({mode})", fontsize="medium")
    if legend:
        place_legend(ax)
    return ax


def _available(writer: str) -> bool:
    from matplotlib import animation

    if writer == "gif":
        try:
            import PIL  # noqa: F401
        except ImportError:
            return False
        return animation.PillowWriter.isAvailable()
    if writer == "mp4":
        return shutil.which("ffmpeg") is not None and animation.FFMpegWriter.isAvailable()
    return True


def animate_spectra(
    res, path, *, writer: str = "auto", fps: int = 4, floor: float = 1e-6
) -> tuple[Path, str]:
    """An animation of the density through training (one frame per record, log density axis,
    top eigenvalues marked).

    Args:
      res: a :class:`landscape.hessian.SpectraResult`.
      path: where to write; the suffix is set by the writer (``.gif``, ``.mp4``; frames go to a
        directory ``path`` without suffix, ``frame-0000.png``, ...).
      writer: ``"auto"`` (GIF through matplotlib's ``PillowWriter`` if Pillow is installed, else
        MP4 if ffmpeg is on the path, else PNG frames), ``"gif"``, ``"mp4"`` or ``"frames"``.
      fps: frames per second.

    Returns:
      ``(path written, writer used)``: the writer is ``"gif"``, ``"mp4"`` or ``"frames"``.

    Raises:
      ValueError: unknown ``writer``, or a ``writer`` that is not available here.
    """
    _check(res, "animate_spectra")
    if writer not in _WRITERS:
        raise ValueError(
            f"landscape.plot.animate_spectra: writer must be one of {_WRITERS}; got {writer!r}."
        )
    if writer == "auto":
        writer = next(w for w in ("gif", "mp4", "frames") if _available(w))
    elif not _available(writer):
        raise ValueError(
            f"landscape.plot.animate_spectra: writer={writer!r} is not available here "
            f"({'Pillow is not installed' if writer == 'gif' else 'ffmpeg is not on the path'}); "
            "use writer='auto' or 'frames'."
        )
    import matplotlib.pyplot as plt
    from matplotlib import animation

    fig, ax = new_axes((6, 4))
    g = np.asarray(res.grid)
    d = np.asarray(res.density, np.float64)
    top = float(d.max()) if d.size else 1.0
    (line,) = ax.plot(g, np.maximum(d[0], floor * top), color="C0")
    marks = ax.plot(
        np.asarray(res.values)[0],
        np.full(res.k, top),
        "v",
        color="C3",
        ms=5,
        label=f"top-{res.k} eigenvalues",
    )[0]
    ax.set_yscale("log")
    ax.set_ylim(floor * top, 2 * top)
    ax.set_xlabel(f"{res.curvature} eigenvalue")
    ax.set_ylabel("density")
    title = ax.set_title("")
    place_legend(ax)

    def draw(i):
        line.set_ydata(np.maximum(d[i], floor * top))
        marks.set_xdata(np.asarray(res.values)[i])
        title.set_text(f"step {int(res.steps[i])} ({_mode_text(res)})")
        return line, marks, title

    base = Path(path)
    try:
        if writer == "frames":
            out = base.with_suffix("")
            out.mkdir(parents=True, exist_ok=True)
            for i in range(len(res.steps)):
                draw(i)
                fig.savefig(out / f"frame-{i:04d}.png")
            return out, "frames"
        out = base.with_suffix(".gif" if writer == "gif" else ".mp4")
        anim = animation.FuncAnimation(fig, draw, frames=len(res.steps), blit=False)
        w = animation.PillowWriter(fps=fps) if writer == "gif" else animation.FFMpegWriter(fps=fps)
        anim.save(str(out), writer=w)
        return out, writer
    finally:
        plt.close(fig)
