"""Validation of concrete inputs at the public boundary.

Every public function checks what it is given before tracing anything: values inside traced
code cannot be inspected. Messages follow one shape:
``landscape.<function>: <argument> <what was expected>; got <what was received>``.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from landscape import _tree

PyTree = Any


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


@jax.jit
def _finite_flags(leaves):
    return jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]) if leaves else jnp.ones((0,), bool)


def check_finite(tree: PyTree, *, fn: str, name: str) -> None:
    """Raise ``ValueError`` naming the first leaf of ``tree`` that holds NaN or Inf.

    One fused device reduction and one host transfer for the whole tree (cheap enough to run
    at every public call).
    """
    paths = _tree.leaf_paths(tree)
    picked = []
    for path, leaf in zip(paths, jax.tree.leaves(tree)):
        if not _is_concrete(leaf):
            continue
        dtype = getattr(leaf, "dtype", None)
        if dtype is None:
            leaf = np.asarray(leaf)
            dtype = leaf.dtype
        if jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.complexfloating):
            picked.append((path, leaf))
    if not picked:
        return
    np_leaves = [x for _, x in picked if isinstance(x, np.ndarray)]
    if len(np_leaves) == len(picked):  # host data: check on the host, no transfer
        flags = np.array([bool(np.isfinite(x).all()) for _, x in picked])
    else:
        flags = np.asarray(_finite_flags([x for _, x in picked]))
    if flags.all():
        return
    path, leaf = picked[int(np.argmin(flags))]
    a = np.asarray(leaf)
    n_nan = int(np.isnan(a).sum())
    n_inf = int(np.isinf(a).sum())
    where = f" at leaf '{path}'" if path else ""
    raise ValueError(f"{fn}: {name} must be finite; found {n_nan} NaN and {n_inf} Inf values{where}.")


def describe(tree: PyTree) -> str:
    """Short text of a pytree's structure with leaf shapes, for error messages."""
    try:
        shapes = jax.tree.map(lambda x: tuple(np.shape(x)), tree)
        text = str(shapes)
    except Exception:  # pragma: no cover
        text = str(jax.tree.structure(tree))
    return text if len(text) < 600 else text[:600] + "..."


def check_same_structure(
    tree: PyTree,
    reference: PyTree,
    *,
    fn: str,
    name: str,
    ref_name: str = "params",
    check_shapes: bool = True,
    check_dtypes: bool = False,
) -> None:
    """Raise ``ValueError`` unless ``tree`` has ``reference``'s structure (and leaf shapes)."""
    s1, s2 = jax.tree.structure(tree), jax.tree.structure(reference)
    if s1 != s2:
        raise ValueError(
            f"{fn}: {name} must have the same tree structure as {ref_name}; "
            f"got {describe(tree)}, expected {describe(reference)}."
        )
    if check_shapes:
        for path, a, b in zip(
            _tree.leaf_paths(reference), jax.tree.leaves(tree), jax.tree.leaves(reference)
        ):
            if np.shape(a) != np.shape(b):
                raise ValueError(
                    f"{fn}: {name} leaf '{path}' has shape {np.shape(a)}, expected "
                    f"{np.shape(b)} (the shape of {ref_name}'s leaf)."
                )
            if check_dtypes and jnp.result_type(a) != jnp.result_type(b):
                raise TypeError(
                    f"{fn}: {name} leaf '{path}' has dtype {jnp.result_type(a)}, expected "
                    f"{jnp.result_type(b)}."
                )


def check_params(params: PyTree, *, fn: str, name: str = "params") -> None:
    """Parameters: a non-empty pytree of floating arrays, all finite."""
    leaves = jax.tree.leaves(params)
    if not leaves:
        raise ValueError(f"{fn}: {name} must be a non-empty pytree of arrays; got {params!r}.")
    for path, leaf in zip(_tree.leaf_paths(params), leaves):
        if not hasattr(leaf, "shape") and not isinstance(leaf, (int, float)):
            raise TypeError(
                f"{fn}: {name} leaf '{path}' must be an array; got {type(leaf).__name__}."
            )
    check_finite(params, fn=fn, name=name)


