"""The study configuration: one TOML file (read with the standard library's ``tomllib``).

The schema below is the single source of the defaults, the allowed values, the ``--quick`` and
``--full`` sizes, the validation messages and the commented default config that
``landscape study --print-config`` writes. A table's free-form ``settings`` (model and data)
are passed through to the builder, which validates them.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import math
import os
import re
import tomllib
from pathlib import Path
from typing import Any

SECTIONS = ("hessian", "surface", "connect", "ntk", "trainability", "structure", "skips")
"""The analyses a study can run, in the order they run (after training)."""

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "step", "exponential")
DATA_NAMES = ("digits", "mnist1d", "teacher", "npz")
MODEL_NAMES = ("mlp", "cnn", "resnet", "transformer")


class ConfigError(ValueError):
    """A bad study configuration: the message names the key, the file and line, and what is
    allowed. The command line prints it and exits with status 2."""


@dataclasses.dataclass(frozen=True)
class Field:
    """One key of the schema: its type, default and help, and the values it allows."""

    type: type | tuple
    default: Any
    help: str
    choices: tuple | None = None
    quick: Any = None  # the value under --quick (None: the default)
    full: Any = None  # the value under --full (None: the default)
    minimum: float | None = None  # inclusive lower bound
    above: float | None = None  # exclusive lower bound (a positive number: above=0)
    below: float | None = None  # exclusive upper bound (numbers, and the entries of int lists)
    off: Any = None  # a value that switches the part off, allowed outside the bounds (0, [])
    item_choices: tuple | None = None  # for lists of names
    min_items: int = 0  # lists of integers: at least this many distinct entries (besides off)
    item_minimum: int = 1  # lists of integers: the smallest entry allowed
    # --quick never makes work larger: "at_most" for sizes (the quick value is a ceiling);
    # an interval between measurements during training is ("steps_of", (table, key)) where
    # (table, key) is the count of epochs: --quick caps it at the quick value but never gives
    # more measurements than the config without --quick (see _quick_interval)
    quick_rule: Any = "at_most"
    path: bool = False  # a path: relative to the config's directory, stored absolute

    def allowed(self) -> str | None:
        """The values allowed besides the type, in words (``>= 1``, ``0 (off) or >= 3``,
        ``> 0``); None where any value of the type is."""
        if self.type is list and self.item_choices is None:
            n = self.min_items
            kind = ("positive integers" if self.item_minimum == 1 else
                    f"integers >= {self.item_minimum}")
            if self.below is not None:
                kind += f" below {self.below:g}"
            if self.item_minimum < 1:
                kind = "distinct " + kind
            words = (f"a list of at least {n} distinct {kind}" if n > 1 else
                     f"a non-empty list of {kind}" if n == 1 else f"a list of {kind}")
            return f"[] (skip) or {words}" if self.off == [] else words
        parts = []
        if self.minimum is not None:
            parts.append(f">= {self.minimum:g}")
        if self.above is not None:
            parts.append(f"> {self.above:g}")
        if self.below is not None:
            parts.append(f"< {self.below:g}")
        if not parts:
            return None
        bound = " and ".join(parts)
        return f"{_toml_value(self.off)} (off) or {bound}" if self.off is not None else bound


F = Field
# (table, key) -> Field; a table's order is the order of the printed config
SCHEMA: dict[str, dict[str, Field]] = {
    "": {
        "title": F(str, "", "A title for the report (default: the model and data names)."),
        "seed": F(int, 0, "Seed of the initialisation, the data order and every analysis's random "
                          "choices (directions, probes, eigensolver starts).", minimum=0),
    },
    "model": {
        "name": F(str, "mlp", 'One of ours ("mlp", "cnn", "resnet", "transformer") or your own factory as '
                              '"package.module:function" (importable from the config\'s directory '
                              "or sys.path) returning a Flax NNX module, a (Linen module, "
                              "variables) pair or a landscape.Model. The factory gets the "
                              "settings below as keyword arguments, plus input_shape, "
                              "num_outputs and seed where its signature takes them."),
        "settings": F(dict, {"hidden": [256, 256]},
                      "Keyword arguments of the model (ours: see landscape.make_model, e.g. "
                      "hidden, activation, init; resnet: widths, blocks, skip, batch_norm; the "
                      "default is the default MLP's: another model gets none)."),
    },
    "data": {
        "name": F(str, "digits", 'An embedded data set ("digits": scikit-learn\'s 8x8 digits, '
                                 '"mnist1d", "teacher": a random teacher network) or "npz": '
                                 "your arrays in .npz files (train and test below).",
                  choices=DATA_NAMES),
        "settings": F(dict, {}, "Keyword arguments of the loader (e.g. digits: flat = false for "
                                "8x8x1 images; teacher: task, num_train, input_dim)."),
        "train": F(str, "", "npz only: the training arrays (a path relative to the config's "
                            "directory; recorded as an absolute path).", path=True),
        "test": F(str, "", "npz only: the test arrays.", path=True),
        "x": F(str, "x", "npz only: the name of the inputs array."),
        "y": F(str, "y", "npz only: the name of the labels (integers 0..C-1 of shape (N,); "
                         "floats that are whole numbers are accepted) or targets array."),
        "task": F(str, "classification", 'npz only: "classification" (cross-entropy) or '
                                         '"regression" (mean squared error).',
                  choices=("classification", "regression")),
    },
    "train": {
        "optimizer": F(str, "adam", "Optimiser by name.", choices=OPTIMIZERS),
        "learning_rate": F(float, 1e-3, "Peak learning rate.", above=0.0),
        "schedule": F(str, "constant", "Learning-rate schedule by name (the warm-up of "
                                       "warmup_cosine is warmup_steps).", choices=SCHEDULES),
        "warmup_steps": F(int, 0, "Warm-up steps: the learning rate rises linearly from 0 "
                                  "over them, then follows the schedule (any schedule; fewer "
                                  "than the training steps).", minimum=0),
        "optimizer_settings": F(dict, {}, "Further arguments of the Optax optimiser (momentum "
                                          "= 0.9 for momentum and nesterov; b1, b2, eps for "
                                          "adam; decay for rmsprop; ...: the keyword arguments "
                                          "of optax.sgd, optax.adam, optax.adamw or "
                                          "optax.rmsprop)."),
        "epochs": F(int, 20, "Training epochs (an epoch is N // batch_size steps).", quick=1,
                    minimum=1),
        "batch_size": F(int, 64, "Examples per step.", minimum=1),
        "weight_decay": F(float, 0.0, "L2 coefficient added to the loss (coupled).", minimum=0.0),
        "sharpness_every": F(int, 0, "Record the top Hessian eigenvalue (sharpness) every this "
                                     "many steps during training, with the optimiser's stability "
                                     "threshold (2/lr for sgd, (2+2b)/lr heavy ball, Adam's "
                                     "on the preconditioned sharpness; 0: off).", quick=5, minimum=0,
                           quick_rule=("steps_of", ("train", "epochs"))),
    },
    "analyses": {
        "run": F(list, list(SECTIONS[:4]), "The analyses to run, in this order: hessian "
                                           "(eigenvalues, trace, spectral density), surface "
                                           "(1-D and 2-D slices, interpolation from "
                                           "initialisation), connect (barrier to a second "
                                           "network before and after weight matching), ntk "
                                           "(empirical tangent kernel), trainability (the "
                                           "network at initialisation: the learning-rate range "
                                           "and its stability limit), structure (lottery "
                                           "tickets, instability to SGD noise and the class "
                                           "structure of the Gauss-Newton matrix), skips (Li et "
                                           "al. 2018's ResNet with and without skips and batch "
                                           "norm).",
                 item_choices=SECTIONS),
    },
    "hessian": {
        "k": F(int, 5, "Top eigenvalues.", quick=2, full=10, minimum=1),
        "max_hvps": F(int, 60, "Budget of Hessian-vector products of the trace (an exact trace "
                               "uses fewer where the network allows it).", quick=10, full=200,
                      minimum=3),
        "density_probes": F(int, 5, "Random probes of the spectral density (SLQ).", quick=2,
                            full=10, minimum=1),
        "density_steps": F(int, 60, "Lanczos steps per probe.", quick=12, full=100, minimum=2),
    },
    "surface": {
        "points_1d": F(int, 41, "Points of the 1-D slice along a filter-normalised random "
                                "direction (0: skip; an even number is rounded up to the next "
                                "odd one, so that the centre is a point).", quick=9, full=101,
                       minimum=3, off=0),
        "points_2d": F(int, 21, "Points per axis of the 2-D slice (0: skip; rounded up to an "
                                "odd number).", quick=5, full=51, minimum=3, off=0),
        "span": F(float, 1.0, "The slices cover [-span, span] in units of the direction.",
                  above=0.0),
        "interp_points": F(int, 41, "Points of the interpolation from initialisation (t in "
                                    "[-0.5, 1.5]; 0: skip; used as 4m + 1 points, at least 5, "
                                    "so that t = 0 and t = 1 are points).", quick=9, full=101,
                           minimum=3, off=0),
    },
    "connect": {
        "points": F(int, 25, "Points on each linear path.", quick=7, full=51, minimum=3),
        "other": F(str, "", "The second network: a run directory (relative to the config's "
                            "directory; recorded as an absolute path), or empty to train the "
                            "same model from seed + 1 here.", path=True),
        "align": F(bool, True, "Also the path after weight matching (Ainsworth et al. 2022)."),
    },
    "ntk": {
        "examples": F(int, 64, "Test inputs of the empirical NTK.", quick=16, full=256,
                      minimum=2),
        "widths": F(list, [64, 256, 1024], "MLP only: hidden widths of the check that the "
                                           "empirical NTK at initialisation approaches the "
                                           "analytic one as 1/sqrt(width) (empty: skip).",
                    quick=[16, 1024], full=[64, 256, 1024, 4096], off=[], min_items=2),
        "seeds": F(int, 4, "Random networks per width of that check.", quick=2, full=8,
                   minimum=2),
    },
    "trainability": {
        "signal_examples": F(int, 256, "Training inputs of the signal-propagation statistics at "
                                       "initialisation (per-layer second moments, dead units, "
                                       "gradient norms).", quick=64, minimum=1),
        "lr_range": F(bool, True, "Run the learning-rate range from the initialisation: short "
                                  "runs of the study's optimiser over a log grid of rates, with "
                                  "the initial curvature's stability limit."),
        "lr_steps": F(int, 50, "Optimiser steps per rate (mini-batches of train.batch_size).",
                      quick=10, full=200, minimum=1),
    },
    "structure": {
        "classes": F(bool, True, "The class structure of the trained network's Gauss-Newton "
                                 "matrix (Papyan 2019, 2020): its class-mean, cross-class and "
                                 "within-class parts, their ranks, the outliers above the bulk "
                                 "edge and the attribution of the top eigenvectors "
                                 "(classification only)."),
        "class_examples": F(int, 256, "Training examples of the class decomposition (its "
                                      "per-example Jacobians are formed in chunks of 64: "
                                      "memory 64 x C x parameters).", quick=64, full=1024,
                            minimum=2),
        "rounds": F(int, 3, "Rounds of iterative magnitude pruning with rewinding (Frankle & "
                            "Carbin 2019): each removes `rate` of the surviving weights and "
                            "trains the ticket and each control once (0: skip the tickets).",
                    quick=1, full=5, minimum=1, off=0),
        "rate": F(float, 0.2, "Fraction of the surviving prunable weights (kernels) removed "
                              "per round, by global magnitude.", above=0.0, below=1.0),
        "rewind_percent": F(int, 0, "Rewind the survivors to their values at this percentage "
                                    "of the training steps (0: the initialisation, Frankle & "
                                    "Carbin 2019; a few percent: Frankle et al. 2020's late "
                                    "rewinding).", minimum=0, below=100),
        "controls": F(list, ["random_mask", "reinit"], "The controls trained with each "
                                                       "round's mask: random_mask (a random "
                                                       "mask of the same per-layer counts, "
                                                       "from the rewind state), reinit (the "
                                                       "ticket's mask from a random "
                                                       "re-initialisation).",
                      quick=["random_mask"], item_choices=("random_mask", "reinit")),
        "spawn_percent": F(list, [0, 10, 50], "Instability to SGD noise (Frankle et al. 2020): "
                                              "two copies spawned at these percentages of the "
                                              "training steps, trained on with different data "
                                              "orders, and the error barrier on the linear path "
                                              "between them; for the dense network and the last "
                                              "round's ticket ([]: skip).",
                           quick=[0, 50], off=[], item_minimum=0, below=100),
        "points": F(int, 11, "Points on each linear path of the instability.", quick=5,
                    minimum=3),
    },
    "skips": {
        "widths": F(list, [16, 32], "ResNet stage widths (--full: ResNet-56's).",
                    full=[16, 32, 64], min_items=1),
        "blocks": F(int, 4, "Basic blocks per stage (depth 2 * stages * blocks + 2: the default "
                            "is 18 layers, the shallowest at which removing skips changed the "
                            "surface on the digits; benchmarks/study/skip_depth.md).",
                    quick=1, full=9, minimum=1),
        "epochs": F(int, 20, "Training epochs of each of the four networks.", quick=1, full=40,
                    minimum=1),
        "optimizer": F(str, "momentum", "Optimiser of the four networks.", choices=OPTIMIZERS),
        "learning_rate": F(float, 0.05, "Their learning rate.", above=0.0),
        "schedule": F(str, "cosine", "Their learning-rate schedule.", choices=SCHEDULES),
        "batch_size": F(int, 128, "Their batch size.", minimum=1),
        "points": F(int, 15, "Points per axis of each 2-D surface.", quick=5, full=51,
                    minimum=3),
        "span": F(float, 1.0, "The surfaces cover [-span, span]^2.", above=0.0),
    },
}

DATA_TABLE_KEYS_NPZ = ("train", "test", "x", "y", "task")


def _type_name(t) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false",
            list: "a list", dict: "a table"}[t]


def locate(text: str | None, table: str, key: str | None) -> int | None:
    """The line (1-based) of ``key`` in ``[table]`` of a TOML text (a ``key = ...`` line after
    the table's header), or of the header when ``key`` is None; None when not found."""
    if text is None:
        return None
    current = ""
    header = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\-\" ]+?)\s*\]\s*(#.*)?$")
    for i, line in enumerate(text.splitlines(), 1):
        m = header.match(line)
        if m:
            current = m.group(1).replace('"', "").replace(" ", "")
            if key is None and current == table:
                return i
            continue
        if key is not None and current == table and re.match(
                rf"^\s*\"?{re.escape(key)}\"?\s*=", line):
            return i
    return None


