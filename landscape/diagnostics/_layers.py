"""The layers of a model, found from its traced program (never from module or parameter names).

The model's ``apply_fn`` is traced to a jaxpr (:func:`landscape._program.trace_model`) and
flattened (:func:`landscape._program.flatten`: ``jit`` calls expanded). Then:

* **layer**: every ``dot_general`` or ``conv_general_dilated`` whose one operand depends on the
  input batch and whose other operand depends on parameters and not on the batch (a kernel, or
  a function of one: weight standardisation, a spectral norm). A product of two data values
  (attention scores) or of data with a constant is not a layer. Layers are numbered in
  evaluation order.
* **pre-activation** ``z``: the product's output, plus a bias when the product's first consumer
  adds a parameter (not data) operand of the same shape after broadcasting (``x @ W + b``).
* **activation** ``a``: the region of ``z`` is every value of ``z``'s shape reached from ``z``
  through elementwise equations (:data:`landscape._program.UNARY`/``NARY``, and
  ``custom_jvp``/``custom_vjp`` calls such as ``jax.nn.relu`` whose data operands and outputs
  all have ``z``'s shape). The activation is the region's first value (in evaluation order) that
  leaves it: a model output, or a value consumed by another layer or by an equation whose
  results do not come back into the region without passing a layer. So batch-norm statistics
  (reductions over the batch that are broadcast back), layer norm and a residual addition stay
  inside; the next layer, a pooling, a flatten or a global average are where it ends.
* **input of the nonlinearity** ``u``: the latest value that every path from ``z`` to ``a``
  passes through and that is affine in ``z`` (sums, differences, products and quotients with
  values outside the region, casts): the batch-norm output, or the residual sum, before the
  ReLU; ``z`` itself for ``x * sigmoid(x)`` or an exact GELU (which use ``z`` on two paths).
* **activation kind**: from the primitives between ``u`` and ``a`` (inside custom-derivative
  calls too): none ("linear"), only ``max`` ("relu"), only ``tanh`` ("tanh"), only ``logistic``
  ("sigmoid"), the sets JAX writes for GELU (exact or tanh approximation), SiLU/swish, ELU,
  leaky ReLU and softplus (those names), anything else ("other": a custom function). The kind
  is a label (saturation is measured for tanh and sigmoid); a custom activation that happens
  to use one of these exact primitive sets gets that label.

A model whose layers run inside a ``scan``, ``while`` loop, ``cond``, ``remat`` or
custom-derivative call cannot be enumerated this way (the layer's values there are not values
of the program): :class:`LayerEnumerationError` names that operation and its source line, as it
does for a model with no layer at all.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from landscape import _program
from landscape import tree as _tree
from landscape import validate as _validate

PyTree = Any

__all__ = ["Layer", "LayerEnumerationError", "LayerPlan", "layer_plan", "run_tapped"]

_CUSTOM = frozenset({"custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr"})
_ELEMENTWISE = _program.UNARY | _program.NARY
# equations through which a value stays an affine function of one region operand
_AFFINE = frozenset({"add", "add_any", "sub", "neg", "convert_element_type", "copy", "copy_p"})
# primitives that do not make a path nonlinear (the kind classification ignores them)
_STRUCTURAL = frozenset(
    {
        "add",
        "add_any",
        "sub",
        "mul",
        "div",
        "neg",
        "convert_element_type",
        "copy",
        "copy_p",
        "broadcast_in_dim",
        "reshape",
        "squeeze",
        "expand_dims",
        "stop_gradient",
        "pjit",
        "jit",
        "closed_call",
        "core_call",
        *_CUSTOM,
    }
)
KINDS = (
    "linear",
    "relu",
    "tanh",
    "sigmoid",
    "gelu",
    "silu",
    "elu",
    "leaky_relu",
    "softplus",
    "other",
)


class LayerEnumerationError(ValueError):
    """The model's layers cannot be enumerated from its program (the message names the
    operation that stops it and its source line)."""


@dataclasses.dataclass(frozen=True)
class Layer:
    """One layer found in the program (hashable: a static part of compiled code).

    Attributes:
      index: its number (evaluation order).
      op: ``"dense"`` (``dot_general``) or ``"conv"`` (``conv_general_dilated``).
      name: the path of its kernel leaf (display only; layers are not found by name).
      preact, phi_in, act: ``(position, output index)`` of the pre-activation ``z``, the input of
        the nonlinearity ``u`` and the activation ``a`` (see the module docstring).
      activation: the kind, one of :data:`KINDS` (``"other"``: not recognised).
      shape: the shape of ``z`` (and of ``u`` and ``a``); dtype: the dtype of ``a``.
      unit_axes: the axes of ``z`` that index the layer's units (output features, channels).
      params: indices (tree order) of its parameter leaves: the kernel's and the bias's.
      param_paths: their paths.
      is_output: whether ``a`` is an output of the model (the readout).
      location: the source line of the product.
    """

    index: int
    op: str
    name: str
    preact: tuple
    phi_in: tuple
    act: tuple
    activation: str
    shape: tuple
    dtype: str
    unit_axes: tuple
    params: tuple
    param_paths: tuple
    is_output: bool
    location: str


@dataclasses.dataclass(frozen=True)
class LayerPlan:
    """The layers of a model traced at one input shape (hashable).

    Attributes:
      layers: the :class:`Layer` records, in evaluation order.
      train: whether the program is the training-mode one (batch statistics).
      num_examples: the leading size of the traced input.
    """

    layers: tuple
    train: bool
    num_examples: int

    @property
    def hidden(self) -> tuple:
        """Indices of the layers whose activation is not a model output."""
        return tuple(layer.index for layer in self.layers if not layer.is_output)


# --------------------------------------------------------------------------------------------
def _deps(flat, n_params: int, n_state: int):
    """Per value: whether it depends on the input batch, and the parameter leaves it depends
    on."""
    data: dict[int, bool] = {}
    params: dict[int, frozenset] = {}
    for i, vid in enumerate(flat.inputs):
        data[vid] = i >= n_params + n_state
        params[vid] = frozenset([i]) if i < n_params else frozenset()
    empty = frozenset()
    for e in flat.eqns:
        ins = [r for r in e.ins if r is not None]
        d = any(data.get(r, False) for r in ins)
        p = frozenset().union(*(params.get(r, empty) for r in ins)) if ins else empty
        for o in e.outs:
            data[o] = d
            params[o] = p
    return data, params


def _contains_product(closed, depth: int = 0) -> bool:
    if depth > 32:  # pragma: no cover - defensive
        return False
    for eqn in closed.jaxpr.eqns:
        if eqn.primitive.name in _program.PRODUCTS:
            return True
        if any(_contains_product(s, depth + 1) for s in _program.sub_programs(eqn)):
            return True
    return False


def _names_inside(eqn, depth: int = 0) -> set:
    """Primitive names of ``eqn`` and of every program nested in it."""
    out = {eqn.primitive.name}
    if depth > 32:  # pragma: no cover - defensive
        return out
    for sub in _program.sub_programs(eqn):
        for inner in sub.jaxpr.eqns:
            out |= _names_inside(inner, depth + 1)
    return out


def _unit_axes(e, param_side: int) -> tuple:
    """The output axes of a product that index its units: a convolution's feature axis, the
    parameter operand's free axes of a ``dot_general`` (output order: batch, lhs free, rhs free)."""
    if e.name == "conv_general_dilated":
        return (int(e.eqn.params["dimension_numbers"].out_spec[1]),)
    (lc, rc), (lb, rb) = e.eqn.params["dimension_numbers"]
    nb = len(lb)
    lhs_nd = len(e.eqn.invars[0].aval.shape)
    rhs_nd = len(e.eqn.invars[1].aval.shape)
    n_lfree = lhs_nd - len(lc) - len(lb)
    n_rfree = rhs_nd - len(rc) - len(rb)
    if param_side == 1:
        return tuple(range(nb + n_lfree, nb + n_lfree + n_rfree))
    return tuple(range(nb, nb + n_lfree))


