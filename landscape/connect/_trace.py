"""Permutation symmetries of a model, derived by tracing it (no hand-written tables).

Hidden units of a network can be permuted without changing its function, provided every
parameter axis that indexes the same units is permuted together. Git Re-Basin (Ainsworth et
al. 2022) writes these "permutation specs" by hand for each architecture, an error-prone step
(samuela/git-re-basin#10). Here they are derived from the program itself: the model's
``apply_fn`` is traced to a jaxpr with an example input, and every axis of every value gets a
label that is propagated through the equations:

* a parameter or state axis starts as its own candidate group;
* the data's axes, constants and the model's outputs are *fixed* (they cannot be permuted);
* equations that are permutation-equivariant tie the labels of the axes they line up:
  ``dot_general`` and convolutions tie contracted axes (a layer's input units to the previous
  layer's output units), elementwise operations (bias additions, batch-norm arithmetic,
  activations, residual additions) tie the axes they combine, reductions and broadcasts
  carry labels through;
* a reshape that flattens one permuted axis with unpermuted ones (the flatten readout after
  convolutions) gives a *flattened block* axis, permuted by that axis's permutation;
* an equation that is not equivariant along a labelled axis (a reshape that splits units or
  merges them with other permuted axes, slicing, concatenation, grouped convolutions, sorting,
  cumulative sums, unknown primitives) poisons that group.

Each primitive's behaviour is one small rule in a table (``_RULES``: primitive name -> rule,
as neural-tangents' ``STRUCTURE_RULES``): elementwise unary and n-ary operations, reductions,
broadcasts, reshapes, transposes, ``dot_general``, convolutions, pooling windows, slicing,
padding, concatenation, indexing, ``cond`` and calls (``jit``, ``custom_jvp_call``, ...), whose
programs are followed recursively. A primitive without a rule is treated as not equivariant:
it poisons every group it touches.

Candidate groups tied to a fixed axis are fixed. The others are the permutation groups; a
poisoned group that is not fixed makes :func:`permutation_spec` raise, naming the operation,
its source line and the parameters involved, rather than return a wrong permutation.

**Per-unit groups (attention).** One label per axis expresses a direct product of
permutations: multi-head attention written with a head axis (kernels ``(d, heads, d_head)``,
output ``(heads, d_head, d)``) gives a heads group and one group for the heads' query/key
dimensions, the *same* permutation in every head. The symmetry is larger: every head may permute
its own dimensions (a wreath product ``S_{d_head} wr S_heads``). After the labels are
propagated, a group ``g`` is marked *per unit* of a group ``h`` (``PermutationSpec.per``) when
the program is pointwise in ``h`` wherever ``g`` is permuted: every value carrying ``g`` carries
``h`` exactly once, and every product contracting ``g`` either batches the operands' ``h`` (the
scores ``q_h k_h^T``) or contracts it with ``g`` (the output projection); a kernel or bias
shared by every head, a convolution or a flatten keep the one shared permutation (see
:func:`_per_head`). Such a group's permutation has one row per unit of ``h``. A second pass
that does not tie contracted axes finds the two *sides* of the product that contracts ``g``
(``{W_Q, b_Q}`` and ``{W_K, b_K}``; ``{W_V, b_V}`` and ``{W_O}``), from which the alignment
forms the heads' products ``W_Q W_K^T`` and ``W_V W_O``.

Limits, stated for attention (Vaswani et al. 2017):

* Within a head the symmetry is continuous: ``W_Q M``, ``W_K M^{-T}`` for any invertible ``M``
  (``W_V M``, ``M^{-1} W_O``), of which permutations are a small subgroup; two independently
  trained models need not differ by a permutation there, which is why heads can be matched by
  their products (:func:`landscape.connect.align`, ``head_match="products"``).
* Rotary position embeddings rotate pairs of query/key dimensions by position: the slices and
  the concatenation they need poison the query/key group (refused, or left unpermuted with
  ``on_unsupported="fix"``); heads and value dimensions still permute. Tied query and key
  kernels (``tie_qk``) are one kernel with one permutation; the score product is then
  ``W_Q W_Q^T``.
* A head split by reshaping one flat ``(d, heads * d_head)`` kernel merges two permuted axes:
  refused (write the kernels with a head axis, as ``make_model("transformer")`` does).
* The residual stream is one group tied through every block, the embedding, learned positions,
  every LayerNorm (its mean and variance over features are invariant under a permutation of
  them; its scale and bias permute with them) and the head: a true symmetry of the pre-LN
  transformer. A fixed encoding added to the stream (sinusoidal positions) fixes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from landscape import _program
from landscape import tree as _tree
from landscape import validate as _validate
from landscape._model import as_model

PyTree = Any

FIXED = -1
WILD = -2

__all__ = ["PermutationSpec", "UnsupportedModelError", "permutation_spec", "permute"]


class UnsupportedModelError(ValueError):
    """The model contains an operation the permutation analysis cannot handle."""


# elementwise primitives: the shared walker's tables
_UNARY = _program.UNARY
_NARY = _program.NARY
_REDUCE = {
    "reduce_sum",
    "reduce_max",
    "reduce_min",
    "reduce_prod",
    "reduce_and",
    "reduce_or",
    "reduce_xor",
}
_ARG_REDUCE = {"argmax", "argmin"}
_CUMULATIVE = {"cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp"}
_WINDOW = {"reduce_window_sum", "reduce_window_max", "reduce_window_min", "reduce_window"}
_CALLS = {
    "jit",
    "pjit",
    "closed_call",
    "core_call",
    "remat",
    "checkpoint",
    "custom_jvp_call",
    "custom_vjp_call",
    "custom_vjp_call_jaxpr",
    "shard_map",
}
# calls whose inner values capture_activations evaluates equation by equation (the shared
# program walker's inlined calls)
_INLINE = _program.INLINE
# outputs of these equations count as "activations" for activation matching
_NONLINEAR = {
    "custom_jvp_call",
    "tanh",
    "logistic",
    "erf",
    "exp",
    "max",
    "min",
    "abs",
    "integer_pow",
    "square",
    "sin",
    "cos",
    "log1p",
    "expm1",
}


class _Labels:
    """Union-find over candidate groups (one per parameter/state axis).

    With ``split_contractions=True`` the axes a ``dot_general`` contracts are not tied but
    recorded in ``edges``: the components are then the *sides* of each contraction (a head's
    query side ``{W_Q, b_Q}`` and key side ``{W_K, b_K}``), from which a head's product
    ``W_Q W_K^T`` is formed (:func:`permutation_spec`'s second pass)."""

    def __init__(self, *, split_contractions: bool = False):
        self.split_contractions = split_contractions
        self.edges: list[tuple[int, int]] = []
        self.parent: list[int] = []
        self.size: list[int] = []
        self.fixed: list[bool] = []
        self.poison: list[list[str]] = []
        self.origin: list[tuple[str, int]] = []
        # alias[m] = (n, outer, inner): axis m is a flattened (outer, n, inner) block whose units
        # are permuted by n's permutation (a flatten readout after convolutions)
        self.alias: dict[int, tuple[int, int, int]] = {}

    def new(self, size: int, origin) -> int:
        i = len(self.parent)
        self.parent.append(i)
        self.size.append(int(size))
        self.fixed.append(False)
        self.poison.append([])
        self.origin.append(origin)
        return i

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def norm(self, lab: int) -> int:
        if lab < 0:
            return lab
        r = self.find(lab)
        return FIXED if self.fixed[r] else r

    def fix(self, lab: int) -> None:
        if lab >= 0:
            self.fixed[self.find(lab)] = True

    def unify(self, a: int, b: int) -> int:
        a, b = self.norm(a), self.norm(b)
        if a == WILD:
            return b
        if b == WILD:
            return a
        if a == FIXED or b == FIXED:
            self.fix(a)
            self.fix(b)
            return FIXED
        if a == b:
            return a
        if self.size[a] != self.size[b]:  # pragma: no cover - shapes guarantee equality
            self.fix(a)
            self.fix(b)
            return FIXED
        self.parent[b] = a
        self.poison[a].extend(self.poison[b])
        return a

    def contract(self, a: int, b: int) -> None:
        """Two axes a product contracts together: tied (or, splitting contractions, an edge)."""
        if not self.split_contractions:
            self.unify(a, b)
        elif a >= 0 and b >= 0:
            self.edges.append((a, b))

    def spoil(self, lab: int, reason: str) -> None:
        lab = self.norm(lab)
        if lab >= 0:
            self.poison[lab].append(reason)


def _shape(v) -> tuple:
    return tuple(v.aval.shape) if hasattr(v, "aval") and hasattr(v.aval, "shape") else ()


_sub_jaxpr = _program.sub_jaxpr


class _Tracer:
    """Propagates axis labels through a jaxpr (recursively through calls), each equation by the
    rule registered for its primitive in ``_RULES``."""

    def __init__(self, labels: _Labels):
        self.L = labels
        self.records: list[tuple] = []  # (position, var labels, nonlinear)
        self.capturable = True  # False inside calls whose values capture_activations cannot see
        self.locations: list[str] = []  # source locations of the enclosing calls
        # for per-head groups (_per_head): every value's labels, every product's operands, the
        # operands of convolutions
        self.values: list[tuple] = []
        self.dots: list[tuple] = []
        self.conv_operands: list[tuple] = []

    def run(self, closed, in_labels, in_data, prefix=()):
        """Labels of ``closed``'s outputs from its inputs' labels and data dependence; records
        the data-dependent values on the way (candidate activations for activation matching)."""
        jaxpr = closed.jaxpr
        env = {v: (_fixed_like(v), False) for v in jaxpr.constvars}
        env.update((v, (tuple(lab), d)) for v, lab, d in zip(jaxpr.invars, in_labels, in_data))

        def read(v):
            return (_fixed_like(v), False) if isinstance(v, jcore.Literal) else env[v]

        for i, eqn in enumerate(jaxpr.eqns):
            ins = [read(v) for v in eqn.invars]
            data_dep = any(d for _, d in ins)
            outs = self.eqn(eqn, [lab for lab, _ in ins], [d for _, d in ins], prefix + (i,))
            self.values.extend(tuple(lab) for lab, _ in ins)
            self.values.extend(tuple(lab) for lab in outs)
            record = data_dep and self.capturable and eqn.primitive.name not in _INLINE
            nonlinear = _is_nonlinear(eqn)
            for k, (v, lab) in enumerate(zip(eqn.outvars, outs)):
                if isinstance(v, jcore.DropVar):
                    continue
                env[v] = (tuple(lab), data_dep)
                if record:
                    self.records.append((prefix + (i, k), tuple(lab), nonlinear))
        return [read(v)[0] for v in jaxpr.outvars]

    def eqn(self, eqn, labs, datas, pos):
        """Output labels of one equation, by its primitive's rule (``_unknown`` if none)."""
        e = _Eqn(eqn, labs, datas, pos, self._location(eqn))
        return _RULES.get(e.name, _unknown)(self, e)

    def _location(self, eqn) -> str:
        """The equation's source line (or the enclosing call's: :func:`landscape._program.location`)."""
        return _program.location(eqn, tuple(self.locations))

    @contextlib.contextmanager
    def nested(self, *, capturable: bool, location: str | None = None):
        """Inside a nested program (a call's or a branch's): ``capturable`` in force and, for a
        call, ``location`` the enclosing source line."""
        old = self.capturable
        self.capturable = capturable
        if location is not None:
            self.locations.append(location)
        try:
            yield
        finally:
            self.capturable = old
            if location is not None:
                self.locations.pop()


def _is_nonlinear(eqn) -> bool:
    """Whether an equation's outputs count as activations for activation matching (``max`` and
    ``min`` only against a constant: ReLU, clipping)."""
    name = eqn.primitive.name
    if name in ("max", "min"):
        return any(isinstance(v, jcore.Literal) for v in eqn.invars)
    return name in _NONLINEAR


@dataclasses.dataclass(frozen=True)
class _Eqn:
    """One equation as a rule sees it."""

    eqn: Any
    labs: list  # per input: one label per axis
    datas: list  # per input: whether it depends on the data
    pos: tuple  # position in the (nested) program
    loc: str  # source line, for error messages

    @property
    def name(self) -> str:
        return self.eqn.primitive.name

    @property
    def params(self) -> dict:
        return self.eqn.params

    @property
    def why(self) -> str:
        return f"`{self.name}` at {self.loc}"

    @property
    def in_shapes(self) -> list[tuple]:
        return [_shape(v) for v in self.eqn.invars]

    @property
    def out_shapes(self) -> list[tuple]:
        return [_shape(v) for v in self.eqn.outvars]


# -- label-propagation rules -------------------------------------------------------------------
# A rule maps one equation (``_Eqn``) to its outputs' labels, tying (``unify``), fixing or
# poisoning (``spoil``) candidate groups on the way. ``_RULES`` maps primitive names to rules
# (as neural-tangents' ``STRUCTURE_RULES``); a primitive without one goes to ``_unknown``.
Rule = Callable[[_Tracer, _Eqn], list]
_RULES: dict[str, Rule] = {}


def _rule(*names: str):
    """Decorator: ``f`` is the rule of primitives ``names`` (each has at most one)."""

    def register(f: Rule) -> Rule:
        for name in names:
            if name in _RULES:  # pragma: no cover - a programming error caught at import
                raise RuntimeError(f"two label rules for primitive {name!r}")
            _RULES[name] = f
        return f

    return register


def _fixed_like(v) -> tuple:
    """Labels of a value no permutation reaches (constants, literals): every axis fixed
    (size-1 axes wild)."""
    return tuple(WILD if s == 1 else FIXED for s in _shape(v))


def _normed(L: _Labels, lab) -> tuple:
    return tuple(L.norm(x) for x in lab)


def _spoil_all(L: _Labels, lab, reason: str) -> None:
    for x in lab:
        L.spoil(x, reason)


def _drop_axes(lab, axes) -> tuple:
    return tuple(x for i, x in enumerate(lab) if i not in axes)


def _break_axis(L: _Labels, lab, ax: int, reason: str) -> tuple:
    """Poison the group on axis ``ax`` of ``lab``; returns ``lab`` with that axis fixed."""
    L.spoil(lab[ax], reason)
    out = list(lab)
    out[ax] = FIXED
    return tuple(out)


def _keep_axes(L: _Labels, lab, keep, reason: str) -> tuple:
    """``lab`` where ``keep`` holds; the other axes poisoned and fixed (an operation that is
    equivariant along the kept axes only)."""
    out = []
    for x, k in zip(lab, keep):
        if not k:
            L.spoil(x, reason)
        out.append(x if k else FIXED)
    return tuple(out)


def _unknown(t: _Tracer, e: _Eqn) -> list:
    """Default rule: not known to be permutation-equivariant, so every input group poisons."""
    for lab in e.labs:
        _spoil_all(t.L, lab, e.why + " (operation not known to be permutation-equivariant)")
    return [_fixed_like(v) for v in e.eqn.outvars]


@_rule(*_UNARY)
def _unary(t: _Tracer, e: _Eqn) -> list:
    """Elementwise on one operand (activations, casts): labels pass through."""
    return [e.labs[0]] if len(e.labs) == 1 else _unknown(t, e)


@_rule(*_NARY)
def _elementwise(t: _Tracer, e: _Eqn) -> list:
    """Elementwise on several operands (bias and residual additions, batch-norm arithmetic,
    ``select_n``): ties the operands' labels axis by axis (size-1 axes and scalars broadcast);
    a broadcast that changes rank poisons."""
    L = t.L
    out = [WILD] * len(e.out_shapes[0])
    for lab, shp in zip(e.labs, e.in_shapes):
        if len(shp) == 0:
            continue
        if len(shp) != len(out):
            _spoil_all(L, lab, e.why + " (rank-changing broadcast)")
            continue
        for ax in range(len(out)):
            out[ax] = L.unify(out[ax], WILD if shp[ax] == 1 else lab[ax])
    return [_normed(L, out)]


@_rule("dot_general")
def _dot_general(t: _Tracer, e: _Eqn) -> list:
    """Ties contracted axes (a layer's inputs to the previous layer's units) and batch axes;
    the free axes keep their labels (output order: batch, lhs free, rhs free)."""
    L = t.L
    (lc, rc), (lb, rb) = e.params["dimension_numbers"]
    a, b = e.labs
    t.dots.append((tuple(a), tuple(b), tuple(lc), tuple(rc), tuple(lb), tuple(rb)))
    for i, j in zip(lc, rc):
        L.contract(a[i], b[j])
    batch = [L.unify(a[i], b[j]) for i, j in zip(lb, rb)]
    free_a = [a[i] for i in range(len(a)) if i not in lc and i not in lb]
    free_b = [b[j] for j in range(len(b)) if j not in rc and j not in rb]
    return [_normed(L, batch + free_a + free_b)]


@_rule("conv_general_dilated")
def _conv(t: _Tracer, e: _Eqn) -> list:
    """Ties the input's channels to the kernel's input axis; the output's channels are the
    kernel's output axis, its batch the input's. Grouped convolutions (units permute within
    groups only) and convolutions over permuted axes poison; kernel spatial axes are fixed."""
    L = t.L
    dn = e.params["dimension_numbers"]
    lhs, rhs = e.labs
    t.conv_operands.extend((tuple(lhs), tuple(rhs)))
    ls, rs, os_ = dn.lhs_spec, dn.rhs_spec, dn.out_spec
    groups = e.params.get("feature_group_count", 1) * e.params.get("batch_group_count", 1)
    if groups != 1:
        reason = e.why + " (grouped convolution: units are permuted within groups only)"
        for lab in (lhs[ls[1]], rhs[rs[0]], rhs[rs[1]]):
            L.spoil(lab, reason)
    else:
        L.unify(lhs[ls[1]], rhs[rs[1]])
    for d in ls[2:]:
        L.spoil(lhs[d], e.why + " (convolution over a permuted axis)")
    for d in rs[2:]:
        L.fix(rhs[d])
    out = [FIXED] * len(e.out_shapes[0])
    out[os_[0]] = L.norm(lhs[ls[0]])
    out[os_[1]] = L.norm(rhs[rs[0]])
    return [tuple(out)]


@_rule(*_REDUCE)
def _reduce(t: _Tracer, e: _Eqn) -> list:
    """Reductions (sums, maxima): the reduced axes' labels are dropped."""
    return [_drop_axes(e.labs[0], set(e.params["axes"]))]


@_rule(*_ARG_REDUCE)
def _arg_reduce(t: _Tracer, e: _Eqn) -> list:
    """``argmax``/``argmin``: an index over permuted units depends on their order: poisons."""
    axes = set(e.params["axes"])
    for ax in axes:
        t.L.spoil(e.labs[0][ax], e.why + " (index of a maximum over permuted units)")
    return [_drop_axes(e.labs[0], axes)]


@_rule(*_CUMULATIVE)
def _cumulative(t: _Tracer, e: _Eqn) -> list:
    """Cumulative sums and products along an axis depend on the units' order: poison it."""
    reason = e.why + " (cumulative operation along permuted units)"
    return [_break_axis(t.L, e.labs[0], e.params["axis"], reason)]


@_rule("sort")
def _sort(t: _Tracer, e: _Eqn) -> list:
    """Sorting along permuted units poisons them (every operand, sorted together)."""
    reason = e.why + " (sorting along permuted units)"
    outs = [_break_axis(t.L, lab, e.params["dimension"], reason) for lab in e.labs]
    return outs[: len(e.eqn.outvars)]


def _plain_window_axis(p: dict, ax: int) -> bool:
    """Whether a pooling window leaves axis ``ax`` alone (size and stride 1, no padding or
    dilation)."""
    ones = (1,) * len(p["window_dimensions"])
    return (
        p["window_dimensions"][ax] == 1
        and p["window_strides"][ax] == 1
        and tuple(p["padding"][ax]) == (0, 0)
        and p.get("base_dilation", ones)[ax] == 1
        and p.get("window_dilation", ones)[ax] == 1
    )


@_rule(*_WINDOW)
def _window(t: _Tracer, e: _Eqn) -> list:
    """Pooling: axes the window leaves alone keep their labels, a window across permuted
    units poisons (the generic ``reduce_window`` has one init value per operand)."""
    n_ops = len(e.labs) // 2 if e.name == "reduce_window" else len(e.labs)
    reason = e.why + " (pooling window across permuted units)"
    return [
        _keep_axes(t.L, lab, [_plain_window_axis(e.params, ax) for ax in range(len(lab))], reason)
        for lab in e.labs[:n_ops]
    ]


@_rule("broadcast_in_dim")
def _broadcast_in_dim(t: _Tracer, e: _Eqn) -> list:
    """The operand's axes keep their labels at their new positions (unless broadcast from
    size 1); new axes are wild."""
    shape = e.params["shape"]
    out = [WILD] * len(shape)
    for i, d in enumerate(e.params["broadcast_dimensions"]):
        out[d] = e.labs[0][i] if e.in_shapes[0][i] == shape[d] else WILD
    return [tuple(out)]


@_rule("squeeze")
def _squeeze(t: _Tracer, e: _Eqn) -> list:
    dims = {d % len(e.in_shapes[0]) for d in e.params["dimensions"]}
    return [_drop_axes(e.labs[0], dims)]


@_rule("expand_dims")
def _expand_dims(t: _Tracer, e: _Eqn) -> list:
    out = list(e.labs[0])
    for d in sorted(e.params["dimensions"]):
        out.insert(d, WILD)
    return [tuple(out)]


@_rule("transpose")
def _transpose(t: _Tracer, e: _Eqn) -> list:
    return [tuple(e.labs[0][i] for i in e.params["permutation"])]


@_rule("reshape")
def _reshape(t: _Tracer, e: _Eqn) -> list:
    """Reshapes keep the label of an axis that stays whole; a flatten of one permuted axis with
    unpermuted ones gives a flattened block (``_Labels.alias``); anything else poisons."""
    if e.params.get("dimensions") is not None:
        _spoil_all(t.L, e.labs[0], e.why + " (reshape with a transposition)")
        return [_fixed_like(e.eqn.outvars[0])]
    return [_reshape_labels(t.L, e.labs[0], e.in_shapes[0], e.out_shapes[0], e.why)]


def _reshape_labels(L: _Labels, lab, ishape, oshape, why: str) -> tuple:
    out = [WILD] * len(oshape)
    for gi, gj in _reshape_blocks(ishape, oshape):
        for k, x in zip(gj, _reshape_block(L, lab, ishape, oshape, gi, gj, why)):
            out[k] = x
    return tuple(out)


def _reshape_blocks(ishape, oshape):
    """Yields ``(input axes, output axes)``: the shortest runs of axes with equal total size,
    left to right (size-1 axes between runs are skipped: they carry no permutation)."""
    i = j = 0
    ni, no = len(ishape), len(oshape)
    while i < ni or j < no:
        if i < ni and ishape[i] == 1:
            i += 1
            continue
        if j < no and oshape[j] == 1:
            j += 1
            continue
        if i >= ni or j >= no:  # pragma: no cover - sizes always match
            return
        gi, gj = [i], [j]
        pi, pj = ishape[i], oshape[j]
        while pi != pj:
            if pi < pj:
                i += 1
                gi.append(i)
                pi *= ishape[i]
            else:
                j += 1
                gj.append(j)
                pj *= oshape[j]
        yield gi, gj
        i += 1
        j += 1


def _reshape_block(L: _Labels, lab, ishape, oshape, gi, gj, why: str) -> list:
    """Labels of output axes ``gj``, the reshape of input axes ``gi``."""
    real = [k for k in gi if ishape[k] != 1]
    outs = [k for k in gj if oshape[k] != 1]
    if len(real) == 1 and len(outs) == 1:  # one axis, with size-1 axes around it
        return [lab[real[0]] if oshape[k] != 1 else WILD for k in gj]
    nodes = [k for k in real if L.norm(lab[k]) >= 0]
    if (
        len(outs) == 1
        and len(nodes) == 1
        and all(L.norm(lab[k]) != WILD or k in nodes for k in real)
    ):
        m = _flattened_block(L, lab, ishape, real, nodes[0], oshape[outs[0]])
        return [m if oshape[k] != 1 else WILD for k in gj]
    for k in real:
        L.spoil(
            lab[k],
            why + " (reshape merging or splitting permuted units with other "
            "axes, e.g. a flatten readout)",
        )
    return [WILD if oshape[k] == 1 else FIXED for k in gj]


def _flattened_block(L: _Labels, lab, ishape, real, k0: int, size: int) -> int:
    """A new label for an axis flattening permuted axis ``k0`` with unpermuted ones: the block
    ``(outer, units, inner)``, permuted by ``k0``'s permutation; the other axes are fixed."""
    outer = int(np.prod([ishape[k] for k in real if k < k0], dtype=np.int64))
    inner = int(np.prod([ishape[k] for k in real if k > k0], dtype=np.int64))
    m = L.new(size, None)
    L.alias[m] = (L.norm(lab[k0]), outer, inner)
    for k in real:
        if k != k0:
            L.fix(lab[k])
    return m


@_rule("concatenate")
def _concatenate(t: _Tracer, e: _Eqn) -> list:
    """Ties the operands' labels on every axis but the concatenated one, which poisons."""
    L = t.L
    d = e.params["dimension"]
    out = [WILD] * len(e.out_shapes[0])
    for lab in e.labs:
        for ax in range(len(out)):
            if ax == d:
                L.spoil(lab[ax], e.why + " (concatenation along permuted units)")
            else:
                out[ax] = L.unify(out[ax], lab[ax])
    out[d] = FIXED
    return [_normed(L, out)]


@_rule("pad")
def _pad(t: _Tracer, e: _Eqn) -> list:
    """Padding poisons the axes it pads."""
    keep = [tuple(c) == (0, 0, 0) for c in e.params["padding_config"]]
    return [_keep_axes(t.L, e.labs[0], keep, e.why + " (padding along permuted units)")]


def _whole_static_slice(p: dict, ax: int) -> bool:
    return p["start_indices"][ax] == 0 and (p["strides"] is None or p["strides"][ax] == 1)


@_rule("slice", "dynamic_slice")
def _slice(t: _Tracer, e: _Eqn) -> list:
    """Slices keep the labels of axes taken whole and poison the others (and the indices)."""
    full, part = e.in_shapes[0], e.out_shapes[0]
    keep = [
        part[ax] == full[ax] and (e.name == "dynamic_slice" or _whole_static_slice(e.params, ax))
        for ax in range(len(e.labs[0]))
    ]
    out = _keep_axes(t.L, e.labs[0], keep, e.why + " (slicing along permuted units)")
    for lab in e.labs[1:]:
        _spoil_all(t.L, lab, e.why)
    return [out]


@_rule("dynamic_update_slice")
def _dynamic_update_slice(t: _Tracer, e: _Eqn) -> list:
    """Ties operand and update on axes the update covers whole; a partial update along
    permuted units poisons both."""
    L = t.L
    op, upd = e.labs[0], e.labs[1]
    shp_op, shp_upd = e.in_shapes[0], e.in_shapes[1]
    out = []
    for ax in range(len(op)):
        if shp_upd[ax] == shp_op[ax]:
            out.append(L.unify(op[ax], upd[ax]))
        else:
            L.spoil(op[ax], e.why + " (partial update along permuted units)")
            L.spoil(upd[ax], e.why)
            out.append(FIXED)
    return [_normed(L, out)]


@_rule("gather")
def _gather(t: _Tracer, e: _Eqn) -> list:
    """Indexing (``x[idx]``, ``jnp.take``): axes taken whole keep their labels (at their offset
    dimensions); indexed or collapsed axes poison, and so do the indices."""
    L = t.L
    dn = e.params["dimension_numbers"]
    op, ss = e.labs[0], e.params["slice_sizes"]
    collapsed = set(dn.collapsed_slice_dims) | set(getattr(dn, "operand_batching_dims", ()))
    indexed = set(dn.start_index_map)
    reason = e.why + " (indexing along permuted units)"
    out = [FIXED] * len(e.out_shapes[0])
    kept = [ax for ax in range(len(op)) if ax not in collapsed]
    for ax, od in zip(kept, dn.offset_dims):
        if ax in indexed or ss[ax] != e.in_shapes[0][ax]:
            L.spoil(op[ax], reason)
        else:
            out[od] = op[ax]
    for ax in collapsed | indexed:
        L.spoil(op[ax], reason)
    _spoil_all(L, e.labs[1], e.why)
    return [tuple(out)]


@_rule("split")
def _split(t: _Tracer, e: _Eqn) -> list:
    """Splitting permuted units into pieces poisons them."""
    out = _break_axis(t.L, e.labs[0], e.params["axis"], e.why + " (splitting permuted units)")
    return [out] * len(e.eqn.outvars)


@_rule("iota")
def _iota(t: _Tracer, e: _Eqn) -> list:
    return [_fixed_like(e.eqn.outvars[0])]


@_rule("cond")
def _cond(t: _Tracer, e: _Eqn) -> list:
    """Branches: the predicate's groups poison; every branch runs on the operands and their
    outputs' labels are tied (values inside are not captured as activations)."""
    L = t.L
    _spoil_all(L, e.labs[0], e.why)
    res = None
    with t.nested(capturable=False):
        for branch in e.params["branches"]:
            o = t.run(branch, e.labs[1:], e.datas[1:], e.pos)
            res = (
                o
                if res is None
                else [tuple(L.unify(x, y) for x, y in zip(a, b)) for a, b in zip(res, o)]
            )
    return [_normed(L, r) for r in res]


@_rule(*_CALLS)
def _call(t: _Tracer, e: _Eqn) -> list:
    """Calls (jit, custom_jvp/vjp, remat, shard_map): labels flow through the called program;
    only inlined calls' values can be captured as activations. A call whose program cannot be
    read is an unknown primitive."""
    sub = _sub_jaxpr(e.eqn)
    if sub is None or len(sub.jaxpr.invars) != len(e.labs):
        return _unknown(t, e)
    with t.nested(capturable=t.capturable and e.name in _INLINE, location=e.loc):
        return t.run(sub, e.labs, e.datas, e.pos)


# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class PermutationSpec:
    """Which parameter (and state) axes share a permutation, derived by tracing the model.

    Attributes:
      groups: ``{name: size}``; a group is named after the parameter axis that produces its
        units (e.g. ``"layers/0/kernel[1]"``: the output units of the first dense layer).
      param_axes: ``{leaf path: (entry per axis)}`` for every parameter leaf; an entry is
        ``None`` (not permuted), a group name, or ``(group, outer, inner)`` for an axis that
        flattens ``outer`` x units x ``inner`` (e.g. the dense layer after a flatten readout:
        its input axis is ``height * width * channels``).
      state_axes: the same for the model state (batch-norm statistics).
      unsupported: ``{group name: reasons}`` for groups left unpermuted because of an
        operation the analysis cannot handle (only with ``on_unsupported="fix"``).
      per: ``{group: index group}`` for the groups permuted *per unit* of another group (a
        wreath product: a head's query/key dimensions, permuted differently in every head).
        The permutation of such a group ``g`` is an int array of shape ``(groups[per[g]],
        groups[g])``: row ``i`` permutes ``g``'s units at unit ``i`` of the index group, after
        the index group's own permutation (unit ``(i, a)`` of the result is unit
        ``(p_h[i], p_g[i, a])`` of the input). A one-row permutation (shape ``(groups[g],)``)
        is the same in every head.
    """

    groups: dict
    param_axes: dict
    state_axes: dict
    unsupported: dict
    per: dict = dataclasses.field(default_factory=dict)
    _sides: dict = dataclasses.field(default_factory=dict, repr=False)
    _activations: dict = dataclasses.field(default_factory=dict, repr=False)
    _num_eqns: int = 0

    def axes_of(self, group: str, *, include_state: bool = False) -> list[tuple[str, int]]:
        """``(leaf path, axis)`` of every parameter axis permuted by ``group`` (flattened
        blocks included)."""
        items = list(self.param_axes.items())
        if include_state:
            items += [("state:" + k, v) for k, v in self.state_axes.items()]
        return [(k, ax) for k, labs in items for ax, g in enumerate(labs) if _group_of(g) == group]

    def __repr__(self):
        lines = [f"PermutationSpec({len(self.groups)} groups)"]
        entries = {**self.param_axes, **{"state:" + k: v for k, v in self.state_axes.items()}}

        def show(k, a):
            e = entries[k][a]
            return f"{k}[{a}]" + (
                f" (flattened {e[1]} x units x {e[2]})" if isinstance(e, tuple) else ""
            )

        for g, n in self.groups.items():
            members = ", ".join(show(k, a) for k, a in self.axes_of(g, include_state=True))
            each = f", per unit of {self.per[g]}" if g in self.per else ""
            lines.append(f"  {g} (size {n}{each}): {members}")
        for g, why in self.unsupported.items():
            lines.append(f"  unsupported {g}: {why[0]}")
        return "\n".join(lines)


def _leaf_labels(labels: _Labels, tree, prefix: str):
    out = []
    for path, leaf in zip(_tree.leaf_paths(tree), jax.tree.leaves(tree)):
        shp = np.shape(leaf)
        floating = jnp.issubdtype(jnp.result_type(leaf), jnp.floating)
        out.append(
            tuple(
                labels.new(s, (prefix + path, ax))
                if (floating and s > 1)
                else (WILD if s == 1 else FIXED)
                for ax, s in enumerate(shp)
            )
        )
    return out


def _per_head(L: _Labels, tracer: _Tracer, live: set, flattened: set) -> dict:
    """``{group root g: index root h}`` for the groups that may be permuted per unit of another
    group (a wreath product; a head's dimensions, permuted differently in every head).

    A per-unit permutation of ``g`` indexed by ``h`` (unit ``(i, a)`` goes to ``(p_h[i],
    p_g[i, a])``) leaves the function unchanged when every operation is pointwise in ``h``
    wherever ``g``'s units are permuted. From the program, conservatively:

    * every value (parameter, state or intermediate) carrying ``g`` carries ``h`` on exactly one
      axis (a bias broadcast over heads, or a kernel shared by every head, breaks it);
    * a product that contracts ``g`` pairs the operands' ``h`` axes as a batch axis (the scores
      ``q_h k_h^T``, head by head) or contracts them together with ``g`` (the output projection
      sums over heads and their dimensions);
    * ``g`` meets no convolution and is never flattened with other axes.

    The rules that move axes (transposes, broadcasts, reshapes keeping axes whole), elementwise
    operations, reductions and the rest are pointwise along the axes they keep, so the value
    condition covers them; an operation that is not equivariant along ``g`` or ``h`` at all has
    already poisoned it. Index groups are not themselves per-unit groups (one level). Among
    several candidates the first-created is taken."""
    cand: dict[int, set] = {}
    for lab in tracer.values:
        counts: dict[int, int] = {}
        for x_ in lab:
            r = L.norm(x_)
            if r in live:
                counts[r] = counts.get(r, 0) + 1
        for g in counts:
            here = {r for r, c in counts.items() if c == 1 and r != g}
            cand[g] = here if g not in cand else cand[g] & here
    for a, b, lc, rc, lb, rb in tracer.dots:
        ra = [L.norm(x_) for x_ in a]
        rb_ = [L.norm(x_) for x_ in b]
        pairs = set(zip(lc, rc)) | set(zip(lb, rb))
        for i in lc:
            g = ra[i]
            for h in list(cand.get(g, ())):
                if h in ra and h in rb_ and (ra.index(h), rb_.index(h)) not in pairs:
                    cand[g].discard(h)
    for lab in tracer.conv_operands:
        for x_ in lab:
            cand.pop(L.norm(x_), None)
    for g in flattened:
        cand.pop(g, None)
    per = {g: min(hs) for g, hs in cand.items() if hs}
    return {g: h for g, h in per.items() if h not in per}


def _sides(
    closed, params, state, xlabs, in_data, plabs, L: _Labels, per_roots: dict, names: dict
) -> dict:
    """``{per-unit group: (side 1, side 2)}``, each side the ``(leaf path, axis)`` of the
    parameters on one side of the one product that contracts the group (a head's ``{W_Q,
    b_Q}`` and ``{W_K, b_K}``; ``{W_V, b_V}`` and ``{W_O}``), from a second pass that does not
    tie contracted axes. Groups contracted in other patterns (or carried by state) are left
    out; their heads are matched by weights only."""
    if not per_roots:
        return {}
    L2 = _Labels(split_contractions=True)
    p2 = _leaf_labels(L2, params, "")
    s2 = _leaf_labels(L2, state, "state:")
    _Tracer(L2).run(closed, p2 + s2 + xlabs, in_data)
    members: dict[int, list] = {}
    for labs in plabs:
        for lab in labs:
            if lab >= 0 and L.norm(lab) in per_roots:
                members.setdefault(L.norm(lab), []).append(lab)
    out = {}
    for g, labs in members.items():
        side_of = {lab: L2.find(lab) for lab in labs}
        mine = set(side_of.values())
        pairs = {
            frozenset((L2.find(u), L2.find(v)))
            for u, v in L2.edges
            if L2.find(u) in mine or L2.find(v) in mine
        }
        if len(pairs) != 1 or not next(iter(pairs)) >= mine:
            continue
        first = side_of[labs[0]]
        pair = sorted(next(iter(pairs)), key=lambda r: r != first)
        s1, s2_ = pair[0], pair[-1]
        out[names[g]] = tuple(
            tuple(L.origin[lab] for lab in labs if side_of[lab] == side) for side in (s1, s2_)
        )
    return out


def _trace(apply_fn, params, state, x):
    return _program.trace_model(apply_fn, params, state, x)


@_validate.public
def permutation_spec(
    model,
    example_input,
    *,
    on_unsupported: str = "raise",
) -> PermutationSpec:
    """Derive the permutation groups of a model by tracing ``apply_fn`` on ``example_input``.

    Works for any model built from dense layers, convolutions (ungrouped), elementwise
    operations (activations, biases, batch or layer normalisation), pooling over spatial axes,
    reductions and residual additions: the analysis follows the program, not layer names, so
    skip connections tie the permutations they must tie, and batch-norm parameters and running
    statistics join the group of the units they normalise. Multi-head attention with a head
    axis gives a heads group and, per head, a query/key and a value group permuted
    independently in every head (``spec.per``; the module docstring states how they are
    derived and the limits: the continuous symmetry within a head, rotary embeddings).

    Args:
      model: a :class:`landscape.Model` (or triple).
      example_input: a batch of inputs (a few examples suffice; only shapes matter).
      on_unsupported: ``"raise"`` (default) raises when a group meets an operation that is not
        permutation-equivariant along it; ``"fix"`` leaves such groups unpermuted and lists
        them in ``spec.unsupported``.

    Returns:
      :class:`PermutationSpec`.

    Raises:
      UnsupportedModelError (a ValueError): an operation would break a group's symmetry (e.g.
        a flatten readout after convolutions, a grouped convolution, slicing of hidden units);
        the message names the operation, its source line and the parameters involved.

    Cost: one trace of ``apply_fn`` (no compilation, no evaluation).

    References:
      Ainsworth et al. 2022, "Git Re-Basin: merging models modulo permutation symmetries".
    """
    model = as_model(model)
    _validate.check_choice(on_unsupported, ("raise", "fix"), name="on_unsupported")
    x = jnp.asarray(example_input)
    if x.ndim == 0:
        raise ValueError(
            f"{_validate.where()}: example_input must have a leading example axis; got a scalar."
        )
    try:
        closed = _trace(model.apply_fn, model.params, model.state, x)
    except Exception as e:  # noqa: BLE001 - reported with context
        raise ValueError(
            f"{_validate.where()}: could not trace the model on example_input of shape {x.shape}: "
            f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        ) from e
    L = _Labels()
    plabs = _leaf_labels(L, model.params, "")
    slabs = _leaf_labels(L, model.state, "state:")
    xlabs = [tuple(FIXED if s > 1 else WILD for s in np.shape(x))]
    tracer = _Tracer(L)
    in_labels = plabs + slabs + xlabs
    in_data = [False] * (len(plabs) + len(slabs)) + [True]
    if len(in_labels) != len(closed.jaxpr.invars):  # pragma: no cover - defensive
        raise ValueError(
            f"{_validate.where()}: unexpected trace (inputs {len(closed.jaxpr.invars)}, expected {len(in_labels)})."
        )
    outs = tracer.run(closed, in_labels, in_data)
    for lab in outs:
        for x_ in lab:
            L.fix(x_)

    # flattened blocks (derived axes) follow their base group: a fixed block fixes its base,
    # two blocks tied together tie their bases, a poisoned block poisons its base
    for _ in range(len(L.alias) + 1):
        changed = False
        for m, (n, _o, _i) in L.alias.items():
            r = L.find(m)
            if L.fixed[r] and L.norm(n) >= 0:
                L.fix(n)
                changed = True
            if L.poison[r] and L.norm(n) >= 0:
                L.poison[L.find(n)].extend(L.poison[r])
                L.poison[r] = []
                changed = True
        by_root: dict = {}
        for m, (n, o, i) in L.alias.items():
            by_root.setdefault(L.find(m), []).append((n, o, i))
        for lst in by_root.values():
            n0, o0, i0 = lst[0]
            for n, o, i in lst[1:]:
                if L.norm(n) == L.norm(n0):
                    continue
                if (o, i) == (o0, i0):
                    L.unify(n, n0)
                else:
                    reason = "two different flattens added together"
                    L.spoil(n, reason)
                    L.spoil(n0, reason)
                changed = True
        if not changed:
            break
    derived_roots = {L.find(m): (n, o, i) for m, (n, o, i) in L.alias.items()}

    def resolve(lab):
        """``(base group root, outer, inner)`` of a label, or None when it is not permuted."""
        r = L.norm(lab)
        if r < 0:
            return None
        if r not in derived_roots:
            return r, 1, 1
        n, o, i = derived_roots[r]
        sub = resolve(n)
        if sub is None:
            return None
        b, o2, i2 = sub
        return b, o * o2, i2 * i

    # groups: roots not fixed, of size > 1
    roots = {}
    for labs in plabs + slabs:
        for lab in labs:
            r = L.norm(lab)
            if r >= 0 and r not in derived_roots:
                roots.setdefault(r, []).append(L.origin[lab])
    # names: the output axis of a kernel (last axis of a leaf with ndim >= 2), the first such
    # kernel the program uses
    pshapes = dict(
        zip(_tree.leaf_paths(model.params), (np.shape(v) for v in jax.tree.leaves(model.params)))
    )
    first_use: dict = {}
    for i, eqn in enumerate(closed.jaxpr.eqns):
        for v in eqn.invars:
            if not isinstance(v, jcore.Literal):
                first_use.setdefault(v, i)
    ppaths = _tree.leaf_paths(model.params)
    use = {path: first_use.get(v, 1 << 30) for path, v in zip(ppaths, closed.jaxpr.invars)}
    names = {}
    for r, members in roots.items():
        best = None
        for path, ax in sorted(members, key=lambda m: use.get(m[0], 1 << 30)):
            shp = pshapes.get(path)
            if shp is not None and len(shp) >= 2 and ax == len(shp) - 1:
                best = (path, ax)
                break
        if best is None:  # an axis of a kernel that is not its last (a head axis)
            for path, ax in sorted(members, key=lambda m: use.get(m[0], 1 << 30)):
                shp = pshapes.get(path)
                if shp is not None and len(shp) >= 2:
                    best = (path, ax)
                    break
        if best is None:
            best = members[0]
        names[r] = f"{best[0]}[{best[1]}]"

    unsupported = {}
    for r, members in roots.items():
        reasons = L.poison[r]
        if not reasons:
            continue
        uniq = list(dict.fromkeys(reasons))
        if on_unsupported == "raise":
            who = ", ".join(f"{p}[{a}]" for p, a in members[:6])
            raise UnsupportedModelError(
                f"{_validate.where()}: cannot derive a permutation for the units of {names[r]} (parameter axes "
                f"{who}): they reach {uniq[0]}, which is not permutation-equivariant along "
                "those units, so permuting them would change the function. Pass "
                "on_unsupported='fix' to leave this group unpermuted."
            )
        unsupported[names[r]] = uniq
        L.fixed[r] = True

    groups = {}
    for r in roots:
        if L.norm(r) >= 0:
            groups[names[r]] = L.size[r]
    live = {r for r in roots if L.norm(r) >= 0}
    flattened = set()
    for m in L.alias:
        res = resolve(m)
        if res is not None:
            flattened.add(L.norm(res[0]))
    per_roots = _per_head(L, tracer, live, flattened)
    per = {names[g]: names[h] for g, h in per_roots.items()}
    sides = _sides(closed, model.params, model.state, xlabs, in_data, plabs, L, per_roots, names)

    def entry(lab):
        res = resolve(lab)
        if res is None or L.norm(res[0]) < 0:
            return None
        b, o, i = res
        return names[L.norm(b)] if (o, i) == (1, 1) else (names[L.norm(b)], o, i)

    def axes_of(labs_list, tree):
        return {
            path: tuple(entry(lab) for lab in labs)
            for path, labs in zip(_tree.leaf_paths(tree), labs_list)
        }

    # activations for activation matching: data-dependent values carrying exactly one group
    acts: dict[str, list] = {}
    acts_all: dict[str, list] = {}
    for pos, labs, nonlinear in tracer.records:
        es = [(ax, entry(lab)) for ax, lab in enumerate(labs)]
        if any(isinstance(e, tuple) for _, e in es):
            continue  # flattened blocks: their units are matched where they are produced
        gs = [(ax, e) for ax, e in es if e is not None]
        if len(gs) != 1:
            continue
        ax, g = gs[0]
        acts_all.setdefault(g, []).append((pos, ax))
        if nonlinear:
            acts.setdefault(g, []).append((pos, ax))
    activations = {g: tuple(acts.get(g) or acts_all.get(g, ())) for g in groups}
    return PermutationSpec(
        groups=groups,
        param_axes=axes_of(plabs, model.params),
        state_axes=axes_of(slabs, model.state),
        unsupported=unsupported,
        per=per,
        _sides=sides,
        _activations=activations,
        _num_eqns=len(closed.jaxpr.eqns),
    )


def _group_of(entry):
    """The group name of an axis entry (a name, or ``(name, outer, inner)``), or None."""
    if entry is None or isinstance(entry, str):
        return entry
    return entry[0]


def expand_perm(entry, perm) -> np.ndarray:
    """The index permutation of an axis entry: ``perm`` itself, or for a flattened block
    ``(group, outer, inner)`` the permutation of the middle factor of ``(outer, units, inner)``."""
    perm = np.asarray(perm)
    if isinstance(entry, str):
        return perm
    _, outer, inner = entry
    c = perm.size
    idx = (
        np.arange(outer)[:, None, None] * (c * inner)
        + perm[None, :, None] * inner
        + np.arange(inner)[None, None, :]
    )
    return idx.reshape(-1)


def take_per(x, ax: int, index_ax: int, perm, xp=jnp):
    """``x`` with axis ``ax`` permuted per unit of axis ``index_ax``: ``out[..., i, ..., a,
    ...] = x[..., i, ..., perm[i, a], ...]`` (``perm`` of shape ``(x.shape[index_ax],
    x.shape[ax])``)."""
    perm = np.asarray(perm)
    shape = [1] * x.ndim
    shape[index_ax], shape[ax] = perm.shape
    idx = (perm if index_ax < ax else perm.T).reshape(shape)
    return xp.take_along_axis(x, xp.asarray(np.broadcast_to(idx, x.shape)), axis=ax)


def permute_leaf(x, labs, perms: dict, per: dict, xp=jnp, skip=()):
    """One leaf with axis entries ``labs`` permuted: the plain groups' axes first, then the
    per-unit groups' (each by the rows of its index group's axis, already permuted); axes in
    ``skip`` are left alone."""
    labs = [tuple(e) if isinstance(e, list) else e for e in labs]
    for ax, e in enumerate(labs):
        g = _group_of(e)
        if g is not None and g in perms and g not in per and ax not in skip:
            x = xp.take(x, xp.asarray(expand_perm(e, perms[g])), axis=ax)
    for ax, e in enumerate(labs):
        if e in per and e in perms and ax not in skip:
            if per[e] not in labs:  # pragma: no cover - guaranteed by _per_head
                raise ValueError(
                    f"axis {ax} of a leaf is permuted per unit of {per[e]!r}, which it lacks"
                )
            x = take_per(x, ax, labs.index(per[e]), perms[e], xp)
    return x


def _permute_concrete(x, labs, perms: dict, per: dict):
    """``permute_leaf`` of a concrete leaf, gathered in NumPy on the host and put back on its
    device: the same values exactly (a permutation copies elements; no arithmetic) and no
    compiled program per leaf shape and axis. Leaves without a permuted axis are returned
    as they are."""
    if not any(_group_of(tuple(e) if isinstance(e, list) else e) in perms for e in labs):
        return x
    return _tree.put_like(permute_leaf(np.asarray(x), labs, perms, per, np), x)


def _permute_tree(tree, axes: dict, perms: dict, per: dict | None = None):
    per = per or {}

    def one(path, x):
        labs = axes.get(path, ())
        if _tree.host_readable(x):
            return _permute_concrete(x, labs, perms, per)
        return permute_leaf(x, labs, perms, per)

    return _tree.map_with_path(one, tree)


def check_perms(spec: PermutationSpec, perms: dict) -> dict:
    """``perms`` validated against ``spec`` (names, sizes, permutations; a per-unit group's
    one-row permutation repeated for every unit of its index group), as NumPy int arrays."""
    out = {}
    for g, p in perms.items():
        if g not in spec.groups:
            raise ValueError(
                f"{_validate.where()}: unknown group {g!r}; groups: {sorted(spec.groups)}."
            )
        n = spec.groups[g]
        arr = np.asarray(p)
        rows = arr.reshape(1, -1) if arr.ndim == 1 else arr
        if g in spec.per:
            m = spec.groups[spec.per[g]]
            if arr.ndim == 1:
                rows = np.tile(arr, (m, 1))
            expected = f"({m}, {n}) (one row per unit of {spec.per[g]!r}) or ({n},)"
            good_shape = rows.shape == (m, n)
        else:
            expected = f"({n},)"
            good_shape = arr.shape == (n,)
        if (
            not good_shape
            or not np.issubdtype(arr.dtype, np.integer)
            or not all(np.array_equal(np.sort(r), np.arange(n)) for r in rows)
        ):
            raise ValueError(
                f"{_validate.where()}: perms[{g!r}] must be a permutation of range({n}) of shape "
                f"{expected}; got shape {arr.shape}, dtype {arr.dtype}."
            )
        out[g] = rows if g in spec.per else arr
    return out


@_validate.public("landscape.connect.permute")
def permute(spec: PermutationSpec, params: PyTree, perms: dict, state: PyTree = None):
    """Apply permutations: unit ``i`` of the result is unit ``perms[g][i]`` of the input.

    Args:
      spec: from :func:`permutation_spec`.
      params: parameters with the traced model's structure.
      perms: ``{group name: int array}`` (groups left out are not permuted); a per-unit group
        (``spec.per``) takes one row per unit of its index group (shape ``(groups[per[g]],
        groups[g])``), applied after the index group's permutation, or one row for all.
      state: optional model state (batch-norm statistics), permuted consistently.

    Returns:
      The permuted ``params`` (and ``(params, state)`` when ``state`` is given). The permuted
      network computes the same function.

    Raises:
      ValueError: unknown group names or arrays that are not permutations of the right size.
    """
    if not isinstance(spec, PermutationSpec):
        raise TypeError(
            f"{_validate.where()}: spec must be a PermutationSpec; got {type(spec).__name__}."
        )
    if not isinstance(perms, dict):
        raise TypeError(
            f"{_validate.where()}: perms must be a dict {{group: int array}}; got {type(perms).__name__}."
        )
    perms = check_perms(spec, perms)
    missing = set(_tree.leaf_paths(params)) ^ set(spec.param_axes)
    if missing:
        raise ValueError(
            f"{_validate.where()}: params do not match the traced model (leaves {sorted(missing)[:5]} differ)."
        )
    out = _permute_tree(params, spec.param_axes, perms, spec.per)
    if state is None:
        return out
    return out, _permute_tree(state, spec.state_axes, perms, spec.per)


def capture_activations(apply_fn, acts: tuple, params, state, x) -> dict:
    """Traceable: ``{group: [activations with the group's axis last, flattened to (m, units)]}``
    at the positions ``acts = ((group, ((position, axis), ...)), ...)`` chosen by
    :func:`permutation_spec` (the model is re-traced at ``x``'s shape)."""
    closed = _trace(apply_fn, params, state, x)
    wanted: dict = {}
    for g, items in acts:
        for pos, ax in items:
            wanted.setdefault(tuple(pos[:-1]), []).append((pos[-1], g, ax))
    found: dict[str, list] = {g: [] for g, _ in acts}
    args = jax.tree.leaves((params, state)) + [x]

    def after(pos, eqn, outs):
        for k, g, ax in wanted.get(pos, ()):
            z = jnp.moveaxis(outs[k], ax, -1)
            found[g].append(z.reshape(-1, z.shape[-1]))
        return outs

    _program.evaluate(closed, args, after)
    return found
