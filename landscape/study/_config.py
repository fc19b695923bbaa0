"""The study configuration: one TOML file (read with the standard library's ``tomllib``).

The schema below is the single source of the defaults, the allowed values, the ``--quick`` and
``--full`` sizes, the validation messages and the commented default config that
``landscape study --print-config`` writes. A table's free-form ``settings`` (model and data)
are passed through to the builder, which validates them.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

SECTIONS = ("hessian", "surface", "connect", "ntk", "skips")
"""The analyses a study can run, in the order they run (after training)."""

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "step", "exponential")
DATA_NAMES = ("digits", "mnist1d", "teacher", "npz")
MODEL_NAMES = ("mlp", "cnn", "resnet")


class ConfigError(ValueError):
    """A bad study configuration: the message names the key, the file and line, and what is
    allowed. The command line prints it and exits with status 2."""


@dataclasses.dataclass(frozen=True)
class Field:
    type: type | tuple
    default: Any
    help: str
    choices: tuple | None = None
    quick: Any = None  # the value under --quick (None: the default)
    full: Any = None  # the value under --full (None: the default)
    minimum: float | None = None
    item_choices: tuple | None = None  # for lists of names


F = Field
# (table, key) -> Field; a table's order is the order of the printed config
SCHEMA: dict[str, dict[str, Field]] = {
    "": {
        "title": F(str, "", "A title for the report (default: the model and data names)."),
        "seed": F(int, 0, "Seed of the initialisation, the data order and every analysis's random "
                          "choices (directions, probes, eigensolver starts).", minimum=0),
    },
    "model": {
        "name": F(str, "mlp", 'One of ours ("mlp", "cnn", "resnet") or your own factory as '
                              '"package.module:function" (importable from the config\'s directory '
                              "or sys.path) returning a Flax NNX module, a (Linen module, "
                              "variables) pair or a landscape.Model. The factory gets the "
                              "settings below as keyword arguments, plus input_shape, "
                              "num_outputs and seed where its signature takes them."),
        "settings": F(dict, {"hidden": [256, 256]},
                      "Keyword arguments of the model (ours: see landscape.make_model, e.g. "
                      'hidden, activation, init; resnet: widths, blocks, skip, batch_norm).'),
    },
    "data": {
        "name": F(str, "digits", 'An embedded data set ("digits": scikit-learn\'s 8x8 digits, '
                                 '"mnist1d", "teacher": a random teacher network) or "npz": '
                                 "your arrays in .npz files (train and test below).",
                  choices=DATA_NAMES),
        "settings": F(dict, {}, "Keyword arguments of the loader (e.g. digits: flat = false for "
                                "8x8x1 images; teacher: task, num_train, input_dim)."),
        "train": F(str, "", 'npz only: the training arrays (a path relative to the config).'),
        "test": F(str, "", "npz only: the test arrays."),
        "x": F(str, "x", "npz only: the name of the inputs array."),
        "y": F(str, "y", "npz only: the name of the labels (integers (N,)) or targets array."),
        "task": F(str, "classification", 'npz only: "classification" (cross-entropy) or '
                                         '"regression" (mean squared error).',
                  choices=("classification", "regression")),
    },
    "train": {
        "optimizer": F(str, "adam", "Optimiser by name.", choices=OPTIMIZERS),
        "learning_rate": F(float, 1e-3, "Peak learning rate.", minimum=0.0),
        "schedule": F(str, "constant", "Learning-rate schedule by name (the warm-up of "
                                       "warmup_cosine is warmup_steps).", choices=SCHEDULES),
        "warmup_steps": F(int, 0, "Warm-up steps of warmup_cosine.", minimum=0),
        "optimizer_settings": F(dict, {}, "Further optimiser arguments (momentum = 0.9 for "
                                          "momentum and nesterov; b1, b2 for adam; ...)."),
        "epochs": F(int, 20, "Training epochs (an epoch is N // batch_size steps).", quick=1,
                    minimum=1),
        "batch_size": F(int, 64, "Examples per step.", minimum=1),
        "weight_decay": F(float, 0.0, "L2 coefficient added to the loss (coupled).", minimum=0.0),
        "sharpness_every": F(int, 0, "Record the top Hessian eigenvalue (sharpness) every this "
                                     "many steps during training, with the stability threshold "
                                     "2/lr (0: off).", quick=5, minimum=0),
    },
    "analyses": {
        "run": F(list, list(SECTIONS[:4]), "The analyses to run, in this order: hessian "
                                           "(eigenvalues, trace, spectral density), surface "
                                           "(1-D and 2-D slices, interpolation from "
                                           "initialisation), connect (barrier to a second "
                                           "network before and after weight matching), ntk "
                                           "(empirical tangent kernel), skips (Li et al. 2018's "
                                           "ResNet with and without skips and batch norm).",
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
                                "direction (0: skip).", quick=9, full=101, minimum=0),
        "points_2d": F(int, 21, "Points per axis of the 2-D slice (0: skip).", quick=5, full=51,
                       minimum=0),
        "span": F(float, 1.0, "The slices cover [-span, span] in units of the direction.",
                  minimum=0.0),
        "interp_points": F(int, 41, "Points of the interpolation from initialisation (t in "
                                    "[-0.5, 1.5]; 0: skip).", quick=9, full=101, minimum=0),
    },
    "connect": {
        "points": F(int, 25, "Points on each linear path.", quick=7, full=51, minimum=3),
        "other": F(str, "", "The second network: a run directory (relative to the config), or "
                            "empty to train the same model from seed + 1 here."),
        "align": F(bool, True, "Also the path after weight matching (Ainsworth et al. 2022)."),
    },
    "ntk": {
        "examples": F(int, 64, "Test inputs of the empirical NTK.", quick=16, full=256,
                      minimum=2),
        "widths": F(list, [64, 256, 1024], "MLP only: hidden widths of the check that the "
                                           "empirical NTK at initialisation approaches the "
                                           "analytic one as 1/sqrt(width) (empty: skip).",
                    quick=[16, 1024], full=[64, 256, 1024, 4096]),
        "seeds": F(int, 4, "Random networks per width of that check.", quick=2, full=8,
                   minimum=2),
    },
    "skips": {
        "widths": F(list, [16, 32], "ResNet stage widths (--full: ResNet-56's).",
                    full=[16, 32, 64]),
        "blocks": F(int, 4, "Basic blocks per stage (depth 2 * stages * blocks + 2: the default "
                            "is 18 layers, the shallowest at which removing skips changed the "
                            "surface on the digits; benchmarks/study/skip_depth.md).",
                    quick=1, full=9, minimum=1),
        "epochs": F(int, 20, "Training epochs of each of the four networks.", quick=1, full=40,
                    minimum=1),
        "optimizer": F(str, "momentum", "Optimiser of the four networks.", choices=OPTIMIZERS),
        "learning_rate": F(float, 0.05, "Their learning rate.", minimum=0.0),
        "schedule": F(str, "cosine", "Their learning-rate schedule.", choices=SCHEDULES),
        "batch_size": F(int, 128, "Their batch size.", minimum=1),
        "points": F(int, 15, "Points per axis of each 2-D surface.", quick=5, full=51,
                    minimum=3),
        "span": F(float, 1.0, "The surfaces cover [-span, span]^2.", minimum=0.0),
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
    """A validated study configuration: ``values[table][key]`` with every default filled in,
    ``path`` the file it came from (None: built in), ``base`` the directory relative paths
    are resolved against, ``mode`` ``"default"``, ``"quick"`` or ``"full"``, ``explicit`` the
    ``(table, key)`` pairs the file set."""

    values: dict
    path: Path | None
    base: Path
    mode: str = "default"
    explicit: frozenset = frozenset()

    def __getitem__(self, table: str) -> dict:
        return self.values[table]

    @property
    def sections(self) -> list[str]:
        return list(self.values["analyses"]["run"])

    def to_json(self) -> dict:
        out = copy.deepcopy(self.values)
        out["_source"] = str(self.path) if self.path else "built in"
        out["_mode"] = self.mode
        return out


def _where(path: Path | None, text: str | None, table: str, key: str | None) -> str:
    name = str(path) if path else "the built-in config"
    line = locate(text, table, key)
    full = f"{table}.{key}" if table and key else (key or f"[{table}]")
    return f"{name}{f', line {line}' if line else ''}: {full}"


def parse(text: str, *, path: Path | None = None, base: Path | None = None,
          mode: str = "default") -> StudyConfig:
    """Validate a TOML text against :data:`SCHEMA`; fill in defaults and the sizes of ``mode``
    (``"full"`` replaces the default sizes, not values the file sets; ``"quick"``, the smoke
    test, shrinks every size, also the file's, to at most its quick value, keeping a 0 that
    switches a part off)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path or 'config'}: not valid TOML: {e}") from None
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
            if mode == "quick" and f.quick is not None:
                val = _quick(val, f.quick, (table, key) in explicit)
            elif mode == "full" and f.full is not None and (table, key) not in explicit:
                val = copy.deepcopy(f.full)
            out[key] = val
        values[table] = out
    top = values.pop("")
    values = {**top, **values}
    cfg = StudyConfig(values, path, base if base is not None else (path.parent if path else Path.cwd()),
                      mode, frozenset(explicit))
    _check_cross(cfg, text)
    return cfg


