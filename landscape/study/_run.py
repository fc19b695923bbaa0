"""Running a study: training, then each analysis as a resumable section.

Layout of a study directory::

    out/
      study.json        the resolved config, the command, the model and data descriptions
      results.json      every number with its settings and provenance (rewritten after each
                        section, atomically)
      report.html       the self-contained report (figures embedded)
      figures/          each figure as PNG (and SVG for line plots)
      sections/<name>/  one landscape.Store per section (training: the trained run as a
                        directory entry, loadable with landscape.load_run), bound to what the
                        section depends on: a changed setting re-binds only that section's store

A section that exists in its store is loaded, not recomputed; inside a section each finished
part (an eigen solve, a slice's chunks, a trained network) is its own entry, so an interrupted
section resumes from its finished parts.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from landscape.study._config import ConfigError, StudyConfig

SCHEMA_VERSION = "landscape-study/1"
SECTION_VERSION = 1  # bumped when a section's meaning changes: its stores are then recomputed
INTERRUPT_ENV = "LANDSCAPE_STUDY_INTERRUPT_AFTER"
"""Test-only switch: a section name (or ``training``); the study raises ``KeyboardInterrupt``
right after that section is saved, as a Ctrl-C there would."""

TITLES = {
    "training": "Training",
    "hessian": "Curvature: the Hessian spectrum",
    "surface": "Shape: loss-surface slices",
    "connect": "Connectivity: the path to a second network",
    "ntk": "Tangent kernel",
    "skips": "Skip connections and batch norm (Li et al. 2018, Figure 1)",
    "trainability": "Trainability: the network at initialisation",
    "structure": "Global structure: class-structured curvature, lottery tickets, instability",
}


class StudyInterrupted(KeyboardInterrupt):
    """Ctrl-C during a study: ``saved`` lists the finished sections, ``current`` the one that
    was running (its finished parts are saved too)."""

    def __init__(self, saved: list[str], current: str | None, out: Path):
        super().__init__()
        self.saved, self.current, self.out = saved, current, out


@dataclasses.dataclass
class Section:
    """What a section reports: JSON-able ``values`` (every number of the report), tables,
    figures, checks and the text that says what was run (templates over ``settings`` and
    ``values``: ``{k}`` is replaced by the formatted number, so every number the report shows
    comes from results.json)."""

    values: dict = dataclasses.field(default_factory=dict)
    tables: list = dataclasses.field(default_factory=list)
    figures: list = dataclasses.field(default_factory=list)
    checks: list = dataclasses.field(default_factory=list)
    text: str = ""
    parts_loaded: int = 0
    parts_total: int = 0


def _finite(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _r(x, digits: int = 6) -> float | None:
    """A float rounded to ``digits`` significant digits (what results.json keeps); None for
    NaN/Inf (not JSON)."""
    x = _finite(x)
    if x is None or x == 0:
        return x
    return float(f"{x:.{digits}g}")


def check(name: str, passed: bool | None, detail: str, **values) -> dict:
    """A consistency check: ``passed`` None means not applicable (``detail`` says why)."""
    return {"name": name, "passed": passed, "detail": detail,
            "values": {k: (_r(v) if isinstance(v, float) else v) for k, v in values.items()}}


def _unreadable(path, e: Exception) -> None:
    print(f"  {path} could not be read back ({type(e).__name__}: {str(e)[:200]}); computing it "
          "again", file=sys.stderr, flush=True)


class _Parts:
    """The finished parts of one section, in its store."""

    def __init__(self, store, section: Section):
        self.store, self.section = store, section

    def get(self, name: str, compute: Callable, cls=None):
        self.section.parts_total += 1
        if self.store.has(name):
            try:
                res = self.store.load(name, cls)
            except Exception as e:  # noqa: BLE001 - a damaged file: recompute, say so
                _unreadable(self.store.path / name, e)
            else:
                self.section.parts_loaded += 1
                return res
        res = compute()
        self.store.save(name, res)
        return res

    def run(self, name: str, train_fn: Callable, template):
        """A trained network as a directory entry (a run saved with landscape.save_run)."""
        import landscape

        self.section.parts_total += 1
        if self.store.has_dir(name):
            try:
                res = landscape.load_run(self.store.path / name, model=template)
            except Exception as e:  # noqa: BLE001 - damaged, or the model's code changed
                _unreadable(self.store.path / name, e)
            else:
                self.section.parts_loaded += 1
                return res
        res = train_fn()
        self.store.save_dir(name, lambda tmp: landscape.save_run(tmp, res))
        return res

    def child(self, name: str):
        return self.store.child(name)


def _atomic_json(path: Path, obj) -> None:
    from landscape import _serialize

    _serialize.save_json(path, obj, sort_keys=False)


_FIGURE_SCOPE: contextvars.ContextVar = contextvars.ContextVar("landscape_figures", default=None)


@contextlib.contextmanager
def figure_scope(section: Section, digest: str):
    """While a section runs: its figures are drawn from its parts, whose store is bound to
    ``digest`` (its settings, seed, data, model code and trained network)."""
    token = _FIGURE_SCOPE.set((section, digest))
    try:
        yield
    finally:
        _FIGURE_SCOPE.reset(token)


_SOURCES_FINGERPRINT: list = []


def _code_fingerprint() -> str:
    """The code and settings that turn numbers into figures: every source file of ``landscape``
    and ``ntk`` (their bytes, hashed once per process), matplotlib's version and its current
    rcParams (a style changes the figures too)."""
    import matplotlib

    if not _SOURCES_FINGERPRINT:
        import landscape
        import ntk

        h = hashlib.sha256()
        for pkg in (landscape, ntk):
            root = Path(pkg.__file__).parent
            for f in sorted(root.rglob("*.py")):
                h.update(str(f.relative_to(root)).encode())
                h.update(f.read_bytes())
        _SOURCES_FINGERPRINT.append(h.hexdigest())
    h = hashlib.sha256(f"{_SOURCES_FINGERPRINT[0]} {matplotlib.__version__}".encode())
    h.update(repr(sorted((k, repr(v)) for k, v in matplotlib.rcParams.items())).encode())
    return h.hexdigest()


def sharpness_figure_inputs(history: dict, train: dict) -> str | None:
    """What the sharpness figure is drawn from: the training history and the optimiser and
    learning rate (the threshold 2 / lr), none of which the Hessian section's store digest
    covers (an edited ``sharpness_every`` retrains to the same parameters, another history);
    None where the history is not numeric."""
    hist = history_fingerprint(history)
    if hist is None:
        return None
    return json.dumps([hist, train["optimizer"], train["learning_rate"]], default=str)


def history_fingerprint(history: dict) -> str | None:
    """The hash of a numeric training history (figures drawn from it); None where an entry is
    not a numeric array."""
    from landscape import _provenance

    try:
        arrays = {str(k): np.asarray(v) for k, v in history.items()}
    except (TypeError, ValueError):
        return None
    if not all(a.dtype.kind in "biuf" for a in arrays.values()):
        return None
    return _provenance.data_hash(arrays)


FROM_SECTION = object()
"""``_fig_save``'s default inputs: the running section's store digest (:func:`figure_scope`)."""


def _fig_save(fig, out: Path, name: str, *, svg: bool, inputs=FROM_SECTION) -> dict:
    """Save a matplotlib figure as figures/name.png (and .svg), atomically, through
    :func:`draw_keyed`. ``inputs`` fingerprints everything the figure is drawn from: by default
    the running section's store digest, and then the saved figure is kept only when all of the
    section's parts were loaded (a rerun); a string is kept whenever it is the same; ``None``
    (unknown inputs) always draws. Drawing and encoding a PNG and an SVG takes 0.3-0.7 s a
    figure, most of a rerun that only loads."""
    exts = ("png", "svg") if svg else ("png",)
    reusable = True
    if inputs is FROM_SECTION:
        scope = _FIGURE_SCOPE.get()
        inputs = None if scope is None else scope[1]
        if scope is not None:
            sec = scope[0]
            reusable = bool(sec.parts_total) and sec.parts_loaded == sec.parts_total
    d = out / "figures"

    def write():
        for ext in exts:
            tmp = d / f".{name}.tmp.{ext}"
            fig.savefig(tmp, dpi=110, bbox_inches="tight", pad_inches=0.05, format=ext)
            tmp.replace(d / f"{name}.{ext}")

    draw_keyed(d, name, exts, inputs, write, reusable=reusable)
    return {"file": f"figures/{name}.png", **({"svg": f"figures/{name}.svg"} if svg else {})}


def draw_keyed(d: Path, name: str, exts, inputs: str | None, write: Callable, *,
               reusable: bool = True) -> bool:
    """Call ``write()`` to (re)write the figure files ``d/name.<ext>`` unless they all exist and
    ``d/.name.key`` says they were drawn from ``inputs`` by this code (:func:`_code_fingerprint`)
    and ``reusable``; ``inputs=None``: always drawn, no key kept. The key is removed before the
    files change and written (atomically) after them, so it never outlives what it describes.
    Returns whether the figure was drawn."""
    d.mkdir(parents=True, exist_ok=True)
    keyfile = d / f".{name}.key"
    key = None
    if inputs is not None:
        blob = json.dumps([name, list(exts), inputs, _code_fingerprint()])
        key = hashlib.sha256(blob.encode()).hexdigest()
        if (reusable and all((d / f"{name}.{ext}").is_file() for ext in exts)
                and keyfile.is_file() and keyfile.read_text().strip() == key):
            return False
    keyfile.unlink(missing_ok=True)
    write()
    if key is not None:
        tmp = d / f".{name}.key.tmp"
        tmp.write_text(key + "\n")
        tmp.replace(keyfile)
    return True


def _figure(figsize, nrows=1, ncols=1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


# ---------------------------------------------------------------------------------------------
# The context every section gets
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Context:
    cfg: StudyConfig
    out: Path
    data: Any
    model: Any  # the trained Model
    init_params: Any  # parameters at initialisation (None: unknown)
    init_note: str
    history: dict
    loss_fn: Any
    seed: int
    log: Callable
    progress: bool
    template: Any  # an untrained model of the architecture (to load runs)
    train_other: Callable | None  # seed -> TrainResult (None: cannot train here)
    other_run: Path | None
    model_desc: dict


RANDOM_KEYS = {"eigenvalues": 1, "trace": 2, "density": 3, "directions": 4, "alignment": 5,
               "ntk_widths": 6, "skips_eigenvalues": "10 + variant index (0-3)",
               "skips_directions": 20, "lr_range": 30, "signal": 31, "classes": 40, "pruning": 41,
               "instability": 42, "sharpness": 99}
"""Every random choice of a study uses ``jax.random.fold_in(jax.random.key(seed), i)`` with
these ``i`` (recorded in results.json), so a study's numbers can be reproduced by hand."""


