"""From a validated config to objects: the data set, the model (ours or the user's factory),
the training call. Every failure is a :class:`ConfigError` that names the key (its file and
line) and what to do.

The study's first steps validate, before anything is trained, all that costs no computation:
:func:`load_data` the ``.npz`` arrays (names, shapes, dtypes, finite values, labels) and the
loader's settings; :func:`check_with_data` (to be called right after it) the batch sizes, the
warm-up and the optimiser's settings (their names against the Optax function's signature, their
types and ranges); :func:`build_model` the model's settings and its outputs.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import math
import re
import sys
import typing
from pathlib import Path

import numpy as np

from landscape.study._config import ConfigError, StudyConfig, _where


def _key(cfg: StudyConfig, table: str, key: str, setting: str | None = None) -> str:
    """``FILE, line N: table.key`` for a message (``table.key.setting`` for a setting of a
    free-form table)."""
    if cfg.text is None and cfg.path and cfg.path.is_file():  # built by hand: read the file
        with contextlib.suppress(OSError, UnicodeDecodeError):
            cfg.text = cfg.path.read_text(encoding="utf-8")
    if setting is not None:
        return cfg.where(table, key, setting)
    return _where(cfg.path, cfg.text, table, key)


def _mentioned(message: str, settings: dict) -> str | None:
    """The setting a builder's error message names (for its line), if any."""
    for k in settings:
        if re.search(rf"(?<![\w.]){re.escape(k)}(?!\w)", message):
            return k
    return None


# -- free-form settings against a signature ------------------------------------------------------
_KIND_WORDS = {"bool": "true or false", "int": "an integer", "number": "a number",
               "str": "a string", "list": "a list", "dtype": 'a floating dtype name ("float32", '
                                                         '"float64", "bfloat16", "float16")'}


def _kind(name: str, default, annotation=inspect.Parameter.empty) -> str | None:
    """What a parameter takes, judged by its name, its default and else a plain annotation
    (``float | None``, ``Sequence[int]``); None: anything."""
    if name.endswith("dtype"):
        return "dtype"
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float):
        return "number"
    if isinstance(default, str):
        return "str"
    if isinstance(default, (tuple, list)):
        return "list"
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    words = {w.strip() for w in text.split("|")} - {"None", ""}
    if words == {"bool"}:
        return "bool"
    if words == {"int"}:
        return "int"
    if words and words <= {"int", "float"}:
        return "number"
    if words == {"str"}:
        return "str"
    if len(words) == 1 and re.fullmatch(r"(Sequence|list|tuple)(\[.*\])?", next(iter(words))):
        return "list"
    return None


def _is_kind(value, kind: str) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value))
    if kind == "str":
        return isinstance(value, str)
    if kind == "list":
        return isinstance(value, list)
    if kind == "dtype":
        if not isinstance(value, str):
            return False
        import jax.numpy as jnp

        try:
            return bool(jnp.issubdtype(jnp.dtype(value), jnp.floating))
        except TypeError:
            return False
    return True


def _shown(default) -> str:
    """`` (default X)`` for a default a config could spell, else nothing."""
    if isinstance(default, (bool, int, float, str, tuple, list)):
        return f" (default {list(default) if isinstance(default, tuple) else default!r})"
    return ""


