"""The study driver: train (or load a saved run), then each section, resumably; results.json,
the report, the closing summary."""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from landscape.study import _resolve
from landscape.study._config import SECTIONS, ConfigError, StudyConfig
from landscape.study._run import (
    INTERRUPT_ENV,
    RANDOM_KEYS,
    SCHEMA_VERSION,
    SECTION_FUNCTIONS,
    SECTION_VERSION,
    TITLES,
    Context,
    Section,
    StudyInterrupted,
    _atomic_json,
    _fig_save,
    _figure,
    _Parts,
    _r,
    draw_keyed,
    figure_scope,
    history_fingerprint,
    study_key,
)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _log_default(*parts):
    print(*parts, flush=True)


def _open_section_store(out: Path, name: str, meta: dict, log) -> tuple:
    """The section's store, bound to ``meta``; says when an earlier result of other settings
    is replaced (and which settings changed)."""
    import shutil

    from landscape import _serialize
    from landscape import store as _store

    path = out / "sections" / name
    changed = None
    manifest = path / _store.MANIFEST
    damaged = None
    if manifest.exists():
        try:
            old = _serialize.load_json(manifest).get("meta", {})
        except (ValueError, AttributeError, OSError) as e:
            damaged = f"its record {manifest} is damaged ({type(e).__name__})"
        else:
            new = _store._strip_addresses(_serialize.to_jsonable(
                {"store_version": _store.STORE_VERSION, **meta}))
            if old != new:
                changed = _describe_change(old, new)
                after = ("this section and the ones that depend on it" if name == "training"
                         else "this section only")
                log(f"  {name}: its inputs changed since the saved result ({changed}): "
                    f"recomputing {after}")
    elif path.is_dir() and any(path.iterdir()):
        damaged = f"its record {manifest} is missing"
    if damaged:
        log(f"  {name}: {damaged}: computing the section again")
        shutil.rmtree(path)
        changed = damaged
    try:
        st = _store.Store(path, overwrite=True).bind(meta)
    except (ValueError, OSError) as e:
        raise ConfigError(f"{path}: the saved section cannot be reused ({str(e)[:300]}); delete "
                          "that directory and run the same command again.") from None
    return st, changed


# inputs of a section recorded as fingerprints: said in words when they change
_FINGERPRINT_WORDS = {"model_code": "the model's code (its initial parameters or outputs)",
                      "trained": "the trained network", "init": "the initialisation",
                      "data_hash": "the data", "other": "the second network"}


def _describe_change(old: dict, new: dict) -> str:
    from landscape import store as _store

    out = []
    for k in list(dict.fromkeys([*old, *new])):
        if old.get(k) == new.get(k):
            continue
        out.append(_FINGERPRINT_WORDS.get(k) or _store.describe_differences(
            {k: old.get(k)}, {k: new.get(k)}, limit=200))
    return "; ".join(out) or "none"


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory.")
    if out.is_dir() and any(out.iterdir()) and not any(
            (out / f).exists() for f in ("study.json", "params.npz", "data-audit.json")):
        raise ConfigError(f"--out {out} is a non-empty directory that no study wrote; choose a new "
                          "or empty directory (nothing was changed).")


def _network_fingerprint(model) -> str:
    """One fingerprint of a trained network, whoever trained it (the study or landscape.save_run):
    its parameters and state by value."""
    from landscape import _provenance

    return _provenance.data_hash({"p": model.params, "s": model.state})


def _template_fingerprint(template, x) -> str:
    """What the model's code builds: the initial parameters and state, and its outputs on a few
    training inputs (rounded to 5 significant digits, so that rounding-level differences between
    machines do not retrain). A changed factory (a width, an activation, an initialiser) changes
    it, and with it the training section."""
    import jax

    from landscape import _provenance

    def rounded(tree):  # 5 significant digits relative to the largest value
        leaves = [np.asarray(v, np.float64) for v in jax.tree.leaves(tree)
                  if np.issubdtype(np.asarray(v).dtype, np.floating)]
        scale = max([float(np.max(np.abs(v))) for v in leaves if v.size] + [0.0]) or 1.0
        return [np.round(v / scale, 5) for v in leaves]

    apply = jax.jit(template.apply_fn, static_argnames="train")
    out, _ = apply(template.params, template.state, x[:4])
    parts = {"p": template.params, "s": template.state, "out": rounded(out)}
    try:  # training mode (batch statistics, dropout): its outputs and its new state
        out_t, state_t = apply(template.params, template.state, x[:8], train=True)
        parts["train"] = rounded((out_t, state_t))
    except Exception:  # noqa: BLE001 - a model without a training mode
        pass
    return _provenance.data_hash(parts)