def _is_elementwise(flat, e, shape, data) -> bool:
    """Whether equation ``e`` acts elementwise on values of ``shape`` (its outputs have it)."""
    if any(flat.shape(o) != shape for o in e.outs):
        return False
    if e.name in _ELEMENTWISE:
        return True
    if e.name in _CUSTOM:
        return all(flat.shape(r) == shape for r in e.ins if r is not None and data.get(r, False))
    return False


def _region(flat, z, data):
    """Values of ``z``'s shape reached from ``z`` through elementwise equations, and the
    equations producing them (in evaluation order)."""
    shape = flat.shape(z)
    region = {z}
    eqns = []
    frontier = [z]
    seen_eqns = set()
    while frontier:
        v = frontier.pop()
        for ci in flat.consumers.get(v, ()):
            if ci in seen_eqns:
                continue
            e = flat.eqns[ci]
            if not _is_elementwise(flat, e, shape, data):
                continue
            seen_eqns.add(ci)
            eqns.append(ci)
            for o in e.outs:
                if o not in region:
                    region.add(o)
                    frontier.append(o)
    return region, sorted(eqns)


def _reaches(flat, start_eqn: int, targets: set, stop_after: int) -> bool:
    """Whether the outputs of equation ``start_eqn`` reach a value of ``targets`` through
    equations that are not products (only equations up to index ``stop_after`` are followed)."""
    frontier = list(flat.eqns[start_eqn].outs)
    seen = set(frontier)
    while frontier:
        v = frontier.pop()
        if v in targets:
            return True
        for ci in flat.consumers.get(v, ()):
            if ci > stop_after:
                continue
            e = flat.eqns[ci]
            if e.name in _program.PRODUCTS:
                continue
            for o in e.outs:
                if o not in seen:
                    seen.add(o)
                    frontier.append(o)
    return False


