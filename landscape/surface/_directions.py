"""Directions for loss-surface slices: random (normalised), between two solutions, Hessian.

A direction is a pytree shaped like the parameters. :func:`random_direction` returns a
:class:`Direction` (the vector plus the spec that regenerates it from the stored key); every
slice function also accepts a bare pytree.

Normalisation (Li et al. 2018, section 4): the direction ``d`` is rescaled group by group so
that each group has the norm of the same group of the weights ``w``:

* ``"filter"``: a group is one filter (one output neuron or channel) of a kernel. In Flax,
  ``Dense`` kernels are ``(in, out)`` and ``Conv`` kernels are ``(h, w, in, out)``: the filter
  axis is the LAST axis (PyTorch's is axis 0). Multi-head attention kernels are recognised and
  get their own filters (below); other layer kinds (embeddings ``(vocab, dim)``) take a
  per-path override, whose ``filter_axis`` may be a tuple (a filter indexed by several axes).
* ``"layer"``: a group is a whole leaf (one tensor).
* ``"model"``: one group, the whole direction (over the leaves it moves).
* ``"weight"``: elementwise, ``d * w``.
* ``None``: the raw Gaussian.

**Attention kernels** (the head-axis layout of Flax's ``DenseGeneral``, used by
``flax.linen.MultiHeadDotProductAttention`` and ``make_model("transformer")``): a folder holding
``query/kernel`` and ``value/kernel`` of shape ``(d_model, heads, d_head)`` (and ``key/kernel``
of the same shape, absent with tied queries and keys) and ``out/kernel`` of shape
``(heads, d_head, d_out)`` is an attention layer, recognised from these names *and* shapes
together (a lone 3-D ``out/kernel`` is a 1-D convolution and keeps the last axis). Its filters:

* query, key, value: one filter per **(head, head unit)**, the column ``W[:, h, j]`` over
  ``d_model`` (the filter axes ``(1, 2)``): a column is the incoming weight vector of one unit
  of one head, what a filter is for a dense layer;
* output: one filter per **(head, output unit)**, ``W_O[h, :, j]`` over ``d_head`` (the filter
  axes ``(0, 2)``): head ``h``'s contribution to residual unit ``j``;
* the biases ``query|key|value/bias`` of shape ``(heads, d_head)`` are biases: they follow
  ``bias_bn`` like 1-D leaves (zero by default); under ``"filter"`` each head's bias vector is
  one group (the filter axis ``(0,)``), never one entry.

Why per head: Li et al. normalise filter by filter because the network is invariant to the
scale of a filter (ReLU's positive homogeneity, batch norm), so only a direction scaled like each
filter perturbs comparable networks comparably. Attention has such a scale freedom per head and
per head unit: ``W_Q[:, h] M``, ``W_K[:, h] M^{-T}`` and ``W_V[:, h] M``, ``M^{-1} W_O[h]`` give
the same function for any invertible ``M`` (per head). A group that mixed heads (the last-axis
default would group ``W_Q[:, :, j]`` over all heads, and ``W_O[:, :, j]`` over all heads) would
let one head's scale set the perturbation of another; with the groups above every group lies in
one head, so rescaling a head (``M = a I``) rescales its groups of the direction with it, and
for Q, K, V also a diagonal ``M`` (each head unit's column rescaled on its own). For the output
kernel a diagonal ``M`` rescales the rows ``W_O[h, i, :]``, which a filter (an output unit) mixes;
we keep the output-unit filters of Li et al.'s dense layers there (their scheme treats the
outgoing weights of a rescaled unit the same way).

**LayerNorm** scales and offsets are 1-D leaves and follow ``bias_bn`` like batch-norm
parameters: zero by default (Li et al.'s ``--xignore biasbn``, which zeroes biases and the
normalisation layer's affine parameters: LayerNorm is the transformer's normaliser), or
``"filter"``: the whole scale vector is one group, normalised to the norm of the scale
(``sqrt(d)`` at initialisation), never per entry (which would make the direction ``+-|w|``).

One-dimensional leaves (biases, norm-layer scales and offsets; also scalars) follow an explicit
policy ``bias_bn``: ``"zero"`` (Li et al.'s ``--xignore biasbn``, the default), ``"filter"``
(random and normalised like the rest; under ``norm="filter"`` the whole 1-D leaf is one group,
because a per-scalar normalisation would make the direction ``+-|w|``: the bug of
loss-landscapes issue #3), or ``"copy"`` (the direction equals the weight: a quirk of Li et
al.'s code, offered to reproduce their figures).
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from landscape import tree as _tree
from landscape import validate as _validate
from landscape._attention import attention_folders
from landscape._result import Result, freeze, result, static_field

PyTree = Any

NORMS = ("filter", "layer", "model", "weight", None)
BIAS_BN = ("zero", "filter", "copy")
_RULES = ("filter", "layer", "model", "weight", None, "zero", "copy")

__all__ = [
    "Direction",
    "as_direction",
    "direction_between",
    "direction_from_spec",
    "filter_norms",
    "hessian_directions",
    "normalize_direction",
    "random_direction",
    "random_directions",
]


# --------------------------------------------------------------------------------------------
# The result object
# --------------------------------------------------------------------------------------------
@result
class Direction(Result):
    """A direction in parameter space and how it was made.

    Attributes:
      vector: the direction, a pytree shaped like the parameters.
      spec: JSON-able description. For random directions it holds the PRNG key data and every
        setting, so :func:`direction_from_spec` regenerates the vector exactly; for the others
        (``"between"``, ``"pca"``, ``"hessian"``, ``"user"``) it records what produced it.
    """

    vector: PyTree
    spec: dict = static_field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "spec", freeze(dict(self.spec)))

    @property
    def kind(self) -> str:
        return self.spec.get("kind", "user")

    def norm(self) -> float:
        """Euclidean norm of the vector (a host float)."""
        return float(_tree.norm(self.vector))

    def __repr__(self):
        keys = ("kind", "norm", "bias_bn", "cosine", "eigenvalue", "component")
        s = ", ".join(f"{k}={self.spec[k]!r}" for k in keys if k in self.spec)
        return f"Direction({s}, size={_tree.size(self.vector)})"


@_validate.public("landscape.surface.as_direction")
def as_direction(d, params, *, name: str = "direction") -> Direction:
    """Validate ``d`` (a :class:`Direction` or a pytree) against ``params`` and cast it to the
    parameters' dtypes. Raises ``ValueError`` on structure/shape mismatch, non-finite or zero
    directions."""
    if isinstance(d, Direction):
        vec, spec = d.vector, dict(d.spec)
    else:
        vec, spec = d, {"kind": "user"}
    if vec is None:
        raise TypeError(
            f"{_validate.where()}: {name} must be a pytree shaped like params; got None."
        )
    _validate.check_same_structure(vec, params, name=name)
    vec = jax.tree.map(lambda v, p: _tree.to_device(v).astype(jnp.result_type(p)), vec, params)
    _validate.check_finite(vec, name=name)
    if float(_tree.norm(vec)) == 0.0:
        raise ValueError(
            f"{_validate.where()}: {name} is zero (every entry is 0), so the slice would be constant; check the "
            "normalisation (a 'filter' direction of all-zero weights is zero) or bias_bn policy."
        )
    return Direction(vec, spec)


# --------------------------------------------------------------------------------------------
# Normalisation rules
# --------------------------------------------------------------------------------------------
def _check_norm(norm, *, name="norm", allowed=NORMS):
    if norm not in allowed:
        raise ValueError(
            f"{_validate.where()}: {name} must be one of {[n for n in allowed]}; got {norm!r}."
        )
    return norm


ATTENTION_FILTER_AXES = {"query": (1, 2), "key": (1, 2), "value": (1, 2), "out": (0, 2)}
"""Filter axes of the kernels of a recognised attention layer (see the module docstring)."""


def attention_filter_axes(params) -> dict[str, tuple[int, ...]]:
    """``{leaf path: filter axes}`` for the kernels (and ``(heads, d_head)`` biases) of every
    attention layer in ``params``, recognised from names and shapes together: a folder with
    ``query/kernel`` and ``value/kernel`` of one shape ``(d, heads, d_head)``, ``key/kernel`` of
    that shape or absent, and ``out/kernel`` of shape ``(heads, d_head, d_out)``."""
    out: dict[str, tuple[int, ...]] = {}
    for base, h, k, shapes in attention_folders(params):
        for part in ("query", "key", "value", "out"):
            if base + part + "/kernel" in shapes:
                out[base + part + "/kernel"] = ATTENTION_FILTER_AXES[part]
        for part in ("query", "key", "value"):
            if shapes.get(base + part + "/bias") == (h, k):
                out[base + part + "/bias"] = (0,)
    return out


def _filter_axes(axis, ndim: int, path: str, shape) -> tuple[int, ...]:
    """Normalised filter axes (non-negative, sorted, distinct) of a leaf."""
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    if not axes or any(not -ndim <= a < ndim for a in axes):
        raise ValueError(
            f"{_validate.where()}: filter_axis {axis} is out of range for leaf '{path}' of shape "
            f"{shape}; use a per-path override."
        )
    norm = tuple(sorted({int(a) % ndim for a in axes}))
    if len(norm) != len(axes):
        raise ValueError(
            f"{_validate.where()}: filter_axis {axis} for leaf '{path}' repeats an axis."
        )
    return norm


def _is_axis_spec(x) -> bool:
    if isinstance(x, bool):
        return False
    if isinstance(x, (int, np.integer)):
        return True
    return (
        isinstance(x, (tuple, list))
        and len(x) > 0
        and all(isinstance(a, (int, np.integer)) and not isinstance(a, bool) for a in x)
    )


def _resolve_rules(params, *, norm, bias_bn, filter_axis, overrides):
    """Per-leaf ``(rule, filter axes)`` in leaf order, plus the JSON-able overrides."""
    _check_norm(norm)
    _validate.check_choice(bias_bn, BIAS_BN, name="bias_bn")
    if isinstance(filter_axis, bool) or not isinstance(filter_axis, (int, np.integer)):
        raise TypeError(
            f"{_validate.where()}: filter_axis must be an int (Flax: -1, the last axis); got {filter_axis!r}."
        )
    ov: dict[str, dict] = {}
    if overrides is not None:
        if not isinstance(overrides, Mapping):
            raise TypeError(
                f"{_validate.where()}: overrides must be a dict {{path pattern: norm or {{'norm': ..., "
                f"'filter_axis': ...}}}}; got {type(overrides).__name__}."
            )
        for pat, val in overrides.items():
            if not isinstance(pat, str):
                raise TypeError(
                    f"{_validate.where()}: overrides keys must be path patterns (str); got {pat!r}."
                )
            if isinstance(val, Mapping):
                bad = set(val) - {"norm", "filter_axis"}
                if bad:
                    raise ValueError(
                        f"{_validate.where()}: overrides[{pat!r}] may set 'norm' and 'filter_axis'; got keys "
                        f"{sorted(bad)}."
                    )
                entry = dict(val)
            else:
                entry = {"norm": val}
            if "norm" in entry:
                _check_norm(entry["norm"], name=f"overrides[{pat!r}]", allowed=_RULES)
            if "filter_axis" in entry:
                if not _is_axis_spec(entry["filter_axis"]):
                    raise TypeError(
                        f"{_validate.where()}: overrides[{pat!r}]['filter_axis'] must be an int or a "
                        f"non-empty tuple of ints (a filter indexed by several axes); got "
                        f"{entry['filter_axis']!r}."
                    )
                fa = entry["filter_axis"]
                entry["filter_axis"] = (
                    int(fa) if isinstance(fa, (int, np.integer)) else [int(a) for a in fa]
                )
            ov[pat] = entry
    paths = _tree.leaf_paths(params)
    leaves = jax.tree.leaves(params)
    attention = attention_filter_axes(params)
    used = dict.fromkeys(ov, False)
    rules = []
    for path, leaf in zip(paths, leaves):
        ndim = np.ndim(leaf)
        match = next((p for p in ov if fnmatch.fnmatchcase(path, p)), None)
        bias_like = ndim <= 1 or (path in attention and path.endswith("/bias"))
        rule, axis = None, attention.get(path, filter_axis)
        if match is not None:
            used[match] = True
            entry = ov[match]
            axis = entry.get("filter_axis", axis)
            if "norm" in entry:
                rule = entry["norm"]
            elif bias_like:
                rule = _one_d_rule(norm, bias_bn)
            else:
                rule = norm
        elif bias_like:
            rule = _one_d_rule(norm, bias_bn)
        else:
            rule = norm
        if rule == "filter":
            if ndim <= 1:
                rule = "layer"  # one scalar per filter: the whole 1-D leaf is the group
            else:
                axis = _filter_axes(axis, ndim, path, np.shape(leaf))
        rules.append((rule, axis if rule == "filter" else None))
    unused = [p for p, u in used.items() if not u]
    if unused:
        raise ValueError(
            f"{_validate.where()}: overrides patterns {unused} match no parameter path; the paths are "
            f"{paths[:20]}{' ...' if len(paths) > 20 else ''}."
        )
    return rules, ov


def _one_d_rule(norm, bias_bn):
    if bias_bn == "zero":
        return "zero"
    if bias_bn == "copy":
        return "copy"
    return norm  # "filter": normalised like the rest ("filter" -> whole leaf, see above)


def _within(ndim: int, filter_axes: tuple[int, ...]) -> tuple[int, ...]:
    """The axes a filter extends over (all but the filter axes)."""
    return tuple(i for i in range(ndim) if i not in filter_axes)


def _group_sumsq(x, rule, axis):
    """Sum of squares over each normalisation group, broadcastable to ``x`` (``axis``: the
    filter axes of a ``"filter"`` rule)."""
    if rule == "filter":
        return jnp.sum(jnp.square(x), axis=_within(x.ndim, axis), keepdims=True)
    return jnp.sum(jnp.square(x))


def _safe_ratio(num, den):
    """``num / den`` where ``den > 0``, else 0 (zero-norm filters give zero, never NaN)."""
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1), 0)


def _dtype_groups(params):
    leaves = jax.tree.leaves(params)
    dtypes: list = []
    for x in leaves:
        dt = jnp.result_type(x)
        if dt not in dtypes:
            dtypes.append(dt)
    return leaves, [[i for i, x in enumerate(leaves) if jnp.result_type(x) == dt] for dt in dtypes]


def _flat_normals(key, params) -> list:
    """The Gaussian, one flat vector per dtype (in order of first appearance among the leaves):
    ``normal(fold_in(key, i), (total size of that dtype's leaves,))``. Drawn outside the
    normalisation program, so its compilation is shared by every setting with the same sizes."""
    leaves, groups = _dtype_groups(params)
    return [
        jax.random.normal(
            jax.random.fold_in(key, j),
            (sum(int(np.prod(np.shape(leaves[i]))) for i in idx),),
            jnp.result_type(leaves[idx[0]]),
        )
        for j, idx in enumerate(groups)
    ]


def _split_flat(flats, params):
    """Cut the flat vectors into leaves in leaf order (traceable). Every leaf takes its part,
    also those a policy sets to zero, so the kernels' part of a direction does not depend on
    the 1-D leaf policy."""
    leaves, groups = _dtype_groups(params)
    treedef = jax.tree.structure(params)
    out: list = [None] * len(leaves)
    for v, idx in zip(flats, groups):
        o = 0
        for i in idx:
            size = int(np.prod(np.shape(leaves[i])))
            out[i] = v[o : o + size].reshape(np.shape(leaves[i]))
            o += size
    return jax.tree.unflatten(treedef, out)


def _draw(key, params):
    """The Gaussian that :func:`random_direction` normalises (eager; for tests and users)."""
    return _split_flat(_flat_normals(key, params), params)


@functools.partial(jax.jit, static_argnames=("rules",))
def _normalise_flat(flats, params, rules, other):
    raw = _split_flat(flats, params)
    plain = _apply_rules(raw, params, rules)
    if other is None:
        return plain, plain
    return plain, _apply_rules(raw, params, rules, other=other)


def _normal_and_apply(key, params, rules, other):
    """Draw the Gaussian, then normalise it in one compiled program (one compilation per
    parameter shapes and settings, instead of one per elementwise operation)."""
    return _normalise_flat(_flat_normals(key, params), params, rules, other)


_apply_jit = jax.jit(
    lambda raw, params, rules, other: _apply_rules(raw, params, rules, other=other),
    static_argnames=("rules",),
)


def _apply_rules(raw, params, rules, *, other=None):
    """Normalise ``raw`` leaf by leaf; with ``other`` (a direction), first make each
    normalisation group of ``raw`` orthogonal to the same group of ``other``."""
    r_leaves, treedef = jax.tree.flatten(raw)
    w_leaves = jax.tree.leaves(params)
    o_leaves = jax.tree.leaves(other) if other is not None else [None] * len(r_leaves)

    def project(g, o, rule, axis):
        # Gram-Schmidt inside each group; groups where it would annihilate g (1-element
        # groups, or g parallel to o) are left alone and show up in the reported cosine.
        if o is None:
            return g
        oo = _group_sumsq(o, rule, axis)
        if rule == "filter":
            go = jnp.sum(g * o, axis=_within(g.ndim, axis), keepdims=True)
        else:
            go = jnp.sum(g * o)
        h = g - _safe_ratio(go, oo) * o
        keep = _group_sumsq(h, rule, axis) > 1e-12 * _group_sumsq(g, rule, axis)
        return jnp.where(keep, h, g)

    out: list = [None] * len(r_leaves)
    model_idx = []
    free_idx = []
    for i, (g, w, o, (rule, axis)) in enumerate(zip(r_leaves, w_leaves, o_leaves, rules)):
        g = jnp.asarray(g)
        w = jnp.asarray(w)
        if rule == "zero":
            out[i] = jnp.zeros_like(w)
        elif rule == "copy":
            out[i] = w
        elif rule in ("filter", "layer"):
            g = project(g, o, rule, axis)
            scale = _safe_ratio(
                jnp.sqrt(_group_sumsq(w, rule, axis)), jnp.sqrt(_group_sumsq(g, rule, axis))
            )
            out[i] = g * scale
        elif rule == "model":
            model_idx.append(i)
            out[i] = g
        else:  # "weight" or None
            out[i] = g * w if rule == "weight" else g
            free_idx.append(i)
    if model_idx:
        gs = [out[i] for i in model_idx]
        if other is not None:
            os_ = [o_leaves[i] for i in model_idx]
            go = sum(jnp.vdot(a.ravel(), b.ravel()) for a, b in zip(gs, os_))
            oo = sum(jnp.vdot(b.ravel(), b.ravel()) for b in os_)
            coef = _safe_ratio(go, oo)
            gs = [a - coef.astype(a.dtype) * b for a, b in zip(gs, os_)]
        wn = jnp.sqrt(sum(jnp.sum(jnp.square(jnp.asarray(w_leaves[i]))) for i in model_idx))
        gn = jnp.sqrt(sum(jnp.sum(jnp.square(a)) for a in gs))
        s = _safe_ratio(wn, gn)
        for i, a in zip(model_idx, gs):
            out[i] = a * s.astype(a.dtype)
    if free_idx and other is not None:
        # no group structure to preserve: one projection over these leaves
        gs = [out[i] for i in free_idx]
        os_ = [o_leaves[i] for i in free_idx]
        go = sum(jnp.vdot(a.ravel(), b.ravel()) for a, b in zip(gs, os_))
        oo = sum(jnp.vdot(b.ravel(), b.ravel()) for b in os_)
        coef = _safe_ratio(go, oo)
        for i, a, b in zip(free_idx, gs, os_):
            out[i] = a - coef.astype(a.dtype) * b
    return jax.tree.unflatten(treedef, out)


def _cosine(a, b) -> float:
    na, nb = float(_tree.norm(a)), float(_tree.norm(b))
    if na == 0 or nb == 0:
        return float("nan")
    return float(_tree.vdot(a, b)) / (na * nb)


@_validate.public("landscape.surface.filter_norms")
def filter_norms(
    tree: PyTree, *, filter_axis: int = -1, overrides: Mapping | None = None
) -> PyTree:
    """Per-filter Euclidean norms of every leaf of ndim >= 2 (1-D leaves: the leaf's norm).

    The filters are those of ``norm="filter"`` with ``bias_bn="filter"`` (module docstring):
    the last axis of kernels, the ``(head, head unit)`` columns of attention query/key/value
    kernels, the ``(head, output unit)`` filters of attention output kernels, one group per head
    for the ``(heads, d_head)`` attention biases.

    Args:
      tree: parameters or a direction.
      filter_axis: the filter axis of kernels (Flax: ``-1``).
      overrides: ``{path pattern: {"filter_axis": k or (k1, k2, ...)}}`` as in
        :func:`random_direction`.

    Returns:
      A pytree with, for each leaf, the norms over all axes but the filter axes (shape: the
      filter axes' sizes, e.g. ``(num_filters,)``, ``(heads, d_head)`` for a query kernel), or a
      scalar for 1-D leaves.
    """
    ov = {
        k: (
            {"filter_axis": v["filter_axis"]}
            if isinstance(v, Mapping) and "filter_axis" in v
            else {}
        )
        for k, v in (overrides or {}).items()
    }
    ov = {k: v for k, v in ov.items() if v}
    rules, _ = _resolve_rules(
        tree, norm="filter", bias_bn="filter", filter_axis=filter_axis, overrides=ov or None
    )
    leaves, treedef = jax.tree.flatten(tree)
    out = []
    for x, (rule, axis) in zip(leaves, rules):
        x = jnp.asarray(x)
        if rule == "filter":
            out.append(jnp.sqrt(jnp.sum(jnp.square(x), axis=_within(x.ndim, axis))))
        else:
            out.append(jnp.sqrt(jnp.sum(jnp.square(x))))
    return jax.tree.unflatten(treedef, out)


# --------------------------------------------------------------------------------------------
# Public constructors
# --------------------------------------------------------------------------------------------
def _key_spec(key) -> dict:
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return {
            "key_data": np.asarray(jax.random.key_data(key)).tolist(),
            "key_impl": str(jax.random.key_impl(key)),
        }
    return {"key_data": np.asarray(key).tolist(), "key_impl": "raw_uint32"}


def _key_from_spec(spec):
    data = jnp.asarray(np.asarray(spec["key_data"], dtype=np.uint32))
    if spec.get("key_impl") == "raw_uint32":
        return data
    return jax.random.wrap_key_data(data, impl=spec["key_impl"])


@_validate.public("landscape.surface.normalize_direction")
def normalize_direction(
    direction: PyTree,
    params: PyTree,
    *,
    norm: str | None = "filter",
    bias_bn: str = "zero",
    filter_axis: int = -1,
    overrides: Mapping | None = None,
    orthogonal_to: Direction | PyTree | None = None,
) -> PyTree:
    """Normalise any direction (random, Hessian eigenvector, your own) against ``params``.

    Args:
      direction: a pytree shaped like ``params`` (or a :class:`Direction`).
      params: the weights whose group norms the direction takes.
      norm: ``"filter"``, ``"layer"``, ``"model"``, ``"weight"`` or ``None`` (see the module
        docstring).
      bias_bn: policy for 1-D leaves: ``"zero"``, ``"filter"`` or ``"copy"``.
      filter_axis: the filter axis of kernels, ``-1`` for Flax ``Dense``/``Conv``.
      overrides: per-path settings, ``{glob pattern: norm}`` or ``{glob pattern: {"norm": ...,
        "filter_axis": k or (k1, k2, ...)}}`` matched (``fnmatch``) against slash paths such as
        ``"embed/embedding"``; the first matching pattern wins; a pattern matching nothing is an
        error. An override norm may also be ``"zero"`` or ``"copy"``.
      orthogonal_to: make the result orthogonal to this direction, group by group before the
        rescaling, so that the normalisation property AND orthogonality both hold exactly for
        ``"filter"``, ``"layer"`` and ``"model"`` groups (``"weight"``/``None`` leaves: one
        projection; ``"copy"`` leaves cannot be orthogonalised).

    Returns:
      The normalised pytree (same structure and dtypes as ``params``). Zero-norm filters of the
      weights give zero filters of the direction (never NaN).

    Cost: a few elementwise passes over the parameters.
    """
    _validate.check_params(params)
    vec = direction.vector if isinstance(direction, Direction) else direction
    _validate.check_same_structure(vec, params, name="direction")
    vec = jax.tree.map(lambda v, p: _tree.to_device(v).astype(jnp.result_type(p)), vec, params)
    other = None
    if orthogonal_to is not None:
        other = as_direction(orthogonal_to, params, name="orthogonal_to").vector
    rules, _ = _resolve_rules(
        params, norm=norm, bias_bn=bias_bn, filter_axis=filter_axis, overrides=overrides
    )
    return _apply_jit(vec, params, tuple(rules), other)


@_validate.public("landscape.surface.random_direction")
def random_direction(
    key,
    params: PyTree,
    *,
    norm: str | None = "filter",
    bias_bn: str = "zero",
    filter_axis: int = -1,
    overrides: Mapping | None = None,
    orthogonal_to: Direction | PyTree | None = None,
) -> Direction:
    """A Gaussian direction, normalised as Li et al. (2018).

    ``d ~ N(0, I)`` shaped like ``params`` (in the parameters' dtypes: one draw per dtype from
    ``fold_in(key, i)``, cut into the leaves in leaf order, so the kernels' part does not depend
    on ``bias_bn``), then normalised group by group (see
    :func:`normalize_direction`). Drawing and normalising are one compiled program.

    Args:
      key: a JAX PRNG key (stored in the spec, so the direction is reproducible).
      params: the weights at the centre of the slice.
      norm: ``"filter"`` (default; each filter rescaled to the norm of the same filter of the
        weights, the filter axis being the LAST axis of Flax kernels; attention kernels per
        head and head unit, see the module docstring), ``"layer"``,
        ``"model"``, ``"weight"`` or ``None``.
      bias_bn: 1-D leaves: ``"zero"`` (default, Li et al.'s ``ignore=biasbn``), ``"filter"``,
        ``"copy"``.
      filter_axis: filter axis of kernels (``-1`` in Flax, ``0`` would be PyTorch's).
      overrides: per-path settings for other layer kinds (see :func:`normalize_direction`).
      orthogonal_to: another direction to orthogonalise against (group-wise, see
        :func:`normalize_direction`); the cosine before and after is reported in ``spec``.

    Returns:
      A :class:`Direction` whose ``spec`` holds the key data and every setting
      (:func:`direction_from_spec` regenerates it), and, with ``orthogonal_to``, the cosines
      ``cosine_before`` (of the un-orthogonalised draw) and ``cosine`` (after).

    Raises:
      TypeError, ValueError: missing key, unknown norm or policy, out-of-range filter axis,
        override patterns that match no path, ``orthogonal_to`` of another structure.

    Example:
      >>> d1 = random_direction(jax.random.key(0), params)
      >>> d2 = random_direction(jax.random.key(1), params, orthogonal_to=d1)

    References:
      Li, Xu, Taylor, Studer, Goldstein (2018), Visualizing the Loss Landscape of Neural Nets,
      section 4 (filter normalisation).
    """
    _validate.check_key(key)
    _validate.check_params(params)
    rules, ov = _resolve_rules(
        params, norm=norm, bias_bn=bias_bn, filter_axis=filter_axis, overrides=overrides
    )
    spec: dict = {
        "kind": "random",
        **_key_spec(key),
        "norm": norm,
        "bias_bn": bias_bn,
        "filter_axis": int(filter_axis),
        "overrides": ov or None,
    }
    if orthogonal_to is None:
        return Direction(_normal_and_apply(key, params, tuple(rules), None)[0], spec)
    other_d = as_direction(orthogonal_to, params, name="orthogonal_to")
    plain, vec = _normal_and_apply(key, params, tuple(rules), other_d.vector)
    spec["orthogonal_to"] = dict(other_d.spec)
    spec["cosine_before"] = _cosine(plain, other_d.vector)
    spec["cosine"] = _cosine(vec, other_d.vector)
    return Direction(vec, spec)


@_validate.public("landscape.surface.random_directions")
def random_directions(
    key,
    params: PyTree,
    num_directions: int = 2,
    *,
    orthogonalize: bool = False,
    norm: str | None = "filter",
    bias_bn: str = "zero",
    filter_axis: int = -1,
    overrides: Mapping | None = None,
) -> tuple[Direction, ...]:
    """``num_directions`` independent random directions (keys
    ``jax.random.split(key, num_directions)``), each as :func:`random_direction` with the same
    ``norm``, ``bias_bn``, ``filter_axis`` and ``overrides``.

    With ``orthogonalize=True`` each direction is orthogonalised (group-wise) against the
    previous one only when ``num_directions == 2``; for more, against all previous ones in turn
    is not exact, so only ``num_directions == 2`` is accepted then. The cosine between the two
    is in ``spec["cosine"]`` of the second (also without orthogonalisation).
    """
    num = _validate.check_positive_int(num_directions, name="num_directions")
    _validate.check_key(key)
    if orthogonalize and num != 2:
        raise ValueError(
            f"{_validate.where()}: orthogonalize=True needs num_directions=2; got {num}."
        )
    kwargs = dict(norm=norm, bias_bn=bias_bn, filter_axis=filter_axis, overrides=overrides)
    keys = jax.random.split(key, num)
    first = random_direction(keys[0], params, **kwargs)
    out = [first]
    for i in range(1, num):
        if orthogonalize:
            out.append(random_direction(keys[i], params, orthogonal_to=first, **kwargs))
        else:
            d = random_direction(keys[i], params, **kwargs)
            spec = dict(d.spec)
            spec["cosine"] = _cosine(d.vector, out[i - 1].vector)
            out.append(Direction(d.vector, spec))
    return tuple(out)


@_validate.public("landscape.surface.direction_from_spec")
def direction_from_spec(spec: Mapping, params: PyTree) -> Direction:
    """Regenerate a random direction from its stored ``spec`` (and the same ``params``).

    Raises:
      ValueError: the spec is not of a random direction (PCA, Hessian and user directions are
        data, not recipes: save them with :meth:`Direction.save`).
    """
    if not isinstance(spec, Mapping) or spec.get("kind") != "random":
        kind = spec.get("kind") if isinstance(spec, Mapping) else type(spec).__name__
        raise ValueError(
            f"{_validate.where()}: only random directions are regenerated from a spec; got kind {kind!r} "
            "(save such directions with Direction.save and load them with Direction.load)."
        )
    key = _key_from_spec(spec)
    other = None
    if spec.get("orthogonal_to") is not None:
        other = direction_from_spec(spec["orthogonal_to"], params)
    ov = spec.get("overrides")
    ov = {k: dict(v) for k, v in ov.items()} if ov else None
    return random_direction(
        key,
        params,
        norm=spec["norm"],
        bias_bn=spec["bias_bn"],
        filter_axis=spec["filter_axis"],
        overrides=ov,
        orthogonal_to=other,
    )


@_validate.public("landscape.surface.direction_between")
def direction_between(params_a: PyTree, params_b: PyTree) -> Direction:
    """The direction from one solution to another, ``params_b - params_a``.

    ``params_a + 1 * d`` is ``params_b`` (up to rounding). :func:`interpolate` evaluates
    ``(1 - t) a + t b`` directly, which is exact at both ends.
    """
    _validate.check_params(params_a, name="params_a")
    _validate.check_params(params_b, name="params_b")
    _validate.check_same_structure(params_b, params_a, name="params_b", ref_name="params_a")
    vec = jax.tree.map(
        lambda b, a: jnp.asarray(b).astype(jnp.result_type(a)) - a, params_b, params_a
    )
    return Direction(vec, {"kind": "between", "distance": float(_tree.norm(vec))})


@_validate.public("landscape.surface.hessian_directions")
def hessian_directions(
    loss_fn,
    params: PyTree,
    data,
    *,
    k: int = 2,
    key,
    which: str = "largest",
    **kwargs,
) -> tuple[Direction, ...]:
    """Top-``k`` Hessian eigenvectors as unit-norm directions (via ``landscape.hessian``).

    Calls ``landscape.hessian.eigenvalues(loss_fn, params, data, k=k, which=which, key=key,
    **kwargs)`` (``key`` is required; ``kwargs`` are its settings, e.g. ``tol``, ``v0``, and the
    operator settings of ``make_hvp`` such as ``curvature="ggn"``) and splits its ``vectors`` (a
    params-shaped pytree with a leading axis of size ``k``). The eigenvalue of each direction is in ``spec["eigenvalue"]``. To filter-normalise
    an eigenvector (which then is no longer an eigenvector), use :func:`normalize_direction`.

    Cost: that of the eigensolver (HVPs over the full data set; see ``landscape.hessian``).

    References:
      Ghorbani, Krishnan, Xiao (2019); Yao et al. (2020), PyHessian (eigenvector slices).
    """
    k = _validate.check_positive_int(k, name="k")
    try:
        from landscape import hessian as _hessian
    except ImportError as e:  # pragma: no cover - depends on the hessian package landing
        raise ImportError(
            f"{_validate.where()}: needs landscape.hessian, which is not available ({e})."
        ) from e
    res = _hessian.eigenvalues(loss_fn, params, data, k=k, which=which, key=key, **kwargs)
    vectors = res.vectors
    values = np.asarray(res.values).reshape(-1)
    n = jax.tree.leaves(vectors)[0].shape[0]
    out = []
    for i in range(n):
        v = _tree.index(vectors, i)
        spec = {
            "kind": "hessian",
            "index": i,
            "which": which,
            "eigenvalue": float(values[i]) if i < values.size else None,
        }
        out.append(Direction(v, spec))
    return tuple(out)
