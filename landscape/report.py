"""The demo's analysis report: one trained network seen through every part of the toolkit.

``landscape demo`` trains the default model and then calls :func:`analysis_report`, which
computes, on the exact full training set (and the test set where it applies):

* **curvature** (``landscape.hessian``): the top-5 Hessian eigenvalues with true residuals, a
  trace (exact where the network allows, else with its standard error), and a stochastic Lanczos quadrature density;
* **shape** (``landscape.surface``): a 1-D slice along a filter-normalised random direction and
  the interpolation from the initialisation to the solution (Goodfellow et al. 2015);
* **connectivity** (``landscape.connect``): a second network trained from another seed, the
  linear barrier between the two and the barrier after weight matching (Ainsworth et al. 2022);
* **tangent kernel** (``ntk``): the empirical NTK of the network at initialisation and after
  training on a fixed probe set, and their relative distance (how far training moved the
  network from the lazy regime).

Each section's result is saved atomically in the report's :class:`landscape.Store`
(``<out_dir>/report`` by default, bound to a fingerprint of the trained parameters, data, sizes and seed)
as soon as it is computed, the summary ``report.json`` is rewritten after every section, and an
existing section is loaded instead of recomputed (so an interrupted report resumes). The figure
``report.png`` comes last. The report lives at the top floor of the architecture: it uses the
public functions of every analysis and of ``ntk``.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from landscape import _provenance, _serialize
from landscape import store as _store
from landscape import validate as _validate

__all__ = ["SECTIONS", "ReportSizes", "analysis_report"]

SECTIONS = ("eigenvalues", "trace", "density", "slice", "interpolation", "connectivity", "ntk")
"""The report's sections, in the order they are computed (``report.json``'s ``"sections"``)."""


@dataclass(frozen=True)
class ReportSizes:
    """Sizes of the report's computations (``quick`` shrinks every one for tests)."""

    k: int = 5
    max_hvps: int = 60
    density_probes: int = 5
    density_steps: int = 60
    slice_points: int = 41
    interp_points: int = 41
    profile_points: int = 25
    ntk_examples: int = 64

    @classmethod
    def quick(cls) -> ReportSizes:
        return cls(
            k=2,
            max_hvps=10,
            density_probes=1,
            density_steps=12,
            slice_points=9,
            interp_points=9,
            profile_points=7,
            ntk_examples=16,
        )


def _write_json(path: Path, obj: Any) -> None:
    _serialize.save_json(path, obj)


REPORT_VERSION = 2
"""Bumped when a section's meaning changes: sections of another version are recomputed."""


_OLD_SECTIONS = ("eigenvalues", "trace", "density", "slice", "interpolation", "profile_linear",
                 "profile_aligned")
"""Section files of reports written before the store (``<name>.npz`` beside fingerprint.json)."""


def _open_store(root: Path, fingerprint: dict, log) -> _store.Store:
    """The report's store in ``root``, bound to ``fingerprint``.

    Sections saved by an earlier report of the same trained parameters, data, state, sizes, seed
    and report version are reused (the report resumes); the report's own entries from a
    different run (the demo overwrites its run directory) are replaced. Nothing else is ever
    deleted: a non-empty directory that no store wrote is refused.
    """
    store = _store.Store(root, overwrite=True)
    manifest = root / _store.MANIFEST
    if (root / "fingerprint.json").exists() and not manifest.exists():
        # a report written before the store existed (fingerprint.json and section files): its
        # own files, by their names, are replaced; anything else in the directory is kept
        log(f"  (replacing the previous report in {root}: written by an earlier version)")
        for name in (*_OLD_SECTIONS, "ntk", "fingerprint"):
            for suffix in (".npz", ".json"):
                (root / f"{name}{suffix}").unlink(missing_ok=True)
        if (root / "other_run").is_dir():
            shutil.rmtree(root / "other_run")
        if any(root.iterdir()):
            raise ValueError(
                f"landscape.report.analysis_report: {root} holds files the report did not write "
                f"({sorted(p.name for p in root.iterdir())[:5]}); move them away. Only the "
                "report's own files were removed."
            )
    if manifest.exists():
        old = _serialize.load_json(manifest).get("meta", {})
        new = _serialize.to_jsonable({"store_version": _store.STORE_VERSION, **fingerprint})
        if old != new:
            log(f"  (replacing the previous report in {root}: it belongs to other parameters or "
                "settings)")
    return store.bind(fingerprint)


