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
* an equation that is not equivariant along a labelled axis (a reshape that flattens units
  together with spatial positions, slicing, concatenation, grouped convolutions, sorting,
  cumulative sums, unknown primitives) poisons that group.

Candidate groups tied to a fixed axis are fixed. The others are the permutation groups; a
poisoned group that is not fixed makes :func:`permutation_spec` raise, naming the operation,
its source line and the parameters involved, rather than return a wrong permutation.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from landscape import tree as _tree
from landscape import validate as _validate
from landscape._model import as_model

PyTree = Any

FIXED = -1
WILD = -2

__all__ = ["PermutationSpec", "UnsupportedModelError", "permutation_spec", "permute"]


class UnsupportedModelError(ValueError):
    """The model contains an operation the permutation analysis cannot handle."""


_UNARY = {
    "neg", "sign", "floor", "ceil", "round", "is_finite", "exp", "exp2", "log", "log1p",
    "expm1", "tanh", "logistic", "sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh",
    "asinh", "acosh", "atanh", "sqrt", "rsqrt", "cbrt", "abs", "not", "integer_pow", "square",
    "erf", "erfc", "erf_inv", "lgamma", "digamma", "convert_element_type", "reduce_precision",
    "copy", "copy_p", "real", "imag", "conj", "stop_gradient", "population_count", "clz",
    "bessel_i0e", "bessel_i1e", "optimization_barrier",
}
_NARY = {
    "add", "sub", "mul", "div", "rem", "pow", "max", "min", "atan2", "nextafter", "and", "or",
    "xor", "eq", "ne", "lt", "le", "gt", "ge", "select_n", "clamp", "add_any", "shift_left",
    "shift_right_logical", "shift_right_arithmetic", "complex", "igamma", "igammac",
    "polygamma", "zeta", "random_gamma_grad",
}
_REDUCE = {"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or",
           "reduce_xor"}
_ARG_REDUCE = {"argmax", "argmin"}
_CUMULATIVE = {"cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp"}
_WINDOW = {"reduce_window_sum", "reduce_window_max", "reduce_window_min", "reduce_window"}
_CALLS = {"jit", "pjit", "closed_call", "core_call", "remat", "checkpoint", "custom_jvp_call",
          "custom_vjp_call", "custom_vjp_call_jaxpr", "shard_map"}
# calls whose inner values capture_activations evaluates equation by equation
_INLINE = {"jit", "pjit", "closed_call", "core_call"}
# outputs of these equations count as "activations" for activation matching
_NONLINEAR = {"custom_jvp_call", "tanh", "logistic", "erf", "exp", "max", "min", "abs",
              "integer_pow", "square", "sin", "cos", "log1p", "expm1"}


def _where(eqn) -> str:
    try:
        from jax._src import source_info_util

        return source_info_util.summarize(eqn.source_info)
    except Exception:  # noqa: BLE001 - best effort
        return "unknown location"


class _Labels:
    """Union-find over candidate groups (one per parameter/state axis)."""

    def __init__(self):
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

    def spoil(self, lab: int, reason: str) -> None:
        lab = self.norm(lab)
        if lab >= 0:
            self.poison[lab].append(reason)


def _shape(v) -> tuple:
    return tuple(v.aval.shape) if hasattr(v, "aval") and hasattr(v.aval, "shape") else ()


def _closed(p):
    if isinstance(p, jcore.ClosedJaxpr):
        return p
    if isinstance(p, jcore.Jaxpr):
        return jcore.ClosedJaxpr(p, [])
    return None


def _sub_jaxpr(eqn):
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        if key in eqn.params:
            c = _closed(eqn.params[key])
            if c is not None:
                return c
    return None


