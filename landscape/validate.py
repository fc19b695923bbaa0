"""Validation of concrete inputs at the public boundary, and the name errors are given under.

Every public function checks what it is given before tracing anything: values inside traced
code cannot be inspected. Messages follow one shape:
``landscape.<function>: <argument> <what was expected>; got <what was received>``.

The ``<function>`` part comes from one mechanism: public functions are decorated with
:func:`public`, which records their public name in a context variable for the duration of the
call; every check (and every helper beneath it) reads it with :func:`where`. The outermost
public function wins, so an error inside ``make_hvp`` called by ``eigenvalues`` names
``landscape.hessian.eigenvalues``, the function the user called. Code that calls public functions
*as a user would* (the report, the command line) opens a fresh scope with :func:`boundary`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from landscape import _compat
from landscape import tree as _tree

PyTree = Any

_F = TypeVar("_F", bound=Callable)

_WHERE: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "landscape_public_function", default=None
)


def where(default: str = "landscape") -> str:
    """The public name errors are reported under: the outermost :func:`public` function in
    progress, else ``default``."""
    return _WHERE.get() or default


def _public_name(f: Callable) -> str:
    module = ".".join(part for part in f.__module__.split(".") if not part.startswith("_"))
    return f"{module}.{f.__qualname__}"


def public(name: str | Callable | None = None):
    """Decorator: the function is a public entry point named ``name`` in error messages.

    ``@public`` derives the name from the module path without private parts
    (``landscape.surface._slices.slice_2d`` -> ``landscape.surface.slice_2d``);
    ``@public("landscape.evaluate")`` sets it. The name is in force while the function runs,
    unless an outer public function already set one (the function the user called names the
    error). Cost: one context-variable set and reset per call (well under a microsecond).
    """

    def decorate(f: _F) -> _F:
        qual = name if isinstance(name, str) else _public_name(f)

        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            if _WHERE.get() is not None:
                return f(*args, **kwargs)
            token = _WHERE.set(qual)
            try:
                return f(*args, **kwargs)
            finally:
                _WHERE.reset(token)

        wrapper.__public_name__ = qual  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    if callable(name):
        return decorate(name)
    return decorate


@contextlib.contextmanager
def boundary(name: str | None) -> Iterator[None]:
    """Report errors under ``name`` inside the block, whatever the enclosing scope; with
    ``None``, public functions called inside name themselves (for code that calls the toolkit
    as a user would, such as the report)."""
    token = _WHERE.set(name)
    try:
        yield
    finally:
        _WHERE.reset(token)


def is_tracer(x) -> bool:
    """Whether ``x`` is a JAX tracer (a value inside ``jit``/``grad``/``vmap``, which cannot be
    inspected), not a concrete array. The one public test for it (wraps :mod:`landscape._compat`,
    the module that isolates JAX internals)."""
    return _compat.is_tracer(x)


_PACKAGE_DIRS = None


def warn(message: str, category=UserWarning) -> None:
    """``warnings.warn`` attributed to the first caller outside landscape and ntk (the user's
    line), whatever the depth of the call inside the toolkit."""
    import os
    import sys
    import warnings

    global _PACKAGE_DIRS
    if _PACKAGE_DIRS is None:
        here = os.path.dirname(os.path.abspath(__file__))
        _PACKAGE_DIRS = (here + os.sep, os.path.join(os.path.dirname(here), "ntk") + os.sep)
    level, frame = 2, sys._getframe(1)  # stacklevel 2: the caller of warn()
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIRS):
        level, frame = level + 1, frame.f_back
    warnings.warn(message, category, stacklevel=level)


def _is_concrete(x) -> bool:
    return not is_tracer(x)


@jax.jit
def _finite_flags(leaves):
    return jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]) if leaves else jnp.ones((0,), bool)


# above this many elements a fused device reduction (multithreaded) beats NumPy on the host
_HOST_CHECK_SIZE = 1 << 22


def check_finite(tree: PyTree, *, name: str) -> None:
    """Raise ``ValueError`` naming the first leaf of ``tree`` that holds NaN or Inf.

    Host data and small trees in host memory are checked with NumPy (no compiled program);
    anything else with one fused device reduction and one host transfer for the whole tree
    (cheap enough to run at every public call).
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
    if all(isinstance(x, np.ndarray) for _, x in picked) or (
        all(_tree.in_host_memory(x) for _, x in picked)
        and sum(np.size(x) for _, x in picked) <= _HOST_CHECK_SIZE
    ):
        # host data, or arrays in host memory (one CPU device: np.asarray is a view): check
        # with NumPy, no transfer and no compiled program (one per tree structure otherwise,
        # ~70 ms of XLA compilation each, the dominant cost of validating small models)
        flags = np.array([bool(np.isfinite(np.asarray(x)).all()) for _, x in picked])
    else:
        flags = np.asarray(_finite_flags([x for _, x in picked]))
    if flags.all():
        return
    path, leaf = picked[int(np.argmin(flags))]
    a = np.asarray(leaf)
    n_nan = int(np.isnan(a).sum())
    n_inf = int(np.isinf(a).sum())
    at = f" at leaf '{path}'" if path else ""
    raise ValueError(f"{where()}: {name} must be finite; found {n_nan} NaN and {n_inf} Inf values{at}.")


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
    *, name: str,
    ref_name: str = "params",
    check_shapes: bool = True,
    check_dtypes: bool = False,
) -> None:
    """Raise ``ValueError`` unless ``tree`` has ``reference``'s structure (and leaf shapes)."""
    s1, s2 = jax.tree.structure(tree), jax.tree.structure(reference)
    if s1 != s2:
        raise ValueError(
            f"{where()}: {name} must have the same tree structure as {ref_name}; "
            f"got {describe(tree)}, expected {describe(reference)}."
        )
    if check_shapes:
        for path, a, b in zip(
            _tree.leaf_paths(reference), jax.tree.leaves(tree), jax.tree.leaves(reference)
        ):
            if np.shape(a) != np.shape(b):
                raise ValueError(
                    f"{where()}: {name} leaf '{path}' has shape {np.shape(a)}, expected "
                    f"{np.shape(b)} (the shape of {ref_name}'s leaf)."
                )
            if check_dtypes and jnp.result_type(a) != jnp.result_type(b):
                raise TypeError(
                    f"{where()}: {name} leaf '{path}' has dtype {jnp.result_type(a)}, expected "
                    f"{jnp.result_type(b)}."
                )