def _section(store: _store.Store, name: str, compute, cls):
    """Load the entry ``name`` if a previous report saved it, else compute and save it
    atomically (an entry that exists is a finished section)."""
    if store.has(name):
        return store.load(name, cls), True
    res = compute()
    store.save(name, res)
    return res, False


@_validate.public("landscape.report.analysis_report")
def analysis_report(
    out_dir: str | Path,
    result,
    data,
    *,
    init_params,
    train_other,
    sizes: ReportSizes | None = None,
    seed: int = 0,
    figure: bool = True,
    log=print,
    store=None,
    on_section=None,
) -> dict:
    """Analyse a trained run with every part of the toolkit and write the report.

    Args:
      out_dir: where the summary ``report.json`` (and ``report.png`` when ``figure``) go,
        usually the run's directory.
      result: the :class:`landscape.TrainResult` of the run (``result.model`` is analysed).
      data: the :class:`landscape.data.Dataset` it was trained on (``.train``, ``.test``).
      init_params: the parameters at initialisation (the interpolation's start).
      train_other: a function ``seed -> TrainResult`` training the same architecture from another
        seed (the connectivity section's second endpoint).
      sizes: :class:`ReportSizes` (defaults: top-5, 60-product trace, 5 x 60 density, 41-point
        slices, 64 NTK examples).
      seed: the seed of every random choice in the report (directions, probes); pass the main
        run's seed: the second network is trained with ``train_other(seed + 1)``.
      figure: draw ``report.png`` (matplotlib).
      log: where progress lines go.
      store: where the sections are kept (a directory or :class:`landscape.Store`; default
        ``out_dir/report``, whose stale sections of another run are replaced). A rerun with the
        same trained network, data, sizes and seed loads every finished section.
      on_section: called as ``on_section(name)`` when a section of :data:`SECTIONS` is finished
        (saved in the store and listed in ``report.json``; loaded or computed), e.g. to say
        what an interrupted report has kept.

    Cost (digits, the 85k-parameter MLP, two CPU cores): about 25 s with the default sizes
    (roughly 400 Hessian-vector products, 2 x 41 slice points, 2 x 25 path points on train and
    test, one extra training run, two empirical NTKs), of which ~15 s is compilation.

    Example::

        run = landscape.train(model, ds.train, test_data=ds.test, ...)
        analysis_report("runs/mlp", run, ds, init_params=model.params,
                        train_other=lambda s: landscape.train(make(s), ds.train, ...))

    Returns:
      The summary dict written to ``report.json`` (scalars per section, timings, whether a
      section was loaded from a previous report).
    """

    from landscape._model import Model

    if not isinstance(getattr(result, "model", None), Model):
        raise TypeError(f"{_validate.where()}: result must be a TrainResult (or a loaded run) with a .model; "
                        f"got {type(result).__name__}.")
    if not (hasattr(data, "train") and hasattr(data, "test")):
        raise TypeError(f"{_validate.where()}: data must be a landscape Dataset with .train and .test; "
                        f"got {type(data).__name__}.")
    sizes = ReportSizes() if sizes is None else sizes
    if not isinstance(sizes, ReportSizes):
        raise TypeError(f"{_validate.where()}: sizes must be a ReportSizes; got {type(sizes).__name__}.")
    minimum = {"max_hvps": 3, "slice_points": 3, "interp_points": 5, "profile_points": 3,
               "density_steps": 2}
    for name, value in sizes.__dict__.items():
        _validate.check_positive_int(value, name=f"sizes.{name}")
        if value < minimum.get(name, 1):
            raise ValueError(f"{_validate.where()}: sizes.{name} must be >= {minimum[name]}; got {value}.")
    if getattr(data, "task", "classification") != "classification":
        raise ValueError(f"{_validate.where()}: the report analyses the cross-entropy of a classifier; the data "
                         f"set's task is {data.task!r}.")
    _validate.check_params(result.model.params, name="result.model.params")
    _validate.check_same_structure(init_params, result.model.params, name="init_params",
                                   ref_name="result.model.params")
    _validate.check_finite(init_params, name="init_params")
    out_dir = Path(out_dir)
    model = result.model
    log("\nreport (exact full-data quantities; training set unless marked test)")
    fingerprint = {
        "job": "landscape.report.analysis_report",
        "version": REPORT_VERSION,
        "params": _provenance.data_hash(model.params),
        "state": _provenance.data_hash(model.state),
        "init_params": _provenance.data_hash(init_params),
        "train": _provenance.data_hash(data.train),
        "test": _provenance.data_hash(data.test),
        "spec": model.spec,
        "sizes": sizes.__dict__,
        "seed": seed,
    }
    if store is None:
        store = _open_store(out_dir / "report", fingerprint, log)
    else:
        store = _store.as_store(store, fingerprint)
    with _validate.boundary(None):  # the analyses below are called as a user would: they name errors
        return _sections(store, out_dir, result, data, init_params=init_params,
                         train_other=train_other, sizes=sizes, seed=seed, figure=figure, log=log,
                         on_section=on_section)