def _keyword_params(fn, skip=()) -> tuple[dict, bool] | None:
    """``({name: Parameter}, takes **kwargs)`` of ``fn``'s keyword parameters; None where the
    signature cannot be read."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return None
    takes_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    named = {n: p for n, p in params.items()
             if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
             and n not in skip}
    return named, takes_kw


def _check_settings(cfg: StudyConfig, table: str, key: str, settings: dict, fn, *, what: str,
                    skip=(), reserved: dict | None = None) -> None:
    """The names and types of ``[table.key]`` against ``fn``'s keyword parameters: an unknown
    name lists the accepted ones; a value of another type than the parameter's default says
    which. ``reserved``: names the study sets itself, with the reason."""
    for k, why in (reserved or {}).items():
        if k in settings:
            raise ConfigError(f"{_key(cfg, table, key, k)} is set by the study ({why}); remove "
                              "it.")
    sig = _keyword_params(fn, skip)
    if sig is None:
        return
    named, takes_kw = sig
    accepted = [n for n in named if n not in (reserved or {})]
    for k, v in settings.items():
        where = _key(cfg, table, key, k)
        if k not in named:
            if takes_kw:
                continue
            raise ConfigError(f"{where}: unknown setting of {what}; accepted: "
                              f"{', '.join(accepted) or 'none'}.")
        default = named[k].default
        kind = _kind(k, None if default is inspect.Parameter.empty else default,
                     named[k].annotation)
        if kind is not None and not _is_kind(v, kind):
            shown = _shown(default)
            raise ConfigError(f"{where} must be {_KIND_WORDS[kind]}{shown}; got {v!r} "
                              f"({type(v).__name__}).")


# -- data --------------------------------------------------------------------------------------
def load_data(cfg: StudyConfig):
    """The :class:`landscape.Dataset` the config names, its arrays and the loader's settings
    checked (nothing is trained or compiled here)."""
    import landscape
    import landscape.data

    d = cfg["data"]
    if d["name"] != "npz":
        settings = dict(d["settings"])
        loader = getattr(landscape.data, d["name"], None)
        if loader is not None:
            _check_settings(cfg, "data", "settings", settings, loader,
                            what=f"landscape.data.{d['name']}")
        try:
            ds = landscape.load_data(d["name"], **settings)
        except (TypeError, ValueError) as e:
            k = _mentioned(str(e), settings)
            where = _key(cfg, "data", "settings", k) if k else _key(cfg, "data", "settings")
            raise ConfigError(f"{where}: {str(e).rstrip('.')} (an argument of "
                              f"landscape.data.{d['name']}).") from None
    else:
        if d["settings"]:
            raise ConfigError(f"{_key(cfg, 'data', 'settings')}: npz data takes no loader "
                              "settings (name the arrays with x = and y =).")
        ds = _load_npz(cfg)
    return ds


_SAVE_HINT = "write it with numpy.savez(path, x=inputs, y=labels)"


def _read_npz(cfg: StudyConfig, split: str) -> tuple[Path, np.ndarray, np.ndarray]:
    d = cfg["data"]
    where = _key(cfg, "data", split)
    p = Path(d[split])
    p = p if p.is_absolute() else cfg.base / p
    if not p.exists():
        raise ConfigError(f"{where}: no such file {p} (a relative path is read from the "
                          f"config's directory, {cfg.base}).")
    if not p.is_file():
        raise ConfigError(f"{where}: {p} is not a file; give the .npz file of the {split} "
                          "arrays.")
    try:
        z = np.load(p, allow_pickle=False)
    except Exception as e:  # OSError, ValueError, EOFError, zipfile.BadZipFile, ...
        raise ConfigError(f"{where}: {p} is not a readable .npz file ({type(e).__name__}: {e}); "
                          f"{_SAVE_HINT}.") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ConfigError(f"{where}: {p} holds one unnamed array (a .npy file), not named "
                          f"arrays; {_SAVE_HINT}.")
    with z:
        arrays = {}
        for role in ("x", "y"):
            name = d[role]
            if name not in z.files:
                raise ConfigError(f"{_key(cfg, 'data', role)}: {p} has no array {name!r}; it "
                                  f"has {', '.join(sorted(z.files)) or 'none'}.")
            try:
                arrays[role] = np.asarray(z[name])
            except ValueError as e:  # object arrays: not read without pickle
                raise ConfigError(f"{where}: {p}: the array {name!r} cannot be read without "
                                  f"pickle ({e}); save numeric arrays.") from None
            except Exception as e:  # a damaged member: CRC, zlib, truncated
                raise ConfigError(f"{where}: {p}: the array {name!r} is damaged "
                                  f"({type(e).__name__}: {e}); {_SAVE_HINT}.") from None
    return p, arrays["x"], arrays["y"]


def _first_bad(mask: np.ndarray) -> int:
    return int(np.argwhere(mask.reshape(len(mask), -1).any(axis=1))[0][0])


def _load_npz(cfg: StudyConfig):
    from landscape.data import Dataset

    d = cfg["data"]
    task, xn, yn = d["task"], d["x"], d["y"]
    splits, paths = {}, {}
    for split in ("train", "test"):
        where = _key(cfg, "data", split)
        p, x, y = _read_npz(cfg, split)
        paths[split] = p
        if x.ndim < 2:
            raise ConfigError(f"{where}: {p}: {xn} must have shape (N, ...) with at least one "
                              f"feature axis; got shape {x.shape} (one feature: reshape to "
                              "(N, 1)).")
        if y.ndim < 1:
            raise ConfigError(f"{where}: {p}: {yn} must have one entry per example; got a "
                              "scalar.")
        if len(x) == 0:
            raise ConfigError(f"{where}: {p}: the {split} split is empty ({xn} has 0 examples).")
        if len(x) != len(y):
            raise ConfigError(f"{where}: {p}: {xn} has {len(x)} examples but {yn} has "
                              f"{len(y)}; their first axes must match.")
        if x.dtype == bool or np.issubdtype(x.dtype, np.integer):
            x = x.astype(np.float32)
        elif not np.issubdtype(x.dtype, np.floating):
            raise ConfigError(f"{where}: {p}: {xn} must be numeric (floats or integers); got "
                              f"dtype {x.dtype}.")
        if not np.all(np.isfinite(x)):
            raise ConfigError(f"{where}: {p}: {xn} holds NaN or Inf (example "
                              f"{_first_bad(~np.isfinite(x))}); remove or impute those "
                              "examples.")
        y = _labels(cfg, where, p, y) if task == "classification" else _targets(where, p, y, yn)
        splits[split] = {"x": x, "y": y}
    tr, te = splits["train"], splits["test"]
    if tr["x"].shape[1:] != te["x"].shape[1:]:
        raise ConfigError(f"{_key(cfg, 'data', 'test')}: {paths['test']}: {xn} has examples of "
                          f"shape {te['x'].shape[1:]}, the training inputs "
                          f"{tr['x'].shape[1:]}; they must match.")
    if task == "classification":
        num_outputs = int(max(tr["y"].max(), te["y"].max())) + 1
        distinct = len(np.union1d(tr["y"], te["y"]))
        if num_outputs > 100 and num_outputs > 10 * distinct:
            raise ConfigError(f"{_key(cfg, 'data', 'y')}: the labels run up to {num_outputs - 1} "
                              f"but take only {distinct} distinct values: the model would have "
                              f"{num_outputs} outputs. Renumber the classes 0..C-1 (labels = "
                              "numpy.unique(y, return_inverse=True)[1]).")
        if num_outputs < 2:
            raise ConfigError(f"{_key(cfg, 'data', 'y')}: every label is 0: classification "
                              "needs at least two classes (labels 0..C-1); for float targets "
                              "set task = \"regression\".")
    else:
        if tr["y"].shape[1:] != te["y"].shape[1:]:
            raise ConfigError(f"{_key(cfg, 'data', 'test')}: {paths['test']}: {yn} has "
                              f"{te['y'].shape[1]} targets per example, the training set "
                              f"{tr['y'].shape[1]}; they must match.")
        num_outputs = int(tr["y"].shape[1])
    spec = {"name": "npz", "train": str(paths["train"]), "test": str(paths["test"]), "x": xn,
            "y": yn, "task": task}
    return Dataset("npz", tr, te, task, num_outputs, tuple(tr["x"].shape[1:]), spec)


def _labels(cfg: StudyConfig, where: str, p: Path, y: np.ndarray) -> np.ndarray:
    yn = cfg["data"]["y"]
    regression = 'for float targets set task = "regression"'
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ConfigError(f"{where}: {p}: the classification labels {yn!r} must have shape (N,) (one "
                          f"integer class per example); got {y.shape} (one-hot labels: store "
                          f"their argmax; {regression}).")
    if y.dtype == bool:
        y = y.astype(np.int32)
    if np.issubdtype(y.dtype, np.floating):
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            i = _first_bad(bad)
            raise ConfigError(f"{where}: {p}: the classification labels {yn!r} must be integers "
                              f"0..C-1; example {i} has {y[i].item()!r} ({regression}).")
        y = y.astype(np.int64)
    elif not np.issubdtype(y.dtype, np.integer):
        raise ConfigError(f"{where}: {p}: the classification labels {yn!r} must be integers 0..C-1; "
                          f"got dtype {y.dtype} ({regression}).")
    if (y < 0).any():
        i = _first_bad(y < 0)
        raise ConfigError(f"{where}: {p}: the classification labels {yn!r} must be integers 0..C-1 "
                          f"(C classes); example {i} has {int(y[i])}. Renumber the classes from "
                          "0.")
    return y.astype(np.int32)


def _targets(where: str, p: Path, y: np.ndarray, yn: str) -> np.ndarray:
    if not (np.issubdtype(y.dtype, np.number) and not np.issubdtype(y.dtype, np.complexfloating)):
        raise ConfigError(f"{where}: {p}: regression targets {yn} must be numeric; got dtype "
                          f"{y.dtype}.")
    y = y.astype(np.float32)
    if y.ndim > 2:
        raise ConfigError(f"{where}: {p}: regression targets {yn} must have shape (N,) or "
                          f"(N, k); got {y.shape} (flatten each example's targets).")
    if not np.all(np.isfinite(y)):
        raise ConfigError(f"{where}: {p}: {yn} holds NaN or Inf (example "
                          f"{_first_bad(~np.isfinite(y))}); remove or impute those examples.")
    return y[:, None] if y.ndim == 1 else y


def check_with_data(cfg: StudyConfig, data) -> None:
    """What can be checked once the data set is known, before anything is trained: the batch
    sizes against the training examples, the warm-up against the training steps, the
    optimiser's settings (by building the optimiser: no computation)."""
    train_kwargs(cfg, data)
    s = cfg["skips"]
    if "skips" in cfg.sections:
        uses_own = len(data.input_shape) == 3 and data.task == "classification"
        n = len(data.train["x"]) if uses_own else None
        if n is None and s["batch_size"] > 1000:  # the section's substitute: the digits images
            import landscape

            n = len(landscape.load_data("digits", flat=False).train["x"])
        if n is not None and s["batch_size"] > n:
            raise ConfigError(f"{_key(cfg, 'skips', 'batch_size')} = {s['batch_size']} exceeds "
                              f"the {n} training examples of the skips section; lower it.")


