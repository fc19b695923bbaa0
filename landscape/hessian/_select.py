"""Selections that address slices of parameter leaves, and the curvature operator restricted to
one: the diagonal block ``S^T A S`` on the coordinates a selection picks.

``params_filter`` (see :func:`~landscape.hessian.make_hvp`) selects whole leaves. An attention
head is not a leaf: head ``h`` of a layer is the slice ``[:, h]`` of its query, key and value
kernels, ``[h]`` of their ``(heads, d_head)`` biases and ``[h]`` of the output kernel. A
:class:`Selection` picks, per leaf, either the whole leaf or the slices at some indices along
one axis; :func:`restrict` turns an operator ``A`` (a
:class:`~landscape.hessian.CurvatureOperator`) into the operator on the selected coordinates:

    ``A_S v = S^T A S v``, with ``S`` the embedding of the selected coordinates (zeros elsewhere),

i.e. the principal sub-matrix of ``A`` on those coordinates (equivalently ``P_S A P_S`` with the
projector ``P_S = S S^T``, seen on its range). Its vectors are small: a dict ``{key: slice}``
holding only the selected coordinates (:attr:`Selection.template`), so Krylov bases, sketches
and probes have the selection's size, and its size (``num_params``) is the number of selected
coordinates. Every estimator takes the restricted operator: ``eigenvalues(op_S, k=..)`` gives
the extreme eigenvalues of the block, ``trace(op_S)`` its trace ``tr(S^T A S) = sum_{i in S}
A_ii`` (the diagonal of ``A`` summed over the selected coordinates), ``spectral_density(op_S)``
its spectrum.

Cost: one product of ``A_S`` is one product of ``A`` (the whole network's forward and backward
passes: a block is not cheaper to multiply than the whole operator) plus an embedding and a
slice of the selected leaves.

Compiled programs are shared: the indices (which head) and, for the families built by
:func:`~landscape.hessian.head_selection` and :func:`~landscape.hessian.block_selection`, the
block are arguments of the compiled programs, not constants: the selections of every head of
every block with the same parts (and the same leaf shapes) run on one set of programs.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial, register_pytree_node_class

from landscape import engine
from landscape import tree as _tree
from landscape import validate as _validate
from landscape._attention import attention_folders
from landscape.hessian import _lanczos as lz
from landscape.hessian import _operators as ops

PyTree = Any

__all__ = [
    "HEADS",
    "Selection",
    "SelectedOperator",
    "Slice",
    "attention_layers",
    "restrict",
    "select",
]

HEADS = "heads"
"""``Slice(..., axis="heads")``: the heads axis of an attention leaf (see :func:`attention_layers`)."""

# the heads axis of each attention leaf (relative path in its layer -> axis)
_HEAD_AXES = {
    "query/kernel": 1,
    "key/kernel": 1,
    "value/kernel": 1,
    "out/kernel": 0,
    "query/bias": 0,
    "key/bias": 0,
    "value/bias": 0,
}
PARTS = ("query", "key", "value", "out")


# --------------------------------------------------------------------------------------------
# Attention layers in a parameter tree
# --------------------------------------------------------------------------------------------
class AttentionLayer(NamedTuple):
    """One multi-head attention layer found in the parameters.

    Attributes:
      folder: its path prefix (``"blocks/0/attn"``).
      heads, d_head: the head count and width.
      leaves: ``{relative path: heads axis}`` of its per-head leaves (``"query/kernel": 1``,
        ``"out/kernel": 0``, ...; ``key`` absent with tied queries and keys, biases absent
        without biases). ``out/bias`` is shared by all heads and not listed.
    """

    folder: str
    heads: int
    d_head: int
    leaves: dict


def attention_layers(params: PyTree) -> list[AttentionLayer]:
    """The attention layers of ``params``, in leaf order, recognised from names and shapes
    together (the head-axis layout of Flax's ``DenseGeneral``, used by
    ``flax.linen.MultiHeadDotProductAttention`` and ``make_model("transformer")``): a folder
    with ``query/kernel`` and ``value/kernel`` of one shape ``(d_model, heads, d_head)``,
    ``key/kernel`` of that shape or absent (tied queries and keys), ``out/kernel`` of shape
    ``(heads, d_head, d_out)``, and optional ``(heads, d_head)`` biases."""
    out = []
    for base, h, k, shapes in attention_folders(params):
        leaves = {}
        for rel, axis in _HEAD_AXES.items():
            s = shapes.get(base + rel)
            if s is None:
                continue
            if rel.endswith("/bias") and s != (h, k):
                continue
            leaves[rel] = axis
        out.append(AttentionLayer(base.rstrip("/"), h, k, leaves))
    return out


def _head_axes(params) -> dict[str, int]:
    """``{leaf path: heads axis}`` over every attention layer."""
    return {
        (f"{a.folder}/{rel}" if a.folder else rel): axis
        for a in attention_layers(params)
        for rel, axis in a.leaves.items()
    }


# --------------------------------------------------------------------------------------------
# Specs and selections
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Slice:
    """A slice spec: the slices at ``index`` along ``axis`` of every leaf whose path matches
    ``pattern`` (a glob on slash paths, as ``params_filter``).

    Attributes:
      pattern: e.g. ``"blocks/0/attn/query/*"`` or ``"*/attn/value/kernel"``.
      index: an int or a sequence of distinct ints along ``axis``.
      axis: an int, or ``"heads"`` (default): the heads axis of attention leaves (axis 1 of
        query/key/value kernels, 0 of their biases and of the output kernel); a leaf without
        one (``out/bias``, an MLP kernel) is an error.

    Example:
      >>> Slice("blocks/1/attn/*", 0)            # head 0 of block 1: Q, K, V and O together
      >>> Slice("blocks/0/mlp/fc1/kernel", [3, 5], axis=1)   # two hidden units' fan-in
    """

    pattern: str
    index: Any
    axis: Any = HEADS


class _Entry(NamedTuple):
    key: str  # the vector's key
    paths: tuple  # candidate leaf paths (one for a plain selection; one per block in a family)
    axis: int | None  # None: the whole leaf
    count: int | None  # number of indices
    shape: tuple  # the leaf's shape (every candidate has it)
    dtype: str


class Selection:
    """Coordinates of the parameters: whole leaves and slices of leaves (see the module
    docstring). Build with :func:`select`, :func:`~landscape.hessian.head_selection` or
    :func:`~landscape.hessian.block_selection`; use with :func:`restrict`.

    Attributes:
      entries: per selected leaf, its key in the vectors, the candidate paths, axis, count.
      choice: per entry, which candidate path is selected.
      index: per entry, the indices along its axis (``None``: the whole leaf).
      label: a short description (``"block 0 head 1: query, key"``).
    """

    def __init__(self, entries: tuple, choice: Sequence[int], index: Sequence, label: str = ""):
        self.entries = tuple(entries)
        self.choice = tuple(int(c) for c in choice)
        self.index = tuple(None if i is None else tuple(int(j) for j in i) for i in index)
        self.label = label

    @property
    def paths(self) -> tuple[str, ...]:
        """The leaf paths selected (one per entry)."""
        return tuple(e.paths[c] for e, c in zip(self.entries, self.choice))

    @property
    def size(self) -> int:
        """Number of selected coordinates (the restricted operator's dimension)."""
        total = 0
        for e in self.entries:
            shape = list(e.shape)
            if e.axis is not None:
                shape[e.axis] = e.count
            total += int(np.prod(shape, dtype=np.int64))
        return total

    @property
    def template(self) -> dict:
        """``{key: jax.ShapeDtypeStruct}``: the shape of the restricted operator's vectors."""
        out = {}
        for e in self.entries:
            shape = list(e.shape)
            if e.axis is not None:
                shape[e.axis] = e.count
            out[e.key] = jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(e.dtype))
        return out

    def describe(self) -> dict:
        """JSON-able: the label and, per selected leaf, its path, axis and indices."""
        return {
            "label": self.label,
            "leaves": [
                {"key": e.key, "path": p, "axis": e.axis, "index": None if i is None else list(i)}
                for e, p, i in zip(self.entries, self.paths, self.index)
            ],
        }

    def __repr__(self):
        return f"Selection({self.label or list(self.paths)}, size={self.size})"

    def narrowed(self) -> Selection:
        """The same coordinates with only the chosen leaf per entry as candidate (its compiled
        programs are then its own, not shared with the other blocks)."""
        entries = tuple(e._replace(paths=(e.paths[c],)) for e, c in zip(self.entries, self.choice))
        return Selection(entries, [0] * len(entries), self.index, label=self.label)

    def _node(self) -> _Node:
        # NumPy: arguments of the compiled products (transferred per call, no program to
        # build them)
        return _Node(
            self.entries,
            np.asarray(self.choice, np.int32),
            tuple(None if i is None else np.asarray(i, np.int32) for i in self.index),
        )

    def restrict(self, tree: PyTree) -> dict:
        """The selected coordinates of a params-shaped pytree, as ``{key: slice}``."""
        leaves = dict(zip(_tree.leaf_paths(tree), jax.tree.leaves(tree)))
        out = {}
        for e, p, i in zip(self.entries, self.paths, self.index):
            x = leaves[p]
            if _concrete(x):  # on the host: a copy of elements, no program per leaf shape
                if i is None:
                    out[e.key] = x if isinstance(x, jax.Array) else _tree.put_like(np.asarray(x), x)
                else:
                    y = np.take(np.asarray(x), np.asarray(i), axis=e.axis)
                    out[e.key] = _tree.put_like(y, x)
                continue
            x = jnp.asarray(x)
            out[e.key] = x if i is None else jnp.take(x, jnp.asarray(i), axis=e.axis)
        return out

    def embed(self, sub: dict, like: PyTree) -> PyTree:
        """A pytree shaped like ``like`` (the parameters) holding ``sub`` (``{key: slice}``, as
        the restricted operator's vectors; each entry may carry extra leading axes, e.g. the
        ``k`` of an :class:`~landscape.hessian.EigenResult`'s ``vectors``) on the selected
        coordinates and zeros elsewhere."""
        paths = _tree.leaf_paths(like)
        leaves, treedef = jax.tree.flatten(like)
        at = {p: (e, i, sub[e.key]) for e, p, i in zip(self.entries, self.paths, self.index)}
        e0, _, x0 = next(iter(at.values()))
        lead = tuple(np.shape(x0)[: np.ndim(x0) - len(e0.shape)])
        if all(_concrete(x) for x in leaves) and all(_concrete(v) for _, _, v in at.values()):
            return jax.tree.unflatten(treedef, self._embed_on_host(paths, leaves, at, lead))
        out = []
        for p, x in zip(paths, leaves):
            z = jnp.zeros(lead + tuple(np.shape(x)), jnp.result_type(x))
            if p in at:
                e, i, v = at[p]
                z = _put(
                    z,
                    jnp.asarray(v, z.dtype),
                    None if i is None else jnp.asarray(i),
                    e.axis,
                    len(lead),
                )
            out.append(z)
        return jax.tree.unflatten(treedef, out)

    @staticmethod
    def _embed_on_host(paths, leaves, at, lead) -> list:
        """:meth:`embed` of concrete arrays, in NumPy on the host and put back on each
        leaf's device: the same values (zeros, and copies of ``sub`` cast to the leaf's dtype
        with round-to-nearest as on the device) without compiled programs per leaf shape."""
        out = []
        for p, x in zip(paths, leaves):
            dtype = np.dtype(jnp.result_type(x))
            z = np.zeros(lead + tuple(np.shape(x)), dtype)
            if p in at:
                e, i, v = at[p]
                v = np.asarray(v).astype(dtype, copy=False)
                if i is None:
                    z = v
                else:
                    a = e.axis + len(lead)
                    zm = np.moveaxis(z, a, 0)  # a view: assigning fills z
                    zm[np.asarray(i)] = np.moveaxis(v, a, 0)
            out.append(_tree.put_like(z, x))
        return out