def _run_fingerprint(run_dir: Path) -> str:
    """The saved run's parameters and state, by their files' bytes."""
    import hashlib

    h = hashlib.sha256()
    for name in ("params.npz", "state.npz"):
        if (run_dir / name).is_file():
            h.update((run_dir / name).read_bytes())
    return h.hexdigest()[:16]


def _diverged(e, what: str) -> ConfigError:
    step = getattr(e, "step", None)
    at = f" at step {step}" if step is not None else ""
    return ConfigError(f"{what} diverged{at}: the loss, gradient or update became non-finite. "
                       "Lower [train] learning_rate (or add a warm-up schedule), then run the same "
                       "command again.")


def _audit(data, out: Path, log):
    """landscape.diagnostics.audit_data before training: its findings in RUN_DIR/data-audit.json
    and one line; non-finite values or invalid labels stop the study (what training on them
    would give is meaningless), extreme values and the warnings are reported and training goes
    on."""
    from landscape import diagnostics

    audit = diagnostics.audit_data(
        data, num_classes=int(data.num_outputs) if data.task == "classification" else None)
    _atomic_json(out / "data-audit.json", audit.to_dict())
    log(f"  {audit.one_line()}")
    fatal = [e for e in audit.errors if "extreme" not in e and "outlier" not in e]
    if fatal:
        raise ConfigError(f"the data cannot be trained on: {fatal[0]}"
                          f"{f' (+{len(fatal) - 1} more)' if len(fatal) > 1 else ''}; every "
                          f"finding with the examples' indices is in {out / 'data-audit.json'}.")
    return audit


def _interrupt_switch(name: str) -> None:
    if os.environ.get(INTERRUPT_ENV) == name:
        raise KeyboardInterrupt(f"{INTERRUPT_ENV}={name}")


class _Study:
    def __init__(self, cfg: StudyConfig, out: Path, *, log, progress, command):
        self.cfg, self.out, self.log, self.progress = cfg, Path(out), log, progress
        self.command = command
        self.results: dict = {}
        self.saved: list[str] = []
        self.current: str | None = None
        self.times: dict = {}

    # -- results.json ---------------------------------------------------------------------------
    def start_results(self, extra: dict) -> None:
        from landscape import _provenance

        old = {}
        p = self.out / "results.json"
        if p.exists():
            from landscape import _serialize

            try:
                old = _serialize.load_json(p).get("sections", {})
            except (ValueError, OSError):
                old = {}
        self.old_sections = old
        self.results = {
            "schema": SCHEMA_VERSION,
            "title": self.cfg["title"] or extra.pop("default_title"),
            "command": self.command,
            "config": self.cfg.to_json(),
            "provenance": _provenance.provenance(seeds={"study": self.cfg["seed"]}),
            "random_keys": {"rule": "jax.random.fold_in(jax.random.key(seed), i)",
                            "i": RANDOM_KEYS},
            **extra,
            "sections": {},
        }

    def write_results(self) -> None:
        _atomic_json(self.out / "results.json", self.results)

    def record(self, name: str, sec: Section, *, seconds: float, digest: str, settings,
               changed, failed: str | None = None) -> dict:
        status = ("failed" if failed else
                  "loaded" if sec.parts_total and sec.parts_loaded == sec.parts_total else
                  "computed" if not sec.parts_loaded else
                  f"resumed ({sec.parts_loaded}/{sec.parts_total} parts loaded)")
        entry = {"title": TITLES[name], "status": status, "seconds": round(seconds, 2),
                 "digest": digest, "settings": settings, "changed": changed,
                 "parts_loaded": sec.parts_loaded, "parts_total": sec.parts_total,
                 "text": sec.text, "values": sec.values, "tables": sec.tables,
                 "figures": sec.figures, "checks": sec.checks}
        self.results["sections"][name] = entry
        # sections of an earlier run that this one did not touch and that are still valid
        # (--only): kept, in the study's order
        self.write_results()
        self.saved.append(name)
        self.times[name] = seconds
        return entry

    def keep_untouched(self, digests: dict) -> None:
        for name, entry in self.old_sections.items():
            if name not in self.results["sections"] and digests.get(name) == entry.get("digest"):
                self.results["sections"][name] = entry
        order = ["training", *SECTIONS]
        self.results["sections"] = dict(sorted(self.results["sections"].items(),
                                               key=lambda kv: order.index(kv[0])))

    def line(self, name: str, entry: dict, summary: str) -> None:
        loaded = entry["status"]
        tag = "" if loaded == "computed" else f"  ({loaded})"
        self.log(f"  {name:12s} {summary}{tag}  [{entry['seconds']:.1f} s]")


