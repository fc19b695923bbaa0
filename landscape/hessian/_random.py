"""Counter-based random vectors for probes and start vectors (cheap to compile).

``jax.random`` (threefry) inside compiled loops costs seconds of XLA compile time on CPU per
program; these generators are elementwise integer hashes (two rounds of Wellons' lowbias32 over
(element index, leaf, counter, seed)), compile in milliseconds, run at memory speed and shard
like the parameters. The seed comes from the caller's explicit ``key``
(:func:`key_seed`), so results are reproducible and there is no hidden global state.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

PyTree = Any


def key_seed(key) -> int:
    """A 32-bit integer seed derived from a PRNG key (host)."""
    data = np.asarray(jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key)
    h = np.uint64(1469598103934665603)
    for x in data.ravel().astype(np.uint64):
        h = np.uint64((int(h) ^ int(x)) * 1099511628211 % (1 << 64))
    return int(h & np.uint64(0xFFFFFFFF))


def _mix(h):
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x7FEB352D)
    h = h ^ (h >> 15)
    h = h * jnp.uint32(0x846CA68B)
    return h ^ (h >> 16)


def _bits(x, leaf: int, seed, counter):
    """Well-mixed uint32 bits shaped like ``x`` for (leaf, counter, seed)."""
    base = _mix(
        _mix(jnp.asarray(seed).astype(jnp.uint32) ^ jnp.uint32((0x9E3779B9 * (leaf + 1)) & 0xFFFFFFFF))
        ^ (jnp.asarray(counter).astype(jnp.uint32) * jnp.uint32(0x85EBCA6B))
    )
    idx = lax.iota(jnp.uint32, max(int(np.prod(np.shape(x))), 1))[: int(np.prod(np.shape(x)))]
    return _mix(_mix(idx) ^ base).reshape(np.shape(x))


def uniform_like(tree: PyTree, seed, counter, dtype=None) -> PyTree:
    """Uniform values in ``[-1/2, 1/2)`` shaped like ``tree``."""
    leaves, treedef = jax.tree.flatten(tree)
    out = []
    for i, x in enumerate(leaves):
        dt = dtype or jnp.result_type(x)
        b = _bits(x, i, seed, counter)
        out.append((b >> 8).astype(dt) * jnp.asarray(2.0**-24, dt) - jnp.asarray(0.5, dt))
    return jax.tree.unflatten(treedef, out)


def rademacher_like(tree: PyTree, seed, counter) -> PyTree:
    """Independent random signs (+1/-1) shaped like ``tree`` (the top hash bit)."""
    leaves, treedef = jax.tree.flatten(tree)
    out = []
    for i, x in enumerate(leaves):
        dt = jnp.result_type(x)
        b = _bits(x, i, seed, counter)
        out.append(jnp.where((b >> 31) == 1, jnp.asarray(1, dt), jnp.asarray(-1, dt)))
    return jax.tree.unflatten(treedef, out)


def normal_like(tree: PyTree, seed, counter) -> PyTree:
    """Standard normal values shaped like ``tree`` (Box-Muller on two hash streams)."""
    leaves, treedef = jax.tree.flatten(tree)
    out = []
    for i, x in enumerate(leaves):
        dt = jnp.result_type(x)
        b1 = _bits(x, 2 * i, seed, counter)
        b2 = _bits(x, 2 * i + 1, seed, counter)
        u1 = ((b1 >> 8).astype(dt) + jnp.asarray(0.5, dt)) * jnp.asarray(2.0**-24, dt)  # (0, 1)
        u2 = (b2 >> 8).astype(dt) * jnp.asarray(2.0**-24, dt)
        out.append(jnp.sqrt(-2 * jnp.log(u1)) * jnp.cos(jnp.asarray(2 * np.pi, dt) * u2))
    return jax.tree.unflatten(treedef, out)
