"""Validation of concrete inputs at the public boundary of ``ntk``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from landscape import validate as _validate


def as_inputs(x, *, name: str, dtype=None, finite: bool = True) -> np.ndarray | jax.Array:
    """A finite floating array with a leading example axis (host arrays stay on the host).

    ``finite=False`` leaves the NaN/Inf check to the caller (the kernel drivers pass the
    arrays to :func:`ntk._blocks.blocked`, which checks them inside the compiled program)."""
    if (  # the common case, a valid NumPy array of floats: no further look-ups
        type(x) is np.ndarray
        and x.dtype.kind == "f"
        and x.ndim >= 2
        and x.shape[0] > 0
        and (dtype is None or x.dtype == dtype)
    ):
        if finite:
            _validate.check_finite(x, name=name)
        return x
    if x is None:
        raise TypeError(
            f"{_validate.where('ntk')}: {name} must be an array of inputs (n, ...); got None."
        )
    if isinstance(x, dict):
        raise TypeError(
            f"{_validate.where('ntk')}: {name} must be an array of inputs (n, ...), not a data dict; pass data['x']."
        )
    if _validate.is_tracer(x):
        raise TypeError(
            f"{_validate.where('ntk')}: {name} must be a concrete array (this driver is not traceable; "
            "use the *_fn factories inside jit)."
        )
    arr = x if isinstance(x, jax.Array) else np.asarray(x)
    if arr.dtype == object or not (
        jnp.issubdtype(arr.dtype, jnp.floating) or jnp.issubdtype(arr.dtype, jnp.integer)
    ):
        raise TypeError(
            f"{_validate.where('ntk')}: {name} must be a numeric array; got dtype {arr.dtype}."
        )
    if arr.ndim < 2:
        raise ValueError(
            f"{_validate.where('ntk')}: {name} must have shape (n, ...) with a leading example axis; got shape "
            f"{tuple(arr.shape)}."
        )
    if arr.shape[0] == 0:
        raise ValueError(f"{_validate.where('ntk')}: {name} is empty (0 examples).")
    if dtype is not None:
        arr = arr.astype(dtype)
    elif not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(jnp.result_type(float))
    if finite:
        _validate.check_finite(arr, name=name)
    return arr


def check_pair(x1, x2):
    if x2 is not None and tuple(x1.shape[1:]) != tuple(x2.shape[1:]):
        raise ValueError(
            f"{_validate.where('ntk')}: x2 must have the same example shape as x1; got x1 examples of shape "
            f"{tuple(x1.shape[1:])} and x2 examples of shape {tuple(x2.shape[1:])}."
        )