def _concrete(x) -> bool:
    """Data the host can read and put back where it was (Python numbers included)."""
    return isinstance(x, int | float) or _tree.host_readable(x)


def _put(z, v, idx, axis, lead: int = 0):
    """``z`` with ``v`` at ``idx`` along ``axis`` (after ``lead`` leading axes), or ``v`` when the
    whole leaf is selected (traceable)."""
    if idx is None:
        return v
    a = axis + lead
    zm = jnp.moveaxis(z, a, 0)
    return jnp.moveaxis(zm.at[idx].set(jnp.moveaxis(v, a, 0)), 0, a)


@register_pytree_node_class
class _Node:
    """A selection inside compiled code: the entries static, the choices and indices arrays."""

    def __init__(self, entries, choice, index):
        self.entries = entries
        self.choice = choice
        self.index = index

    def tree_flatten(self):
        return (self.choice, self.index), self.entries

    @classmethod
    def tree_unflatten(cls, entries, children):
        return cls(entries, *children)


def _match(pattern: str, path: str) -> bool:
    pat = pattern.rstrip("/")
    return fnmatch.fnmatchcase(path, pat) or fnmatch.fnmatchcase(path, pat + "/*")


def _indices(index, size: int, *, path: str, axis: int, what: str) -> tuple[int, ...]:
    if isinstance(index, (bool, np.bool_)):
        raise TypeError(
            f"{_validate.where()}: index must be an int or a sequence of ints; got {index!r}."
        )
    if isinstance(index, (int, np.integer)):
        idx = (int(index),)
    elif isinstance(index, Sequence) and not isinstance(index, str) and len(index) > 0:
        if not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in index):
            raise TypeError(
                f"{_validate.where()}: index must be an int or a sequence of ints; got {index!r}."
            )
        idx = tuple(int(i) for i in index)
    else:
        raise TypeError(
            f"{_validate.where()}: index must be an int or a non-empty sequence of ints; got {index!r}."
        )
    bad = [i for i in idx if not 0 <= i < size]
    if bad:
        raise ValueError(
            f"{_validate.where()}: index {bad[0]} is out of range for axis {axis} of '{path}' "
            f"(size {size}{what}); use 0 .. {size - 1}."
        )
    if len(set(idx)) != len(idx):
        raise ValueError(f"{_validate.where()}: index {list(idx)} repeats an index.")
    return tuple(sorted(idx))