class _Tracer:
    """Propagates axis labels through a jaxpr (recursively through calls)."""

    def __init__(self, labels: _Labels):
        self.L = labels
        self.records: list[tuple] = []  # (position, var labels, nonlinear)
        self.capturable = True  # False inside calls whose values capture_activations cannot see
        self.locations: list[str] = []  # source locations of the enclosing calls

    # -- helpers --------------------------------------------------------------------------
    def _spoil_all(self, labs, reason):
        for lab in labs:
            self.L.spoil(lab, reason)

    def _fixed_like(self, v):
        return tuple(WILD if s == 1 else FIXED for s in _shape(v))

    def run(self, closed, in_labels, in_data, prefix=()):
        jaxpr = closed.jaxpr
        env: dict = {}
        denv: dict = {}
        for v in jaxpr.constvars:
            env[v] = self._fixed_like(v)
            denv[v] = False
        for v, lab, d in zip(jaxpr.invars, in_labels, in_data):
            env[v] = tuple(lab)
            denv[v] = d

        def read(v):
            if isinstance(v, jcore.Literal):
                return self._fixed_like(v), False
            return env[v], denv[v]

        for i, eqn in enumerate(jaxpr.eqns):
            ins = [read(v) for v in eqn.invars]
            labs = [x[0] for x in ins]
            data_dep = any(x[1] for x in ins)
            outs = self.eqn(eqn, labs, [d for _, d in ins], prefix + (i,))
            name = eqn.primitive.name
            nonlinear = name in _NONLINEAR and not (
                name in ("max", "min") and not any(isinstance(v, jcore.Literal) for v in eqn.invars)
            )
            for k, (v, lab) in enumerate(zip(eqn.outvars, outs)):
                if isinstance(v, jcore.DropVar):
                    continue
                env[v] = tuple(lab)
                denv[v] = data_dep
                if data_dep and self.capturable and name not in _INLINE:
                    self.records.append((prefix + (i, k), tuple(lab), nonlinear))
        return [read(v)[0] for v in jaxpr.outvars]

    # -- one equation ---------------------------------------------------------------------
    def eqn(self, eqn, labs, datas, pos):
        L = self.L
        name = eqn.primitive.name
        p = eqn.params
        outs_shapes = [_shape(v) for v in eqn.outvars]
        in_shapes = [_shape(v) for v in eqn.invars]
        loc = _where(eqn)
        if not loc.strip() or loc == "unknown location":
            # equations inside library calls (jnp.cumsum is a nested jit) carry no user
            # location: report the enclosing call's
            loc = next((x for x in reversed(self.locations) if x.strip()), "unknown location")
        why = f"`{name}` at {loc}"

        if name in _UNARY and len(labs) == 1:
            return [labs[0]]

        if name in _NARY:
            r = len(outs_shapes[0])
            out = [WILD] * r
            for lab, shp in zip(labs, in_shapes):
                if len(shp) == 0:
                    continue
                if len(shp) != r:
                    self._spoil_all(lab, why + " (rank-changing broadcast)")
                    continue
                for ax in range(r):
                    lab_ax = WILD if shp[ax] == 1 else lab[ax]
                    out[ax] = L.unify(out[ax], lab_ax)
            return [tuple(L.norm(x) for x in out)]

        if name == "dot_general":
            (lc, rc), (lb, rb) = p["dimension_numbers"]
            a, b = labs
            for i, j in zip(lc, rc):
                L.unify(a[i], b[j])
            batch = [L.unify(a[i], b[j]) for i, j in zip(lb, rb)]
            free_a = [a[i] for i in range(len(a)) if i not in lc and i not in lb]
            free_b = [b[j] for j in range(len(b)) if j not in rc and j not in rb]
            return [tuple(L.norm(x) for x in batch + free_a + free_b)]

        if name == "conv_general_dilated":
            dn = p["dimension_numbers"]
            lhs, rhs = labs
            ls, rs, os_ = dn.lhs_spec, dn.rhs_spec, dn.out_spec
            groups = p.get("feature_group_count", 1) * p.get("batch_group_count", 1)
            if groups != 1:
                reason = why + " (grouped convolution: units are permuted within groups only)"
                for lab in (lhs[ls[1]], rhs[rs[0]], rhs[rs[1]]):
                    L.spoil(lab, reason)
            else:
                L.unify(lhs[ls[1]], rhs[rs[1]])
            for d in ls[2:]:
                L.spoil(lhs[d], why + " (convolution over a permuted axis)")
            for d in rs[2:]:
                L.fix(rhs[d])
            out = [FIXED] * len(outs_shapes[0])
            out[os_[0]] = L.norm(lhs[ls[0]])
            out[os_[1]] = L.norm(rhs[rs[0]])
            return [tuple(out)]

        if name in _REDUCE:
            axes = set(p["axes"])
            return [tuple(lab for i, lab in enumerate(labs[0]) if i not in axes)]

        if name in _ARG_REDUCE:
            axes = set(p["axes"])
            for ax in axes:
                L.spoil(labs[0][ax], why + " (index of a maximum over permuted units)")
            return [tuple(lab for i, lab in enumerate(labs[0]) if i not in axes)]

        if name == "broadcast_in_dim":
            shape = p["shape"]
            out = [WILD if s == 1 else WILD for s in shape]
            for i, d in enumerate(p["broadcast_dimensions"]):
                out[d] = labs[0][i] if in_shapes[0][i] == shape[d] else WILD
            return [tuple(out)]

        if name == "reshape":
            if p.get("dimensions") is not None:
                self._spoil_all(labs[0], why + " (reshape with a transposition)")
                return [self._fixed_like(eqn.outvars[0])]
            return [self._reshape(labs[0], in_shapes[0], outs_shapes[0], why)]

        if name == "squeeze":
            dims = {d % len(in_shapes[0]) for d in p["dimensions"]}
            return [tuple(lab for i, lab in enumerate(labs[0]) if i not in dims)]

        if name == "expand_dims":
            out = list(labs[0])
            for d in sorted(p["dimensions"]):
                out.insert(d, WILD)
            return [tuple(out)]

        if name == "transpose":
            return [tuple(labs[0][i] for i in p["permutation"])]

        if name in _WINDOW:
            n_ops = len(labs) if name != "reduce_window" else len(labs) // 2
            wd, ws = p["window_dimensions"], p["window_strides"]
            pad = p["padding"]
            bd = p.get("base_dilation", (1,) * len(wd))
            wdl = p.get("window_dilation", (1,) * len(wd))
            outs = []
            for lab in labs[:n_ops]:
                out = []
                for ax, x in enumerate(lab):
                    plain = wd[ax] == 1 and ws[ax] == 1 and tuple(pad[ax]) == (0, 0) and bd[ax] == 1 and wdl[ax] == 1
                    if plain:
                        out.append(x)
                    else:
                        L.spoil(x, why + " (pooling window across permuted units)")
                        out.append(FIXED)
                outs.append(tuple(out))
            return outs

        if name in _CUMULATIVE:
            ax = p["axis"]
            L.spoil(labs[0][ax], why + " (cumulative operation along permuted units)")
            out = list(labs[0])
            out[ax] = FIXED
            return [tuple(out)]

        if name == "sort":
            d = p["dimension"]
            outs = []
            for lab in labs:
                L.spoil(lab[d], why + " (sorting along permuted units)")
                o = list(lab)
                o[d] = FIXED
                outs.append(tuple(o))
            return outs[: len(eqn.outvars)]

        if name == "concatenate":
            d = p["dimension"]
            r = len(outs_shapes[0])
            out = [WILD] * r
            for lab in labs:
                for ax in range(r):
                    if ax == d:
                        L.spoil(lab[ax], why + " (concatenation along permuted units)")
                    else:
                        out[ax] = L.unify(out[ax], lab[ax])
            out[d] = FIXED
            return [tuple(L.norm(x) for x in out)]

        if name == "pad":
            cfg = p["padding_config"]
            out = []
            for ax, (lo, hi, interior) in enumerate(cfg):
                if (lo, hi, interior) == (0, 0, 0):
                    out.append(labs[0][ax])
                else:
                    L.spoil(labs[0][ax], why + " (padding along permuted units)")
                    out.append(FIXED)
            return [tuple(out)]

        if name in ("slice", "dynamic_slice"):
            out = []
            full = in_shapes[0]
            outs_ = outs_shapes[0]
            for ax, lab in enumerate(labs[0]):
                if outs_[ax] == full[ax] and (name == "dynamic_slice" or
                                              p["start_indices"][ax] == 0 and
                                              (p["strides"] is None or p["strides"][ax] == 1)):
                    out.append(lab)
                else:
                    L.spoil(lab, why + " (slicing along permuted units)")
                    out.append(FIXED)
            for lab in labs[1:]:
                self._spoil_all(lab, why)
            return [tuple(out)]

        if name == "dynamic_update_slice":
            op, upd = labs[0], labs[1]
            out = []
            for ax in range(len(op)):
                if in_shapes[1][ax] == in_shapes[0][ax]:
                    out.append(L.unify(op[ax], upd[ax]))
                else:
                    L.spoil(op[ax], why + " (partial update along permuted units)")
                    L.spoil(upd[ax], why)
                    out.append(FIXED)
            return [tuple(L.norm(x) for x in out)]

        if name == "gather":
            dn = p["dimension_numbers"]
            op = labs[0]
            ss = p["slice_sizes"]
            collapsed = set(dn.collapsed_slice_dims) | set(getattr(dn, "operand_batching_dims", ()))
            indexed = set(dn.start_index_map)
            out = [FIXED] * len(outs_shapes[0])
            kept = [ax for ax in range(len(op)) if ax not in collapsed]
            for ax, od in zip(kept, dn.offset_dims):
                if ax in indexed or ss[ax] != in_shapes[0][ax]:
                    L.spoil(op[ax], why + " (indexing along permuted units)")
                else:
                    out[od] = op[ax]
            for ax in collapsed | indexed:
                L.spoil(op[ax], why + " (indexing along permuted units)")
            self._spoil_all(labs[1], why)
            return [tuple(out)]

        if name == "iota":
            return [self._fixed_like(eqn.outvars[0])]

        if name == "split":
            ax = p["axis"]
            L.spoil(labs[0][ax], why + " (splitting permuted units)")
            outs = []
            for _ in eqn.outvars:
                o = list(labs[0])
                o[ax] = FIXED
                outs.append(tuple(o))
            return outs

        if name == "cond":
            branches = p["branches"]
            self._spoil_all(labs[0], why)
            res = None
            old, self.capturable = self.capturable, False
            for br in branches:
                o = self.run(br, labs[1:], datas[1:], pos)
                res = o if res is None else [
                    tuple(L.unify(x, y) for x, y in zip(a, b)) for a, b in zip(res, o)
                ]
            self.capturable = old
            return [tuple(L.norm(x) for x in r) for r in res]

        if name in _CALLS:
            sub = _sub_jaxpr(eqn)
            if sub is not None and len(sub.jaxpr.invars) == len(labs):
                old = self.capturable
                self.capturable = old and name in _INLINE
                self.locations.append(loc)
                try:
                    return self.run(sub, labs, datas, pos)
                finally:
                    self.capturable = old
                    self.locations.pop()

        # anything else: not known to be permutation-equivariant
        for lab in labs:
            self._spoil_all(lab, why + " (operation not known to be permutation-equivariant)")
        return [self._fixed_like(v) for v in eqn.outvars]

    def _reshape(self, lab, ishape, oshape, why):
        L = self.L
        out = [WILD] * len(oshape)
        i = j = 0
        ni, no = len(ishape), len(oshape)
        while i < ni or j < no:
            # skip size-1 axes (they carry no permutation)
            if i < ni and ishape[i] == 1:
                i += 1
                continue
            if j < no and oshape[j] == 1:
                out[j] = WILD
                j += 1
                continue
            if i >= ni or j >= no:  # pragma: no cover - sizes always match
                break
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
            i += 1
            j += 1
            labs = [lab[k] for k in gi if ishape[k] != 1]
            outs_ = [k for k in gj if oshape[k] != 1]
            if len(labs) == 1 and len(outs_) == 1:
                for k in gj:
                    out[k] = labs[0] if oshape[k] != 1 else WILD
                continue
            real = [k for k in gi if ishape[k] != 1]
            nodes = [k for k in real if L.norm(lab[k]) >= 0]
            if len(outs_) == 1 and len(nodes) == 1 and all(L.norm(lab[k]) != WILD or k in nodes for k in real):
                # a flatten of one permuted axis with unpermuted ones: the merged axis is the
                # block (outer, units, inner), permuted by the units' permutation
                k0 = nodes[0]
                outer = int(np.prod([ishape[k] for k in real if k < k0], dtype=np.int64))
                inner = int(np.prod([ishape[k] for k in real if k > k0], dtype=np.int64))
                m = L.new(oshape[outs_[0]], None)
                L.alias[m] = (L.norm(lab[k0]), outer, inner)
                for k in real:
                    if k != k0:
                        L.fix(lab[k])
                for k in gj:
                    out[k] = m if oshape[k] != 1 else WILD
                continue
            for x in labs:
                L.spoil(x, why + " (reshape merging or splitting permuted units with other "
                        "axes, e.g. a flatten readout)")
            for k in gj:
                out[k] = WILD if oshape[k] == 1 else FIXED
        return tuple(out)


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
    """

    groups: dict
    param_axes: dict
    state_axes: dict
    unsupported: dict
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
            return f"{k}[{a}]" + (f" (flattened {e[1]} x units x {e[2]})" if isinstance(e, tuple) else "")

        for g, n in self.groups.items():
            members = ", ".join(show(k, a) for k, a in self.axes_of(g, include_state=True))
            lines.append(f"  {g} (size {n}): {members}")
        for g, why in self.unsupported.items():
            lines.append(f"  unsupported {g}: {why[0]}")
        return "\n".join(lines)


def _leaf_labels(labels: _Labels, tree, prefix: str):
    out = []
    for path, leaf in zip(_tree.leaf_paths(tree), jax.tree.leaves(tree)):
        shp = np.shape(leaf)
        floating = jnp.issubdtype(jnp.result_type(leaf), jnp.floating)
        out.append(tuple(
            labels.new(s, (prefix + path, ax)) if (floating and s > 1) else (WILD if s == 1 else FIXED)
            for ax, s in enumerate(shp)
        ))
    return out


def _trace(apply_fn, params, state, x):
    def f(p, s, xx):
        out, _ = apply_fn(p, s, xx, train=False)
        return out

    return jax.make_jaxpr(f)(params, state, x)


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
    statistics join the group of the units they normalise.

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
        raise ValueError(f"{_validate.where()}: example_input must have a leading example axis; got a scalar.")
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
        raise ValueError(f"{_validate.where()}: unexpected trace (inputs {len(closed.jaxpr.invars)}, expected {len(in_labels)}).")
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
    pshapes = dict(zip(_tree.leaf_paths(model.params), (np.shape(v) for v in jax.tree.leaves(model.params))))
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

    def entry(lab):
        res = resolve(lab)
        if res is None or L.norm(res[0]) < 0:
            return None
        b, o, i = res
        return names[L.norm(b)] if (o, i) == (1, 1) else (names[L.norm(b)], o, i)

    def axes_of(labs_list, tree):
        return {path: tuple(entry(lab) for lab in labs)
                for path, labs in zip(_tree.leaf_paths(tree), labs_list)}

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
    idx = (np.arange(outer)[:, None, None] * (c * inner) + perm[None, :, None] * inner
           + np.arange(inner)[None, None, :])
    return idx.reshape(-1)


def _permute_tree(tree, axes: dict, perms: dict):
    def f(path, x):
        labs = axes.get(path, ())
        for ax, e in enumerate(labs):
            if isinstance(e, list):
                e = tuple(e)
            g = _group_of(e)
            if g is not None and g in perms:
                x = jnp.take(x, jnp.asarray(expand_perm(e, perms[g])), axis=ax)
        return x

    return _tree.map_with_path(f, tree)


@_validate.public("landscape.connect.permute")
def permute(spec: PermutationSpec, params: PyTree, perms: dict, state: PyTree = None):
    """Apply permutations: unit ``i`` of the result is unit ``perms[g][i]`` of the input.

    Args:
      spec: from :func:`permutation_spec`.
      params: parameters with the traced model's structure.
      perms: ``{group name: int array}`` (groups left out are not permuted).
      state: optional model state (batch-norm statistics), permuted consistently.

    Returns:
      The permuted ``params`` (and ``(params, state)`` when ``state`` is given). The permuted
      network computes the same function.

    Raises:
      ValueError: unknown group names or arrays that are not permutations of the right size.
    """
    if not isinstance(spec, PermutationSpec):
        raise TypeError(f"{_validate.where()}: spec must be a PermutationSpec; got {type(spec).__name__}.")
    for g, p in perms.items():
        if g not in spec.groups:
            raise ValueError(f"{_validate.where()}: unknown group {g!r}; groups: {sorted(spec.groups)}.")
        arr = np.asarray(p)
        if arr.shape != (spec.groups[g],) or not np.array_equal(np.sort(arr), np.arange(spec.groups[g])):
            raise ValueError(
                f"{_validate.where()}: perms[{g!r}] must be a permutation of range({spec.groups[g]}); got shape "
                f"{arr.shape}."
            )
    missing = set(_tree.leaf_paths(params)) ^ set(spec.param_axes)
    if missing:
        raise ValueError(
            f"{_validate.where()}: params do not match the traced model (leaves {sorted(missing)[:5]} differ)."
        )
    out = _permute_tree(params, spec.param_axes, perms)
    if state is None:
        return out
    return out, _permute_tree(state, spec.state_axes, perms)


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

    def run(cj, invals, prefix):
        jaxpr = cj.jaxpr
        env = dict(zip(jaxpr.constvars, cj.consts))
        env.update(zip(jaxpr.invars, invals))

        def read(v):
            return v.val if isinstance(v, jcore.Literal) else env[v]

        for i, eqn in enumerate(jaxpr.eqns):
            vals = [read(v) for v in eqn.invars]
            name = eqn.primitive.name
            sub = _sub_jaxpr(eqn) if name in _INLINE else None
            if sub is not None and len(sub.jaxpr.invars) == len(vals):
                outs = run(sub, vals, prefix + (i,))
            else:
                bp = eqn.primitive.get_bind_params(eqn.params)
                subfuns, bp = bp if isinstance(bp, tuple) else ((), bp)  # older JAX: a pair
                outs = eqn.primitive.bind(*subfuns, *vals, **bp)
                if not eqn.primitive.multiple_results:
                    outs = [outs]
            for v, val in zip(eqn.outvars, outs):
                if not isinstance(v, jcore.DropVar):
                    env[v] = val
            for k, g, ax in wanted.get(prefix + (i,), ()):
                z = jnp.moveaxis(outs[k], ax, -1)
                found[g].append(z.reshape(-1, z.shape[-1]))
        return [read(v) for v in jaxpr.outvars]

    run(closed, args, ())
    return found