@dataclasses.dataclass
class StudyConfig:
    """A validated study configuration: ``values[table][key]`` with every default filled in
    (paths absolute), ``path`` the file it came from (None: built in), ``base`` the absolute
    directory relative paths and factory modules are resolved against, ``mode``
    ``"default"``, ``"quick"`` or ``"full"``, ``explicit`` the ``(table, key)`` pairs the file
    set, ``text`` the TOML text (for the line numbers of later messages)."""

    values: dict
    path: Path | None
    base: Path
    mode: str = "default"
    explicit: frozenset = frozenset()
    text: str | None = None

    def __getitem__(self, table: str) -> dict:
        return self.values[table]

    @property
    def sections(self) -> list[str]:
        return list(self.values["analyses"]["run"])

    def where(self, table: str, key: str | None = None, setting: str | None = None) -> str:
        """``FILE, line N: table.key`` (or ``table.key.setting``, a key of a free-form
        ``settings`` table) for a message about that key."""
        if setting is not None:
            return where_setting(self.path, self.text, table, key, setting)
        return _where(self.path, self.text, table, key)

    def to_json(self) -> dict:
        out = copy.deepcopy(self.values)
        out["_source"] = str(self.path) if self.path else "built in"
        out["_base"] = str(self.base)
        out["_mode"] = self.mode
        return out