@_validate.public("landscape.hessian.select")
def select(params: PyTree, *specs, label: str = "") -> Selection:
    """A :class:`Selection` of the coordinates of ``params`` that ``specs`` name.

    Args:
      params: the parameters (or any pytree shaped like them).
      *specs: each a glob pattern (``str``: the whole leaves it matches, as ``params_filter``) or
        a :class:`Slice` (slices of the leaves it matches). Selections of the same leaf are
        united: a whole leaf wins over its slices, slices along one axis unite their indices.
      label: a short description kept with the selection.

    Returns:
      A :class:`Selection` (its leaves in the parameters' leaf order).

    Raises:
      ValueError: no spec; a pattern that matches no leaf; ``axis="heads"`` on a leaf that has
        no heads axis; an axis or index out of range; slices of one leaf along two axes.
      TypeError: a spec that is neither a pattern nor a :class:`Slice`.

    Example:
      >>> sel = select(params, Slice("blocks/0/attn/query/*", 1), Slice("blocks/0/attn/key/*", 1))
      >>> op_qk = restrict(make_hvp(loss_fn, params, data), sel)
    """
    _validate.check_params(params, finite=False)
    if not specs:
        raise ValueError(
            f"{_validate.where()}: specs is empty; pass glob patterns and/or Slice(...) specs."
        )
    paths = _tree.leaf_paths(params)
    leaves = jax.tree.leaves(params)
    shapes = {p: tuple(np.shape(x)) for p, x in zip(paths, leaves)}
    head_axes = None
    chosen: dict[str, tuple[int | None, tuple | None]] = {}
    for n, spec in enumerate(specs):
        if isinstance(spec, str):
            pattern, sl = spec, None
        elif isinstance(spec, Slice):
            pattern, sl = spec.pattern, spec
            if not isinstance(pattern, str):
                raise TypeError(
                    f"{_validate.where()}: Slice.pattern must be a glob pattern (str); got {pattern!r}."
                )
        else:
            raise TypeError(
                f"{_validate.where()}: specs[{n}] must be a glob pattern (str) or a "
                f"landscape.hessian.Slice; got {type(spec).__name__}."
            )
        hit = [p for p in paths if _match(pattern, p)]
        if not hit:
            raise ValueError(
                f"{_validate.where()}: pattern {pattern!r} (specs[{n}]) matches no parameter; the leaf paths are "
                f"{paths[:24]}{' ...' if len(paths) > 24 else ''}."
            )
        for p in hit:
            if sl is None:
                chosen[p] = (None, None)
                continue
            if sl.axis == HEADS:
                if head_axes is None:
                    head_axes = _head_axes(params)
                if p not in head_axes:
                    raise ValueError(
                        f"{_validate.where()}: axis='heads' (specs[{n}], pattern {pattern!r}): leaf '{p}' of shape "
                        f"{shapes[p]} has no heads axis (it is not a query/key/value/out kernel or a "
                        "(heads, d_head) bias of a recognised attention layer); narrow the pattern, or "
                        "pass an int axis."
                    )
                axis = head_axes[p]
                what = ": the heads"
            elif isinstance(sl.axis, (int, np.integer)) and not isinstance(sl.axis, bool):
                nd = len(shapes[p])
                if not -nd <= int(sl.axis) < nd:
                    raise ValueError(
                        f"{_validate.where()}: axis {sl.axis} (specs[{n}]) is out of range for leaf '{p}' of "
                        f"shape {shapes[p]}."
                    )
                axis = int(sl.axis) % nd
                what = ""
            else:
                raise TypeError(
                    f"{_validate.where()}: Slice.axis must be an int or 'heads'; got {sl.axis!r}."
                )
            idx = _indices(sl.index, shapes[p][axis], path=p, axis=axis, what=what)
            prev = chosen.get(p)
            if prev is None:
                chosen[p] = (axis, idx)
            elif prev[0] is None:
                continue  # the whole leaf is already selected
            elif prev[0] != axis:
                raise ValueError(
                    f"{_validate.where()}: leaf '{p}' is sliced along axes {prev[0]} and {axis}; a selection "
                    "slices each leaf along one axis (select the whole leaf, or one axis)."
                )
            else:
                chosen[p] = (axis, tuple(sorted(set(prev[1]) | set(idx))))
    entries, index = [], []
    for p, x in zip(paths, leaves):
        if p not in chosen:
            continue
        axis, idx = chosen[p]
        entries.append(
            _Entry(
                p,
                (p,),
                axis,
                None if idx is None else len(idx),
                shapes[p],
                str(jnp.result_type(x)),
            )
        )
        index.append(idx)
    return Selection(tuple(entries), [0] * len(entries), index, label=label)