def study_key(seed: int, i: int):
    """The ``i``-th random key of a study with ``seed`` (see :data:`RANDOM_KEYS`)."""
    import jax

    return jax.random.fold_in(jax.random.key(seed), i)


def _key(ctx: Context, i: int):
    return study_key(ctx.seed, i)


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------
def section_hessian(ctx: Context, parts: _Parts) -> Section:
    from landscape import hessian, plot

    s = ctx.cfg["hessian"]
    sec = parts.section
    p, train = ctx.model.params, ctx.data.train
    ctx.log(f"    eigenvalues (top {s['k']}, restarted Lanczos) ...")
    eig = parts.get("eigenvalues", lambda: hessian.eigenvalues(
        ctx.loss_fn, p, train, k=s["k"], key=_key(ctx, 1)), hessian.EigenResult)
    ctx.log(f"    trace (auto estimator, at most {s['max_hvps']} products) ...")
    tr = parts.get("trace", lambda: hessian.trace(
        ctx.loss_fn, p, train, key=_key(ctx, 2), max_hvps=s["max_hvps"]), hessian.TraceResult)
    ctx.log(f"    spectral density ({s['density_probes']} probes x {s['density_steps']} Lanczos "
            "steps) ...")
    dens = parts.get("density", lambda: hessian.spectral_density(
        ctx.loss_fn, p, train, key=_key(ctx, 3), num_probes=s["density_probes"],
        num_steps=s["density_steps"], store=parts.child("density-probes"),
        progress=ctx.progress), hessian.DensityResult)
    vals = np.asarray(eig.values, dtype=float)
    bounds = np.asarray(getattr(eig, "error_bounds", np.full_like(vals, np.nan)), dtype=float)
    top = float(vals[0])
    slq, slq_se = float(dens.trace_estimate), float(dens.checks.get("trace_std_error", np.nan))
    t_est, t_se = float(tr.estimate), float(tr.std_error)
    sec.values = {
        "top_eigenvalues": [_r(v) for v in vals],
        "error_bounds": [_r(v, 3) for v in bounds],
        "eigen_products": int(eig.num_hvps),
        "trace": _r(t_est), "trace_std_error": _r(t_se, 3),
        "trace_estimator": str(getattr(tr, "estimator", "")),
        "trace_products": int(tr.num_hvps),
        "trace_passes": int(getattr(tr, "exact_passes", 0)),
        "trace_reason": str(getattr(tr, "reason", "")),
        "slq_trace": _r(slq), "slq_trace_std_error": _r(slq_se, 3),
        "top_node": _r(dens.top_node),
        "density_products": int(dens.num_hvps),
        "num_params": int(ctx.model.num_params),
    }
    sec.tables.append({
        "caption": "Top Hessian eigenvalues of the training loss at the trained parameters, "
                   "with the bound on each one's error.",
        "columns": ["index", "eigenvalue", "error bound"],
        "rows": [[i + 1, sec.values["top_eigenvalues"][i], sec.values["error_bounds"][i]]
                 for i in range(len(vals))],
    })
    # SLQ's trace against the trace estimate: both unbiased; agree within their standard errors
    se = math.sqrt(np.nan_to_num(slq_se) ** 2 + np.nan_to_num(t_se) ** 2)
    diff = abs(slq - t_est)
    from scipy import stats

    # the SLQ standard error comes from density_probes samples: a Student-t quantile with
    # n - 1 degrees of freedom (three-sigma coverage, 99.7%), not a normal 3
    mult = float(stats.t.ppf(0.99865, max(s["density_probes"] - 1, 1)))
    tol = mult * se + 1e-3 * abs(t_est)
    if s["density_probes"] < 4:  # 2-3 probes: a Student-t quantile of 19 to 236 standard errors
        passed, why = None, ("not applicable: with {probes} SLQ probe(s) the allowed difference "
                             "(the Student-t quantile of the probes times their standard error) "
                             "is so wide that the comparison could not fail; it needs "
                             "density_probes >= {min_probes}")
    else:
        passed, why = bool(diff <= tol), ("the SLQ trace agrees with the trace estimate within "
                                          "the allowed difference: the three-sigma Student-t "
                                          "quantile of the probes times the combined standard "
                                          "error, plus a small relative allowance for rounding")
    sec.checks.append(check("SLQ trace vs trace estimate", passed, why, slq_trace=slq,
                            trace=t_est, difference=diff, allowed=tol,
                            probes=int(s["density_probes"]), min_probes=4))
    # the top Gauss node of SLQ converges to the top eigenvalue first (Lanczos)
    rel = abs(float(dens.top_node) - top) / abs(top)
    allowed = 0.02
    sec.checks.append(check(
        "top Gauss node vs top eigenvalue", bool(rel <= allowed),
        "the largest node of the SLQ quadrature matches the top eigenvalue (Lanczos finds the "
        "extreme eigenvalues first) to a relative {tolerance}", top_node=float(dens.top_node),
        top_eigenvalue=top, relative_difference=rel, tolerance=allowed))
    fig, ax = _figure((6.4, 4.0))
    plot.plot_density(dens, ax=ax[0, 0], yscale="log", eigen=eig)
    ax[0, 0].set_title("Hessian spectral density (SLQ)")
    sec.figures.append({**_fig_save(fig, ctx.out, "hessian-density", svg=True),
                        "caption": "Spectral density of the Hessian of the training loss "
                                   "(stochastic Lanczos quadrature, {density_probes} probes of "
                                   "{density_steps} steps, Gaussian-smoothed, log scale) with the "
                                   "top eigenvalues marked."})
    if "sharpness" in ctx.history:
        fig, ax = _figure((6.4, 3.6))
        plot.plot_sharpness(ctx.history, ax=ax[0, 0])
        ax[0, 0].set_title("sharpness during training")
        sh = np.asarray(ctx.history["sharpness"], dtype=float)
        sec.values["sharpness_start"], sec.values["sharpness_end"] = _r(sh[0]), _r(sh[-1])
        sec.values["sharpness_max"] = _r(np.max(sh))
        opt = ctx.cfg["train"]["optimizer"]
        threshold = (" with the stability threshold of the learning rate dashed" if opt in
                     ("sgd", "momentum", "nesterov") else
                     " (for " + opt + " the threshold of Cohen et al. applies to the "
                     "preconditioned Hessian and is not drawn)")
        inputs = sharpness_figure_inputs(ctx.history, ctx.cfg["train"])
        sec.figures.append({**_fig_save(fig, ctx.out, "hessian-sharpness", svg=True,
                                        inputs=inputs),
                            "caption": "Top Hessian eigenvalue (sharpness) during training, "
                                       "recorded by the training callback every "
                                       "{sharpness_every} steps: {sharpness_start} at the start, "
                                       "{sharpness_end} at the end" + threshold + "."})
        sec.values["sharpness_every"] = int(ctx.cfg["train"]["sharpness_every"])
    sec.text = ("The top {k} eigenvalues ({eigen_products} Hessian-vector products), the trace "
                "(estimator: {trace_estimator}, {trace_products} products and {trace_passes} "
                "exact backward passes; {trace_reason}) and the spectral "
                "density ({density_products} products) of the exact full-data training loss of "
                "the {num_params}-parameter network.")
    return sec


