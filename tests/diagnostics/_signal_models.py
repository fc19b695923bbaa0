"""Small models shared by the signal-propagation and Jacobian-spectrum tests (built once per
process: each compiled program is compiled once for both files), with hand-written forward
passes as references."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

import landscape


@functools.cache
def tiny_mlp(activation: str = "relu", dtype: str = "float32"):
    """``5 -> 6 -> 6 -> 3`` with Gaussian weights and biases (``sigma_b2 = 0.3``)."""
    return landscape.make_model(
        "mlp",
        input_shape=(5,),
        num_outputs=3,
        hidden=(6, 6),
        activation=activation,
        init="normal",
        sigma_w2=1.5,
        sigma_b2=0.3,
        param_dtype=jnp.dtype(dtype),
        seed=3,
    )


def inputs(n: int = 12, d: int = 5, dtype="float32", seed: int = 0):
    return np.asarray(np.random.default_rng(seed).normal(size=(n, d)), dtype)


PHI = {"relu": jax.nn.relu, "tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid}


def hand_forward(params, x, activation: str, deltas=None):
    """The MLP's forward pass by hand: ``(outputs, [(z, a) per layer])``; ``deltas[l]`` is added
    to layer ``l``'s pre-activation."""
    phi = PHI[activation]
    layers = params["layers"]
    h = x
    out = []
    n = len(layers)
    for i in range(n):
        z = h @ layers[i]["kernel"] + layers[i]["bias"][None, :]
        if deltas is not None:
            z = z + deltas[i]
        a = phi(z) if i < n - 1 else z
        out.append((z, a))
        h = a
    return h, out


@functools.cache
def small_resnet():
    """A ResNet with batch norm and skips: a 3x3 stem, one block of width 2, one of width 3
    (stride 2, a 1x1 projection on the skip), on 6 x 6 x 1 images."""
    return landscape.make_model(
        "resnet", input_shape=(6, 6, 1), num_outputs=3, widths=(2, 3), blocks=1, seed=0
    )