def _summary_text(name: str, v: dict) -> str:
    f = lambda x: "-" if x is None else f"{x:.4g}"  # noqa: E731
    if "error" in v:
        return f"FAILED: {v['error'][:160]}"
    if name == "training":
        acc = (f", test accuracy {f(v['test_accuracy'])}" if v.get("test_accuracy") is not None
               else f", test loss {f(v['test_loss'])}" if v.get("test_loss") is not None else "")
        steps = (f"{v.get('steps')} steps" if v.get("steps") else
                 "no training history (the loss evaluated here)")
        return f"train loss {f(v.get('train_loss'))}{acc}, {steps}"
    if name == "hessian":
        return (f"top eigenvalue {f(v['top_eigenvalues'][0])}, trace {f(v['trace'])} "
                f"({v['trace_estimator']}), SLQ trace {f(v['slq_trace'])}")
    if name == "surface":
        parts = []
        if "slice_centre" in v:
            parts.append(f"slice centre {f(v['slice_centre'])}")
        if "plane_max" in v:
            parts.append(f"plane {f(v['plane_min'])}..{f(v['plane_max'])}")
        if "interp_init" in v:
            parts.append(f"interpolation {f(v['interp_init'])} -> {f(v['interp_end'])}")
        return ", ".join(parts)
    if name == "connect":
        out = f"barrier linear {f(v.get('barrier_linear'))}"
        if "barrier_aligned" in v:
            out += f", aligned {f(v['barrier_aligned'])}"
        return out
    if name == "ntk":
        out = f"kernel change {f(v.get('relative_change'))}" if "relative_change" in v else \
            f"top eigenvalue {f(v['top_eigenvalue_trained'])}"
        if "width_slope" in v:
            out += f", error slope vs width {f(v['width_slope'])}"
        return out
    if name == "trainability":
        if "lr_limit" not in v:
            return "learning-rate range not run"
        return (f"initial-curvature limit {f(v['lr_limit'])} ({v.get('lr_rule')}), study's rate "
                f"{f(v.get('lr_study_over_limit'))} x the limit, "
                + (f"first diverged {f(v['lr_first_diverged'])}"
                   if v.get("lr_first_diverged") is not None else "none diverged"))
    if name == "structure":
        out = []
        if "num_outliers" in v:
            least = "at least " if v["num_outliers"] >= v["class_k"] else ""
            out.append(f"{least}{v['num_outliers']} GGN outliers (C = {v['num_classes']})")
        if "ticket_last" in v:
            out.append(f"ticket at sparsity {f(v['sparsity_last'])}: test accuracy "
                       f"{f(v['ticket_last'])}")
        if "barrier_max" in v:
            out.append(f"largest instability barrier {f(v['barrier_max'])}")
        return ", ".join(out) or ("classification only: nothing run"
                                  if "tickets_not_run" in v else "nothing run")
    if name == "skips":
        return "top eigenvalues " + ", ".join(
            f"{r['variant']} {f(r['top_eigenvalue'])}" if "top_eigenvalue" in r else
            f"{r['variant']} diverged at step {r['diverged_at_step']}" for r in v["variants"])
    return ""