def section_surface(ctx: Context, parts: _Parts) -> Section:
    from landscape import GridSettings, plot, surface

    s = ctx.cfg["surface"]
    sec = parts.section
    p, train, test = ctx.model.params, ctx.data.train, ctx.data.test
    gs = GridSettings(progress=ctx.progress)
    d1, d2 = surface.random_directions(_key(ctx, 4), p, 2)
    final = float(ctx.history["train_loss"][-1]) if "train_loss" in ctx.history else None
    ends = {}
    n1, n2, ni, span = s["points_1d"], s["points_2d"], s["interp_points"], s["span"]
    if n1:
        alphas = np.linspace(-span, span, 2 * (max(n1, 3) // 2) + 1)  # odd: 0 is a point
        ctx.log(f"    1-D slice ({len(alphas)} points, train and test) ...")
        line = parts.get("slice_1d", lambda: surface.slice_1d(
            ctx.loss_fn, p, train, d1, alphas=alphas, test_data=test, settings=gs,
            store=parts.child("slice_1d-chunks")), surface.SliceResult)
        lt = np.asarray(line.train["loss"], dtype=float)
        ends["slice centre"] = float(lt[len(lt) // 2])
        sec.values.update(slice_points=len(alphas), slice_centre=_r(lt[len(lt) // 2]),
                          slice_left=_r(lt[0]), slice_right=_r(lt[-1]))
        fig, ax = _figure((6.4, 3.8))
        plot.plot_slice(line, ax=ax[0, 0])
        ax[0, 0].set_title("1-D slice, filter-normalised random direction")
        sec.figures.append({**_fig_save(fig, ctx.out, "surface-slice-1d", svg=True),
                            "caption": "Loss and accuracy along a filter-normalised random "
                                       "direction through the trained parameters (Li et al. "
                                       "2018), {slice_points} points, training set solid, test "
                                       "set dashed."})
    if n2:
        ab = np.linspace(-span, span, 2 * (max(n2, 3) // 2) + 1)
        ctx.log(f"    2-D slice ({len(ab)} x {len(ab)} points) ...")
        plane = parts.get("slice_2d", lambda: surface.slice_2d(
            ctx.loss_fn, p, train, (d1, d2), alphas=ab, betas=ab, settings=gs,
            store=parts.child("slice_2d-chunks")), surface.SliceResult)
        z = np.asarray(plane.train["loss"], dtype=float)
        c = len(ab) // 2
        ends["plane centre"] = float(z[c, c])
        sec.values.update(plane_points=len(ab), plane_min=_r(np.min(z)), plane_max=_r(np.max(z)),
                          plane_centre=_r(z[c, c]))
        fig, ax = _figure((5.6, 4.6))
        plot.plot_contour(plane, ax=ax[0, 0])
        ax[0, 0].set_title("2-D slice (training loss)")
        sec.figures.append({**_fig_save(fig, ctx.out, "surface-slice-2d", svg=False),
                            "caption": "Training loss on the plane of two filter-normalised random "
                                       "directions, {plane_points} x {plane_points} points, from "
                                       "{plane_min} to {plane_max}; the centre (marked) is the "
                                       "trained network."})
    if ni and ctx.init_params is not None:
        ts = np.linspace(-0.5, 1.5, 4 * max(1, (ni - 1) // 4) + 1)  # 0 and 1 are grid points
        ctx.log(f"    interpolation from initialisation ({len(ts)} points) ...")
        interp = parts.get("interpolation", lambda: surface.interpolate(
            ctx.loss_fn, ctx.init_params, p, train, ts=ts, test_data=test, settings=gs),
            surface.SliceResult)
        li = np.asarray(interp.train["loss"], dtype=float)
        inside = (ts >= 0) & (ts <= 1)
        monotone = bool(np.all(np.diff(li[inside]) <= 1e-6 * max(1.0, float(np.nanmax(li[inside])))))
        ends["interpolation end"] = float(li[np.argmin(abs(ts - 1))])
        sec.values.update(interp_points=len(ts), interp_init=_r(li[np.argmin(abs(ts))]),
                          interp_end=_r(ends["interpolation end"]), interp_monotone=monotone)
        fig, ax = _figure((6.4, 3.8))
        plot.plot_slice(interp, ax=ax[0, 0])
        ax[0, 0].set_title("initialisation (t = 0) to solution (t = 1)")
        sec.figures.append({**_fig_save(fig, ctx.out, "surface-interpolation", svg=True),
                            "caption": "Loss and accuracy on the line from the initialisation "
                                       "to the trained parameters and beyond (Goodfellow et al. "
                                       "2015), {interp_points} points; the training loss falls "
                                       "from {interp_init} to {interp_end}."})
    elif ni:
        sec.values["interp_skipped"] = ctx.init_note
    if final is not None:
        ends["logged final training loss"] = final
        sec.values["logged_loss"] = _r(final)
    if len(ends) >= 2:
        ref = final if final is not None else next(iter(ends.values()))
        worst = max(abs(v - ref) for v in ends.values()) / max(abs(ref), 1e-12)
        sec.checks.append(check(
            "slice centre = interpolation end = logged loss", bool(worst <= 1e-4),
            "the same parameters evaluated by {routes} routes (" + ", ".join(ends) + ") give "
            "the same exact full-data loss to a relative {tolerance} (single-precision "
            "summation order)", routes=len(ends), tolerance=1e-4, relative_difference=worst,
            **{k.replace(' ', '_'): v for k, v in ends.items()}))
    sec.text = ("Slices of the exact full-data loss through the trained parameters along "
                "filter-normalised random directions (Li et al. 2018), and the line from the "
                "initialisation to the solution.")
    return sec


def _profile_endpoints(prof, a_loss, b_loss):
    lt = np.asarray(prof.train["loss"], dtype=float)
    return float(lt[0]), float(lt[-1]), abs(lt[0] - a_loss), abs(lt[-1] - b_loss)


def section_connect(ctx: Context, parts: _Parts) -> Section:
    import landscape
    from landscape import connect, plot

    s = ctx.cfg["connect"]
    sec = parts.section
    other_path = ctx.other_run or (
        (ctx.cfg.base / s["other"]) if s["other"] else None)
    if other_path is not None:
        ctx.log(f"    second network: {other_path}")
        try:
            other_model = landscape.load_run(other_path, model=ctx.template).model
        except Exception as e:  # noqa: BLE001 - missing, damaged or another model's: one line
            raise ConfigError(f"connect: the second network {other_path} could not be loaded "
                              f"with the config's model ({type(e).__name__}: {str(e)[:1500]})."
                              ) from None
        sec.values["other"] = str(other_path)
    else:
        if ctx.train_other is None:
            raise ConfigError("the connect section needs a second network: pass --other RUN_DIR "
                              "(or set connect.other in the config); this run records no "
                              "training settings to train one.")
        ctx.log(f"    second network (seed {ctx.seed + 1}): "
                + ("loading the one trained before ..." if parts.store.has_dir("other_run") else
                   "training it ..."))
        other_model = parts.run("other_run", lambda: ctx.train_other(ctx.seed + 1),
                                ctx.template).model
        sec.values["other"] = f"trained here from seed {ctx.seed + 1}"
    a, b = ctx.model.params, other_model.params
    from landscape import validate as _validate

    try:
        _validate.check_same_structure(b, a, name="the second network's parameters",
                                       ref_name="the trained network's")
    except ValueError as e:
        raise ConfigError(f"connect: {e}") from None
    has_bn = any(np.issubdtype(np.asarray(x).dtype, np.floating)
                 for x in jax_leaves(ctx.model.state)
                 if not str(getattr(x, "dtype", "")).startswith("key"))
    kw = dict(num_ts=s["points"], test_data=ctx.data.test)
    if has_bn:  # re-estimated statistics along the path (Garipov et al.'s update_bn)
        kw.update(bn="reestimate", bn_data=ctx.data.train)
    paths = {"linear": b}
    if s["align"]:
        ctx.log("    weight matching ...")
        try:
            paths["aligned"] = connect.align(ctx.model, a, other_model, key=_key(ctx, 5),
                                             example_input=np.asarray(ctx.data.train["x"][:2])).params
        except (ValueError, TypeError) as e:  # no permutation symmetry found in this model
            sec.values["aligned_skipped"] = f"weight matching not applicable: {e}"[:300]
            ctx.log(f"    weight matching skipped: {e}"[:200])
    profs = {}
    for name, pb in paths.items():
        ctx.log(f"    {name} path ({s['points']} points) ...")
        profs[name] = parts.get(f"profile_{name}", lambda pb=pb: connect.profile(
            ctx.loss_fn, connect.linear_path(a, pb), ctx.data.train, **kw), connect.Profile)
    for name, prof in profs.items():
        bar = connect.barrier(prof).values
        sec.values[f"barrier_{name}"] = _r(bar["train/loss"]["max_minus_mean"])
        if "test/error" in bar:
            sec.values[f"error_barrier_{name}"] = _r(bar["test/error"]["max_minus_mean"])
    la = float(landscape.evaluate(ctx.loss_fn, a, ctx.data.train)["loss"])
    lf_b = ctx.loss_fn.with_state(other_model.state) if hasattr(ctx.loss_fn, "with_state") else ctx.loss_fn
    lb = float(landscape.evaluate(lf_b, b, ctx.data.train)["loss"])
    sec.values.update(loss_a=_r(la), loss_b=_r(lb), points=s["points"])
    if has_bn:
        sec.checks.append(check(
            "barrier endpoints = endpoint losses", None,
            "not applicable: with batch norm the path re-estimates the statistics at every point, "
            "also at the endpoints, so they differ from the networks' stored statistics"))
    else:
        e0, e1, d0, d1 = _profile_endpoints(profs["linear"], la, lb)
        worst = max(d0 / max(abs(la), 1e-12), d1 / max(abs(lb), 1e-12))
        sec.checks.append(check(
            "barrier endpoints = endpoint losses", bool(worst <= 1e-4),
            "the path's first and last points are the two networks: their losses equal the "
            "networks' own exact losses to a relative {tolerance}", path_start=e0, loss_a=la,
            path_end=e1, loss_b=lb, relative_difference=worst, tolerance=1e-4))
    sec.tables.append({
        "caption": "Loss barrier (maximum along the path minus the mean of the endpoints, "
                   "training loss; test error where the task has one) on the linear path "
                   "between the two networks, before and after weight matching.",
        "columns": ["path", "loss barrier", "test error barrier"],
        "rows": [[n, sec.values[f"barrier_{n}"], sec.values.get(f"error_barrier_{n}")]
                 for n in profs],
    })
    fig, ax = _figure((6.4, 3.8))
    plot.plot_profiles(profs, metrics="loss", ax=ax[0, 0])
    ax[0, 0].set_title("linear paths between two networks")
    sec.figures.append({**_fig_save(fig, ctx.out, "connect-profiles", svg=True),
                        "caption": "Loss along the straight line from the trained network "
                                   "(start) to the second one (end), {points} points, before "
                                   "and after weight matching (training set solid, test set "
                                   "dashed)."})
    sec.text = ("The loss barrier between the trained network and a second one ({other}), on "
                "the straight line between them and after permuting the second network's hidden "
                "units to match the first (weight matching).")
    return sec


def jax_leaves(tree) -> list:
    import jax

    return jax.tree.leaves(tree)


_NTK_ACTIVATIONS = {"relu": "Relu", "erf": "Erf", "gelu": "Gelu"}


def section_ntk(ctx: Context, parts: _Parts) -> Section:
    import ntk

    s = ctx.cfg["ntk"]
    sec = parts.section
    x = np.asarray(ctx.data.test["x"][: s["examples"]])
    sec.values["examples"] = int(x.shape[0])
    k1 = parts.get("ntk_trained", lambda: ntk.empirical_ntk(ctx.model, x, progress=ctx.progress),
                   ntk.EmpiricalKernel).matrix
    k1 = np.asarray(k1, dtype=float)
    ev1 = np.linalg.eigvalsh(k1)[::-1]
    sec.values["top_eigenvalue_trained"] = _r(ev1[0])
    sec.values["trace_trained"] = _r(np.trace(k1))
    fig, ax = _figure((6.4, 3.8))
    ax = ax[0, 0]
    if ctx.init_params is not None:
        k0 = np.asarray(parts.get("ntk_init", lambda: ntk.empirical_ntk(
            ctx.model.replace(params=ctx.init_params), x, progress=ctx.progress),
            ntk.EmpiricalKernel).matrix, dtype=float)
        ev0 = np.linalg.eigvalsh(k0)[::-1]
        sec.values.update(top_eigenvalue_init=_r(ev0[0]), trace_init=_r(np.trace(k0)),
                          relative_change=_r(ntk.relative_distance(k1, k0)),
                          trace_ratio=_r(np.trace(k1) / np.trace(k0)))
        ax.plot(ev0, color="C0", lw=2.0, label="initialisation")
    ax.plot(ev1, color="C1", ls="--", lw=1.3, marker="s", markersize=4, markerfacecolor="none",
            markevery=(0.03, 0.12), label="trained")
    ax.set_yscale("log")
    ax.set_xlabel("index")
    ax.set_ylabel("eigenvalue")
    ax.set_title("empirical NTK eigenvalues (test inputs)")
    ax.legend()
    sec.figures.append({**_fig_save(fig, ctx.out, "ntk-spectrum", svg=True),
                        "caption": "Eigenvalues of the empirical neural tangent kernel on "
                                   "{examples} test inputs (traced over outputs), at "
                                   "initialisation and after training."})
    spec = (ctx.model.spec or {})
    widths = list(s["widths"])
    act = (spec.get("kwargs", {}) or {}).get("activation", "relu")
    if len(widths) < 2:
        sec.checks.append(check("NTK error slope against width", None,
                                "not applicable: a slope needs at least two widths (ntk.widths "
                                "is {widths})", widths=[int(w) for w in widths]))
    elif spec.get("name") != "mlp" or act not in _NTK_ACTIVATIONS:
        sec.checks.append(check(
            "NTK error slope against width", None,
            "not applicable: the analytic kernel is computed here for our MLPs with ReLU, erf or "
            "GELU only (this model: {model}, activation {activation})",
            model=str(spec.get("name") or ctx.model_desc.get("name")), activation=str(act)))
    else:
        depth = len(spec["kwargs"].get("hidden", (256, 256)))
        layer = getattr(ntk, _NTK_ACTIVATIONS[act])
        outputs = int(spec["num_outputs"])
        w_std = math.sqrt(2.0) if act == "relu" else 1.0

        def make_arch(n):
            layers = []
            for _ in range(depth):
                layers += [ntk.Dense(n, W_std=w_std, b_std=0.05), layer()]
            return ntk.serial(*layers, ntk.Dense(outputs, W_std=w_std, b_std=0.05))

        xs = x[: min(len(x), 16)].reshape(min(len(x), 16), -1)
        ctx.log(f"    empirical vs analytic NTK at widths {widths} ...")
        conv = parts.get("convergence", lambda: ntk.convergence(
            make_arch, widths, xs, key=_key(ctx, 6), num_seeds=s["seeds"]), ntk.Convergence)
        slope = float(conv.slope)
        sec.values.update(width_slope=_r(slope, 4), widths=[int(w) for w in widths],
                          width_errors=[_r(v, 4) for v in np.asarray(conv.ntk_mean)])
        sec.checks.append(check(
            "NTK error slope against width", bool(-0.8 <= slope <= -0.3),
            "the relative distance of the empirical NTK at initialisation to the analytic one "
            "falls as one over the square root of the width (the Monte Carlo rate; Lee et al. "
            "2019): its log-log slope lies between {slope_low} and {slope_high}. The networks "
            "have the model's depth and activation in the NTK parameterisation (ntk.serial), "
            "on the test inputs", slope=slope, slope_low=-0.8, slope_high=-0.3))
        sec.tables.append({
            "caption": "Relative Frobenius distance of the empirical NTK at initialisation to the "
                       "analytic kernel, mean over seeds, by width.",
            "columns": ["width", "relative distance"],
            "rows": [[w, e] for w, e in zip(sec.values["widths"], sec.values["width_errors"])],
        })
    sec.text = ("The empirical neural tangent kernel of the network on {examples} test inputs, "
                "at initialisation and after training: how far training moved the kernel (a "
                "lazy network keeps it).")
    return sec


_VARIANTS = (("skips + BN", True, True), ("skips, no BN", True, False),
             ("no skips + BN", False, True), ("no skips, no BN", False, False))


def surface_roughness(z, alphas=None, betas=None, *, radius: float = 0.5,
                      rel: float = 0.01) -> dict:
    """How far a 2-D loss surface is from one convex basin (``benchmarks/study/skip_depth.md``).

    ``nonconvex_fraction``: the fraction of grid points within ``radius`` of the centre whose
    discrete Hessian of the loss (central differences) has ``lambda_min < -rel |lambda_max|``,
    the surface analogue of Li et al.'s ``|lambda_min / lambda_max|`` maps (a flat plateau at
    chance loss scores high too: read it with the losses); ``local_minima``: strict minima of
    the grid's interior; ``loss_ring``, ``loss_edge``: the mean loss at ``radius`` and on the
    grid's edge (how steep the walls are). ``alphas``, ``betas`` default to ``[-1, 1]``.
    """
    L = np.asarray(z, dtype=np.float64)
    a = np.linspace(-1, 1, L.shape[0]) if alphas is None else np.asarray(alphas, float)
    b = np.linspace(-1, 1, L.shape[1]) if betas is None else np.asarray(betas, float)
    ha, hb = a[1] - a[0], b[1] - b[0]
    A, B = np.meshgrid(a, b, indexing="ij")
    r = np.hypot(A, B)
    c = L[1:-1, 1:-1]
    hxx = (L[2:, 1:-1] - 2 * c + L[:-2, 1:-1]) / ha ** 2
    hyy = (L[1:-1, 2:] - 2 * c + L[1:-1, :-2]) / hb ** 2
    hxy = (L[2:, 2:] - L[2:, :-2] - L[:-2, 2:] + L[:-2, :-2]) / (4 * ha * hb)
    mean, dev = (hxx + hyy) / 2, np.sqrt(((hxx - hyy) / 2) ** 2 + hxy ** 2)
    lmin, lmax = mean - dev, mean + dev
    disc = r[1:-1, 1:-1] <= radius + 1e-9
    bad = (lmin < -rel * np.abs(lmax)) & disc & np.isfinite(lmin)
    neighbours = np.stack([L[1 + i:L.shape[0] - 1 + i, 1 + j:L.shape[1] - 1 + j]
                           for i in (-1, 0, 1) for j in (-1, 0, 1) if (i, j) != (0, 0)])
    ring = np.abs(r - radius) <= min(ha, hb) / 2
    edge = (np.abs(A) >= a[-1] - 1e-9) | (np.abs(B) >= b[-1] - 1e-9)
    return {"nonconvex_fraction": float(bad.sum() / max(disc.sum(), 1)),
            "local_minima": int(np.sum(np.all(c[None] < neighbours, axis=0))),
            "loss_ring": float(np.nanmean(L[ring])) if ring.any() else float("nan"),
            "loss_edge": float(np.nanmean(L[edge]))}


def _skips_variant(ctx, parts, data, s, i, label, skip, bn, steps, ab):
    """One network of the skips section: trained, its top eigenvalue, its 2-D surface."""
    import landscape
    from landscape import GridSettings, hessian, surface
    from landscape.train import make_optimizer

    tag = ("skip" if skip else "noskip") + ("-bn" if bn else "-nobn")
    m0 = landscape.make_model("resnet", input_shape=data.input_shape,
                              num_outputs=data.num_outputs, widths=tuple(s["widths"]),
                              blocks=s["blocks"], skip=skip, batch_norm=bn, seed=ctx.seed)
    ctx.log(f"    {label}: training ({s['epochs']} epoch{'' if s['epochs'] == 1 else 's'}), top eigenvalue, "
            f"{len(ab)} x {len(ab)} surface ...")
    from landscape.train import TrainingDivergedError, make_schedule

    lr = s["learning_rate"]
    if s["schedule"] != "constant":
        lr = make_schedule(s["schedule"], lr, num_steps=steps)
    if parts.store.has(f"diverged-{tag}"):  # a divergence is a result too: not retried
        parts.section.parts_total += 1
        parts.section.parts_loaded += 1
        step = int(parts.store.load(f"diverged-{tag}")["step"])
        return {"variant": label, "diverged_at_step": step}, None
    try:
        run = parts.run(f"run-{tag}", lambda: landscape.train(
            m0, data.train, test_data=data.test, optimizer=make_optimizer(s["optimizer"], lr),
            optimizer_config={"name": s["optimizer"], "learning_rate": s["learning_rate"],
                              "schedule": s["schedule"]},
            num_steps=steps, batch_size=s["batch_size"], seed=ctx.seed, progress=False), m0)
    except TrainingDivergedError as e:
        step = int(getattr(e, "step", -1))
        parts.store.save(f"diverged-{tag}", {"step": np.asarray(step)})
        ctx.log(f"    {label}: training diverged at step {step} (recorded; no surface)")
        return {"variant": label, "diverged_at_step": step}, None
    model = run.model
    lf = landscape.make_loss_fn(model)
    eig = parts.get(f"eig-{tag}", lambda: hessian.eigenvalues(
        lf, model.params, data.train, k=1, key=_key(ctx, 10 + i)), hessian.EigenResult)
    dirs = surface.random_directions(_key(ctx, 20), model.params, 2)
    plane = parts.get(f"plane-{tag}", lambda: surface.slice_2d(
        lf, model.params, data.train, dirs, alphas=ab, betas=ab,
        settings=GridSettings(progress=ctx.progress), store=parts.child(f"plane-{tag}-chunks")),
        surface.SliceResult)
    z = np.asarray(plane.train["loss"], dtype=float)
    h = run.history
    rough = surface_roughness(z, ab, ab)
    row = {"variant": label, "train_loss": _r(h["train_loss"][-1], 4),
           "test_accuracy": _r(h["test_accuracy"][-1], 4),
           "top_eigenvalue": _r(eig.values[0], 4),
           "nonconvex_fraction": _r(rough["nonconvex_fraction"], 3),
           "local_minima": rough["local_minima"], "loss_edge": _r(rough["loss_edge"], 4),
           "surface_min": _r(z.min(), 4), "surface_max": _r(z.max(), 4)}
    return row, plane


def section_skips(ctx: Context, parts: _Parts) -> Section:
    import landscape

    s = ctx.cfg["skips"]
    sec = parts.section
    data = ctx.data
    if len(data.input_shape) != 3 or data.task != "classification":
        data = landscape.load_data("digits", flat=False)
        sec.values["data"] = "digits (8x8x1 images)"
    else:
        sec.values["data"] = data.name
    widths, blocks = tuple(s["widths"]), s["blocks"]
    depth = 2 * len(widths) * blocks + 2
    sec.values.update(depth=depth, blocks=blocks, epochs=s["epochs"], points=s["points"],
                      learning_rate=s["learning_rate"], optimizer=s["optimizer"])
    n = len(data.train["x"])
    steps = s["epochs"] * (n // s["batch_size"])
    ab = np.linspace(-s["span"], s["span"], 2 * (max(s["points"], 3) // 2) + 1)
    rows, planes = [], {}
    for i, (label, skip, bn) in enumerate(_VARIANTS):
        row, plane = _skips_variant(ctx, parts, data, s, i, label, skip, bn, steps, ab)
        rows.append(row)
        if plane is not None:
            planes[label] = plane
    sec.values["variants"] = rows
    sec.tables.append({
        "caption": "The four networks after the same training: final training loss, test "
                   "accuracy, top Hessian eigenvalue, and the shape of the 2-D surface: the "
                   "fraction of points within half the span of the centre where the surface is "
                   "locally non-convex (its discrete Hessian has a negative eigenvalue beyond "
                   "a hundredth of the positive one), the number of local minima on the grid, "
                   "and the mean loss on the grid's edge (how steep the walls are). A network "
                   "whose training diverged has the step instead.",
        "columns": ["network", "train loss", "test accuracy", "top eigenvalue",
                    "non-convex fraction", "local minima", "edge loss", "diverged at step"],
        "rows": [[r["variant"], r.get("train_loss"), r.get("test_accuracy"),
                  r.get("top_eigenvalue"), r.get("nonconvex_fraction"), r.get("local_minima"),
                  r.get("loss_edge"), r.get("diverged_at_step")] for r in rows],
    })
    import matplotlib.colors as mcolors
    from matplotlib import cm

    from landscape import plot

    fig, axes = _figure((9.6, 8.0), 2, 2)
    zs = [np.asarray(p.train["loss"], dtype=float) for p in planes.values()]
    if zs:
        lo = max(min(float(np.nanmin(z)) for z in zs), 1e-12)
        hi = max(float(np.nanmax(z)) for z in zs)
        sec.values.update(scale_min=_r(lo, 4), scale_max=_r(hi, 4))
        levels = np.geomspace(lo, hi * (1 + 1e-9), 25)
    for ax, r in zip(axes.ravel(), rows):
        label = r["variant"]
        if label in planes:
            plot.plot_contour(planes[label], ax=ax, levels=levels, log=True, filled=True,
                              colorbar=False, labels=False)
            ax.set_title(f"{label}: top eigenvalue {r['top_eigenvalue']:.4g}")
        else:
            ax.text(0.5, 0.5, f"training diverged\nat step {r['diverged_at_step']}",
                    ha="center", va="center", transform=ax.transAxes, fontsize=12)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(label)
    if zs:
        sm = cm.ScalarMappable(norm=mcolors.LogNorm(vmin=levels[0], vmax=levels[-1]),
                               cmap="viridis")
        fig.colorbar(sm, ax=axes, label="training loss", shrink=0.8)
    sec.figures.append({**_fig_save(fig, ctx.out, "skips-surfaces", svg=False),
                        "caption": "Training-loss surfaces of the same {depth}-layer ResNet "
                                   "with and without skip connections and batch norm, each "
                                   "trained for {epochs} epochs ({optimizer}, learning rate "
                                   "{learning_rate}, " + s["schedule"] + " schedule), on two "
                                   "filter-normalised random directions, {points} x {points} "
                                   "points, on one logarithmic colour scale"
                                   + (" from {scale_min} to {scale_max}" if zs else "") +
                                   "; titles give each network's top Hessian eigenvalue."})
    text = ("Li et al. (2018) open with ResNet-56 on CIFAR-10: without skip connections the "
            "filter-normalised surface turns chaotic at depth. Here the same small ResNet "
            "({depth} layers, {blocks} blocks per stage) on {data}, with and without skips and "
            "batch norm, one seed.")
    by = {r["variant"]: r for r in rows}
    a, b = by.get("skips + BN", {}), by.get("no skips + BN", {})
    if a.get("top_eigenvalue") and b.get("top_eigenvalue"):
        sec.values.update(bn_eig_ratio=_r(b["top_eigenvalue"] / a["top_eigenvalue"], 3),
                          bn_nonconvex_skip=a["nonconvex_fraction"],
                          bn_nonconvex_noskip=b["nonconvex_fraction"],
                          bn_edge_ratio=_r(b["loss_edge"] / a["loss_edge"], 3))
        text += (" With batch norm, removing the skips multiplies the top eigenvalue by "
                 "{bn_eig_ratio} and the loss on the grid's edge by {bn_edge_ratio}, and the "
                 "non-convex fraction goes from {bn_nonconvex_skip} to {bn_nonconvex_noskip}.")
    text += (" On the digits (benchmarks/study/skip_depth.md) removing the skips first matters "
             "at eighteen layers and with batch norm: a larger top eigenvalue, a non-convex "
             "region around the minimum and steeper walls, but still one basin, not the "
             "paper's chaotic surface; shallower networks show no effect, and without batch "
             "norm these deep networks do not train at this learning rate. The top "
             "eigenvalues move by tens of percent between runs that differ only in rounding: "
             "read the direction, not the digits.")
    sec.text = text
    return sec


def section_trainability(ctx: Context, parts: _Parts) -> Section:
    """The studied network at initialisation (it does not depend on the training): the
    learning-rate range with the initial curvature's stability limit, and the study's own
    learning rate on the same axis."""
    from landscape import diagnostics, plot
    from landscape.study import _resolve

    s = ctx.cfg["trainability"]
    t = ctx.cfg["train"]
    sec = parts.section
    init = ctx.template.replace(params=ctx.init_params)
    n = len(ctx.data.train["x"])
    # signal propagation at initialisation (layers found from the traced program)
    m = min(n, int(s["signal_examples"]))
    ctx.log(f"    signal propagation at initialisation ({m} training inputs) ...")
    texts = []
    try:
        sig = parts.get("signal", lambda: diagnostics.signal_propagation(
            init, ctx.data.train["x"][:m], loss_fn=_resolve.loss_name(ctx.data),
            targets=ctx.data.train["y"][:m]), diagnostics.SignalResult)
    except diagnostics.LayerEnumerationError as e:
        sec.values["signal_not_run"] = str(e)[:300]
        texts.append("Signal propagation was not run: {signal_not_run}.")
    else:
        q = np.asarray(sig.q, float)
        g = np.asarray(sig.grad_preact_norm, float) if sig.grad_preact_norm is not None else None
        sec.values.update(signal_layers=int(len(q)), signal_bn_mode=str(sig.bn_mode),
                          signal_q_first=_r(float(q[0])), signal_q_last=_r(float(q[-1])),
                          signal_dead_max=_r(float(np.nanmax(sig.dead_units))),
                          signal_examples=m)
        if g is not None and len(g) and g[-1] > 0:
            sec.values["signal_grad_ratio"] = _r(float(g[0] / g[-1]))
        fig, axes = _figure((9.6, 3.6), 1, 2)
        plot.plot_signal(sig, ax=[axes[0, 0], axes[0, 1]])
        from matplotlib.ticker import MaxNLocator

        for a in (axes[0, 0], axes[0, 1]):
            a.xaxis.set_major_locator(MaxNLocator(integer=True))  # layers are whole numbers
        sec.figures.append({**_fig_save(fig, ctx.out, "signal", svg=True),
                            "caption": "The network at initialisation, layer by layer ({signal_layers} "
                                       "layers found from the traced program; batch norm: "
                                       "{signal_bn_mode}): the second moment of the "
                                       "pre-activations and the loss's gradient norms on "
                                       "{signal_examples} training inputs."})
        texts.append("At initialisation the pre-activations' second moment goes from "
                     "{signal_q_first} at the first of {signal_layers} layers to {signal_q_last} "
                     "at the last; at most a fraction {signal_dead_max} of a layer's units is "
                     "dead" + ("; the loss's gradient with respect to the first layer's "
                               "pre-activations is {signal_grad_ratio} times the last's. " if "signal_grad_ratio" in sec.values else ". "))
    if not s["lr_range"]:
        sec.text = "".join(texts) + ("The learning-rate range was not asked for "
                                     "(trainability.lr_range = false).")
        return sec
    ctx.log(f"    learning-rate range ({t['optimizer']}, {s['lr_steps']} steps per rate, from "
            "the initialisation) ...")
    lr = parts.get("lr_range", lambda: diagnostics.learning_rate_range(
        init, ctx.data.train, t["optimizer"], key=_key(ctx, 30), steps=s["lr_steps"],
        loss=_resolve.loss_name(ctx.data), optimizer_kwargs=dict(t["optimizer_settings"]),
        weight_decay=t["weight_decay"], batch_size=min(int(t["batch_size"]), n),
        progress=ctx.progress), diagnostics.LearningRateRangeResult)
    limit = float(np.asarray(lr.limit).reshape(-1)[0]) if np.size(lr.limit) else float("nan")
    lrs, final = np.asarray(lr.lrs, float), np.asarray(lr.final_loss, float)
    diverged = np.asarray(lr.diverged, bool)
    sec.values.update(lr_study=float(t["learning_rate"]), lr_steps=int(s["lr_steps"]),
                      lr_rule=lr.limit_rule or "no rule for this optimiser",
                      lr_grid=[_r(float(v)) for v in lrs],
                      lr_final_loss=[_r(float(v)) if np.isfinite(v) else "diverged" for v in final],
                      lr_diverged=int(diverged.sum()))
    if lr.limit_note:
        sec.values["lr_note"] = lr.limit_note
    has_limit = bool(np.isfinite(limit) and limit > 0)
    if not has_limit:
        sec.values.setdefault("lr_note", "none was computed")
    if has_limit:
        sec.values.update(lr_limit=_r(limit),
                          lr_sharpness=_r(float(np.asarray(lr.sharpness).reshape(-1)[0])),
                          lr_study_over_limit=_r(float(t["learning_rate"]) / limit))
    if diverged.any():
        sec.values["lr_first_diverged"] = _r(float(lrs[diverged][0]))
    if (~diverged).any():
        sec.values["lr_best"] = _r(float(lrs[np.nanargmin(np.where(diverged, np.nan, final))]))
    fig, axes = _figure((6.4, 3.8), 1, 1)
    ax = axes[0, 0]
    plot.plot_learning_rate_range(lr, ax=ax)
    ax.axvline(float(t["learning_rate"]), color="C2", ls=":", lw=1.6,
               label=f"this study's learning rate {float(t['learning_rate']):.3g}")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.24))  # below: no overlap
    sec.figures.append({**_fig_save(fig, ctx.out, "lr-range", svg=True),
                        "caption": "Learning-rate range from the initialisation: the full-data "
                                   "loss after {lr_steps} steps of the study's optimiser at each "
                                   "rate (crosses: diverged), the stability limit of the "
                                   "quadratic model at initialisation ({lr_rule}), and the "
                                   "study's own rate. The limit is not a bound on the rates that "
                                   "train: above it training can converge after a catapult "
                                   "(Lewkowycz et al. 2020), and below it the sharpness can rise "
                                   "to the edge of stability (Cohen et al. 2021)."})
    text = "".join(texts) + "From the initialisation, {lr_steps} steps of the study's optimiser at each rate of a log grid: "
    text += ("the initial curvature's stability limit is {lr_limit} ({lr_rule}); the study trains "
             "at {lr_study}, {lr_study_over_limit} times the limit. " if has_limit else
             "no stability limit is drawn ({lr_note}). ")
    if "lr_best" in sec.values:
        text += "The lowest loss after {lr_steps} steps came at rate {lr_best}; "
    text += ("the first rate that diverged is {lr_first_diverged} ({lr_diverged} of the grid)."
             if diverged.any() else "no rate of the grid diverged.")
    sec.text = text
    return sec


def _percent_steps(percents, num_steps: int) -> list[int]:
    """Steps at these percentages of the training (rounded down, distinct, below num_steps)."""
    return sorted({min(int(p * num_steps // 100), num_steps - 1) for p in percents})


_PART_NAMES = {"class": "class-mean", "cross": "cross-class", "within": "within-class",
               "global": "global-mean", "penalty": "weight-decay"}


def balanced_subset(labels, m: int) -> np.ndarray:
    """Indices of ``m`` examples balanced over the classes whatever the data's order (a file
    sorted by label included): each class's first examples in turn, returned in the data's
    order."""
    y = np.asarray(labels).reshape(-1)
    rank = np.empty(len(y), np.int64)
    for c in np.unique(y):
        where = np.flatnonzero(y == c)
        rank[where] = np.arange(len(where))
    return np.sort(np.lexsort((y, rank))[:m])


def _class_structure(ctx: Context, parts: _Parts, sec: Section, s: dict) -> str:
    from landscape import hessian

    train = ctx.data.train
    m = min(len(train["x"]), int(s["class_examples"]))
    ctx.log(f"    class structure of the Gauss-Newton matrix ({m} training examples) ...")
    # balanced over the classes, whatever the data's order (a file sorted by label included):
    # each class's first examples in turn, in the data's order within a class
    idx = balanced_subset(train["y"], m)
    sub = {"x": train["x"][idx], "y": train["y"][idx]}
    try:
        dec = parts.get("classes", lambda: hessian.class_decomposition(
            ctx.loss_fn, ctx.model.params, sub, key=_key(ctx, 40), batch_size=min(64, m)),
            hessian.ClassDecompositionResult)
    except (ValueError, TypeError) as e:  # e.g. a class absent from the examples
        sec.values["classes_not_run"] = str(e)[:300]
        return "The class decomposition was not run: {classes_not_run}. "
    c = int(dec.num_classes)
    absent = int(np.sum(np.asarray(dec.class_counts) == 0))
    vals = np.asarray(dec.values, float)
    edge = float(np.asarray(dec.bulk_edge).reshape(-1)[0])
    att = {p: np.asarray(dec.attribution[p], float) for p in dec.parts}
    top = min(c, len(vals))
    sec.values.update(
        class_examples=m, num_classes=c, class_k=int(dec.k),
        class_rank=int(dec.class_rank), class_rank_centred=int(dec.class_rank_centred),
        cross_rank=int(dec.cross_rank), cross_rank_expected=c * (c - 1),
        class_rank_centred_expected=c - 1, classes_absent=absent,
        bulk_edge_kind=("the within-class part's top eigenvalue plus the weight decay"
                        if "penalty" in dec.part_values else "the within-class part's top "
                        "eigenvalue"),
        ggn_top=[_r(v) for v in vals], bulk_edge=_r(edge), num_outliers=int(dec.num_outliers),
        class_top=_r(float(np.asarray(dec.class_spectrum, float)[0])),
        **{f"attribution_{p}": _r(float(att[p][:top].mean()), 4) for p in dec.parts})
    sec.tables.append({
        "caption": "The top {class_k} eigenvalues of the Gauss-Newton matrix on {class_examples} "
                   "training examples and the attribution of each eigenvector v to the parts "
                   "(v^T G_part v over their sum).",
        "columns": ["index", "GGN eigenvalue", *[_PART_NAMES.get(p, p) for p in dec.parts]],
        "rows": [[i + 1, _r(float(vals[i])), *[_r(float(att[p][i]), 4) for p in dec.parts]]
                 for i in range(len(vals))]})
    expected = int(dec.class_rank) == c and int(dec.class_rank_centred) == c - 1
    if absent:
        expected, why = None, ("not applicable: {classes_absent} of the {num_classes} classes "
                               "have no example among the {class_examples} (raise "
                               "class_examples)")
    else:
        why = ("the class-mean part has rank C = {num_classes} ({class_rank} measured) and C - 1 "
               "once centred by the global mean ({class_rank_centred} measured): the algebra's "
               "bounds, reached unless the class means are degenerate (numerical ranks of "
               "their small Grams)")
    sec.checks.append(check("class-mean ranks", expected, why, num_classes=c,
                            class_rank=int(dec.class_rank),
                            class_rank_centred=int(dec.class_rank_centred),
                            classes_absent=absent, class_examples=m))
    fig, axes = _figure((9.6, 3.6), 1, 2)
    ax = axes[0, 0]
    idx = np.arange(1, len(vals) + 1)
    ax.semilogy(idx, np.maximum(vals, 1e-30), "o", color="C0", label="GGN top eigenvalues")
    cs = np.asarray(dec.class_spectrum, float)[: len(vals)]
    ax.semilogy(np.arange(1, len(cs) + 1), np.maximum(cs, 1e-30), "x", color="C3",
                label="class-mean part")
    ax.axhline(edge, color="0.3", ls="--", lw=1,
               label="bulk edge (within-class top" + (" + weight decay)"
                                                       if "penalty" in dec.part_values else ")"))
    ax.set_xlabel("index")
    ax.set_ylabel("eigenvalue")
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    bottom = np.zeros(len(vals))
    for i, p in enumerate(dec.parts):
        ax.bar(idx, att[p], bottom=bottom, color=f"C{i}", label=_PART_NAMES.get(p, p), width=0.8)
        bottom += att[p]
    ax.set_xlabel("GGN eigenvector")
    ax.set_ylabel("attribution")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=len(dec.parts))
    from matplotlib.ticker import MaxNLocator

    for a in (axes[0, 0], axes[0, 1]):
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    sec.figures.append({**_fig_save(fig, ctx.out, "structure-classes", svg=True),
                        "caption": "The Gauss-Newton matrix of the trained network on "
                                   "{class_examples} training examples (Papyan 2019): its top "
                                   "eigenvalues with the class-mean part's and the bulk edge "
                                   "(left), and each eigenvector's attribution to the parts "
                                   "(right)."})
    return ("The Gauss-Newton matrix on {class_examples} training examples splits into its "
            "class-mean part (rank {class_rank}; {class_rank_centred} centred by the global "
            "mean), its cross-class part (rank {cross_rank}"
            + (" of at most {cross_rank_expected}: the pairs of classes to which the network "
               "gives almost no probability add nothing above rounding"
               if int(dec.cross_rank) < c * (c - 1) else "") +
            ") and the within-class rest; the bulk edge is {bulk_edge} ({bulk_edge_kind}): "
            + ("all {class_k} eigenvalues computed lie above it (at least {num_outliers} "
               "outliers)" if int(dec.num_outliers) >= int(dec.k) else
               "{num_outliers} of the top {class_k} eigenvalues lie above it")
            + ", against Papyan's C = {num_classes} outliers. The top "
            "{num_classes} eigenvectors are attributed on average "
            + ", ".join("{attribution_" + p + "} to the " + _PART_NAMES.get(p, p) + " part"
                        for p in dec.parts)
            + ". ")


def _plural_rounds(n: int) -> str:
    return f"{n} round" + ("" if n == 1 else "s")


def section_structure(ctx: Context, parts: _Parts) -> Section:
    """The global structure of training: the class structure of the trained network's
    Gauss-Newton matrix, lottery tickets (iterative magnitude pruning with rewinding against
    its random controls) and instability to SGD noise (the dense network and the last ticket),
    each trained with the study's own training settings."""
    from landscape import plot, sparsity
    from landscape.study import _resolve

    s = ctx.cfg["structure"]
    sec = parts.section
    texts = []
    if s["classes"] and ctx.data.task == "classification":
        texts.append(_class_structure(ctx, parts, sec, s))
    elif s["classes"]:
        texts.append("The class decomposition applies to classification only (this data is a "
                     "regression task). ")
    run_tickets = bool(s["rounds"]) or bool(s["spawn_percent"])
    if run_tickets and ctx.data.task != "classification":
        sec.values["tickets_not_run"] = ("their measures are test accuracies and error "
                                         "barriers, and this data is a regression task")
        texts.append("Lottery tickets and instability were not run: {tickets_not_run}.")
        run_tickets = False
    if run_tickets and (ctx.train_other is None or ctx.init_params is None):
        sec.values["tickets_not_run"] = ("the study analyses a saved run without training "
                                         "settings (pass --config CONFIG.toml)"
                                         if ctx.train_other is None else
                                         "the network's initialisation is unknown")
        texts.append("Lottery tickets and instability were not run: {tickets_not_run}.")
        run_tickets = False
    if not run_tickets:
        sec.text = "".join(texts) or "Nothing was asked of this section."
        return sec
    kw = {k: v for k, v in _resolve.train_kwargs(ctx.cfg, ctx.data).items()
          if k not in ("test_data", "snapshot_steps")}
    kw["seed"] = int(ctx.cfg["seed"])
    num_steps = int(kw["num_steps"])
    init = ctx.template.replace(params=ctx.init_params)
    sec.values["structure_steps"] = num_steps
    pruned = None
    rounds = int(s["rounds"])
    if rounds:
        try:  # a model of yours without "kernel" leaves: no tickets, the dense instability still
            sparsity.prunable_mask(ctx.init_params)
        except ValueError as e:
            sec.values["tickets_not_run"] = str(e)[:300].rstrip(".")
            texts.append("Lottery tickets were not run: {tickets_not_run}. ")
            rounds = 0
    if rounds:
        rewind = _percent_steps([s["rewind_percent"]], num_steps)[0]
        controls = list(s["controls"])
        ctx.log(f"    lottery tickets: {_plural_rounds(s['rounds'])} of {s['rate']:g}, rewound to step "
                f"{rewind}, controls {', '.join(controls) or 'none'} ...")
        pruned = parts.get("pruning", lambda: sparsity.iterative_pruning(
            init, ctx.data, kw, rounds=rounds, rate=float(s["rate"]), rewind_step=rewind,
            key=_key(ctx, 41), controls=controls, store=parts.child("pruning-rounds")),
            sparsity.PruningResult)
        sp = np.asarray(pruned.sparsity, float)
        acc = {k: np.asarray(v, float) for k, v in pruned.test_accuracy.items()}
        r = rounds
        sec.values.update(rounds=r, rate=float(s["rate"]), rewind_step=rewind,
                          sparsity=[_r(v, 4) for v in sp], sparsity_last=_r(float(sp[-1]), 4),
                          sparsity_expected=_r(1 - (1 - float(s["rate"])) ** r, 4),
                          ticket_dense=_r(float(acc["ticket"][0]), 4),
                          ticket_last=_r(float(acc["ticket"][-1]), 4),
                          test_examples=int(len(ctx.data.test["x"])))
        for c in controls:
            sec.values[f"{c}_last"] = _r(float(acc[c][-1]), 4)
        rep = sparsity.sparsity_report(pruned.mask(r))
        prunable = sum(int(rep.size[q]) for q in rep.prunable)
        # each round rounds its count to a whole weight (globally, or in each prunable leaf)
        tol = r * len(rep.prunable) / max(prunable, 1)
        sec.checks.append(check(
            "pruned fraction", bool(abs(sp[-1] - (1 - (1 - s["rate"]) ** r)) <= tol),
            "after " + _plural_rounds(r).replace(str(r), "{rounds}", 1) + " of {rate} the "
            "pruned fraction of the prunable weights is 1 - (1 - rate)^rounds to whole weights "
            "(at most one weight per leaf per round)",
            rounds=r, rate=float(s["rate"]), measured=float(sp[-1]),
            expected=1 - (1 - float(s["rate"])) ** r, allowed=tol))
        sec.tables.append({
            "caption": "Test accuracy of the network trained with each round's mask: the ticket "
                       "(rewound to step {rewind_step}) and its controls.",
            "columns": ["round", "sparsity", *acc],
            "rows": [[i, _r(float(sp[i]), 4), *[_r(float(acc[k][i]), 4) for k in acc]]
                     for i in range(len(sp))]})
        fig, axes = _figure((6.4, 3.8))
        plot.plot_pruning(pruned, ax=axes[0, 0])
        sec.figures.append({**_fig_save(fig, ctx.out, "structure-tickets", svg=True),
                            "caption": "Lottery tickets (Frankle & Carbin 2019): test accuracy "
                                       "against the fraction of the kernel weights remaining, "
                                       "the ticket against its controls (global magnitude "
                                       "pruning, {rate} of the survivors per round)."})
        best = max((float(acc[c][-1]) for c in controls), default=None)
        text = ("Iterative magnitude pruning (" + _plural_rounds(r).replace(str(r), "{rounds}", 1)
                + ", each removing {rate} of the surviving kernel weights, rewound to step "
                "{rewind_step} of {structure_steps}) leaves a fraction {sparsity_last} pruned ({sparsity_expected} expected). The "
                "ticket's test accuracy goes from {ticket_dense} dense to {ticket_last}")
        if controls:
            text += " (" + ", ".join("{" + c + "_last} for the " + c.replace("_", " ") + " control"
                                      for c in controls) + ")"
            margin = float(acc["ticket"][-1]) - best
            nt = len(ctx.data.test["x"])
            pa = min(max(0.5 * (float(acc["ticket"][-1]) + best), 0.0), 1.0)
            se = math.sqrt(2 * pa * (1 - pa) / nt)  # of a difference of two test accuracies
            sec.values.update(ticket_margin=_r(margin, 4), margin_se=_r(se, 3),
                              ticket_margin_examples=int(round(margin * nt)))
            sec.values["ticket_margin_abs_examples"] = abs(sec.values["ticket_margin_examples"])
            text += ("; the ticket leads the best control by {ticket_margin} "
                     "({ticket_margin_examples} of the {test_examples} test examples)"
                     if margin > 0 else
                     "; the ticket trails the best control by {ticket_margin} "
                     "({ticket_margin_abs_examples} of the {test_examples} test examples)"
                     if margin < 0 else "; the ticket ties the best control")
            se_words = (" the binomial standard error {margin_se} of the difference of two "
                        "unpaired test accuracies (one training seed each: the spread between "
                        "seeds is not included)")
            text += ((", more than twice" + se_words + ": a winning ticket at this sparsity. ")
                     if margin > 2 * se else
                     (", more than twice" + se_words + ": the ticket is worse than its control "
                      "here. ") if margin < -2 * se else
                     (", within twice" + se_words + ": no winning ticket can be told apart at "
                      "this sparsity. "))
        else:
            text += ". "
        texts.append(text)
    if s["spawn_percent"]:
        steps = _percent_steps(s["spawn_percent"], num_steps)
        if len(steps) < len(s["spawn_percent"]):
            ctx.log(f"    spawn_percent {s['spawn_percent']} of {num_steps} steps gives the "
                    f"steps {steps} (percentages of one step merged)")
        masks = [None] + ([pruned.mask(rounds)] if pruned is not None else [])
        ctx.log(f"    instability: copies spawned at steps {steps} "
                f"({len(masks)} network{'s' if len(masks) > 1 else ''}) ...")
        ins = parts.get("instability", lambda: sparsity.instability(
            init, ctx.data, kw, spawn_step=steps, key=_key(ctx, 42), mask=masks,
            num_ts=int(s["points"])), sparsity.InstabilityResult)
        b = np.asarray(ins.barrier["test/error"], float)
        names = ["dense"] + (["ticket"] if len(masks) > 1 else [])
        unstable = [[st for j, st in enumerate(steps) if b[i, j] >= 0.02]
                    for i in range(len(names))]
        sec.values.update(spawn_steps=steps, barrier_max=_r(float(b.max()), 4),
                          **{f"barrier_{n}": [_r(float(v), 4) for v in b[i]]
                             for i, n in enumerate(names)})
        sec.tables.append({
            "caption": "Instability to SGD noise (Frankle et al. 2020): the test-error barrier "
                       "on the linear path between two copies spawned at each step.",
            "columns": ["spawn step", *names],
            "rows": [[st, *[_r(float(b[i, j]), 4) for i in range(len(names))]]
                     for j, st in enumerate(steps)]})
        fig, axes = _figure((6.4, 3.8))
        plot.plot_instability(ins, ax=axes[0, 0], labels=["dense", "ticket"][: len(masks)])
        sec.figures.append({**_fig_save(fig, ctx.out, "structure-instability", svg=True),
                            "caption": "Instability to SGD noise: the test-error barrier between "
                                       "two copies spawned at each step and trained on with "
                                       "different data orders, with Frankle et al.'s 2% "
                                       "threshold."})
        words = []
        for n, bad in zip(names, unstable):
            if not bad:
                words.append(f"the {n} network is stable (barrier below 0.02) at every spawn "
                             "step")
                continue
            sec.values[f"unstable_{n}"] = bad
            later = [st for st in steps if st > bad[-1]]
            words.append(f"the {n} network is unstable (barrier at least 0.02) at step(s) "
                         "{unstable_" + n + "}" + (
                             "" if not later else ", stable from step {stable_from_" + n + "}"))
            if later:
                sec.values[f"stable_from_{n}"] = int(later[0])
        texts.append("For two copies spawned at steps {spawn_steps} and trained on with "
                     "different data orders, the test error on the line between them rises at "
                     "most {barrier_max} above the mean of its ends: " + "; ".join(words) + (
                         " (the ticket's mask trained from the initialisation)."
                         if len(names) > 1 else "."))
    sec.text = "".join(texts)
    return sec


SECTION_FUNCTIONS = {"hessian": section_hessian, "surface": section_surface,
                     "connect": section_connect, "ntk": section_ntk, "skips": section_skips,
                     "trainability": section_trainability, "structure": section_structure}
