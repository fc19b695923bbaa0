"""From a validated config to objects: the data set, the model (ours or the user's factory),
the training call. Every failure is a :class:`ConfigError` that names the key."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import sys
from pathlib import Path

import numpy as np

from landscape.study._config import ConfigError, StudyConfig, _where


def _key(cfg: StudyConfig, table: str, key: str) -> str:
    text = cfg.path.read_text() if cfg.path and cfg.path.is_file() else None
    return _where(cfg.path, text, table, key)


# -- data --------------------------------------------------------------------------------------
def load_data(cfg: StudyConfig):
    """The :class:`landscape.Dataset` the config names."""
    import landscape
    from landscape.data import Dataset

    d = cfg["data"]
    if d["name"] != "npz":
        try:
            return landscape.load_data(d["name"], **d["settings"])
        except TypeError as e:
            raise ConfigError(f"{_key(cfg, 'data', 'settings')}: {e} (the arguments of "
                              f"landscape.data.{d['name']}).") from None
        except ValueError as e:
            raise ConfigError(f"{_key(cfg, 'data', 'settings')}: {e}") from None
    if d["settings"]:
        raise ConfigError(f"{_key(cfg, 'data', 'settings')}: npz data takes no loader settings "
                          "(name the arrays with x = and y =).")
    splits = {}
    for split in ("train", "test"):
        p = Path(d[split])
        p = p if p.is_absolute() else cfg.base / p
        if not p.is_file():
            raise ConfigError(f"{_key(cfg, 'data', split)}: no such file {p}.")
        try:
            with np.load(p, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise ConfigError(f"{_key(cfg, 'data', split)}: {p} is not a readable .npz file "
                              f"({e}).") from None
        for role in ("x", "y"):
            if d[role] not in arrays:
                raise ConfigError(f"{_key(cfg, 'data', role)}: {p} has no array {d[role]!r}; it "
                                  f"has {', '.join(sorted(arrays)) or 'none'}.")
        x, y = arrays[d["x"]], arrays[d["y"]]
        if len(x) != len(y):
            raise ConfigError(f"{_key(cfg, 'data', split)}: {p}: {d['x']} has {len(x)} examples "
                              f"but {d['y']} has {len(y)}.")
        if not np.issubdtype(x.dtype, np.floating):
            x = x.astype(np.float32)
        if not np.all(np.isfinite(x)):
            raise ConfigError(f"{_key(cfg, 'data', split)}: {p}: {d['x']} holds NaN or Inf "
                              f"(example {int(np.argwhere(~np.isfinite(x))[0][0])}).")
        splits[split] = {"x": x, "y": y}
    task = d["task"]
    ytr = splits["train"]["y"]
    if task == "classification":
        if not np.issubdtype(ytr.dtype, np.integer) or ytr.ndim != 1:
            raise ConfigError(f"{_key(cfg, 'data', 'y')}: classification labels must be integers "
                              f"of shape (N,); got {ytr.dtype} {ytr.shape} (for float targets set "
                              "task = \"regression\").")
        num_outputs = int(max(ytr.max(), splits["test"]["y"].max())) + 1
    else:
        for split in splits.values():
            y = split["y"].astype(np.float32)
            split["y"] = y[:, None] if y.ndim == 1 else y
        num_outputs = int(splits["train"]["y"].shape[1])
    spec = {"name": "npz", "train": str(d["train"]), "test": str(d["test"]), "x": d["x"],
            "y": d["y"], "task": task}
    return Dataset("npz", splits["train"], splits["test"], task, num_outputs,
                   tuple(splits["train"]["x"].shape[1:]), spec)


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


def build_model(cfg: StudyConfig, data, *, seed: int):
    """The model the config names, initialised with ``seed``: ``(model, description)``."""
    import landscape
    from landscape._model import Model, _is_nnx_module

    m = cfg["model"]
    settings = dict(m["settings"])
    if m["name"] in ("mlp", "cnn", "resnet"):
        if m["name"] in ("cnn", "resnet") and len(data.input_shape) != 3:
            raise ConfigError(f"{_key(cfg, 'model', 'name')}: {m['name']!r} needs images (H, W, C); "
                              f"the data's inputs have shape {tuple(data.input_shape)} (digits: "
                              "[data.settings] flat = false).")
        for k, v in settings.items():
            if isinstance(v, list):
                settings[k] = tuple(v)
        try:
            model = landscape.make_model(m["name"], input_shape=data.input_shape,
                                         num_outputs=data.num_outputs, seed=seed, **settings)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{_key(cfg, 'model', 'settings')}: {e}") from None
        return model, {"kind": "registry", "name": m["name"], "spec": model.spec}
    fn = factory(cfg)
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    extra = {"input_shape": tuple(data.input_shape), "num_outputs": int(data.num_outputs),
             "seed": int(seed)}
    takes_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
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
        raise ConfigError(f"{_key(cfg, 'model', 'name')}: the factory {m['name']}(**{settings!r}) "
                          f"raised {type(e).__name__}: {e}") from None
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
    want = (2, data.num_outputs)
    if tuple(out.shape) != want:
        raise ConfigError(f"{_key(cfg, 'model', 'name')}: the model from {m['name']} gives outputs "
                          f"of shape {tuple(out.shape)} on 2 examples; the data needs {want} "
                          f"({data.num_outputs} {'classes' if data.task == 'classification' else 'targets'}).")
    return model, {"kind": "factory", "name": m["name"], "settings": m["settings"]}


# -- training ----------------------------------------------------------------------------------
def loss_name(data) -> str:
    return "cross_entropy" if data.task == "classification" else "mse"


def train_kwargs(cfg: StudyConfig, data, *, num_steps: int | None = None) -> dict:
    """Keyword arguments of :func:`landscape.train` from ``[train]``."""
    from landscape.train import make_optimizer, make_schedule

    t = cfg["train"]
    n = len(data.train["x"])
    if t["batch_size"] > n:
        raise ConfigError(f"{_key(cfg, 'train', 'batch_size')} = {t['batch_size']} exceeds the "
                          f"{n} training examples.")
    steps = t["epochs"] * (n // t["batch_size"])
    lr = t["learning_rate"]
    if t["schedule"] != "constant":
        lr = make_schedule(t["schedule"], lr, num_steps=steps,
                                     warmup_steps=t["warmup_steps"])
    try:
        opt = make_optimizer(t["optimizer"], lr, **t["optimizer_settings"])
    except TypeError as e:
        raise ConfigError(f"{_key(cfg, 'train', 'optimizer_settings')}: {e}") from None
    desc = {"name": t["optimizer"], "learning_rate": t["learning_rate"],
            "schedule": t["schedule"], "warmup_steps": t["warmup_steps"],
            **t["optimizer_settings"]}
    return dict(loss=loss_name(data), optimizer=opt, optimizer_config=desc,
                num_steps=steps, batch_size=t["batch_size"], weight_decay=t["weight_decay"],
                test_data=data.test, snapshot_steps=None)
