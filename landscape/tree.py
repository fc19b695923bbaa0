"""Pytree vector algebra.

Vectors in landscape-ntk keep the parameters' pytree shape (and therefore their dtype and
sharding per leaf). These helpers treat a pytree of arrays as one vector. All of them are
pure and safe under ``jax.jit``. Reductions accumulate in the leaves' dtype; inner products
use ``precision=HIGHEST`` so float32 on GPUs is not silently computed in TF32.

Called eagerly, each is one compiled program for the whole tree (cached per tree structure and
leaf shapes: ``jax.jit``) instead of one small program per leaf and operation; under an outer
``jax.jit`` it is inlined as before.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from landscape import _compat

PyTree = Any

__all__ = [
    "add",
    "axpy",
    "cast",
    "dtype_of",
    "flatten_dict_paths",
    "leaf_paths",
    "lincomb",
    "norm",
    "normalize",
    "ones_like",
    "rademacher_like",
    "normal_like",
    "scale",
    "size",
    "stack",
    "sub",
    "unstack",
    "vdot",
    "to_device",
    "split_key",
    "zeros_like",
    "index",
]

_HIGHEST = jax.lax.Precision.HIGHEST


@jax.jit
def add(a: PyTree, b: PyTree) -> PyTree:
    """``a + b`` leaf by leaf."""
    return jax.tree.map(jnp.add, a, b)


@jax.jit
def sub(a: PyTree, b: PyTree) -> PyTree:
    """``a - b`` leaf by leaf."""
    return jax.tree.map(jnp.subtract, a, b)


@jax.jit
def scale(s, a: PyTree) -> PyTree:
    """``s * a`` for a scalar ``s`` (cast to each leaf's dtype)."""
    return jax.tree.map(lambda x: jnp.asarray(s, x.dtype) * x, a)


@jax.jit
def axpy(alpha, x: PyTree, y: PyTree) -> PyTree:
    """``alpha * x + y`` leaf by leaf (alpha cast to each leaf's dtype)."""
    return jax.tree.map(lambda xi, yi: jnp.asarray(alpha, yi.dtype) * xi + yi, x, y)


@jax.jit
def lincomb(coeffs, trees: PyTree) -> PyTree:
    """``sum_i coeffs[i] * trees[i]`` where ``trees`` has a leading axis on every leaf."""
    coeffs = jnp.asarray(coeffs)
    return jax.tree.map(
        lambda x: jnp.tensordot(coeffs.astype(x.dtype), x, axes=1, precision=_HIGHEST), trees
    )


@jax.jit
def vdot(a: PyTree, b: PyTree):
    """Real inner product ``<a, b>`` summed over all leaves (HIGHEST precision)."""
    parts = jax.tree.leaves(
        jax.tree.map(lambda x, y: jnp.vdot(x.ravel(), y.ravel(), precision=_HIGHEST), a, b)
    )
    if not parts:
        return jnp.zeros(())
    return sum(parts[1:], parts[0])


@jax.jit
def norm(a: PyTree):
    """Euclidean norm of the whole pytree."""
    return jnp.sqrt(vdot(a, a))


@jax.jit
def normalize(a: PyTree, eps: float = 0.0):
    """``a / ||a||`` and ``||a||``; ``eps`` guards against division by zero."""
    n = norm(a)
    return scale(1.0 / (n + eps), a), n


@jax.jit
def zeros_like(a: PyTree) -> PyTree:
    return jax.tree.map(jnp.zeros_like, a)


@jax.jit
def ones_like(a: PyTree) -> PyTree:
    return jax.tree.map(jnp.ones_like, a)


@functools.partial(jax.jit, static_argnames=("dtype",))
def cast(a: PyTree, dtype) -> PyTree:
    """Cast every floating leaf to ``dtype`` (integer leaves are left alone)."""

    def _c(x):
        x = jnp.asarray(x)
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree.map(_c, a)


def _leaf_keys(key, a: PyTree):
    leaves, treedef = jax.tree.flatten(a)
    return leaves, treedef, jax.random.split(key, max(len(leaves), 1))


@functools.partial(jax.jit, static_argnums=1)
def _split_key_jit(key, num: int):
    return tuple(jax.random.split(key, num))


def split_key(key, num: int = 2) -> tuple:
    """``tuple(jax.random.split(key, num))`` (the same keys) in one compiled program per
    ``num``: the eager split and the unpacking of its result compile two (a threefry split and
    an unstack) in every fresh process."""
    if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or num < 0:
        raise ValueError(
            f"split_key: num must be a non-negative integer (the number of keys); got {num!r}."
        )
    return _split_key_jit(key, int(num))


@jax.jit
def normal_like(key, a: PyTree) -> PyTree:
    """Standard normal pytree shaped like ``a`` (one independent key per leaf)."""
    leaves, treedef, keys = _leaf_keys(key, a)
    out = [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    return jax.tree.unflatten(treedef, out)


@jax.jit
def rademacher_like(key, a: PyTree) -> PyTree:
    """Random +-1 pytree shaped like ``a``."""
    leaves, treedef, keys = _leaf_keys(key, a)
    out = [jax.random.rademacher(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    return jax.tree.unflatten(treedef, out)


def size(a: PyTree) -> int:
    """Total number of scalar entries (static)."""
    return int(sum(math.prod(np.shape(x)) for x in jax.tree.leaves(a)))


def dtype_of(a: PyTree):
    """The common result dtype of the floating leaves of ``a``."""
    leaves = [x for x in jax.tree.leaves(a) if jnp.issubdtype(jnp.result_type(x), jnp.floating)]
    if not leaves:
        return jnp.result_type(float)
    return jnp.result_type(*leaves)


@jax.jit
def stack(trees: list[PyTree]) -> PyTree:
    """Stack a list of same-structure pytrees along a new leading axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _to_device(x):
    if isinstance(x, (np.ndarray, np.generic)):
        return jax.device_put(x)  # canonical dtype, as jnp.asarray; no compiled program
    return jnp.asarray(x)


def to_device(tree: PyTree) -> PyTree:
    """``jax.tree.map(jnp.asarray, tree)`` without the compiled staging program that
    ``jnp.asarray`` builds for every NumPy shape (JAX >= 0.9): NumPy leaves go through
    ``jax.device_put`` (the same canonical dtype), everything else through ``jnp.asarray``."""
    return jax.tree.map(_to_device, tree)


def host_readable(x) -> bool:
    """``x`` is concrete data the host can read and put back where it was (:func:`put_like`):
    a NumPy array or scalar, or a JAX array that is not a tracer and lives whole on one
    device."""
    if isinstance(x, (np.ndarray, np.generic)):
        return True
    if not isinstance(x, jax.Array) or _compat.is_tracer(x):
        return False
    try:
        return len(x.sharding.device_set) == 1 and x.is_fully_addressable
    except Exception:  # noqa: BLE001 - an array without the usual sharding: not readable here
        return False


def in_host_memory(x) -> bool:
    """:func:`host_readable` and already in host memory (NumPy, or one CPU device: there
    ``np.asarray`` is a view, no transfer)."""
    if isinstance(x, (np.ndarray, np.generic)):
        return True
    return host_readable(x) and next(iter(x.sharding.device_set)).platform == "cpu"


def put_like(y: np.ndarray, like) -> jax.Array:
    """The host array ``y`` where ``like`` is (the default device for host data), through
    ``jax.device_put`` (no compiled program), committed only where ``like`` was: a committed
    argument makes every program it meets compile anew."""
    committed = isinstance(like, jax.Array) and like.committed
    return jax.device_put(y, like.sharding if committed else None)


def _unstack(tree: PyTree) -> list[PyTree]:
    leaves, treedef = jax.tree.flatten(tree)
    n = leaves[0].shape[0] if leaves else 0
    return [jax.tree.unflatten(treedef, [x[i] for x in leaves]) for i in range(n)]


_unstack_jit = jax.jit(_unstack)


def _host(tree: PyTree) -> bool:
    return all(isinstance(x, np.ndarray) for x in jax.tree.leaves(tree))


def unstack(tree: PyTree) -> list[PyTree]:
    """Inverse of :func:`stack` (NumPy leaves stay NumPy views)."""
    return _unstack(tree) if _host(tree) else _unstack_jit(tree)


@jax.jit
def _index_jit(tree: PyTree, i) -> PyTree:
    return jax.tree.map(lambda x: x[i], tree)


def index(tree: PyTree, i) -> PyTree:
    """``tree[i]`` on every leaf (leading axis). An integer ``i`` on device leaves is one
    compiled program per tree for every ``i``; NumPy leaves stay NumPy views."""
    if isinstance(i, (int, np.integer)) and not isinstance(i, bool) and not _host(tree):
        leaves = jax.tree.leaves(tree)
        lengths = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
        if len(lengths) == 1 and None not in lengths:  # one shared leading axis (a stack)
            (n,) = lengths
            if not -n <= int(i) < n:
                raise IndexError(f"index {int(i)} is out of bounds for axis 0 with size {n}")
            return _index_jit(tree, int(i) % n)
    return jax.tree.map(lambda x: x[i], tree)


def leaf_paths(tree: PyTree) -> list[str]:
    """Slash-separated paths of the leaves (``'layers/0/kernel'``), in leaf order."""
    return [_path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _path_str(path) -> str:
    parts = []
    for k in path:
        if isinstance(k, jax.tree_util.DictKey):
            parts.append(str(k.key))
        elif isinstance(k, jax.tree_util.SequenceKey):
            parts.append(str(k.idx))
        elif isinstance(k, jax.tree_util.GetAttrKey):
            parts.append(str(k.name))
        elif isinstance(k, jax.tree_util.FlattenedIndexKey):
            parts.append(str(k.key))
        else:  # pragma: no cover - future key types
            parts.append(str(k))
    return "/".join(parts)


def map_with_path(map_fn: Callable[[str, Any], Any], tree: PyTree, *rest: PyTree) -> PyTree:
    """``jax.tree.map`` where ``map_fn`` also receives the slash-separated leaf path."""
    return jax.tree_util.tree_map_with_path(lambda p, *xs: map_fn(_path_str(p), *xs), tree, *rest)


def flatten_dict_paths(tree: PyTree) -> dict[str, Any]:
    """``{path: leaf}`` for saving pytrees of arrays in flat formats (npz)."""
    return {_path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}
