"""Fixtures of the loss-surface tests: small data subsets and tiny models in either dtype."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest


@pytest.fixture(scope="session")
def small_digits(digits_data):
    """300 training and 100 test examples of digits (host NumPy, float32 inputs)."""
    tr, te = digits_data.train, digits_data.test
    return (
        {"x": np.asarray(tr["x"][:300]), "y": np.asarray(tr["y"][:300])},
        {"x": np.asarray(te["x"][:100]), "y": np.asarray(te["y"][:100])},
    )


def as_dtype(data, dtype):
    """Inputs cast to ``dtype`` (call inside ``jax.enable_x64`` for float64)."""
    return {"x": jnp.asarray(data["x"], dtype), "y": jnp.asarray(data["y"])}


def tiny_mlp(dtype, *, hidden=(12, 10), seed=0, activation="relu"):
    """A 64-12-10-10 MLP in ``dtype`` (float64: call inside ``jax.enable_x64``), built once per
    setting and shared by the tests (model initialisation compiles per shape)."""
    dtype = jnp.dtype(dtype)
    if dtype == jnp.float64 and not jax.config.jax_enable_x64:
        raise RuntimeError("tiny_mlp(float64) must be called inside jax.enable_x64(True)")
    return _tiny_mlp(dtype.name, tuple(hidden), seed, activation)


@functools.cache
def _tiny_mlp(dtype, hidden, seed, activation):
    import landscape

    return landscape.make_model(
        "mlp",
        input_shape=(64,),
        num_outputs=10,
        hidden=hidden,
        seed=seed,
        activation=activation,
        param_dtype=dtype,
    )
