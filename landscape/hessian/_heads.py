"""Curvature per attention head and per block: the diagonal blocks of the Hessian (or GGN) on
one head's query/key or value/output weights, and on each block's parameters through depth.

Head ``h`` of an attention layer is a set of slices, not leaves (see
:mod:`landscape.hessian._select`): ``query/kernel[:, h]``, ``key/kernel[:, h]``,
``value/kernel[:, h]``, their biases ``[h]``, and ``out/kernel[h]``. The Q/K and V/O groups are
the two halves of a head that act together: the scores depend on the queries and keys only
through ``W_Q W_K^T`` (per head), the values and outputs through ``W_V W_O``; the output bias
is shared by all heads and belongs to no head.

:func:`head_spectra` computes, for every block ``l``, head ``h`` and group ``g``, the top
eigenvalues and the trace of ``S^T A S`` (the principal sub-matrix of ``A`` on those
coordinates), and the top eigenvalues of each block's whole parameter block (the layer-wise
sharpness through depth). Comparing ``curvature="hessian"`` with ``curvature="ggn"`` (two calls)
gives the GGN/Hessian split per head.

References:
  Ormaniec, Dangel and Singh (2025), What does it mean to be a transformer? Insights from a
  theoretical Hessian analysis (Q/K vs V/O Hessian blocks). Zhang et al. (2024), Why transformers
  need Adam: a Hessian perspective (block heterogeneity across layers and parameter kinds).
  Noci et al. (2022), Signal propagation in transformers (rank collapse, per-layer scales).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from landscape import _provenance
from landscape import tree as _tree
from landscape import validate as _validate
from landscape._result import Result, result, static_field
from landscape.hessian import _driver
from landscape.hessian import _operators as ops
from landscape.hessian._eigen import DEFAULT_TOL, eigenvalues
from landscape.hessian._select import (
    PARTS,
    Selection,
    _Entry,
    attention_layers,
    restrict,
)
from landscape.hessian._trace import trace

PyTree = Any

__all__ = ["GROUPS", "HeadSpectraResult", "block_selection", "head_selection", "head_spectra"]

GROUPS = {"qk": ("query", "key"), "vo": ("value", "out")}
"""The default groups of :func:`head_spectra`: the Q/K and V/O halves of a head."""


# --------------------------------------------------------------------------------------------
# Selections of a head and of a block
# --------------------------------------------------------------------------------------------
def _layers_or_raise(params):
    layers = attention_layers(params)
    if not layers:
        raise ValueError(
            f"{_validate.where()}: params hold no attention layer (a folder with query/kernel and "
            "value/kernel of shape (d_model, heads, d_head) and out/kernel of shape (heads, "
            "d_head, d_out), as make_model('transformer') and Flax's MultiHeadDotProductAttention "
            "lay them out)."
        )
    return layers


def _check_index(value, n: int, *, name: str, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{_validate.where()}: {name} must be an int; got {value!r}.")
    if not 0 <= int(value) < n:
        raise ValueError(
            f"{_validate.where()}: {name}={value} is out of range: the parameters have {n} {what} "
            f"({name} = 0 .. {n - 1})."
        )
    return int(value)


def _check_parts(parts) -> tuple[str, ...]:
    if isinstance(parts, str):
        parts = (parts,)
    if not isinstance(parts, Sequence) or not parts:
        raise TypeError(
            f"{_validate.where()}: parts must be a non-empty sequence of {list(PARTS)}; got {parts!r}."
        )
    bad = [p for p in parts if p not in PARTS]
    if bad:
        raise ValueError(
            f"{_validate.where()}: parts {bad} are not attention parts; choose among {list(PARTS)}."
        )
    return tuple(dict.fromkeys(parts))


def _family(params, folders: list[str], rels_of) -> tuple[list, bool]:
    """Candidate paths shared by the folders: ``(per-relative-path info, shared)``; ``shared``
    when every folder has the same relative leaves with the same shapes and dtypes (the block is
    then an argument of the compiled programs, not a constant)."""
    info = {
        p: (tuple(np.shape(x)), str(jax.numpy.result_type(x)))
        for p, x in zip(_tree.leaf_paths(params), jax.tree.leaves(params))
    }
    sigs = []
    for f in folders:
        sigs.append(tuple((r, info.get(_join(f, r))) for r in rels_of(f)))
    return info, all(s == sigs[0] for s in sigs)


def _join(folder: str, rel: str) -> str:
    return f"{folder}/{rel}" if folder else rel


@_validate.public("landscape.hessian.head_selection")
def head_selection(
    params: PyTree, *, block: int, head: int, parts: Sequence[str] = PARTS, bias: bool = True
) -> Selection:
    """The coordinates of one attention head: the slices ``[:, head]`` of the query, key and
    value kernels, ``[head]`` of their ``(heads, d_head)`` biases and of the output kernel.

    Args:
      params: the parameters (attention layers recognised as in
        :func:`~landscape.hessian.attention_layers`).
      block: which attention layer (0-based, in the parameters' leaf order: ``blocks/<block>``
        of ``make_model("transformer")``).
      head: which head (0-based).
      parts: any of ``"query"``, ``"key"``, ``"value"``, ``"out"`` (default all four);
        ``"key"`` is skipped with tied queries and keys (no key parameters).
      bias: include the query/key/value biases' slices (the output bias, shared by all heads,
        never is).

    Returns:
      A :class:`~landscape.hessian.Selection` whose vectors are keyed by the path inside the
      layer (``"query/kernel"``, ...). Selections of every head and block with the same parts
      share compiled programs when the blocks have the same shapes.

    Raises:
      ValueError: no attention layer; ``block`` or ``head`` out of range; unknown parts, or
        parts the layer does not have.
    """
    _validate.check_params(params, finite=False)
    layers = _layers_or_raise(params)
    b = _check_index(block, len(layers), name="block", what="attention layers")
    layer = layers[b]
    h = _check_index(head, layer.heads, name="head", what=f"heads in block {b}")
    parts = _check_parts(parts)
    rels = [
        r for r in layer.leaves if r.split("/")[0] in parts and (bias or not r.endswith("/bias"))
    ]
    if not rels:
        raise ValueError(
            f"{_validate.where()}: parts {list(parts)} select no parameter of attention layer "
            f"'{layer.folder}' (it has {sorted({r.split('/')[0] for r in layer.leaves})})."
        )
    folders = [a.folder for a in layers]
    info, shared = _family(params, folders, lambda f: rels)
    shared = shared and all(all(r in a.leaves for r in rels) for a in layers)
    cands = folders if shared else [layer.folder]
    choice = b if shared else 0
    entries, index = [], []
    for r in rels:
        shape, dtype = info[_join(layer.folder, r)]
        entries.append(
            _Entry(r, tuple(_join(f, r) for f in cands), layer.leaves[r], 1, shape, dtype)
        )
        index.append((h,))
    label = f"block {b} head {h}: {', '.join(p for p in parts if any(r.startswith(p + '/') for r in rels))}"
    return Selection(tuple(entries), [choice] * len(entries), index, label=label)


def _block_folder(layer) -> str:
    return layer.folder.rsplit("/", 1)[0] if "/" in layer.folder else ""


@_validate.public("landscape.hessian.block_selection")
def block_selection(params: PyTree, *, block: int) -> Selection:
    """Every parameter of one transformer block: the leaves under the folder that holds the
    block's attention layer (``blocks/<block>`` of ``make_model("transformer")``: its LayerNorms,
    attention and MLP).

    Raises:
      ValueError: no attention layer, ``block`` out of range, or an attention layer at the top
        of the tree (no enclosing block).
    """
    _validate.check_params(params, finite=False)
    layers = _layers_or_raise(params)
    b = _check_index(block, len(layers), name="block", what="attention layers")
    folders = [_block_folder(a) for a in layers]
    if not folders[b]:
        raise ValueError(
            f"{_validate.where()}: the attention layer '{layers[b].folder}' sits at the top of the "
            "parameters: there is no enclosing block folder; use select(params, pattern) instead."
        )
    paths = _tree.leaf_paths(params)

    def rels_of(f):
        return [p[len(f) + 1 :] for p in paths if p.startswith(f + "/")]

    info, shared = _family(params, folders, rels_of)
    shared = shared and len(set(folders)) == len(folders)
    cands = folders if shared else [folders[b]]
    entries = []
    for r in rels_of(folders[b]):
        shape, dtype = info[_join(folders[b], r)]
        entries.append(_Entry(r, tuple(_join(f, r) for f in cands), None, None, shape, dtype))
    return Selection(
        tuple(entries),
        [b if shared else 0] * len(entries),
        [None] * len(entries),
        label=f"block {b} ({folders[b]})",
    )


# --------------------------------------------------------------------------------------------
# The result
# --------------------------------------------------------------------------------------------
@result
class HeadSpectraResult(Result):
    """Curvature per attention head (Q/K and V/O groups) and per block.

    Attributes:
      values: ``(blocks, heads, groups, k)`` top eigenvalues of each head's group block
        ``S^T A S`` (descending).
      error_bounds: the same shape: the eigensolver's bounds on their errors.
      converged: ``(blocks, heads, groups)``: every pair of that block converged.
      traces, trace_se: ``(blocks, heads, groups)``: the traces ``sum_{i in S} A_ii`` and their
        standard errors (0 where ``trace_exact``).
      trace_exact: ``(blocks, heads, groups)``: the trace is exact (the block has at most
        ``max_hvps`` coordinates: the sum of its diagonal from unit-vector products), else a
        Hutch++ estimate with ``max_hvps`` products.
      sizes: ``(blocks, heads, groups)``: the number of coordinates of each block.
      layer_values: ``(blocks, k)`` top eigenvalues of each block's whole parameters (empty
        with ``depth=False``); ``layer_sizes``: their dimensions.
      groups: the group names; ``group_parts``: the attention parts of each.
      blocks: the attention layers' folders; ``k``, ``curvature``, ``num_hvps`` (products used
        in total), ``provenance``.
    """

    values: np.ndarray
    error_bounds: np.ndarray
    converged: np.ndarray
    traces: np.ndarray
    trace_se: np.ndarray
    trace_exact: np.ndarray
    sizes: np.ndarray
    layer_values: np.ndarray
    layer_sizes: np.ndarray
    groups: tuple = static_field(default=())
    group_parts: tuple = static_field(default=())
    blocks: tuple = static_field(default=())
    k: int = static_field(default=1)
    curvature: str = static_field(default="hessian")
    num_hvps: int = static_field(default=0)
    provenance: dict = static_field(default_factory=dict)

    @property
    def top(self) -> np.ndarray:
        """``(blocks, heads, groups)``: the top eigenvalue of each head's group."""
        return np.asarray(self.values)[..., 0]

    def table(self) -> str:
        """One row per block, head and group (top eigenvalue, trace, size), then the blocks'
        top eigenvalues through depth."""
        v, t, se, n = (
            np.asarray(x) for x in (self.values, self.traces, self.trace_se, self.sizes)
        )
        spec = ", ".join(f"{g}={'+'.join(p)}" for g, p in zip(self.groups, self.group_parts))
        lines = [
            f"{self.curvature}: per head ({spec})",
            f"{'block':>5} {'head':>4} {'group':>5} {'lambda_max':>12} {'trace':>12} {'+-':>9} {'size':>6}",
        ]
        for b in range(v.shape[0]):
            for h in range(v.shape[1]):
                for g, name in enumerate(self.groups):
                    lines.append(
                        f"{b:>5} {h:>4} {name:>5} {v[b, h, g, 0]:>12.5g} {t[b, h, g]:>12.5g} "
                        f"{se[b, h, g]:>9.2g} {int(n[b, h, g]):>6}"
                    )
        lv = np.asarray(self.layer_values)
        if lv.size:
            lines.append(f"{'block':>5} {'lambda_max of the whole block':>34} {'size':>8}")
            for b in range(lv.shape[0]):
                lines.append(f"{b:>5} {lv[b, 0]:>34.5g} {int(np.asarray(self.layer_sizes)[b]):>8}")
        return "\n".join(lines)

    def __repr__(self):
        v = np.asarray(self.values)
        return (
            f"HeadSpectraResult({self.curvature}, blocks={v.shape[0]}, heads={v.shape[1]}, "
            f"groups={list(self.groups)}, k={self.k}, max lambda {float(v.max()):.4g}, "
            f"num_hvps={self.num_hvps})"
        )