def _live(flat) -> set:
    """Values from which a model output can be reached."""
    live = set(flat.outputs)
    for e in reversed(flat.eqns):
        if any(o in live for o in e.outs):
            live.update(r for r in e.ins if r is not None)
    return live


def _find_activation(flat, z, data, layer_eqns, live):
    region, r_eqns = _region(flat, z, data)
    last = max((flat.producer[v][0] for v in region), default=flat.producer[z][0])
    outputs = set(flat.outputs)

    def exits(v) -> bool:
        if v in outputs:
            return True
        for ci in flat.consumers.get(v, ()):
            e = flat.eqns[ci]
            if all(o in region for o in e.outs) and ci in r_eqns_set:
                continue  # inside the region
            if not any(o in live for o in e.outs):
                continue  # a dead end (a dropped running-statistics update)
            if ci in layer_eqns or not _reaches(flat, ci, region, last):
                return True
        return False

    r_eqns_set = set(r_eqns)
    ordered = sorted(region, key=lambda v: flat.producer[v][0])
    act = next((v for v in ordered if exits(v)), z)

    # dominators of act in the region's graph (paths from z), and the affine values
    dom: dict[int, frozenset] = {z: frozenset([z])}
    affine: dict[int, bool] = {z: True}
    for v in ordered:
        if v == z:
            continue
        e = flat.eqns[flat.producer[v][0]]
        preds = [r for r in e.ins if r is not None and r in dom]
        if not preds:
            continue
        common = frozenset.intersection(*(dom[p] for p in preds))
        dom[v] = common | {v}
        in_region = [r for r in e.ins if r is not None and r in region]
        one_operand = len(in_region) == 1 and all(affine.get(r, False) for r in in_region)
        if e.name in _AFFINE:
            affine[v] = all(affine.get(r, False) for r in in_region)
        elif e.name == "mul":
            affine[v] = one_operand
        elif e.name == "div":
            affine[v] = one_operand and e.ins[0] in region
        else:
            affine[v] = False
    chain = sorted(dom.get(act, frozenset([z, act])), key=lambda v: flat.producer[v][0])
    phi_in = next((v for v in reversed(chain) if affine.get(v, False)), z)

    # the activation's kind: the primitives on the paths from phi_in to act
    if phi_in == act:
        return phi_in, act, "linear"
    anc = _ancestors(flat, act, region)
    desc = {phi_in}
    names: set = set()
    for v in ordered:
        if v == phi_in or v not in anc:
            continue
        e = flat.eqns[flat.producer[v][0]]
        if any(r in desc for r in e.ins if r is not None):
            desc.add(v)
            names |= _names_inside(e.eqn)
            if e.name in ("mul", "div") and sum(r in region for r in e.ins if r is not None) > 1:
                names.add("product of two signals")  # x * sigmoid(x): not affine
    return phi_in, act, _kind_of(names - _STRUCTURAL)