# --------------------------------------------------------------------------------------------
# The restricted operator
# --------------------------------------------------------------------------------------------
@register_pytree_node_class
class _Plan:
    """Static layout of the base operator's vectors plus the selection node."""

    def __init__(self, node: _Node, base_subset, base_shapes: tuple):
        self.node = node
        self.base_subset = base_subset
        self.base_shapes = base_shapes  # ((path, shape, dtype), ...) of the base vector's leaves

    def tree_flatten(self):
        return (self.node,), (self.base_subset, self.base_shapes)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(children[0], *aux)


def _to_base(plan: _Plan, v: dict):
    """``S v``: the base operator's vector with ``v`` on the selection and zeros elsewhere."""
    node = plan.node
    leaves = {p: jnp.zeros(s, d) for p, s, d in plan.base_shapes}
    for j, e in enumerate(node.entries):
        x = v[e.key]
        idx = node.index[j]
        for c, p in enumerate(e.paths):
            placed = _put(leaves[p], x.astype(leaves[p].dtype), idx, e.axis)
            leaves[p] = (
                placed if len(e.paths) == 1 else jnp.where(node.choice[j] == c, placed, leaves[p])
            )
    sub = plan.base_subset
    if sub.is_all:
        return jax.tree.unflatten(sub.treedef, [leaves[p] for p in sub.paths])
    return {p: leaves[p] for p in sub.selected_paths}