def num_examples(data: PyTree, *, fn: str, name: str = "data") -> int:
    """Validate a data set (dict pytree with a common leading axis) and return its size."""
    if data is None:
        raise TypeError(
            f"{fn}: {name} must be a dict of arrays with a leading example axis; got None."
        )
    if not isinstance(data, dict):
        raise TypeError(
            f"{fn}: {name} must be a dict of arrays with a leading example axis "
            f"(e.g. {{'x': ..., 'y': ...}}); got {type(data).__name__}."
        )
    leaves = jax.tree.leaves(data)
    if not leaves:
        raise ValueError(f"{fn}: {name} is empty (no arrays).")
    sizes = {}
    for path, leaf in zip(_tree.leaf_paths(data), leaves):
        shape = np.shape(leaf)
        if len(shape) == 0:
            raise ValueError(
                f"{fn}: {name} leaf '{path}' is a scalar; every leaf needs a leading example axis."
            )
        sizes[path] = shape[0]
    distinct = set(sizes.values())
    if len(distinct) != 1:
        raise ValueError(
            f"{fn}: all leaves of {name} must have the same number of examples (leading axis); "
            f"got {sizes}."
        )
    n = distinct.pop()
    if n == 0:
        raise ValueError(f"{fn}: {name} is empty (0 examples).")
    return int(n)


def check_data(data: PyTree, *, fn: str, name: str = "data") -> int:
    """:func:`num_examples` plus a finiteness check of every floating leaf."""
    n = num_examples(data, fn=fn, name=name)
    check_finite(data, fn=fn, name=name)
    return n


def check_batch_size(batch_size, n: int, *, fn: str, name: str = "batch_size") -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"{fn}: {name} must be a positive int; got {batch_size!r}.")
    if batch_size <= 0:
        raise ValueError(f"{fn}: {name} must be positive; got {batch_size}.")
    if batch_size > n:
        raise ValueError(
            f"{fn}: {name}={batch_size} is larger than the data set ({n} examples); "
            f"use batch_size <= {n}."
        )
    return int(batch_size)


def check_positive_int(value, *, fn: str, name: str, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{fn}: {name} must be an int; got {value!r}.")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{fn}: {name} must be {bound}; got {value}.")
    return int(value)


def check_choice(value, choices, *, fn: str, name: str):
    if value not in choices:
        raise ValueError(
            f"{fn}: {name} must be one of {sorted(map(str, choices))}; got {value!r}."
        )
    return value


def check_key(key, *, fn: str, name: str = "key"):
    if key is None:
        raise TypeError(
            f"{fn}: {name} is required (randomness is explicit); pass jax.random.key(0) or similar."
        )
    try:
        arr = jnp.asarray(key) if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    except AttributeError as e:
        raise TypeError(f"{fn}: {name} must be a JAX PRNG key; got {type(key).__name__}.") from e
    if jnp.issubdtype(arr.dtype, jax.dtypes.prng_key):
        return key
    if arr.shape == (2,) and arr.dtype == jnp.uint32:
        return key
    raise TypeError(
        f"{fn}: {name} must be a JAX PRNG key (jax.random.key(seed)); got an array of shape "
        f"{arr.shape} and dtype {arr.dtype}."
    )


def check_callable(f, *, fn: str, name: str):
    if not callable(f):
        raise TypeError(f"{fn}: {name} must be callable; got {type(f).__name__}.")
    return f


def check_finite_scalar(x, *, fn: str, name: str) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{fn}: {name} must be a real number; got {x!r}.") from e
    if not math.isfinite(v):
        raise ValueError(f"{fn}: {name} must be finite; got {x!r}.")
    return v