def _at(path: Path | None, line: int | None, label: str) -> str:
    name = str(path) if path else "the built-in config"
    return f"{name}{f', line {line}' if line else ''}: {label}"


def _where(path: Path | None, text: str | None, table: str, key: str | None) -> str:
    line = locate(text, table, key)
    if line is None and table and key:  # a table of its own: [train.optimizer_settings]
        line = locate(text, f"{table}.{key}", None)
    full = f"{table}.{key}" if table and key else (key or f"[{table}]")
    return _at(path, line, full)


def where_setting(path: Path | None, text: str | None, table: str, key: str,
                  setting: str) -> str:
    """Where ``setting`` of the free-form table ``[table.key]`` is (its own line, else the
    table's header, else the inline ``key = { ... }`` line)."""
    sub = f"{table}.{key}"
    line = locate(text, sub, setting) or locate(text, table, f"{key}.{setting}")
    if line is None:
        line = locate(text, sub, None) or locate(text, table, key)
    return _at(path, line, f"{sub}.{setting}")


_TOML_AT = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")


def _toml_error(e: tomllib.TOMLDecodeError, path: Path | None) -> ConfigError:
    msg = str(e)
    m = _TOML_AT.search(msg)
    line = col = None
    if m:
        line, col = int(m.group(1)), int(m.group(2))
        msg = msg[: m.start()]
    where = f"{path or 'config'}{f', line {line}, column {col}' if line else ''}"
    return ConfigError(f"{where}: not valid TOML: {msg}; fix the syntax there (key = value "
                       "lines under [table] headers, strings in double quotes; `landscape study "
                       "--print-config` writes a valid config).")


