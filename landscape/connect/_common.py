"""Helpers shared by the connect modules (loss handling, values of ``t``)."""

from __future__ import annotations

import numpy as np

from landscape import validate as _validate
from landscape._model import Model
from landscape.losses import make_loss_fn


def as_loss(model_or_loss, *, name: str = "model_or_loss"):
    """A :class:`landscape.Model` or triple becomes ``make_loss_fn(model)`` (cross-entropy); a
    :class:`Loss` or any callable is returned as is."""
    if isinstance(model_or_loss, Model) or (
        isinstance(model_or_loss, tuple) and len(model_or_loss) == 3 and callable(model_or_loss[0])
    ):
        return make_loss_fn(model_or_loss)
    _validate.check_callable(model_or_loss, name=name)
    return model_or_loss


def check_ts(ts, *, name: str = "ts") -> np.ndarray:
    """An int ``n >= 2`` (``linspace(0, 1, n)``) or a 1-D array of finite values."""
    if isinstance(ts, (int, np.integer)) and not isinstance(ts, bool):
        if ts < 2:
            raise ValueError(f"{_validate.where()}: {name} must be >= 2 points; got {ts}.")
        return np.linspace(0.0, 1.0, int(ts))
    arr = np.asarray(ts, dtype=np.float64)
    if arr.ndim != 1 or arr.size < 2:
        raise ValueError(
            f"{_validate.where()}: {name} must be a 1-D array of at least 2 values of t; got "
            f"shape {arr.shape}."
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{_validate.where()}: {name} must be finite.")
    return np.unique(arr)
