"""The study's overview figure: training, the Hessian density, the 1-D slice, the
interpolation, the connectivity profiles and the NTK spectra in one 2 x 3 figure (the first
figure of the report), drawn from the sections' saved results."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def overview_figure(path: Path, result, out: dict) -> Path:
    """Draw the overview into ``path`` (atomically). ``result.history`` is the training
    history; ``out`` holds ``density``, ``eigenvalues``, ``slice``, ``interpolation``,
    ``connectivity`` (a dict of profiles) and ``ntk`` (``(K_init, K_trained)``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from landscape import plot

    # no pyplot: the process's backend is left alone; constrained layout and a tight bounding
    # box keep every label (and any legend placed outside an axes) inside the saved image
    fig = Figure(figsize=(15, 8.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3)
    h = result.history
    ax = axes[0, 0]
    ax.plot(h["step"], h["batch_loss"], color="0.75", lw=0.8, label="mini-batch")
    steps = h.get("eval_step", h["step"])
    ax.plot(steps, h["train_loss"], color="C0", lw=1.8, label="train (exact)")
    if "test_loss" in h:  # dashed with open markers: visible where it meets the train curve
        ax.plot(steps, h["test_loss"], color="C1", ls="--", lw=1.3, marker="o", markersize=4,
                markerfacecolor="none", markevery=(0.06, 0.12), label="test (exact)")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("training")
    plot.plot_density(out["density"], ax=axes[0, 1], yscale="log", eigen=out["eigenvalues"],
                      legend=False)
    axes[0, 1].set_title("Hessian spectral density (SLQ)")
    # one metric, one y axis: plot_slice leaves the label black (colours mark twin axes only)
    plot.plot_slice(out["slice"], metrics="loss", ax=axes[0, 2], legend=False)
    axes[0, 2].set_title("1-D slice, filter-normalised direction")
    plot.plot_slice(out["interpolation"], metrics="loss", ax=axes[1, 0], legend=False)
    axes[1, 0].set_title("initialisation (t=0) to solution (t=1)")
    plot.plot_profiles(out["connectivity"], metrics="loss", ax=axes[1, 1], legend=False)
    axes[1, 1].set_title("linear paths between two seeds")
    k0, k1 = out["ntk"]
    ax = axes[1, 2]
    # the two spectra coincide for a network that stays lazy: distinct styles keep both visible
    ax.plot(np.linalg.eigvalsh(k0)[::-1], color="C0", lw=2.0, label="initialisation")
    ax.plot(np.linalg.eigvalsh(k1)[::-1], color="C1", ls="--", lw=1.3, marker="s", markersize=4,
            markerfacecolor="none", markevery=(0.03, 0.12), label="trained")
    ax.set_yscale("log")
    ax.set_xlabel("index")
    ax.set_ylabel("eigenvalue")
    ax.set_title("empirical NTK eigenvalues (test inputs)")
    # legends last, with every panel drawn and titled (one layout for all): where they hide no
    # curve
    plot.place_legend(axes)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=90, bbox_inches="tight", pad_inches=0.05)
    tmp.replace(path)
    return path
