"""Blocked, sharded, resumable evaluation of kernel matrices.

A kernel ``K(x1, x2)`` of ``n1 x n2`` entries is computed in blocks of ``block_size`` rows by
``block_size`` columns; only the upper triangle of blocks when ``x2`` is ``None`` (the lower
one is filled by symmetry). Blocks are evaluated in waves of one block per device: the stacked
inputs of a wave are sharded over a 1-D mesh of ``jax.devices()`` (``jax.shard_map``), every
device computes its block, nothing is communicated. One compiled program serves every wave
(the last rows and columns are padded by repeating the last example; padded entries are
discarded). The loop over waves is the foundation's chunk driver
(:func:`landscape.store.run_chunks`): finished blocks are saved atomically in a
:class:`landscape.Store` and loaded when the job is restarted.

A kernel that is a single block on a single device, without store or progress bar (the small
calls of a notebook), skips the wave machinery: one compiled program computes the block and
the inputs' finiteness flags, one transfer brings both back.
"""

from __future__ import annotations

import datetime as _dt
import functools
import math
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from landscape import engine
from landscape import provenance as _foundation_provenance
from landscape import store as _store
from landscape import validate as _validate

BLOCK_BUDGET_BYTES = 256 * 2**20
"""Default memory budget of one block's intermediates (per device)."""


@functools.lru_cache(maxsize=1)
def _base_provenance():
    return _foundation_provenance()


def provenance(dtype, **settings) -> dict:
    """The foundation's provenance record (versions, devices, git commit: computed once per
    process) with this call's time, x64 flag, dtype and settings (the kernel results'
    ``provenance``)."""
    out = dict(_base_provenance())
    out["time"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    out["x64_enabled"] = bool(jax.config.jax_enable_x64)
    out["dtype"] = _dtype_name(dtype)
    out["settings"] = settings
    return out


@functools.lru_cache(maxsize=64)
def _dtype_name(dtype) -> str:
    return str(np.dtype(dtype))  # numpy 2's dtype str() takes microseconds


def memory_limit() -> int:
    """Half the physical memory (``NTK_MEMORY_LIMIT`` bytes overrides): the largest block the
    drivers accept."""
    env = os.environ.get("NTK_MEMORY_LIMIT")
    if env:
        return int(env)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return 8 * 2**30


def choose_block_size(
    block_size,
    n: int,
    bytes_per_pair: float,
    *,
    bytes_per_row: float = 0.0,
    budget: float | None = None,
) -> int:
    """Validate ``block_size`` or pick the largest one within ``budget`` bytes (default
    :data:`BLOCK_BUDGET_BYTES`).

    Raises:
      TypeError: not an int.
      ValueError: not positive, or its estimated memory exceeds :func:`memory_limit`.
    """

    def need(b):
        return b * b * bytes_per_pair + 2 * b * bytes_per_row

    if block_size is None:
        budget = BLOCK_BUDGET_BYTES if budget is None else budget
        b = max(n, 1)
        while b > 1 and need(b) > budget:
            b = max(1, int(b / 1.5))
        return int(b)
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)):
        raise TypeError(
            f"{_validate.where('ntk')}: block_size must be a positive int or None; got {block_size!r}."
        )
    if block_size <= 0:
        raise ValueError(
            f"{_validate.where('ntk')}: block_size must be positive; got {block_size}."
        )
    b = int(min(block_size, max(n, 1)))
    lim = memory_limit()
    if need(b) > lim:
        fit = b
        while fit > 1 and need(fit) > lim:
            fit = max(1, int(fit / 1.5))
        raise ValueError(
            f"{_validate.where('ntk')}: block_size={block_size} cannot fit: one block needs about "
            f"{need(b) / 2**30:.1f} GiB, more than the limit {lim / 2**30:.1f} GiB "
            f"(half the memory; set NTK_MEMORY_LIMIT to change it); use block_size <= {fit}."
        )
    return b


@functools.partial(jax.jit, static_argnames=("fs", "same", "sharded"))
def _wave(fs, fd, args, x1s, x2s, same, sharded):
    f = engine.merge_fn(fs, fd)

    def local(a, u, v):
        out = f(a, u[0], u[0] if same else v[0], same)
        return jax.tree.map(lambda r: r[None], out)

    if not sharded:
        return local(args, x1s, x2s)
    return jax.shard_map(
        local,
        mesh=engine.mesh(),
        in_specs=(P(), P(engine.DATA_AXIS), P(engine.DATA_AXIS)),
        out_specs=P(engine.DATA_AXIS),
        check_vma=False,
    )(args, x1s, x2s)