def _quick(val, quick, explicit: bool):
    if val == 0 or val == []:  # switched off: stays off
        return val
    if not explicit:
        return copy.deepcopy(quick)
    if isinstance(val, list):
        return val if not val else copy.deepcopy(quick)
    return min(val, quick)


def _check(val, f: Field, path, text, table, key):
    where = _where(path, text, table, key)
    t = f.type
    if t is float and isinstance(val, int) and not isinstance(val, bool):
        val = float(val)
    ok = isinstance(val, t) and not (t is int and isinstance(val, bool))
    if not ok:
        raise ConfigError(f"{where} must be {_type_name(t)}; got {val!r} ({type(val).__name__}).")
    if f.choices is not None and val not in f.choices:
        raise ConfigError(f"{where} must be one of {', '.join(map(repr, f.choices))}; got "
                          f"{val!r}.")
    if f.minimum is not None and val < f.minimum:
        raise ConfigError(f"{where} must be >= {f.minimum:g}; got {val!r}.")
    if f.item_choices is not None:
        for v in val:
            if v not in f.item_choices:
                raise ConfigError(f"{where}: unknown entry {v!r}; allowed: "
                                  f"{', '.join(f.item_choices)}.")
        if len(set(val)) != len(val):
            raise ConfigError(f"{where} lists an entry twice: {val!r}.")
    if t is list and f.item_choices is None:
        for v in val:
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"{where} must be a list of positive integers; got {val!r}.")
    return val