# the primitive sets of the common activations as JAX writes them (jax.nn; "product of two
# signals" is u multiplying a function of itself); anything else is "other"
_KIND_SIGNATURES = {
    "relu": ({"max"},),
    "tanh": ({"tanh"},),
    "sigmoid": ({"logistic"},),
    "gelu": (  # exact (erf or erfc) and the tanh approximation
        {"erf", "product of two signals"},
        {"erfc", "product of two signals"},
        {"tanh", "integer_pow", "product of two signals"},
    ),
    "silu": ({"logistic", "product of two signals"},),
    "elu": ({"expm1", "gt", "select_n"}, {"expm1", "ge", "select_n"}),
    "leaky_relu": ({"ge", "select_n"},),  # jax.nn's; where(x > 0, x, 0) (gt) is "other"
    "softplus": ({"abs", "exp", "log1p", "max", "ne", "select_n"},),
}


def _kind_of(nonlinear: set) -> str:
    """The activation kind from the nonlinear primitives between ``u`` and ``a``: a known
    signature (:data:`_KIND_SIGNATURES`, exact set equality), else ``"other"``."""
    if not nonlinear:
        return "linear"
    for kind, signatures in _KIND_SIGNATURES.items():
        if any(nonlinear == sig for sig in signatures):
            return kind
    return "other"


def _ancestors(flat, v, region) -> set:
    """Values of ``region`` from which ``v`` is reached inside the region (``v`` included)."""
    out = {v}
    frontier = [v]
    while frontier:
        w = frontier.pop()
        if w not in flat.producer:
            continue
        e = flat.eqns[flat.producer[w][0]]
        for r in e.ins:
            if r is not None and r in region and r not in out:
                out.add(r)
                frontier.append(r)
    return out


def _where(flat, vid) -> tuple:
    i, k = flat.producer[vid]
    return (flat.eqns[i].pos, k)


def enumerate_layers(closed, params, state, x_shape, *, train: bool) -> LayerPlan:
    """The :class:`LayerPlan` of a traced model program (inputs: params, state, x)."""
    flat = _program.flatten(closed)
    n_params = len(jax.tree.leaves(params))
    n_state = len(jax.tree.leaves(state))
    paths = _tree.leaf_paths(params)
    data, deps = _deps(flat, n_params, n_state)
    for e in flat.eqns:  # layers hidden inside calls that are not followed
        if e.name in _program.PRODUCTS or not any(
            data.get(r, False) for r in e.ins if r is not None
        ):
            continue
        if any(_contains_product(s) for s in _program.sub_programs(e.eqn)):
            raise LayerEnumerationError(
                f"{_validate.where()}: cannot enumerate the model's layers: `{e.name}` at {e.loc} "
                "runs dense layers or convolutions inside it on the data, and their values are "
                "not values of the traced program (only jit calls are followed; loops, cond, "
                "remat and custom-derivative calls are single operations). Unroll the layers "
                "(a Python loop instead of scan/fori_loop) or call the layers outside it."
            )
    products = []
    for e in flat.eqns:
        if e.name not in _program.PRODUCTS:
            continue
        a, b = e.ins[0], e.ins[1]
        da, db = data.get(a, False), data.get(b, False)
        side = None
        if da and not db and deps.get(b):
            side = 1
        elif db and not da and deps.get(a):
            side = 0
        if side is not None:
            products.append((e, side))
    if not products:
        ops = sorted({e.name for e in flat.eqns})
        raise LayerEnumerationError(
            f"{_validate.where()}: cannot enumerate the model's layers: its program has no "
            "dot_general or conv_general_dilated with a parameter operand applied to the data "
            f"(operations: {', '.join(ops[:20])}{', ...' if len(ops) > 20 else ''})."
        )
    layer_eqns = {e.index for e, _ in products}
    live = _live(flat)
    layers = []
    for li, (e, side) in enumerate(products):
        w = e.ins[side]
        kleaves = sorted(deps[w])
        z = e.outs[0]
        bias = []
        cons = flat.consumers.get(z, [])
        if cons:
            c = flat.eqns[cons[0]]
            if c.name in ("add", "add_any") and flat.shape(c.outs[0]) == flat.shape(z):
                other = [r for r in c.ins if r is not None and r != z]
                if len(other) == 1 and not data.get(other[0], False) and deps.get(other[0]):
                    bias = sorted(deps[other[0]] - set(kleaves))
                    z = c.outs[0]
        phi_in, act, kind = _find_activation(flat, z, data, layer_eqns, live)
        name = max(kleaves, key=lambda i: (len(jax.tree.leaves(params)[i].shape), -i))
        layers.append(
            Layer(
                index=li,
                op="dense" if e.name == "dot_general" else "conv",
                name=paths[name],
                preact=_where(flat, z),
                phi_in=_where(flat, phi_in),
                act=_where(flat, act),
                activation=kind,
                shape=flat.shape(z),
                dtype=str(flat.avals[act].dtype),
                unit_axes=_unit_axes(e, side),
                params=tuple(kleaves + bias),
                param_paths=tuple(paths[i] for i in kleaves + bias),
                is_output=act in set(flat.outputs),
                location=e.loc,
            )
        )
    return LayerPlan(tuple(layers), bool(train), int(x_shape[0]) if x_shape else 0)