def _failed_section(out: Path, name: str, e: Exception) -> Section:
    """A section whose computation raised: the error in results.json and the traceback in
    RUN_DIR/errors/NAME.txt; its finished parts stay in its store (a rerun loads them)."""
    import traceback

    d = out / "errors"
    d.mkdir(exist_ok=True)
    tmp = d / f".{name}.txt.tmp"
    tmp.write_text("".join(traceback.format_exception(e)))
    tmp.replace(d / f"{name}.txt")
    sec = Section()
    sec.values = {"error": f"{type(e).__name__}: {str(e)[:500]}",
                  "traceback": f"errors/{name}.txt"}
    sec.text = ("This section failed: {error}. The traceback is in {traceback}; the other "
                "sections are unaffected, and the same command computes this one again.")
    return sec


def _training_values(history: dict, elapsed) -> dict:
    v = {"steps": int(history["step"][-1]) if len(history.get("step", [])) else 0}
    for k in ("train_loss", "test_loss", "train_accuracy", "test_accuracy"):
        if k in history and len(history[k]):
            v[k] = _r(history[k][-1])
            v[f"{k}_start"] = _r(history[k][0])
    if elapsed is not None:
        v["train_seconds"] = round(float(elapsed), 2)
    return v


def _training_figure(out: Path, history: dict) -> dict:
    fig, axes = _figure((9.6, 3.6), 1, 2)
    ax = axes[0, 0]
    if "batch_loss" in history:
        ax.plot(history["step"], history["batch_loss"], color="0.7", lw=0.8, label="mini-batch")
    steps = history.get("eval_step", history.get("step"))
    if "train_loss" in history:
        ax.plot(steps, history["train_loss"], color="C0", lw=1.8, label="train (exact)")
    if "test_loss" in history:
        ax.plot(steps, history["test_loss"], color="C1", ls="--", lw=1.3, marker="o",
                markersize=4, markerfacecolor="none", label="test (exact)")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.set_title("loss")
    ax = axes[0, 1]
    for k, style in (("train_accuracy", dict(color="C0", lw=1.8)),
                     ("test_accuracy", dict(color="C1", ls="--", lw=1.3))):
        if k in history:
            ax.plot(steps, history[k], label=k.replace("_", " "), **style)
    ax.set_xlabel("step")
    ax.set_ylabel("accuracy")
    ax.set_title("accuracy")
    if ax.lines:
        ax.legend()
    # drawn from the history alone (None, not numeric: always drawn)
    return {**_fig_save(fig, out, "training", svg=True, inputs=history_fingerprint(history)),
            "caption": "Training: the mini-batch loss and the exact full-data loss and accuracy "
                       "on the training and test sets, over {steps} steps."}


def run_study(
    cfg: StudyConfig,
    out: str | os.PathLike,
    *,
    only: Sequence[str] | None = None,
    log: Callable = _log_default,
    progress: bool = True,
    command: str | None = None,
    run_dir: str | os.PathLike | None = None,
    other: str | os.PathLike | None = None,
    report: bool = True,
    train_other: bool = True,
) -> dict:
    """Run the study ``cfg`` into ``out`` (see :mod:`landscape.study`); returns results.json's
    content. ``run_dir``: analyse this saved run instead of training (``landscape analyse``).

    Raises :class:`StudyInterrupted` on Ctrl-C (finished sections are saved) and
    :class:`ConfigError` for a bad config or input.
    """
    import landscape
    from landscape import _provenance

    if not isinstance(cfg, StudyConfig):
        raise TypeError("landscape.study.run_study: cfg must be a StudyConfig (from "
                        "study.load_config(path) or study.parse_config(text)); got "
                        f"{type(cfg).__name__}.")
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"landscape.study.run_study: out must be a directory path; got "
                        f"{type(out).__name__}.")
    if only is not None and (isinstance(only, str) or not all(isinstance(n, str) for n in only)):
        raise TypeError("landscape.study.run_study: only must be a list of section names, e.g. "
                        f"['hessian', 'surface']; got {only!r}.")
    out = Path(out).resolve()
    _check_out(out)
    only = list(cfg.sections if only is None else only)
    for name in only:
        if name not in SECTIONS and name != "training":
            raise ConfigError(f"--only: unknown analysis {name!r}; allowed: training (train "
                              f"only), {', '.join(SECTIONS)}.")
    study = _Study(cfg, out, log=log, progress=progress, command=command)
    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    from landscape import store as _store

    try:
        with _store.quiet_interrupts():
            return _run(study, cfg, out, only, run_dir, other, report, t_start, landscape,
                        _provenance, train_other)
    except KeyboardInterrupt:
        if study.results:
            study.write_results()
        raise StudyInterrupted(list(study.saved), study.current, out) from None