# -- model -------------------------------------------------------------------------------------
@contextlib.contextmanager
def _on_path(base: Path):
    added = str(base) not in sys.path
    if added:
        sys.path.insert(0, str(base))
    try:
        yield
    finally:
        if added and str(base) in sys.path:
            sys.path.remove(str(base))


def factory(cfg: StudyConfig):
    """The user's factory function named by ``model.name = "package.module:function"``."""
    name = cfg["model"]["name"]
    mod_name, fn_name = name.split(":")
    where = _key(cfg, "model", "name")
    with _on_path(cfg.base):
        try:
            module = importlib.import_module(mod_name)
        except Exception as e:  # ImportError, or the module's own error while importing
            raise ConfigError(f"{where}: cannot import {mod_name!r} ({type(e).__name__}: {e}); "
                              f"it is looked up in {cfg.base} and on sys.path.") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ConfigError(f"{where}: {mod_name} has no function {fn_name!r}.")
    return fn


_RESERVED = {"input_shape": "from the data", "num_outputs": "from the data",
             "seed": "the top-level seed; the second network of connect uses seed + 1"}
_MODEL_CLASSES = {"mlp": "MLP", "cnn": "CNN", "resnet": "ResNet", "transformer": "Transformer"}
# our models' settings beyond their types: lists of positive integers (with a least length),
# positive integers, names checked by the registry's lookup
_POSITIVE_LISTS = {"hidden": 0, "channels": 1, "widths": 1, "input_hw": 2}
_POSITIVE_INTS = ("kernel_size", "blocks")