def _check_cross(cfg: StudyConfig, text):
    d = cfg["data"]
    if d["name"] == "npz":
        for key in ("train", "test"):
            if not d[key]:
                raise ConfigError(f"{_where(cfg.path, text, 'data', key)}: data.name = \"npz\" "
                                  f"needs {key} = \"file.npz\" (a path relative to the config).")
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
    s = cfg["skips"]
    if not s["widths"]:
        raise ConfigError(f"{_where(cfg.path, text, 'skips', 'widths')} must list at least one "
                          "stage width.")


def load(path: str | Path, *, mode: str = "default") -> StudyConfig:
    """Read and validate the study config ``path``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file (start from `landscape study "
                          "--print-config > study.toml`).")
    text = path.read_text()
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
                      "[--out DIR] [--only hessian,surface] [--quick | --full]`.")
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
            if f.quick is not None or f.full is not None:
                sizes = []
                if f.quick is not None:
                    sizes.append(f"--quick {_toml_value(f.quick)}")
                if f.full is not None:
                    sizes.append(f"--full {_toml_value(f.full)}")
                note += f" ({', '.join(sizes)}.)"
            lines += _comment(note)
            off = table == "data" and key in DATA_TABLE_KEYS_NPZ  # for name = "npz" only
            lines.append(f"{'# ' if off else ''}{key} = {_toml_value(val)}")
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