def _run(study, cfg, out, only, run_dir, other, report, t_start, landscape, _provenance,
         can_train):
    log = study.log
    data = _resolve.load_data(cfg)
    _resolve.check_with_data(cfg, data)
    audit = _audit(data, out, log)
    template, desc = _resolve.build_model(cfg, data, seed=cfg["seed"])
    code_fp = _template_fingerprint(template, data.train["x"])
    loss = _resolve.loss_name(data)
    log(f"landscape study: {data!r}; model {desc['name']}, {template.num_params} parameters")
    _atomic_json(out / "study.json", {"schema": SCHEMA_VERSION, "config": cfg.to_json(),
                                      "model": desc, "data": data.spec,
                                      # None: this directory's own study trained the run
                                      "analysed_run": str(Path(run_dir).resolve())
                                      if run_dir and Path(run_dir).resolve()
                                      != (out / "sections" / "training" / "run").resolve()
                                      else None,
                                      "can_train": bool(can_train or run_dir is None)})
    study.start_results({"default_title": f"{desc['name']} on {data.name}",
                         "model": {**desc, "num_params": int(template.num_params)},
                         "data": {"spec": data.spec, "hash": data.hash,
                                  "num_train": int(len(data.train["x"])),
                                  "num_test": int(len(data.test["x"])),
                                  "input_shape": list(data.input_shape),
                                  "num_outputs": int(data.num_outputs), "task": data.task,
                                  "audit": {"summary": audit.one_line(),
                                            "errors": list(audit.errors),
                                            "warnings": list(audit.warnings),
                                            "file": "data-audit.json"}}})
    # -- training (or the saved run) ------------------------------------------------------------
    study.current = "training"
    t0 = time.perf_counter()
    train_other = None
    if run_dir is not None and can_train:
        def train_other(seed):
            m, _ = _resolve.build_model(cfg, data, seed=seed)
            try:
                return landscape.train(m, data.train, seed=seed, progress=False,
                                       **_resolve.train_kwargs(cfg, data))
            except landscape.TrainingDivergedError as e:
                raise _diverged(e, f"training the second network (seed {seed})") from None
    init_params, init_note = template.params, "the initialisation of the config's seed"
    logged = None  # the history as logged, where it differs from the one shown
    sec = Section()
    if run_dir is None:
        kw = _resolve.train_kwargs(cfg, data)
        callbacks = []
        every = cfg["train"]["sharpness_every"]
        if every:
            from landscape import hessian

            callbacks.append(hessian.sharpness_callback(every=every, key=study_key(cfg['seed'], 99)))
        settings = {"train": cfg["train"], "model": desc, "data": data.spec, "seed": cfg["seed"]}
        meta = {"job": "landscape.study:training", "version": SECTION_VERSION, **settings,
                "data_hash": data.hash,
                "model_code": code_fp}
        log(f"[training] {cfg['train']['optimizer']}, learning rate "
            f"{cfg['train']['learning_rate']}, {_plural(cfg['train']['epochs'], 'epoch')} of batch "
            f"{cfg['train']['batch_size']} ({kw['num_steps']} steps)")
        store, changed = _open_section_store(out, "training", meta, log)
        parts = _Parts(store, sec)
        def train_main():
            try:
                return landscape.train(template, data.train, callbacks=callbacks,
                                       seed=cfg["seed"], progress=study.progress, **kw)
            except landscape.TrainingDivergedError as e:
                raise _diverged(e, "training") from None

        res = parts.run("run", train_main, template)
        model, history = res.model, dict(res.history)
        elapsed = getattr(res, "elapsed", None)
        run_path = store.path / "run"

        def train_other(seed):
            m, _ = _resolve.build_model(cfg, data, seed=seed)
            try:
                return landscape.train(m, data.train, seed=seed, progress=False, **kw)
            except landscape.TrainingDivergedError as e:
                raise _diverged(e, f"training the second network (seed {seed})") from None
        digest_train = _network_fingerprint(model)
    else:
        run_path = Path(run_dir).resolve()
        log(f"[training] loading the saved run {run_path}")
        try:
            run = landscape.load_run(run_path, model=template)
        except Exception as e:  # noqa: BLE001 - missing, damaged or another model's: one line
            raise ConfigError(f"{run_path}: the saved run could not be loaded with the config's "
                              f"model ({type(e).__name__}: {str(e)[:1500]}).") from None
        model, history, elapsed = run.model, dict(run.history), None
        sec.parts_total = sec.parts_loaded = 1  # the saved run: loaded, not computed
        settings = {"run": str(run_path), "config": run.config}
        # the report's provenance is the run's own training, not the config's [train] defaults
        study.results["config"]["train"] = {"source": f"the saved run ({run_path}/config.json)",
                                            **{k: v for k, v in (run.config or {}).items()
                                               if k not in ("model", "data")}}
        changed = None
        digest_train = _network_fingerprint(model)
        snaps = run.snapshots
        if snaps is not None and len(snaps.get("step", [])) and int(snaps["step"][0]) == 0:
            import jax

            init_params = jax.tree.map(lambda a: a[0], snaps["params"])
            init_note = "the run's snapshot at step 0"
        else:
            init_note = ("rebuilt from the model's recorded seed (the run has no step-0 "
                         "snapshot)")
            if desc["kind"] == "registry" and (run.config.get("model") or {}).get("seed") is not None:
                from landscape.models import model_from_spec

                init_params = model_from_spec(run.config["model"]).params
            elif desc["kind"] == "factory":
                init_note = "the factory's initialisation for the config's seed"
        if "train_loss" not in history:  # evaluated here: not a logged loss (no check on it)
            ev = landscape.evaluate(landscape.make_loss_fn(model, loss), model.params, data.train)
            history["train_loss"] = np.asarray([float(ev["loss"])])
            logged = {k: v for k, v in history.items() if k != "train_loss"}
    wd = (cfg["train"]["weight_decay"] if run_dir is None
          else float(settings["config"].get("weight_decay") or 0.0))
    loss_fn = landscape.make_loss_fn(model, loss, weight_decay=wd)
    sec.values = _training_values(history, elapsed)
    sec.values["run"] = str(run_path)
    if len(history.get("step", [])):
        sec.figures.append(_training_figure(out, history))
    t = cfg["train"]
    sec.text = ("{steps} steps of " + t["optimizer"] + " (learning rate {learning_rate}, "
                "schedule " + t["schedule"] + ", batch {batch_size}) from seed {seed}; the "
                "training loss fell from {train_loss_start} to {train_loss}.") \
        if run_dir is None else ("The saved run {run}, analysed as saved." if
                                 len(history.get("step", [])) else
                                 "The saved run {run}, analysed as saved (it records no training "
                                 "history).")
    if run_dir is None:
        sec.values.update(learning_rate=t["learning_rate"], batch_size=t["batch_size"],
                          seed=cfg["seed"])
    entry = study.record("training", sec, seconds=time.perf_counter() - t0, digest=digest_train,
                         settings=settings, changed=changed)
    study.line("training", entry, _summary_text("training", sec.values))
    _interrupt_switch("training")
    ctx = Context(cfg=cfg, out=out, data=data, model=model, init_params=init_params,
                  init_note=init_note, history=history if logged is None else logged,
                  loss_fn=loss_fn, seed=cfg["seed"],
                  log=lambda *a: log(*a), progress=study.progress, template=template,
                  train_other=train_other, other_run=Path(other).resolve() if other else None,
                  model_desc=desc)
    # -- the analyses ---------------------------------------------------------------------------
    other_path = ctx.other_run or ((cfg.base / cfg["connect"]["other"]).resolve()
                                   if cfg["connect"]["other"] else None)
    if other_path is not None and "connect" in only and not (other_path / "params.npz").is_file():
        raise ConfigError(f"connect: the second network {other_path} is not a run directory (no "
                          "params.npz; save one with landscape.save_run).")
    other_fp = _run_fingerprint(other_path) if other_path is not None else None

    def section_meta(name):
        meta = {"job": f"landscape.study:{name}", "version": SECTION_VERSION,
                "settings": dict(cfg[name]), "seed": cfg["seed"], "data_hash": data.hash}
        if name != "skips":  # the four ResNets do not depend on the study's model
            meta["model_code"] = code_fp
        if name not in ("skips", "trainability"):  # the four ResNets, and the network at
            meta["trained"] = digest_train              # initialisation: not the trained one
        if name == "structure":  # the trained network, and new trainings from the initialisation
            meta["init"] = _provenance.data_hash(ctx.init_params)
            # what the new trainings use (sharpness_every only monitors the study's own run)
            meta["train"] = {k: v for k, v in cfg["train"].items() if k != "sharpness_every"}
        if name == "trainability":
            meta["init"] = _provenance.data_hash(ctx.init_params)
            meta["train"] = {k: cfg["train"][k] for k in ("optimizer", "optimizer_settings",
                                                          "learning_rate", "batch_size",
                                                          "weight_decay")}
        if name == "connect" and other_path is not None:
            meta["other"] = {"run": str(other_path), "fingerprint": other_fp}
        elif name == "connect":  # the second network is trained here: by these settings
            meta["other_training"] = {"train": cfg["train"], "model": desc}
        return meta

    from landscape import _serialize
    from landscape import store as _store

    # what each section's store would be bound to now: an earlier result of a section this run
    # does not touch (--only) is kept while its digest still matches
    digests = {"training": digest_train}
    for name in SECTIONS:
        digests[name] = _store._digest(_store._strip_addresses(_serialize.to_jsonable(
            {"store_version": _store.STORE_VERSION, **section_meta(name)})))
    todo = [n for n in SECTIONS if n in only]
    for i, name in enumerate(todo, 1):
        study.current = name
        t0 = time.perf_counter()
        settings = dict(cfg[name])
        meta = section_meta(name)
        log(f"[{i}/{len(todo)}] {TITLES[name]}")
        store, changed = _open_section_store(out, name, meta, log)
        try:
            sec = Section()
            with figure_scope(sec, store._digest):
                sec = SECTION_FUNCTIONS[name](ctx, _Parts(store, sec))
            failed = None
        except (KeyboardInterrupt, ConfigError):
            raise
        except Exception as e:  # noqa: BLE001 - one section's failure must not lose the others
            sec, failed = _failed_section(out, name, e), f"{type(e).__name__}: {e}"
        entry = study.record(name, sec, seconds=time.perf_counter() - t0, digest=store._digest,
                             settings=settings, changed=changed, failed=failed)
        study.line(name, entry, _summary_text(name, sec.values))
        _interrupt_switch(name)
    study.current = None
    study.keep_untouched(digests)
    ov = _overview(out, history, study.results["sections"])
    if ov is not None:
        study.results["overview"] = ov
    study.results["seconds"] = round(time.perf_counter() - t_start, 2)
    if report:
        study.results["report"] = "report.html"
    study.write_results()
    if report:
        from landscape.study import _html

        _html.write_report(out)
    _print_summary(study, out)
    return study.results