def _check_our_model(cfg: StudyConfig, name: str, settings: dict) -> None:
    from landscape import models

    cls = getattr(models, _MODEL_CLASSES[name])
    _check_settings(cfg, "model", "settings", settings, cls.__init__,
                    what=f"the {name!r} model (landscape.models.{cls.__name__})",
                    skip=("self", "in_features", "in_channels", "rngs"), reserved=_RESERVED)
    for k, v in settings.items():
        where = _key(cfg, "model", "settings", k)
        if k in _POSITIVE_LISTS:
            n = _POSITIVE_LISTS[k]
            ok = (isinstance(v, list) and len(v) >= n and (k != "input_hw" or len(v) == 2)
                  and all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in v))
            if not ok:
                size = ("two positive integers [H, W]" if k == "input_hw" else
                        "a non-empty list of positive integers" if n else
                        "a list of positive integers ([] for none)")
                raise ConfigError(f"{where} must be {size}; got {v!r}.")
        elif k in _POSITIVE_INTS and v < 1:
            raise ConfigError(f"{where} must be >= 1; got {v!r}.")
        elif k in ("activation", "init"):
            if not isinstance(v, str):
                raise ConfigError(f"{where} must be a string (a name of landscape.models' "
                                  f"{'activations' if k == 'activation' else 'initialisers'}); "
                                  f"got {v!r} ({type(v).__name__}).")
            try:
                (models.get_activation if k == "activation" else models.get_init)(v)
            except (ValueError, KeyError) as e:
                raise ConfigError(f"{where}: {e}") from None