def check_params(params: PyTree, *, name: str = "params", finite: bool = True) -> None:
    """Parameters: a non-empty pytree of floating arrays, all finite.

    ``finite=False`` checks the structure and leaf types only, for a caller that checks
    finiteness itself (inside its compiled program) with :func:`check_finite`'s message.
    """
    leaves = jax.tree.leaves(params)
    if not leaves:
        raise ValueError(f"{where()}: {name} must be a non-empty pytree of arrays; got {params!r}.")
    for path, leaf in zip(_tree.leaf_paths(params), leaves):
        if not hasattr(leaf, "shape") and not isinstance(leaf, (int, float)):
            raise TypeError(
                f"{where()}: {name} leaf '{path}' must be an array; got {type(leaf).__name__}."
            )
    if finite:
        check_finite(params, name=name)


def num_examples(data: PyTree, *, name: str = "data") -> int:
    """Validate a data set (dict pytree with a common leading axis) and return its size."""
    if data is None:
        raise TypeError(
            f"{where()}: {name} must be a dict of arrays with a leading example axis; got None."
        )
    if not isinstance(data, dict):
        raise TypeError(
            f"{where()}: {name} must be a dict of arrays with a leading example axis "
            f"(e.g. {{'x': ..., 'y': ...}}); got {type(data).__name__}."
        )
    for k, v in data.items():
        if isinstance(v, (list, tuple)) and v and all(
            isinstance(x, (int, float, complex, np.generic)) for x in jax.tree.leaves(v)
        ):
            raise TypeError(
                f"{where()}: {name}['{k}'] is a Python {type(v).__name__} of numbers; every entry must be "
                f"an array with a leading example axis: convert it with np.asarray({name}['{k}'])."
            )
    leaves = jax.tree.leaves(data)
    if not leaves:
        raise ValueError(f"{where()}: {name} is empty (no arrays).")
    sizes = {}
    for path, leaf in zip(_tree.leaf_paths(data), leaves):
        shape = np.shape(leaf)
        if len(shape) == 0:
            raise ValueError(
                f"{where()}: {name} leaf '{path}' is a scalar; every leaf needs a leading example axis."
            )
        sizes[path] = shape[0]
    distinct = set(sizes.values())
    if len(distinct) != 1:
        raise ValueError(
            f"{where()}: all leaves of {name} must have the same number of examples (leading axis); "
            f"got {sizes}."
        )
    n = distinct.pop()
    if n == 0:
        raise ValueError(f"{where()}: {name} is empty (0 examples).")
    return int(n)