_OVERVIEW_PARTS = {"density": ("hessian", "density"), "eigenvalues": ("hessian", "eigenvalues"),
                   "slice": ("surface", "slice_1d"), "interpolation": ("surface", "interpolation"),
                   "linear": ("connect", "profile_linear"), "aligned": ("connect", "profile_aligned"),
                   "ntk_init": ("ntk", "ntk_init"), "ntk_trained": ("ntk", "ntk_trained")}


def _overview(out: Path, history: dict, sections: dict) -> dict | None:
    """The overview figure (every analysis in one 2 x 3 figure) when the sections it draws
    are all in results.json and their parts in the stores; None otherwise."""
    import types

    import ntk
    from landscape import connect, hessian, surface
    from landscape import store as _store
    from landscape.study._overview import overview_figure

    classes = {"density": hessian.DensityResult, "eigenvalues": hessian.EigenResult,
               "slice": surface.SliceResult, "interpolation": surface.SliceResult,
               "linear": connect.Profile, "aligned": connect.Profile,
               "ntk_init": ntk.EmpiricalKernel, "ntk_trained": ntk.EmpiricalKernel}
    got = {}
    drawn_from = hashlib.sha256()  # the parts' files and the history: all the figure shows
    for key, (sec, entry) in _OVERVIEW_PARTS.items():
        path = out / "sections" / sec / f"{entry}.npz"
        if sec not in sections or not path.is_file() or not (out / "sections" / sec /
                                                              _store.MANIFEST).is_file():
            return None
        got[key] = classes[key].load(path)
        drawn_from.update(hashlib.sha256(path.read_bytes()).digest())
    hist = history_fingerprint(history)
    parts = {"density": got["density"], "eigenvalues": got["eigenvalues"], "slice": got["slice"],
             "interpolation": got["interpolation"],
             "connectivity": {"linear": got["linear"], "aligned": got["aligned"]},
             "ntk": (np.asarray(got["ntk_init"].matrix), np.asarray(got["ntk_trained"].matrix))}
    figures = out / "figures"
    draw_keyed(figures, "overview", ("png",),
               None if hist is None else f"{drawn_from.hexdigest()} {hist}",
               lambda: overview_figure(figures / "overview.png",
                                       types.SimpleNamespace(history=history), parts))
    return {"file": "figures/overview.png",
            "caption": "Overview: training, the Hessian's spectral density with its top "
                       "eigenvalues, the 1-D slice, the interpolation from initialisation, the "
                       "paths between the two networks and the empirical NTK's spectrum; each "
                       "is shown larger in its section below."}