def build_model(cfg: StudyConfig, data, *, seed: int):
    """The model the config names, initialised with ``seed``: ``(model, description)``."""
    import landscape
    from landscape._model import Model, _is_nnx_module

    m = cfg["model"]
    settings = dict(m["settings"])
    if m["name"] in _MODEL_CLASSES:
        if m["name"] in ("cnn", "resnet") and len(data.input_shape) != 3:
            raise ConfigError(f"{_key(cfg, 'model', 'name')}: {m['name']!r} needs images (H, W, C); "
                              f"the data's inputs have shape {tuple(data.input_shape)} (digits: "
                              "[data.settings] flat = false).")
        _check_our_model(cfg, m["name"], settings)
        for k, v in settings.items():
            if isinstance(v, list):
                settings[k] = tuple(v)
        try:
            model = landscape.make_model(m["name"], input_shape=data.input_shape,
                                         num_outputs=data.num_outputs, seed=seed, **settings)
        except (TypeError, ValueError) as e:
            k = _mentioned(str(e), settings)
            raise ConfigError(f"{_key(cfg, 'model', 'settings', k) if k else _key(cfg, 'model', 'settings')}: "
                              f"{e}") from None
        return model, {"kind": "registry", "name": m["name"], "spec": model.spec}
    fn = factory(cfg)
    sig = _keyword_params(fn)
    params, takes_kw = sig if sig is not None else ({}, True)
    extra = {"input_shape": tuple(data.input_shape), "num_outputs": int(data.num_outputs),
             "seed": int(seed)}
    _check_settings(cfg, "model", "settings", settings, fn,
                    what=f"the factory {m['name']}", reserved=_RESERVED)
    if sig is not None:
        missing = [n for n, p in params.items() if p.default is inspect.Parameter.empty
                   and n not in settings and n not in extra]
        if missing:
            raise ConfigError(f"{_key(cfg, 'model', 'settings')}: the factory {m['name']} needs "
                              f"{', '.join(missing)} (arguments without a default); set "
                              f"{'them' if len(missing) > 1 else 'it'} in [model.settings].")
    kwargs = {k: v for k, v in extra.items() if (k in params or takes_kw) and k not in settings}
    if "seed" not in params and not takes_kw:
        from landscape import validate as _validate

        if seed != cfg["seed"]:  # the second network of the connectivity section
            raise ConfigError(f"{_key(cfg, 'model', 'name')}: the factory {m['name']} takes no "
                              "seed argument, so a second network cannot be initialised "
                              "differently; add a seed parameter, or set connect.other to a "
                              "run directory.")
        _validate.warn(f"landscape study: the factory {m['name']} takes no seed argument: the "
                       "config's seed does not reach its initialisation.")
    try:
        with _on_path(cfg.base):
            made = fn(**settings, **kwargs)
    except ConfigError:
        raise
    except Exception as e:
        k = _mentioned(str(e), settings)
        where = _key(cfg, "model", "settings", k) if k else _key(cfg, "model", "name")
        raise ConfigError(f"{where}: the factory {m['name']}(**{settings!r}) raised "
                          f"{type(e).__name__}: {e}") from None
    if isinstance(made, Model):
        model = made
    elif _is_nnx_module(made):
        model = landscape.from_nnx(made)
    elif (isinstance(made, tuple) and len(made) == 2 and isinstance(made[1], dict)
          and "params" in made[1] and hasattr(made[0], "apply")):
        model = landscape.from_linen(*made)
    else:
        raise ConfigError(f"{_key(cfg, 'model', 'name')}: the factory {m['name']} returned "
                          f"{type(made).__name__}; it must return a Flax NNX module, a (Linen "
                          "module, variables) pair or a landscape.Model.")
    try:
        import jax

        out = jax.eval_shape(lambda x: model(x), data.train["x"][:2])
    except Exception as e:
        raise ConfigError(f"{_key(cfg, 'model', 'name')}: the model from {m['name']} does not run "
                          f"on the data's inputs {tuple(data.input_shape)}: {type(e).__name__}: "
                          f"{e}") from None
    shape = tuple(getattr(out, "shape", ()))
    c = data.num_outputs
    if data.task == "classification":
        if len(shape) != 2 or shape[0] != 2 or shape[1] < c:
            raise ConfigError(f"{_key(cfg, 'model', 'name')}: the model from {m['name']} gives "
                              f"outputs of shape {shape} on 2 examples; the labels run from 0 to "
                              f"{c - 1}, so it needs (2, {c}) (or more outputs): labels out of "
                              "range of its outputs. Return num_outputs outputs (the factory "
                              "gets num_outputs where its signature takes it).")
    elif shape != (2, c):
        raise ConfigError(f"{_key(cfg, 'model', 'name')}: the model from {m['name']} gives outputs "
                          f"of shape {shape} on 2 examples; the data needs (2, {c}) ({c} "
                          "targets).")
    from landscape import validate as _validate

    try:
        _validate.check_params(model.params, name="the model's parameters")
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{_key(cfg, 'model', 'name')}: the factory {m['name']} gives "
                          f"parameters that cannot be trained: {str(e)[:300]}") from None
    return model, {"kind": "factory", "name": m["name"], "settings": m["settings"]}


