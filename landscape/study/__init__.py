"""Studies: a trained network (yours or ours) through every analysis, into a run directory with
results.json, figures and a self-contained report.html.

The command line (``landscape study CONFIG.toml``, ``landscape analyse RUN_DIR``,
``landscape report RUN_DIR``, ``landscape demo``) is a thin layer over these functions::

    from landscape import study
    cfg = study.load_config("study.toml")             # or study.parse_config(text)
    results = study.run_study(cfg, "runs/mine", only=["hessian", "surface"])
    study.render_report("runs/mine")                  # report.html again, nothing recomputed

A config names the model (``"mlp"``, ``"cnn"``, ``"resnet"``, ``"transformer"`` or your factory
``"package.module:function"``), the data (an embedded set or ``.npz`` files), training, and the
analyses with their sizes; ``study.default_config_text()`` is the commented default.
Each section (training, hessian, surface, connect, ntk, skips) is saved in its own
:class:`landscape.Store` under ``RUN_DIR/sections``, bound to what it depends on: a rerun loads
the finished sections (and the finished parts of an interrupted one), and a changed setting
recomputes only the sections it affects.
"""

from __future__ import annotations

import os
from pathlib import Path

from landscape.study._config import (
    SCHEMA,
    SECTIONS,
    ConfigError,
    StudyConfig,
    default_text,
    demo,
    demo_text,
    load,
    parse,
)
from landscape.study._driver import print_interrupted, rerender, run_study
from landscape.study._run import INTERRUPT_ENV, StudyInterrupted, surface_roughness

__all__ = ["SCHEMA", "SECTIONS", "ConfigError", "StudyConfig", "StudyInterrupted",
           "analyse", "default_config_text", "demo_config", "demo_config_text", "load_config",
           "parse_config", "render_report", "run_study", "surface_roughness", "INTERRUPT_ENV",
           "print_interrupted"]

load_config = load
parse_config = parse
default_config_text = default_text
demo_config = demo
demo_config_text = demo_text
render_report = rerender


def _from_values(values: dict, *, base: Path, mode: str, source: str) -> StudyConfig:
    """A config from a dict of tables (a saved study's or one derived from a run), validated
    as a file would be."""
    from landscape.study._config import _toml_value

    lines = [f"# {source}"]
    for key, val in values.items():
        if (not isinstance(val, dict) and key in SCHEMA[""]
                and val != SCHEMA[""][key].default):
            lines.append(f"{key} = {_toml_value(val)}")
    for table, fields in values.items():
        if isinstance(fields, dict) and table in SCHEMA:
            lines.append(f"[{table}]")
            # only what differs from the defaults: the file sets it (npz-only keys stay unset)
            lines += [f"{k} = {_toml_value(v)}" for k, v in fields.items()
                      if k in SCHEMA[table] and v != SCHEMA[table][k].default]
    return parse("\n".join(lines) + "\n", path=None, base=base, mode=mode)