def check_data(data: PyTree, *, name: str = "data") -> int:
    """:func:`num_examples` plus a finiteness check of every floating leaf."""
    n = num_examples(data, name=name)
    check_finite(data, name=name)
    return n


def check_batch_size(batch_size, n: int, *, name: str = "batch_size") -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"{where()}: {name} must be a positive int; got {batch_size!r}.")
    if batch_size <= 0:
        raise ValueError(f"{where()}: {name} must be positive; got {batch_size}.")
    if batch_size > n:
        raise ValueError(
            f"{where()}: {name}={batch_size} is larger than the data set ({n} examples); "
            f"use batch_size <= {n}."
        )
    return int(batch_size)


def check_positive_int(value, *, name: str, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{where()}: {name} must be an int; got {value!r}.")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{where()}: {name} must be {bound}; got {value}.")
    return int(value)


def check_choice(value, choices, *, name: str):
    if value not in choices:
        raise ValueError(
            f"{where()}: {name} must be one of {sorted(map(str, choices))}; got {value!r}."
        )
    return value


def check_key(key, *, name: str = "key"):
    if key is None:
        raise TypeError(
            f"{where()}: {name} is required (randomness is explicit); pass jax.random.key(0) or similar."
        )
    try:
        arr = jnp.asarray(key) if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    except AttributeError as e:
        raise TypeError(f"{where()}: {name} must be a JAX PRNG key; got {type(key).__name__}.") from e
    if jnp.issubdtype(arr.dtype, jax.dtypes.prng_key):
        if arr.shape != ():
            raise TypeError(
                f"{where()}: {name} must be one PRNG key; got a batch of keys of shape "
                f"{arr.shape} (pass keys[0], or split inside your own loop)."
            )
        return key
    if arr.shape == (2,) and arr.dtype == jnp.uint32:
        return key
    raise TypeError(
        f"{where()}: {name} must be a JAX PRNG key (jax.random.key(seed)); got an array of shape "
        f"{arr.shape} and dtype {arr.dtype}."
    )


def key_words(key) -> list[int]:
    """The words of a PRNG key's data with leading zeros removed (at least one word): the entropy
    of NumPy generators derived from a JAX key (``np.random.default_rng([*key_words(key), ...])``).
    For ``jax.random.key(s)`` with ``s < 2**32`` this is ``[s]``, so the generator is the one an
    integer seed ``s`` gave."""
    data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    words = [int(w) for w in np.asarray(data).ravel()]
    while len(words) > 1 and words[0] == 0:
        words = words[1:]
    return words


def check_callable(f, *, name: str):
    if not callable(f):
        raise TypeError(f"{where()}: {name} must be callable; got {type(f).__name__}.")
    return f


def check_finite_scalar(x, *, name: str) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{where()}: {name} must be a real number; got {x!r}.") from e
    if not math.isfinite(v):
        raise ValueError(f"{where()}: {name} must be finite; got {x!r}.")
    return v