_PLANS: dict = {}


def _signature(tree) -> tuple:
    return (
        jax.tree.structure(tree),
        tuple((tuple(jnp.shape(a)), str(jnp.result_type(a))) for a in jax.tree.leaves(tree)),
    )


def layer_plan(model, x, *, train: bool) -> LayerPlan:
    """The model's layers at ``x``'s shape in evaluation or training mode (cached per
    ``apply_fn``, shapes and mode; eager: raises :class:`LayerEnumerationError` at the
    boundary)."""
    apply_fn, params, state = model
    try:
        key = (apply_fn, _signature(params), _signature(state), _signature(x), bool(train))
        hash(key)
    except TypeError:
        key = None
    if key is not None and key in _PLANS:
        return _PLANS[key]
    try:
        closed = _program.trace_model(apply_fn, params, state, x, train=train)
    except Exception as e:  # noqa: BLE001 - reported with context
        raise ValueError(
            f"{_validate.where()}: could not trace the model on inputs of shape {tuple(jnp.shape(x))} "
            f"(train={train}): {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        ) from e
    plan = enumerate_layers(closed, params, state, tuple(jnp.shape(x)), train=train)
    if key is not None:
        if len(_PLANS) > 256:
            _PLANS.clear()
        _PLANS[key] = plan
    return plan


def run_tapped(apply_fn, plan: LayerPlan, params, state, x, *, capture=(), perturb=None):
    """Traceable: the model's outputs and the values at ``capture`` (a sequence of
    ``(position, output index)``), with ``perturb`` (``{(position, output index): delta}``)
    added to those values first (for derivatives with respect to them).

    Returns ``(outputs, {site: value})``. The program is traced again at the arguments' shapes
    (the positions of ``plan`` address the same equations: same model, shapes and mode)."""
    closed = _program.trace_model(apply_fn, params, state, x, train=plan.train)
    perturb = dict(perturb or {})
    wanted: dict = {}
    for site in capture:
        wanted.setdefault(site[0], set()).add(site[1])
    adds: dict = {}
    for (pos, k), d in perturb.items():
        adds.setdefault(pos, []).append((k, d))
    found: dict = {}

    def after(pos, eqn, outs):
        if pos in adds:
            outs = list(outs)
            for k, d in adds[pos]:
                outs[k] = outs[k] + d.astype(outs[k].dtype)
        for k in wanted.get(pos, ()):
            found[(pos, k)] = outs[k]
        return outs

    args = jax.tree.leaves((params, state)) + [x]
    outs = _program.evaluate(closed, args, after)
    return outs[0] if len(outs) == 1 else outs, found