def parse(text: str, *, path: Path | None = None, base: Path | None = None,
          mode: str = "default") -> StudyConfig:
    """Validate a TOML text against :data:`SCHEMA`; fill in defaults and the sizes of ``mode``
    (``"full"`` replaces the default sizes, not values the file sets; ``"quick"``, the smoke
    test, never makes work larger: it shrinks every size, also the file's, to at most its quick
    value (a list to a subset of the file's), keeps a 0 that switches a part off, and caps an
    interval between measurements (``sharpness_every``) at its quick value without ever giving
    more measurements than the config without --quick). Paths are
    resolved against ``base`` (default: the file's directory, else the working directory) and
    stored absolute."""
    if not isinstance(text, str):
        raise TypeError(f"landscape.study.parse_config: text must be a str (the TOML text); got "
                        f"{type(text).__name__}.")
    if mode not in ("default", "quick", "full"):
        raise ValueError(f"landscape.study.parse_config: mode must be 'default', 'quick' or "
                         f"'full'; got {mode!r}.")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise _toml_error(e, path) from None
    values: dict = {}
    explicit = set()
    top_tables = [t for t in SCHEMA if t]
    for key, val in raw.items():
        if key in SCHEMA[""] or (key in SCHEMA and isinstance(val, dict)):
            continue
        if key in SCHEMA:
            raise ConfigError(f"{_where(path, text, '', key)} must be a table ([{key}]); got "
                              f"{val!r}.")
        close = ", ".join([*SCHEMA[""], *(f"[{t}]" for t in top_tables)])
        raise ConfigError(f"{_where(path, text, '', key)}: unknown key; allowed at the top "
                          f"level: {close}.")
    for table, fields in SCHEMA.items():
        given = raw if table == "" else raw.get(table, {})
        out = {}
        for key in given:
            if table == "" and key in SCHEMA and key != "":
                continue
            if key not in fields:
                raise ConfigError(f"{_where(path, text, table, key)}: unknown key; allowed in "
                                  f"[{table or 'top level'}]: {', '.join(fields)}.")
        for key, f in fields.items():
            if key in given:
                val = given[key]
                explicit.add((table, key))
                val = _check(val, f, path, text, table, key)
            else:
                val = copy.deepcopy(f.default)
            if mode == "quick" and f.quick is not None and f.quick_rule == "at_most":
                val = _quick(val, f, (table, key) in explicit)
            elif mode == "full" and f.full is not None and (table, key) not in explicit:
                val = copy.deepcopy(f.full)
            out[key] = val
        values[table] = out
    top = values.pop("")
    values = {**top, **values}
    if ("model", "settings") not in explicit and values["model"]["name"] != "mlp":
        values["model"]["settings"] = {}  # the default settings are the default MLP's
    if mode == "quick":
        for table, fields in SCHEMA.items():
            for key, f in fields.items():
                if f.quick is not None and f.quick_rule != "at_most":
                    _quick_interval(values, raw, table, key, f)
    base = Path(base) if base is not None else (path.parent if path else Path.cwd())
    base = base.expanduser().resolve()
    for table, fields in SCHEMA.items():
        for key, f in fields.items():
            if f.path and table and values[table][key]:
                values[table][key] = str((base / Path(values[table][key]).expanduser()).resolve())
    cfg = StudyConfig(values, path, base, mode, frozenset(explicit), text)
    _check_cross(cfg, text)
    return cfg