@functools.partial(jax.jit, static_argnames=("fs", "check", "check_args"))
def _single(fs, fd, args, x1, x2, check, check_args):
    """The whole kernel as one block (``x2=None``: symmetric) and the finiteness flags of
    ``x1`` and ``x2`` (with ``check``) and of ``args[i]`` for each ``(name, i)`` of
    ``check_args``, in one compiled program."""
    f = engine.merge_fn(fs, fd)
    out = f(args, x1, x1 if x2 is None else x2, x2 is None)
    xs = ((x1,) if x2 is None else (x1, x2)) if check else ()
    xs += tuple(args[i] for _, i in check_args)
    flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(xs) if _inexact(x)]
    return out, jnp.stack(flags) if flags else jnp.ones((0,), bool)


def _inexact(x) -> bool:
    return jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.complexfloating)


_SPEC_CACHE: dict = {}


def _out_spec(block_fn, args_spec, u, v):
    """Output shapes of one block (cached: tracing costs milliseconds per call)."""
    leaves, treedef = jax.tree.flatten(args_spec)
    key = (block_fn, treedef, tuple((l.shape, l.dtype) for l in leaves), u, v)
    try:
        hit = _SPEC_CACHE.get(key)
    except TypeError:  # unhashable block function: no caching
        return jax.eval_shape(lambda a, x, y: block_fn(a, x, y, False), args_spec, u, v)
    if hit is None:
        hit = jax.eval_shape(lambda a, x, y: block_fn(a, x, y, False), args_spec, u, v)
        if len(_SPEC_CACHE) > 256:
            _SPEC_CACHE.clear()
        _SPEC_CACHE[key] = hit
    return hit


@functools.lru_cache(maxsize=1)
def _device_count() -> int:
    return jax.device_count()  # fixed once the backend is up (the first kernel call)


@functools.lru_cache(maxsize=64)
def _split_cached(block_fn):
    return engine.split_fn(block_fn)


def _split(block_fn):
    """``engine.split_fn(block_fn)``, once per block function (the drivers' frozen block
    dataclasses hold no arrays); unhashable ones are split (and refused) every time."""
    try:
        return _split_cached(block_fn)
    except TypeError:
        return engine.split_fn(block_fn)


def _check_finite(args, x1, x2, check, check_args):
    """The host checks the one-block program's flags stand for (raise on the first)."""
    if check:
        _validate.check_finite(x1, name="x1")
        if x2 is not None:
            _validate.check_finite(x2, name="x2")
    for name, i in check_args:
        _validate.check_finite(args[i], name=name)


def _pad_rows(x: np.ndarray, n: int) -> np.ndarray:
    if x.shape[0] == n:
        return x
    return np.concatenate([x, np.repeat(x[-1:], n - x.shape[0], axis=0)], axis=0)


def default_transpose(block: np.ndarray) -> np.ndarray:
    """``K(x2, x1)`` from ``K(x1, x2)``: swap the two example axes and, for per-output
    kernels ``(n1, n2, O, O)``, the two output axes."""
    if block.ndim == 4:
        return block.transpose(1, 0, 3, 2)
    return np.swapaxes(block, 0, 1)