def _from_base(plan: _Plan, out) -> dict:
    """``S^T y``: the selected coordinates of a base vector."""
    node = plan.node
    sub = plan.base_subset
    leaves = dict(zip(sub.paths, sub.treedef.flatten_up_to(out))) if sub.is_all else dict(out)
    res = {}
    for j, e in enumerate(node.entries):
        idx = node.index[j]
        parts = [
            leaves[p] if idx is None else jnp.take(leaves[p], idx, axis=e.axis) for p in e.paths
        ]
        if len(parts) == 1:
            res[e.key] = parts[0]
        else:
            res[e.key] = jnp.stack(parts)[node.choice[j]]
    return res


def _selected_matvec(plan: _Plan, prepared: ops.Prepared, v: dict) -> dict:
    """``S^T A S v`` (traceable); ``prepared`` is the base operator's prepared product."""
    out, _ = prepared(_to_base(plan, v))
    return _from_base(plan, out)


class SelectedOperator(ops.MatvecOperator):
    """A :class:`~landscape.hessian.CurvatureOperator` restricted to a :class:`Selection`:
    ``S^T A S`` on vectors shaped like ``selection.template`` (built by :func:`restrict`).

    Attributes:
      base: the full operator.
      selection: the :class:`Selection`.
      curvature: the base operator's curvature.
      num_params: the number of selected coordinates.
    """

    template_name = "selection.template"

    def __init__(self, base: ops.CurvatureOperator, selection: Selection):
        self.base = base
        self.selection = selection
        self.template = selection.template
        self.subset = ops.make_subset(self.template, None)
        self.curvature = base.curvature
        sub = base.subset
        vec = sub.restrict(base.params)
        vpaths = sub.paths if sub.is_all else sub.selected_paths
        vleaves = sub.treedef.flatten_up_to(vec) if sub.is_all else [vec[p] for p in vpaths]
        shapes = tuple(
            (p, tuple(np.shape(x)), str(jnp.result_type(x))) for p, x in zip(vpaths, vleaves)
        )
        self._plan = _Plan(selection._node(), sub, shapes)
        self._host = None

    @property
    def matvec_fn(self):
        return Partial(_selected_matvec, self._plan, self.base.host_prepared())

    def prepared(self) -> ops.Prepared:
        """Traceable (the base operator prepared inside the caller's program)."""
        return ops.Prepared(matvec_fn=Partial(_selected_matvec, self._plan, self.base.prepared()))

    def host_prepared(self) -> ops.Prepared:
        """The prepared operator with concrete arrays (the base linearised once if its method
        says so; cached)."""
        if self._host is None:
            self._host = ops.Prepared(matvec_fn=self.matvec_fn)
        return self._host

    def describe(self) -> dict:
        return {**self.base.describe(), "selection": self.selection.describe()}

    def __repr__(self):
        return (
            f"SelectedOperator({self.curvature}, {self.selection.label or list(self.selection.paths)}, "
            f"num_params={self.num_params}, method={self.base.method})"
        )

    @_validate.public("landscape.hessian.SelectedOperator")
    def __call__(self, v: dict) -> dict:
        """One product ``S^T A S v`` on a vector shaped like ``selection.template``."""
        _validate.check_same_structure(v, self.template, name="v", ref_name="selection.template")
        v = {k: jnp.asarray(x, self.template[k].dtype) for k, x in v.items()}
        s, d = engine.split_fn(self.host_prepared())
        out, ok = _apply_jit(s, d, v)
        self.check_flags(ok)
        return out

    def diagonal(self, *, chunk_size: int = 8) -> dict:
        """The exact diagonal of ``S^T A S`` (``{key: array}`` shaped like the template), from
        its products with the unit vectors: ``num_params`` products, ``chunk_size`` at once
        (vectorised: memory of ``chunk_size`` products) per compiled call (one program for every
        selection of the same shapes). Its sum is the exact trace
        ``sum_{i in S} A_ii``; for small blocks only (a large block's trace is estimated by
        :func:`~landscape.hessian.trace`).

        Raises:
          FloatingPointError: a product was not finite.
        """
        chunk = _validate.check_positive_int(chunk_size, name="chunk_size")
        layout = lz.Layout(self.template)
        s, d = engine.split_fn(self.host_prepared())
        acc = np.zeros((layout.size,), layout.dtype)  # host zeros: no program to build them
        for start in range(0, layout.size, chunk):
            acc, ok = _diag_chunk_jit(s, d, layout, acc, np.int32(start), chunk)
            self.check_flags(ok, context="unit-vector products of the diagonal")
        return layout.unravel(acc)