# -- training ----------------------------------------------------------------------------------
def loss_name(data) -> str:
    return "cross_entropy" if data.task == "classification" else "mse"


# each named optimiser: the Optax function it calls and the arguments it sets itself
# (landscape.train.make_optimizer)
def _optax_of(name: str) -> tuple[str, tuple]:
    """The Optax function behind a named optimiser of landscape.train (one table, there) and
    the switches the name fixes (nesterov's ``nesterov=True``; numbers such as momentum's 0.9
    are defaults the config may change)."""
    from landscape.train import _OPTIMIZERS

    fn_name, defaults = _OPTIMIZERS[name]
    return fn_name, tuple(k for k, v in defaults.items() if isinstance(v, bool))
_UNIT = ("momentum", "b1", "b2", "decay")  # decay rates: in [0, 1)
_NONNEGATIVE = ("eps", "eps_root", "weight_decay", "initial_scale")


def _optax_kind(p: inspect.Parameter) -> str | None:
    """What an Optax argument takes from a config; None: nothing a TOML value can give."""
    if p.name.endswith("dtype"):
        return "dtype"
    if p.annotation is bool or isinstance(p.default, bool):
        return "bool"
    if isinstance(p.default, (int, float)) or float in typing.get_args(p.annotation):
        return "number"
    return None  # a callable or pytree (adamw's mask)