def _print_summary(study, out: Path) -> None:
    r = study.results
    log = study.log
    log("")
    log(f"summary: {r['title']}")
    for name, entry in r["sections"].items():
        checks = entry.get("checks", [])
        marks = "".join("+" if c["passed"] else "-" if c["passed"] is False else "."
                        for c in checks)
        log(f"  {name:12s} {entry['seconds']:7.1f} s  {entry['status']:9s}"
            f"{'  checks ' + marks if marks else ''}  {_summary_text(name, entry['values'])}")
    failed = [c["name"] for e in r["sections"].values() for c in e.get("checks", [])
              if c["passed"] is False]
    errors = [n for n, e in r["sections"].items() if e.get("status") == "failed"]
    if errors:
        log(f"  sections that FAILED: {', '.join(errors)} (tracebacks in "
            f"{out.resolve() / 'errors'}; the same command computes them again)")
    log(f"  checks: {'all passed' if not failed else 'FAILED: ' + '; '.join(failed)} "
        "(+ passed, - failed, . not applicable)")
    log(f"  total {r.get('seconds', 0):.1f} s; results {out.resolve() / 'results.json'}")
    if (out / "report.html").exists():
        log(f"  report  {out.resolve() / 'report.html'}")


def rerender(out: str | os.PathLike) -> Path:
    """Write report.html again from results.json and the figures (nothing is recomputed)."""
    from landscape.study import _html

    out = Path(out)
    if not (out / "results.json").is_file():
        raise ConfigError(f"{out}: no results.json (run `landscape study` or `landscape analyse` "
                          "first).")
    return _html.write_report(out)


def print_interrupted(e: StudyInterrupted, command: str, file=None) -> str:
    saved = ", ".join(e.saved) if e.saved else "nothing"
    during = (f" during {e.current}" + (" (its finished parts are saved too)"
                                        if e.current != "training" else "")
              if e.current else "")
    msg = (f"landscape: interrupted{during}; saved {saved} in {e.out.resolve()}; resume with: "
           f"{command}")
    print(f"\n{msg}", file=file or sys.stderr, flush=True)
    return msg