def config_for_run(run_dir: str | os.PathLike, *, config: str | os.PathLike | None = None,
                   data: str | None = None, mode: str = "default") -> tuple[StudyConfig, Path]:
    """The config and the run to analyse in ``run_dir``: a study's directory (its saved config
    and trained run), or a run saved by :func:`landscape.save_run` (model and data from its
    recorded specs; ``config`` supplies what a run does not record, ``data`` names the data)."""
    from landscape import _serialize

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such directory (give a run saved by landscape.save_run "
                          "or a directory written by `landscape study`).")
    saved = None
    if (run_dir / "study.json").is_file():
        try:
            saved = _serialize.load_json(run_dir / "study.json")
            values = {k: v for k, v in saved["config"].items() if not k.startswith("_")}
        except (ValueError, KeyError, TypeError, AttributeError, OSError) as e:
            if config is None:
                raise ConfigError(f"{run_dir / 'study.json'} is damaged ({type(e).__name__}: "
                                  f"{str(e)[:200]}); pass --config CONFIG.toml to analyse the "
                                  "run with an explicit config.") from None
            saved = None
    if saved is not None and saved.get("analysed_run") is None:  # a study trained this run
        run = run_dir / "sections" / "training" / "run"
        if data:
            raise ConfigError(f"--data: {run_dir} is a study's directory and records its data "
                              f"({values.get('data', {}).get('name')}); to analyse its network "
                              "on other data pass --config CONFIG.toml (nothing was run).")
        if config is not None:
            if not (run / "params.npz").is_file():
                raise ConfigError(f"{run_dir}: the study's trained run is not saved yet ({run}); "
                                  "run the study again to finish its training.")
            return load(config, mode=mode), run
    elif saved is not None and (config is not None or data):
        # written by an earlier `analyse` of a saved run: --config / --data apply to that run
        run_dir, saved = Path(saved["analysed_run"]), None
    if saved is not None:
        run = Path(saved.get("analysed_run") or run_dir / "sections" / "training" / "run")
        src = saved["config"].get("_source", "built in")
        base = (Path(saved["config"]["_base"]) if saved["config"].get("_base") else
                Path(src).parent if src != "built in" else run_dir)  # where the factory is
        cfg = _from_values(values, base=base, mode=mode, source=f"the config of {run_dir}")
        if not (run / "params.npz").is_file():
            raise ConfigError(f"{run_dir}: the study's trained run is not saved yet ({run}); run "
                              "the study again to finish its training.")
        return cfg, run
    if not (run_dir / "params.npz").is_file():
        raise ConfigError(f"{run_dir}: not a run directory (no params.npz; save one with "
                          "landscape.save_run, or give a directory written by `landscape study`).")
    if config is not None:
        cfg = load(config, mode=mode)
        if data:
            cfg.values["data"]["name"] = data
        return cfg, run_dir
    try:
        saved = (_serialize.load_json(run_dir / "config.json")
                 if (run_dir / "config.json").is_file() else {})
    except (ValueError, OSError) as e:
        raise ConfigError(f"{run_dir / 'config.json'} is damaged ({type(e).__name__}: "
                          f"{str(e)[:200]}); pass --config CONFIG.toml naming the model and the "
                          "data.") from None
    spec = saved.get("model")
    if not spec:
        raise ConfigError(f"{run_dir}: the run records no model of ours (config.json has no "
                          "model spec): pass --config CONFIG.toml naming your model's factory "
                          "(model.name = \"package.module:function\") and the data.")
    dspec = dict(saved.get("data") or {})
    if data:
        dspec = {"name": data}
    if not dspec.get("name"):
        raise ConfigError(f"{run_dir}: the run records no data set: pass --data NAME (one of "
                          "digits, mnist1d, teacher) or --config CONFIG.toml.")
    values = {"seed": int(spec.get("seed", 0)),
              "model": {"name": spec["name"], "settings": dict(spec.get("kwargs", {}))},
              "data": {"name": dspec.pop("name"), "settings": dspec},
              "train": {"batch_size": int(saved.get("batch_size", 64)),
                        "weight_decay": float(saved.get("weight_decay", 0.0))}}
    return _from_values(values, base=run_dir, mode=mode,
                        source=f"derived from {run_dir}/config.json"), run_dir


def analyse(run_dir, out=None, *, only=None, other=None, config=None, data=None,
            mode: str = "default", **kwargs) -> dict:
    """Run analyses on a saved run (see :func:`config_for_run`); results go to ``out``
    (default ``run_dir``)."""
    cfg, run = config_for_run(run_dir, config=config, data=data, mode=mode)
    # a second network for connect is trained here only with training settings from a config:
    # the study's own (a directory `landscape study` trained) or --config
    can_train = config is not None
    if not can_train and (Path(run_dir) / "study.json").is_file():
        from landscape import _serialize

        saved = _serialize.load_json(Path(run_dir) / "study.json")
        can_train = bool(saved.get("can_train", saved.get("analysed_run") is None))
    log = kwargs.get("log") or print
    if only is None:
        only = [s for s in cfg.sections if s != "skips"]
        if "connect" in only and other is None and not cfg["connect"]["other"] and not can_train:
            only.remove("connect")
            log("landscape analyse: connect left out: it needs a second network (--other "
                "RUN_DIR, or --config CONFIG.toml with the training settings to train one)")
    elif "connect" in only and other is None and not cfg["connect"]["other"] and not can_train:
        raise ConfigError("--only connect needs a second network: pass --other RUN_DIR (a second "
                          "run of the same model), or --config CONFIG.toml with the training "
                          "settings to train one (nothing was run).")
    if other is not None and not (Path(other) / "params.npz").is_file():
        raise ConfigError(f"--other {other}: not a run directory (no params.npz; save one with "
                          "landscape.save_run).")
    return run_study(cfg, out or run_dir, only=only, run_dir=run, other=other,
                     train_other=can_train, **kwargs)