# --------------------------------------------------------------------------------------------
# The study
# --------------------------------------------------------------------------------------------
def _check_groups(groups) -> dict[str, tuple[str, ...]]:
    if not isinstance(groups, Mapping) or not groups:
        raise TypeError(
            f"{_validate.where()}: groups must be a non-empty dict {{name: parts}}, e.g. "
            f"{GROUPS}; got {groups!r}."
        )
    out = {}
    for name, parts in groups.items():
        if not isinstance(name, str):
            raise TypeError(f"{_validate.where()}: groups keys must be names (str); got {name!r}.")
        out[name] = _check_parts(parts)
    return out


@_validate.public("landscape.hessian.head_spectra")
@ops.curvature_keywords(exclude=("params_filter",))
def head_spectra(
    operator,
    params: PyTree = None,
    data: PyTree = None,
    /,
    *,
    key,
    k: int = 1,
    groups: Mapping[str, Sequence[str]] = GROUPS,
    depth: bool = True,
    tol: float = DEFAULT_TOL,
    max_hvps: int = 100,
    sketch_size: int | None = None,
    **curvature,
) -> HeadSpectraResult:
    """Top eigenvalues and traces of the curvature per attention head (Q/K and V/O blocks) and
    the top eigenvalues of every block through depth.

    Called like the estimators: ``head_spectra(op, key=...)`` on a
    :class:`~landscape.hessian.CurvatureOperator` (over all parameters), or the one-shot
    ``head_spectra(loss_fn, params, data, key=..., curvature="ggn", ...)``.

    For every attention layer ``l`` (block), head ``h`` and group ``g`` (default ``"qk"``: the
    query and key slices, ``"vo"``: the value and output slices, biases included, the shared
    output bias excluded) the operator is restricted to those coordinates
    (:func:`~landscape.hessian.restrict`, ``S^T A S``, the principal sub-matrix) and its top
    ``k`` eigenvalues (:func:`~landscape.hessian.eigenvalues`, thick-restart Lanczos to ``tol``)
    and trace are computed. The trace is exact when the block has at most ``max_hvps``
    coordinates (the sum of its diagonal, :meth:`~landscape.hessian.SelectedOperator.diagonal`:
    one product per coordinate, never more than the budget), else a Hutch++ estimate
    (:func:`~landscape.hessian.trace`) with ``max_hvps`` products and its standard error. With
    ``depth`` the top eigenvalues of each block's whole parameters (:func:`block_selection`):
    the layer-wise top eigenvalue through depth.

    Sizes and traces: a head's Q/K block has ``2 (d_model + 1) d_head`` coordinates (kernels
    and biases; ``(d_model + 1) d_head`` with tied queries and keys), its V/O block
    ``(d_model + 1) d_head + d_head d_out``; the trace of a block is ``sum_{i in S} A_ii`` over
    its coordinates, so the Q/K and V/O traces of all heads plus the output bias and the other
    leaves add up to ``tr A``. The key bias has zero curvature under softmax attention (the
    softmax is invariant to a shift shared by all keys), so its rows of a Q/K block vanish.

    Args:
      operator, params, data: a CurvatureOperator, or ``loss_fn, params, data``.
      key: PRNG key (required): folded with each block, head and group.
      k: eigenvalues per block (``k <= `` every block's size).
      groups: ``{name: parts}`` with parts among ``"query"``, ``"key"``, ``"value"``,
        ``"out"`` (e.g. ``{"q": ["query"], "k": ["key"], ...}`` for single kernels).
      depth: also the blocks' top eigenvalues.
      tol: the eigensolver's relative tolerance.
      max_hvps, sketch_size: the trace budget (products per head and group) and the Hutch++
        sketch of the estimated traces.
      **curvature: with a ``loss_fn``: the settings of :func:`~landscape.hessian.make_hvp`
        (``curvature="ggn"`` for the GGN; ``params_filter`` does not apply).

    Returns:
      A :class:`HeadSpectraResult` (``table()``; plots:
      :func:`landscape.plot.plot_head_spectra`, :func:`landscape.plot.plot_depth_spectrum`).

    Cost:
      Per block, head and group one eigensolve (tens of products for ``k = 1``) and at most
      ``max_hvps`` trace products (``min(size, max_hvps)`` for exact traces), each a full product
      of the operator; compiled once per group (the block and head are arguments of the
      programs when the blocks have the same shapes), and once more for the blocks.

    Raises:
      ValueError, TypeError: no attention layer; bad ``k``, ``groups`` or settings; an operator
        with a ``params_filter``.

    Example:
      >>> res = landscape.hessian.head_spectra(loss_fn, params, data, key=jax.random.key(0))
      >>> print(res.table())
    """
    key = _validate.check_key(key)
    k = _validate.check_positive_int(k, name="k")
    groups = _check_groups(groups)
    max_hvps = _validate.check_positive_int(max_hvps, name="max_hvps")
    if not isinstance(depth, bool):
        raise TypeError(f"{_validate.where()}: depth must be a bool; got {depth!r}.")
    op = _driver.resolve(operator, params, data, like=None, curvature=curvature)
    if not isinstance(op, ops.CurvatureOperator):
        raise TypeError(
            f"{_validate.where()}: operator must be a CurvatureOperator (make_hvp) or loss_fn with "
            f"params and data; a plain matvec has no parameters to find heads in."
        )
    if not op.subset.is_all:
        raise ValueError(
            f"{_validate.where()}: the operator has a params_filter ({list(op.subset.selected_paths)}); "
            "head_spectra selects the heads itself: build the operator without one."
        )
    params = op.params
    layers = _layers_or_raise(params)
    nb, nh = len(layers), layers[0].heads
    if any(a.heads != nh for a in layers):
        raise ValueError(
            f"{_validate.where()}: the attention layers have different head counts "
            f"{[a.heads for a in layers]}; head_spectra needs one head count."
        )
    names = list(groups)
    ng = len(names)
    vals = np.full((nb, nh, ng, k), np.nan)
    bounds = np.full((nb, nh, ng, k), np.nan)
    conv = np.zeros((nb, nh, ng), bool)
    tr = np.full((nb, nh, ng), np.nan)
    tse = np.full((nb, nh, ng), np.nan)
    sizes = np.zeros((nb, nh, ng), np.int64)
    exact = np.zeros((nb, nh, ng), bool)
    used = 0
    trace_kw = {"max_hvps": max_hvps, "sketch_size": sketch_size, "estimator": "hutch++"}
    for b in range(nb):
        for h in range(nh):
            for g, name in enumerate(names):
                sel = head_selection(params, block=b, head=h, parts=groups[name])
                sop = restrict(op, sel)
                if k > sop.num_params:
                    raise ValueError(
                        f"{_validate.where()}: k={k} exceeds the size {sop.num_params} of "
                        f"{sel.label}; ask k <= {sop.num_params}."
                    )
                kk = jax.random.fold_in(key, (b * nh + h) * ng + g)
                e = eigenvalues(sop, k=k, key=kk, tol=tol)
                vals[b, h, g], bounds[b, h, g] = e.values[:k], e.error_bounds[:k]
                conv[b, h, g] = bool(np.all(e.converged))
                n = sop.num_params
                if n <= max_hvps:  # within the budget: the exact diagonal, no estimate
                    diag = sop.diagonal()
                    tr[b, h, g] = float(
                        sum(np.sum(np.asarray(x, np.float64)) for x in diag.values())
                    )
                    tse[b, h, g], exact[b, h, g] = 0.0, True
                    used += e.num_hvps + n
                else:
                    t = trace(sop, key=jax.random.fold_in(kk, 1), **trace_kw)
                    tr[b, h, g], tse[b, h, g] = float(t.estimate), float(t.std_error)
                    used += e.num_hvps + t.num_hvps
                sizes[b, h, g] = n
    lv = np.zeros((nb if depth else 0, k))
    ls = np.zeros((nb if depth else 0,), np.int64)
    if depth:
        for b in range(nb):
            sop = restrict(op, block_selection(params, block=b))
            e = eigenvalues(sop, k=k, key=jax.random.fold_in(key, nb * nh * ng + b), tol=tol)
            lv[b], ls[b] = e.values[:k], sop.num_params
            used += e.num_hvps
    record = {
        "k": k,
        "groups": {n: list(p) for n, p in groups.items()},
        "depth": depth,
        "tol": tol,
        "max_hvps": max_hvps,
        "sketch_size": sketch_size,
    }
    prov = _provenance.provenance(
        dtype=op.dtype, seeds=_driver.key_desc(key), settings={**record, **op.describe()}
    )
    return HeadSpectraResult(
        values=vals,
        error_bounds=bounds,
        converged=conv,
        traces=tr,
        trace_se=tse,
        trace_exact=exact,
        sizes=sizes,
        layer_values=lv,
        layer_sizes=ls,
        groups=tuple(names),
        group_parts=tuple(groups[n] for n in names),
        blocks=tuple(a.folder for a in layers),
        k=k,
        curvature=op.curvature,
        num_hvps=int(used),
        provenance=prov,
    )