def _sections(store, out_dir, result, data, *, init_params, train_other, sizes, seed, figure, log,
              on_section):
    import jax

    import landscape
    import ntk
    from landscape import connect, hessian, surface

    model = result.model
    loss_fn = landscape.make_loss_fn(model)
    train, test = data.train, data.test
    key = jax.random.key(seed)
    k_eig, k_tr, k_dens, k_dir = jax.random.split(key, 4)
    summary: dict = {"sizes": sizes.__dict__, "sections": {}}
    out: dict = {}

    def done(name, res, loaded, t0, **scalars):
        # NaN (e.g. a standard error from one probe) is not JSON: recorded as null
        scalars = {k: None if isinstance(v, float) and not np.isfinite(v) else v for k, v in scalars.items()}
        out[name] = res
        entry = {"seconds": round(time.perf_counter() - t0, 3), "loaded": loaded, **scalars}
        summary["sections"][name] = entry
        _write_json(out_dir / "report.json", summary)
        if on_section is not None:
            on_section(name)
        shown = ", ".join(f"{k} {v}" for k, v in scalars.items())
        log(f"  {name:14s} {shown}{'  (loaded)' if loaded else ''}  [{entry['seconds']:.1f} s]")

    # -- curvature -------------------------------------------------------------------------------
    t0 = time.perf_counter()
    eig, loaded = _section(
        store, "eigenvalues",
        lambda: hessian.eigenvalues(loss_fn, model.params, train, k=sizes.k, key=k_eig),
        hessian.EigenResult,
    )
    done("eigenvalues", eig, loaded, t0, top=[float(f"{v:.5g}") for v in np.asarray(eig.values)],
         max_rel_error_bound=float(f"{np.max(np.asarray(getattr(eig, 'error_bounds', np.nan))) / abs(eig.values[0]):.2e}"),
         max_rel_residual=float(f"{np.max(eig.residuals) / abs(eig.values[0]):.2e}"),
         products=int(eig.num_hvps))
    t0 = time.perf_counter()
    tr, loaded = _section(
        store, "trace",
        lambda: hessian.trace(loss_fn, model.params, train, key=k_tr, max_hvps=sizes.max_hvps),
        hessian.TraceResult,
    )
    done("trace", tr, loaded, t0, trace=float(f"{float(tr.estimate):.5g}"),
         std_error=float(f"{float(tr.std_error):.2g}"), products=int(tr.num_hvps))
    t0 = time.perf_counter()
    dens, loaded = _section(
        store, "density",
        lambda: hessian.spectral_density(loss_fn, model.params, train, key=k_dens,
                                         num_probes=sizes.density_probes,
                                         num_steps=sizes.density_steps),
        hessian.DensityResult,
    )
    done("density", dens, loaded, t0, top_node=float(f"{float(dens.top_node):.5g}"),
         slq_trace=float(f"{float(dens.trace_estimate):.5g}"),
         slq_trace_se=float(f"{float(dens.checks.get('trace_std_error', np.nan)):.2g}"),
         products=int(dens.num_hvps))

    # -- shape -----------------------------------------------------------------------------------
    t0 = time.perf_counter()
    (direction,) = surface.random_directions(k_dir, model.params, 1)
    alphas = np.linspace(-1.0, 1.0, 2 * (sizes.slice_points // 2) + 1)  # odd: 0 is a point
    line, loaded = _section(
        store, "slice",
        lambda: surface.slice_1d(loss_fn, model.params, train, direction, alphas=alphas,
                                 test_data=test),
        surface.SliceResult,
    )
    lt = np.asarray(line.train["loss"])
    done("slice", line, loaded, t0, loss_at_centre=float(f"{lt[len(lt) // 2]:.4g}"),
         loss_at_ends=[float(f"{lt[0]:.4g}"), float(f"{lt[-1]:.4g}")])
    t0 = time.perf_counter()
    # 4m + 1 points on [-0.5, 1.5]: t = 0 and t = 1 are grid points
    ts = np.linspace(-0.5, 1.5, 4 * max(1, (sizes.interp_points - 1) // 4) + 1)
    interp, loaded = _section(
        store, "interpolation",
        lambda: surface.interpolate(loss_fn, init_params, model.params, train, ts=ts,
                                    test_data=test),
        surface.SliceResult,
    )
    li = np.asarray(interp.train["loss"])
    inside = (ts >= 0) & (ts <= 1)
    monotone = bool(np.all(np.diff(li[inside]) <= 1e-6 * max(1.0, float(np.nanmax(li[inside])))))
    done("interpolation", interp, loaded, t0, loss_init=float(f"{li[np.argmin(abs(ts))]:.4g}"),
         loss_final=float(f"{li[np.argmin(abs(ts - 1))]:.4g}"), monotone_on_0_1=monotone)

    # -- connectivity ----------------------------------------------------------------------------
    t0 = time.perf_counter()
    if store.has_dir("other_run"):  # complete: written to a temporary directory and renamed
        other_model = landscape.load_run(store.path / "other_run", model=model).model
    else:
        if not callable(train_other):
            raise TypeError("landscape.report.analysis_report: train_other must be a function seed -> TrainResult (the "
                            f"second network of the connectivity section); got {train_other!r}.")
        other = train_other(seed + 1)
        store.save_dir("other_run", lambda tmp: landscape.save_run(tmp, other))
        other_model = other.model
    a, b = model.params, other_model.params
    # B as a Model: its own batch-norm statistics (when it has any) go with it
    aligned_b = connect.align(model, a, other_model, key=key).params  # key(seed): seed's order
    prof, loaded_all = {}, True
    for name, pb in (("linear", b), ("aligned", aligned_b)):
        prof[name], loaded = _section(
            store, f"profile_{name}",
            lambda pb=pb: connect.profile(loss_fn, connect.linear_path(a, pb), train,
                                          num_ts=sizes.profile_points, test_data=test),
            connect.Profile,
        )
        loaded_all &= loaded
    bar = {n: connect.barrier(p).values for n, p in prof.items()}
    done("connectivity", prof, loaded_all, t0,
         barrier_linear=float(f"{bar['linear']['train/loss']['max_minus_mean']:.4g}"),
         barrier_aligned=float(f"{bar['aligned']['train/loss']['max_minus_mean']:.4g}"),
         error_barrier_linear=float(f"{bar['linear']['test/error']['max_minus_mean']:.4g}"),
         error_barrier_aligned=float(f"{bar['aligned']['test/error']['max_minus_mean']:.4g}"))

    # -- tangent kernel --------------------------------------------------------------------------
    t0 = time.perf_counter()
    x = np.asarray(test["x"][: sizes.ntk_examples])
    res0, loaded0 = _section(store, "ntk_init",
                             lambda: ntk.empirical_ntk(model.replace(params=init_params), x),
                             ntk.EmpiricalKernel)
    res1, loaded1 = _section(store, "ntk_trained", lambda: ntk.empirical_ntk(model, x),
                             ntk.EmpiricalKernel)
    k0, k1, loaded = res0.matrix, res1.matrix, loaded0 and loaded1
    out["ntk"] = (k0, k1)
    done("ntk", (k0, k1), loaded, t0, examples=int(x.shape[0]),
         relative_change=float(f"{ntk.relative_distance(k1, k0):.4g}"),
         trace_ratio=float(f"{np.trace(k1) / np.trace(k0):.4g}"))

    if figure:
        t0 = time.perf_counter()
        path = _figure(out_dir / "report.png", result, out)
        summary["figure"] = path.name  # relative to report.json, whatever out_dir is
        _write_json(out_dir / "report.json", summary)
        log(f"  {'figure':14s} {path}  [{time.perf_counter() - t0:.1f} s]")
    return summary


def _figure(path: Path, result, out: dict) -> Path:
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
