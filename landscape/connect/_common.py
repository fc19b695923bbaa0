"""Helpers shared by the connect modules (validation, loss handling)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from landscape import engine
from landscape import validate as _validate
from landscape._model import Model
from landscape.losses import Loss, make_loss_fn

PyTree = Any


def is_float(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.floating)


def float_state(loss_fn) -> bool:
    """Whether ``loss_fn`` is a :class:`landscape.Loss` whose model state has floating leaves
    (batch-norm statistics)."""
    return isinstance(loss_fn, Loss) and any(is_float(x) for x in jax.tree.leaves(loss_fn.state))


def as_loss(model_or_loss, *, name: str = "model_or_loss"):
    """A :class:`landscape.Model` or triple becomes ``make_loss_fn(model)`` (cross-entropy); a
    :class:`Loss` or any callable is returned as is."""
    if isinstance(model_or_loss, Model) or (
        isinstance(model_or_loss, tuple) and len(model_or_loss) == 3 and callable(model_or_loss[0])
    ):
        return make_loss_fn(model_or_loss)
    _validate.check_callable(model_or_loss, name=name)
    return model_or_loss


def first_examples(data, k: int = 2):
    if isinstance(data, engine.Batched):
        if data.full is not None:
            return jax.tree.map(lambda x: x[0][:k], data.full)
        return jax.tree.map(lambda x: x[:k], data.rest)
    return jax.tree.map(lambda x: x[:k], data)


def check_loss(loss_fn, params, data, *, name: str = "data") -> None:
    """The engine's boundary check: trace ``loss_fn`` on two examples (no compilation, cached)
    and turn a model/data mismatch into a ValueError naming the shapes."""
    engine.check_loss(loss_fn, params, data, name=name)


def check_ts(ts, *, name: str = "ts") -> np.ndarray:
    """An int ``n >= 2`` (``linspace(0, 1, n)``) or a 1-D array of finite values."""
    if isinstance(ts, (int, np.integer)) and not isinstance(ts, bool):
        if ts < 2:
            raise ValueError(f"{_validate.where()}: {name} must be >= 2 points; got {ts}.")
        return np.linspace(0.0, 1.0, int(ts))
    arr = np.asarray(ts, dtype=np.float64)
    if arr.ndim != 1 or arr.size < 2:
        raise ValueError(
            f"{_validate.where()}: {name} must be an int >= 2 or a 1-D array of at least 2 values of t; got "
            f"shape {arr.shape}."
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{_validate.where()}: {name} must be finite.")
    return np.unique(arr)
