"""Run directories: parameters, state, config, metrics and provenance on disk.

Layout of a run directory (every file written atomically: temporary file, then rename)::

    run_dir/
      params.npz        trainable parameters (pytree; .npz with a JSON structure spec, no pickle)
      state.npz         non-trainable state (batch statistics)
      history.npz       training history arrays
      snapshots.npz     parameter snapshots (if any)
      config.json       model spec, training settings
      provenance.json   versions, devices, dtype, seeds, data hash, settings

:func:`load_run` rebuilds the architecture from the saved model spec (or takes a template
model for architectures outside the registry) and refuses parameters whose structure or shapes
do not match it.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from landscape import _serialize
from landscape import validate as _validate
from landscape._model import Model, as_model
from landscape.models import model_from_spec

__all__ = ["Run", "save_run", "load_run"]


@dataclasses.dataclass(frozen=True, eq=False)
class Run:
    """A loaded run: the model triple plus what was saved with it."""

    model: Model
    config: dict
    history: dict
    snapshots: dict | None
    provenance: dict
    path: Path

    def __repr__(self):
        return f"Run({self.path}, {self.model!r})"


@_validate.public("landscape.save_run")
def save_run(
    run_dir: str | os.PathLike,
    result_or_model: Any,
    *,
    config: dict | None = None,
    history: dict | None = None,
    provenance: dict | None = None,
) -> Path:
    """Save a :class:`~landscape.train.TrainResult` (or a bare model) into ``run_dir``.

    Args:
      run_dir: directory (created if needed). Existing files of the same names are replaced
        atomically.
      result_or_model: a ``TrainResult`` (model, history, snapshots, config and provenance are
        taken from it) or a :class:`Model`.
      config, history, provenance: extra or overriding entries.

    Returns:
      The run directory path.
    """
    from landscape.train import TrainResult

    if isinstance(run_dir, TrainResult) or not isinstance(run_dir, (str, os.PathLike)):
        hint = (" (the arguments are in the other order: save_run(run_dir, result))"
                if isinstance(run_dir, TrainResult) else "")
        raise TypeError(
            f"{_validate.where()}: run_dir must be a path (str or os.PathLike); got "
            f"{type(run_dir).__name__}{hint}."
        )
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(result_or_model, TrainResult):
        r = result_or_model
        model = r.model
        cfg = {**r.config, **(config or {})}
        hist = {**r.history, **(history or {})}
        prov = {**r.provenance, **(provenance or {})}
        snaps = r.snapshots
    else:
        model = as_model(result_or_model)
        cfg = dict(config or {})
        hist = dict(history or {})
        prov = dict(provenance or {})
        snaps = None
    cfg["model"] = model.spec
    opt = cfg.get("optimizer")
    if isinstance(opt, dict) and opt.get("name") == "custom" and not (
        opt.get("hyperparameters") or opt.get("config")
    ):
        _validate.warn(
            f"{_validate.where()}: the run was trained with an optax object whose hyperparameters cannot be read back: "
            "the saved config records only its repr. Pass optimizer_config={...} to landscape.train, "
            "or build the optimizer with optax.inject_hyperparams, to record them."
        )
    host = _serialize.to_host
    _serialize.save_tree(run_dir / "params.npz", host(model.params), meta={"model": model.spec})
    _serialize.save_tree(run_dir / "state.npz", host(model.state))
    _serialize.save_tree(run_dir / "history.npz", {k: np.asarray(v) for k, v in hist.items()})
    if snaps is not None:
        _serialize.save_tree(run_dir / "snapshots.npz", host(snaps))
    _serialize.save_json(run_dir / "config.json", cfg)
    _serialize.save_json(run_dir / "provenance.json", prov)
    return run_dir


def _architecture(spec: dict) -> dict:
    """A registry spec without its initialisation seed: what must match to load parameters."""
    spec = _serialize.to_jsonable(spec)
    return {k: v for k, v in spec.items() if k != "seed"} if isinstance(spec, dict) else spec


@_validate.public("landscape.load_run")
def load_run(run_dir: str | os.PathLike, *, model: Model | None = None) -> Run:
    """Load a run saved by :func:`save_run`.

    Args:
      run_dir: the run directory.
      model: a template model of the same architecture (needed when the run's model was not
        built by :func:`landscape.make_model`); its parameters are replaced by the saved ones.

    Raises:
      FileNotFoundError: no run in ``run_dir``.
      ValueError: the saved parameters do not fit the architecture (another model, another
        width, ...); the message shows both structures.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "params.npz").exists():
        raise FileNotFoundError(f"{_validate.where()}: no run in {run_dir} (params.npz missing).")
    params = _serialize.load_tree(run_dir / "params.npz")
    state = _serialize.load_tree(run_dir / "state.npz") if (run_dir / "state.npz").exists() else {}
    cfg = (
        _serialize.load_json(run_dir / "config.json") if (run_dir / "config.json").exists() else {}
    )
    prov = (
        _serialize.load_json(run_dir / "provenance.json")
        if (run_dir / "provenance.json").exists()
        else {}
    )
    hist = (
        _serialize.load_tree(run_dir / "history.npz") if (run_dir / "history.npz").exists() else {}
    )
    snaps = (
        _serialize.load_tree(run_dir / "snapshots.npz")
        if (run_dir / "snapshots.npz").exists()
        else None
    )
    spec = cfg.get("model")
    if model is None:
        if not spec:
            raise ValueError(
                f"{_validate.where()}: {run_dir} does not record a registry model spec; pass model= a template "
                "of the same architecture."
            )
        template = model_from_spec(spec)
    else:
        template = as_model(model)
        if spec and template.spec and _architecture(template.spec) != _architecture(spec):
            raise ValueError(
                f"{_validate.where()}: the run in {run_dir} was saved from model {spec}, but the template is "
                f"{template.spec}."
            )
    what = f"the parameters saved in {run_dir}"
    try:
        _validate.check_same_structure(
            params,
            template.params,
            name=what,
            ref_name=f"the architecture's parameters ({(spec or {}).get('name', 'template')})",
        )
        _validate.check_same_structure(
            state,
            template.state,
            name=f"the state saved in {run_dir}",
            ref_name="the architecture's state",
        )
    except ValueError as e:
        raise ValueError(f"{e} The run belongs to another architecture.") from None
    # the saved dtypes are kept (a float64 run loads as float64 when x64 is on), whatever the
    # template's; NumPy arrays become JAX arrays, PRNG keys stay as restored
    params = jax.tree.map(jnp.asarray, params)
    state = jax.tree.map(
        lambda a, t: a if jnp.issubdtype(jnp.result_type(t), jax.dtypes.prng_key) else jnp.asarray(a),
        state,
        template.state,
    )
    m = template.replace(params=params, state=state, spec=spec or template.spec)
    return Run(m, cfg, hist, snaps, prov, run_dir)