def check_optimizer_settings(cfg: StudyConfig) -> dict:
    """``train.optimizer_settings`` against the Optax function of ``train.optimizer``: names
    (the accepted ones from its signature), types and ranges. Returns the settings."""
    import optax

    t = cfg["train"]
    name, settings = t["optimizer"], dict(t["optimizer_settings"])
    fn_name, fixed = _optax_of(name)
    sig = _keyword_params(getattr(optax, fn_name), skip=("learning_rate", *fixed))
    named = sig[0] if sig is not None else {}
    for k, v in settings.items():
        where = _key(cfg, "train", "optimizer_settings", k)
        if k == "learning_rate":
            raise ConfigError(f"{where}: set train.learning_rate (and train.schedule) instead.")
        if k in fixed:
            raise ConfigError(f"{where} is set by optimizer = {name!r}; remove it.")
        if sig is not None and k not in named:
            raise ConfigError(f"{where}: unknown setting of optimizer {name!r} (optax.{fn_name}); "
                              f"accepted: {', '.join(named) or 'none'}.")
        kind = _optax_kind(named[k]) if k in named else None
        if kind is None:
            raise ConfigError(f"{where}: optax.{fn_name}'s {k} cannot be set from a config (it "
                              "takes a callable or a pytree).")
        if not _is_kind(v, kind):
            shown = _shown(named[k].default)
            raise ConfigError(f"{where} must be {_KIND_WORDS[kind]}{shown}; got {v!r} "
                              f"({type(v).__name__}).")
        if kind == "number" and k in _UNIT and not 0 <= v < 1:
            raise ConfigError(f"{where} must be in [0, 1); got {v!r}.")
        if kind == "number" and k in _NONNEGATIVE and v < 0:
            raise ConfigError(f"{where} must be >= 0; got {v!r}.")
    return settings


def train_kwargs(cfg: StudyConfig, data, *, num_steps: int | None = None) -> dict:
    """Keyword arguments of :func:`landscape.train` from ``[train]``."""
    from landscape.train import make_optimizer, make_schedule

    t = cfg["train"]
    n = len(data.train["x"])
    if t["batch_size"] > n:
        raise ConfigError(f"{_key(cfg, 'train', 'batch_size')} = {t['batch_size']} exceeds the "
                          f"{n} training examples; lower it.")
    steps = t["epochs"] * (n // t["batch_size"])
    if t["warmup_steps"] and t["warmup_steps"] >= steps:
        raise ConfigError(f"{_key(cfg, 'train', 'warmup_steps')} = {t['warmup_steps']} is not "
                          f"fewer than the {steps} training steps (epochs {t['epochs']} x "
                          f"{n} // batch_size {t['batch_size']}); lower it or train longer.")
    settings = check_optimizer_settings(cfg)
    lr = t["learning_rate"]
    if t["schedule"] != "constant" or t["warmup_steps"]:
        lr = make_schedule(t["schedule"], lr, num_steps=steps, warmup_steps=t["warmup_steps"])
    try:
        opt = make_optimizer(t["optimizer"], lr, **settings)
    except (TypeError, ValueError) as e:
        k = _mentioned(str(e), settings)
        where = (_key(cfg, "train", "optimizer_settings", k) if k
                 else _key(cfg, "train", "optimizer_settings"))
        raise ConfigError(f"{where}: {e}") from None
    desc = {"name": t["optimizer"], "learning_rate": t["learning_rate"],
            "schedule": t["schedule"], "warmup_steps": t["warmup_steps"],
            **t["optimizer_settings"]}
    return dict(loss=loss_name(data), optimizer=opt, optimizer_config=desc,
                num_steps=steps, batch_size=t["batch_size"], weight_decay=t["weight_decay"],
                test_data=data.test, snapshot_steps=None)