@functools.partial(jax.jit, static_argnames=("s",))
def _apply_jit(s, d, v):
    return engine.merge_fn(s, d)(v)


@functools.partial(jax.jit, static_argnames=("s", "layout", "num"))
def _diag_chunk_jit(s, d, layout, acc, start, num):
    """``acc`` plus the diagonal entries ``start .. start + num - 1`` (those below the size):
    ``num`` unit-vector products, vectorised."""
    prep = engine.merge_fn(s, d)
    n = layout.size
    j = start + jnp.arange(num)
    jj = jnp.minimum(j, n - 1)
    inside = j < n
    E = jnp.where(inside[:, None], jax.nn.one_hot(jj, n, dtype=layout.dtype), 0)

    def one(e):
        y, f = prep(layout.unravel(e))
        return layout.ravel(y), jnp.all(f)

    Y, ok = jax.vmap(one)(E)
    vals = jnp.where(inside, jnp.take_along_axis(Y, jj[:, None], axis=1)[:, 0], 0).astype(
        acc.dtype
    )
    return acc.at[jj].add(vals), jnp.all(ok)


@_validate.public("landscape.hessian.restrict")
def restrict(operator: ops.CurvatureOperator, *selection) -> SelectedOperator:
    """The operator restricted to a selection: ``S^T A S``, the diagonal block of ``A`` on the
    selected coordinates (module docstring).

    Args:
      operator: a :class:`~landscape.hessian.CurvatureOperator` (from
        :func:`~landscape.hessian.make_hvp`; any curvature, method, preconditioner). With a
        ``params_filter`` it must hold every leaf the selection touches.
      *selection: a :class:`Selection`, or specs for :func:`select` (patterns and
        :class:`Slice` objects) on the operator's parameters.

    Returns:
      A :class:`SelectedOperator`: every estimator takes it (``eigenvalues(op_S, k=.., key=..)``,
      ``trace(op_S, key=..)``, ``spectral_density``, ``lanczos``); its vectors are
      ``{key: slice}`` dicts shaped like ``selection.template``, its ``num_params`` the number
      of selected coordinates; ``selection.embed(vectors, params)`` puts vectors back into the
      parameters' shape. Traces are ``sum_{i in S} A_ii`` (the Hutch++/Hutchinson estimators:
      the exact GGN route works on whole leaves and does not apply).

    Cost:
      A product is one product of ``operator`` plus an embedding and a slice of the selected
      leaves.

    Raises:
      TypeError: ``operator`` is not a CurvatureOperator; a bad spec.
      ValueError: a selection built for other parameters (paths or shapes differ), or leaves
        outside the operator's ``params_filter``; bad specs (see :func:`select`).
    """
    if not isinstance(operator, ops.CurvatureOperator):
        raise TypeError(
            f"{_validate.where()}: operator must be a CurvatureOperator from "
            f"landscape.hessian.make_hvp (it holds the parameters a selection addresses); got "
            f"{type(operator).__name__}."
        )
    if len(selection) == 1 and isinstance(selection[0], Selection):
        sel = selection[0]
    elif any(isinstance(s, Selection) for s in selection):
        raise TypeError(
            f"{_validate.where()}: pass one Selection, or specs (patterns and Slice objects)."
        )
    else:
        sel = select(operator.params, *selection)
    shapes = dict(
        zip(
            _tree.leaf_paths(operator.params),
            (tuple(np.shape(x)) for x in jax.tree.leaves(operator.params)),
        )
    )
    avail = set(operator.subset.selected_paths)
    if any(p not in avail for e in sel.entries for p in e.paths) and all(
        p in avail for p in sel.paths
    ):
        sel = sel.narrowed()  # a family member on a filtered operator: its own leaves only
    for e in sel.entries:
        for p in e.paths:
            if shapes.get(p) != tuple(e.shape):
                raise ValueError(
                    f"{_validate.where()}: the selection was built for other parameters: leaf '{p}' "
                    f"{'is absent' if p not in shapes else f'has shape {shapes[p]}'} here, the selection "
                    f"expects shape {tuple(e.shape)}."
                )
            if p not in avail:
                raise ValueError(
                    f"{_validate.where()}: the selection touches '{p}', outside the operator's params_filter "
                    f"{list(operator.subset.selected_paths)}; build the operator without params_filter "
                    "(or with one that holds the selected leaves)."
                )
    return SelectedOperator(operator, sel)