def _quick_interval(values: dict, raw: dict, table: str, key: str, f: Field) -> None:
    """An interval between measurements during training under --quick: at most its quick
    value, but never more measurements than without --quick. The training steps are
    ``epochs * (N // batch_size)`` and --quick changes only the epochs, so an interval of at
    least ``every * quick_epochs / epochs`` steps keeps ``1 + steps // every`` (step 0, then
    every ``every`` steps) from growing."""
    every = values[table][key]
    if not every:  # off stays off
        return
    ep_table, ep_key = f.quick_rule[1]
    epochs_q = values[ep_table][ep_key]  # already quick's
    given = raw.get(ep_table, {}).get(ep_key) if ep_table else raw.get(ep_key)
    epochs = given if given is not None else SCHEMA[ep_table][ep_key].default
    values[table][key] = max(min(every, f.quick), math.ceil(every * epochs_q / epochs))


def _quick(val, f: Field, explicit: bool):
    """The value under --quick: never more work than ``val`` (see :func:`parse`)."""
    quick = f.quick
    if val == 0 or val == []:  # switched off: stays off
        return val
    if not explicit:
        return copy.deepcopy(quick)
    if isinstance(val, list):  # the file's list: at most len(quick) of its own entries
        if len(val) <= len(quick):
            return val
        ordered = sorted(val)
        idx = sorted({round(i * (len(ordered) - 1) / (len(quick) - 1))
                      for i in range(len(quick))}) if len(quick) > 1 else [0]
        return [ordered[i] for i in idx]
    return min(val, quick)