def blocked(
    block_fn: Callable,
    args: Any,
    x1,
    x2,
    *,
    block_size: int,
    store=None,
    store_meta: dict | None = None,
    progress: bool = False,
    transpose: Callable = default_transpose,
    check_inputs: bool = False,
    check_args: tuple = (),
):
    """Evaluate ``block_fn(args, x1_block, x2_block, same) -> pytree of (b1, b2, ...)`` on all
    blocks and assemble the ``(n1, n2, ...)`` host arrays.

    ``block_fn`` is a static argument of the compiled wave (hashable; reuse the same object);
    ``args`` are its dynamic arguments (parameters). ``store`` is a directory or a
    :class:`landscape.Store` (bound to ``store_meta`` and the blocking); one entry per block
    pair.

    ``check_inputs``: the caller left the NaN/Inf check of ``x1`` and ``x2`` to this function
    (``ValueError`` "x1 must be finite", as :func:`landscape.validate.check_finite`). A kernel
    that is one block on one device, without store or progress bar (the small call), is ONE
    compiled program that also returns the inputs' finiteness flags (no other dispatch, no
    host pass over the inputs, one transfer back); otherwise the inputs are checked before
    the first block. ``check_args``: ``((name, i), ...)``: ``args[i]`` (a pytree) is checked
    likewise, its errors naming ``name`` (``"params must be finite; ... at leaf 'w'"``).
    """
    sym = x2 is None
    n1 = x1.shape[0]
    n2 = n1 if sym else x2.shape[0]
    b1 = min(block_size, n1)
    b2 = b1 if sym else min(block_size, n2)
    nb1, nb2 = math.ceil(n1 / b1), math.ceil(n2 / b2)
    if nb1 == nb2 == 1 and store is None and not progress and _device_count() == 1:
        fs, fd = _split(block_fn)
        check = bool(check_inputs)
        out, flags = jax.device_get(_single(fs, fd, args, x1, x2, check, tuple(check_args)))
        if not flags.all():
            _check_finite(args, x1, x2, check, check_args)  # raises, naming the first
            raise ValueError(  # finite on the host, not in the program's dtype
                f"{_validate.where('ntk')}: the inputs or parameters overflow the dtype the "
                f"kernel is computed in ({jnp.result_type(*jax.tree.leaves(out))}; JAX's "
                "float64 needs jax.config.update('jax_enable_x64', True))."
            )
        # writable host arrays, as the blocked path gives
        return jax.tree.map(np.array, out)
    _check_finite(args, x1, x2, bool(check_inputs), check_args)
    x1 = np.asarray(x1)
    x2 = x1 if sym else np.asarray(x2)
    x1p = _pad_rows(x1, nb1 * b1)
    x2p = x1p if sym else _pad_rows(x2, nb2 * b2)

    if sym:
        diag = [(i, i) for i in range(nb1)]
        off = [(i, j) for i in range(nb1) for j in range(i + 1, nb1)]
        groups = [(diag, True), (off, False)]
    else:
        groups = [([(i, j) for i in range(nb1) for j in range(nb2)], False)]

    if store is not None:
        meta = dict(store_meta or {})
        meta.update(n1=n1, n2=n2, symmetric=sym, block_rows=b1, block_cols=b2)
        store = _store.as_store(store, meta)

    fs, fd = engine.split_fn(block_fn)
    ndev = jax.device_count()
    sharded = ndev > 1
    in_sh = NamedSharding(engine.mesh(), P(engine.DATA_AXIS)) if sharded else None

    # shapes of one block's outputs
    spec = _out_spec(
        block_fn,
        jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a)), args),
        jax.ShapeDtypeStruct((b1,) + x1.shape[1:], x1.dtype),
        jax.ShapeDtypeStruct((b2,) + x2.shape[1:], x2.dtype),
    )
    leaves_spec, treedef = jax.tree.flatten(spec)
    outs = [np.empty((nb1 * b1, nb2 * b2) + s.shape[2:], s.dtype) for s in leaves_spec]

    def put(i, j, leaves):
        for o, blk in zip(outs, leaves):
            o[i * b1 : (i + 1) * b1, j * b2 : (j + 1) * b2] = blk
            if sym and i != j:
                o[j * b1 : (j + 1) * b1, i * b1 : (i + 1) * b1] = transpose(blk)

    pair_of, same_of, order = {}, {}, []
    for pairs, same in groups:
        for i, j in pairs:
            c = i * nb2 + j
            pair_of[c], same_of[c] = (i, j), same
            order.append(c)

    def wave(ids):
        """One compiled call per group of blocks of one kind (at most one block per device)."""
        out = {}
        for same in (True, False):
            part = [c for c in ids if same_of[c] == same]
            if not part:
                continue
            pairs = [pair_of[c] for c in part]
            padded = pairs + [pairs[-1]] * (ndev - len(pairs))
            u = np.stack([x1p[i * b1 : (i + 1) * b1] for i, _ in padded])
            v = u if same else np.stack([x2p[j * b2 : (j + 1) * b2] for _, j in padded])
            if sharded:
                u = engine.place(u, in_sh)
                v = u if same else engine.place(v, in_sh)
            else:
                u = jnp.asarray(u)
                v = u if same else jnp.asarray(v)
            res = [
                np.asarray(r) for r in jax.tree.leaves(_wave(fs, fd, args, u, v, same, sharded))
            ]
            for k, c in enumerate(part):
                out[c] = jax.tree.unflatten(treedef, [r[k] for r in res])
        return [out[c] for c in ids]

    blocks = _store.run_chunks(
        wave,
        order,
        store=store,
        group=ndev,
        progress=progress,
        desc=_validate.where("ntk"),
        unit="block",
    )
    for c, blk in zip(order, blocks):
        put(*pair_of[c], jax.tree.leaves(blk))
    outs = [o[:n1, :n2] for o in outs]
    return jax.tree.unflatten(treedef, outs)