def _check(val, f: Field, path, text, table, key):
    where = _where(path, text, table, key)
    t = f.type
    if t is float and isinstance(val, int) and not isinstance(val, bool):
        val = float(val)
    ok = isinstance(val, t) and not (t is int and isinstance(val, bool))
    if not ok:
        raise ConfigError(f"{where} must be {_type_name(t)}; got {val!r} ({type(val).__name__}).")
    if t is float and not math.isfinite(val):
        raise ConfigError(f"{where} must be a finite number; got {val!r}.")
    if f.choices is not None and val not in f.choices:
        raise ConfigError(f"{where} must be one of {', '.join(map(repr, f.choices))}; got "
                          f"{val!r}.")
    if t in (int, float) and not (f.off is not None and val == f.off) and (
            (f.minimum is not None and val < f.minimum)
            or (f.above is not None and val <= f.above)
            or (f.below is not None and val >= f.below)):
        raise ConfigError(f"{where} must be {f.allowed()}; got {val!r}.")
    if f.item_choices is not None:
        for v in val:
            if v not in f.item_choices:
                raise ConfigError(f"{where}: unknown entry {v!r}; allowed: "
                                  f"{', '.join(f.item_choices)}.")
        if len(set(val)) != len(val):
            raise ConfigError(f"{where} lists an entry twice: {val!r}.")
    if t is list and f.item_choices is None and not (f.off is not None and val == f.off):
        bad = (any(not isinstance(v, int) or isinstance(v, bool) or v < f.item_minimum
                   or (f.below is not None and v >= f.below) for v in val)
               or (f.item_minimum < 1 and len(set(val)) < len(val))  # spawn points: distinct
               or len(val) < f.min_items
               or (f.min_items > 1 and len(set(val)) < f.min_items))
        if bad:
            raise ConfigError(f"{where} must be {f.allowed()}; got {val!r}.")
    if t is dict:
        for k, v in val.items():
            if isinstance(v, (datetime.date, datetime.time)):
                raise ConfigError(f"{where_setting(path, text, table, key, k)} is a TOML date or "
                                  f"time ({v!r}); give a number, string, boolean or list.")
    return val


def _check_cross(cfg: StudyConfig, text):
    d = cfg["data"]
    if d["name"] == "npz":
        for key in ("train", "test"):
            if not d[key]:
                raise ConfigError(f"{_where(cfg.path, text, 'data', key)}: data.name = \"npz\" "
                                  f"needs {key} = \"file.npz\" (a path relative to the config's "
                                  "directory).")
        for role in ("x", "y"):
            if not d[role]:
                raise ConfigError(f"{_where(cfg.path, text, 'data', role)} must name an array of "
                                  "the .npz files; got an empty string.")
    else:
        for key in DATA_TABLE_KEYS_NPZ:
            if (("data", key) in cfg.explicit):
                raise ConfigError(f"{_where(cfg.path, text, 'data', key)} applies to data.name = "
                                  f"\"npz\" only (data.name is {d['name']!r}); remove it, or put "
                                  "the loader's arguments in [data.settings].")
    name = cfg["model"]["name"]
    if name not in MODEL_NAMES and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", name):
        raise ConfigError(f"{_where(cfg.path, text, 'model', 'name')} must be one of "
                          f"{', '.join(map(repr, MODEL_NAMES))} or a factory "
                          f"\"package.module:function\"; got {name!r}.")


def load(path: str | Path, *, mode: str = "default") -> StudyConfig:
    """Read and validate the study config ``path`` (UTF-8 TOML)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"landscape.study.load_config: path must be a file path; got "
                        f"{type(path).__name__}.")
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file (start from `landscape study "
                          "--print-config > study.toml`).")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a text file in UTF-8 (byte {e.start}: {e.reason}); a "
                          "study config is TOML text (start from `landscape study "
                          "--print-config > study.toml`).") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror or e}).") from None
    return parse(text, path=path.resolve(), mode=mode)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    return str(v)


def _comment(text: str, width: int = 95) -> list[str]:
    import textwrap

    return ["# " + line for line in textwrap.wrap(text, width - 2)]


def default_text(overrides: dict | None = None, *, header: str | None = None) -> str:
    """The fully commented default config (every key, its default, what it does, the allowed
    values and the --quick/--full sizes); ``overrides`` (``{table: {key: value}}``) replace
    defaults (the demo's config is written so)."""
    overrides = overrides or {}
    lines = []
    lines += _comment(header or "landscape study config (TOML). Every key is optional: the "
                      "values below are the defaults. Run it with `landscape study THIS.toml "
                      "[--out DIR] [--only hessian,surface] [--quick | --full]`. The sizes "
                      "are commented out: --quick and --full choose them unless you set them.")
    for table, fields in SCHEMA.items():
        lines.append("")
        if table:
            lines.append(f"[{table}]")
        for key, f in fields.items():
            val = overrides.get(table, {}).get(key, f.default)
            note = f.help
            if f.choices:
                note += f" Allowed: {', '.join(map(str, f.choices))}."
            if f.item_choices:
                note += f" Allowed: {', '.join(f.item_choices)}."
            if f.allowed():
                note += f" Allowed: {f.allowed()}."
            if f.quick is not None or f.full is not None:
                sizes = []
                if f.quick is not None:
                    rule = ("" if f.quick_rule == "at_most" else
                            ", or more steps apart: never more measurements than without "
                            "--quick")
                    sizes.append(f"--quick {_toml_value(f.quick)}{rule}")
                if f.full is not None:
                    sizes.append(f"--full {_toml_value(f.full)}")
                note += f" ({', '.join(sizes)}.)"
            lines += _comment(note)
            off = table == "data" and key in DATA_TABLE_KEYS_NPZ  # for name = "npz" only
            # a size left at its default stays commented out, so that --quick and --full still
            # choose it (a key the file sets is the file's: the modes keep it)
            size = ((f.quick is not None or f.full is not None)
                    and key not in overrides.get(table, {}))
            lines.append(f"{'# ' if off or size else ''}{key} = {_toml_value(val)}")
    return "\n".join(lines) + "\n"


DEMO_OVERRIDES = {
    "": {"title": "landscape demo: an MLP on the digits, seen through every analysis"},
    "train": {"sharpness_every": 25},
    "analyses": {"run": list(SECTIONS)},
}


def demo_text() -> str:
    return default_text(DEMO_OVERRIDES, header=(
        "The built-in config of `landscape demo` (the default MLP 64-256-256-10 on the digits, "
        "every analysis, and Li et al. 2018's comparison of a ResNet with and without skip "
        "connections and batch norm). Save it, edit it and run it with `landscape study`."))


def demo(mode: str = "default") -> StudyConfig:
    return parse(demo_text(), path=None, base=Path.cwd(), mode=mode)
