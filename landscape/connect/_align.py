"""Permutation alignment of two networks: weight matching and activation matching.

Both methods find, for every permutation group of the model (derived by tracing it, see
:func:`landscape.connect.permutation_spec`), the permutation of network B's units that best
matches network A's, solving linear assignment problems with
``scipy.optimize.linear_sum_assignment``. Weight matching also aligns attention heads with a
permutation of each head's dimensions of its own (per-head groups), scoring heads by weights
or by their products ``W_Q W_K^T`` and ``W_V W_O``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from landscape import _provenance, engine
from landscape import tree as _tree
from landscape import validate as _validate
from landscape._model import Model, as_model
from landscape._result import Result, result, static_field
from landscape.connect._trace import (
    PermutationSpec,
    _permute_tree,
    capture_activations,
    permutation_spec,
    permute_leaf,
)

PyTree = Any

ALIGN_METHODS = ("weights", "activations")
HEAD_MATCHES = ("weights", "products")

__all__ = ["ALIGN_METHODS", "HEAD_MATCHES", "Alignment", "align"]


@result
class Alignment(Result):
    """Outcome of :func:`align`.

    Attributes:
      params: network B's parameters permuted to match A (same function as B).
      state: B's model state permuted consistently (batch-norm statistics), or ``None``.
      perms: ``{group: int array}``; unit ``i`` of the aligned network is unit ``perms[g][i]``
        of B.
      objective: the matching objective after each sweep (weight matching: ``sum <W_A,
        P W_B>`` over all parameters; activation matching: one value, the summed activation
        inner products).
      method: ``"weights"`` or ``"activations"``.
      groups: ``{group: size}``; param_axes, state_axes: which axes each group permutes.
      num_iters: sweeps over the groups (weight matching); converged: no group improved in
        the last sweep.
      per: ``{group: index group}``: the per-unit groups (a head's dimensions, permuted per
        head; their ``perms`` have one row per head, see :class:`PermutationSpec`).
      head_match: how heads were matched (``"weights"`` or ``"products"``).
      head_products: for every per-unit group contracted by one product (a head's ``W_Q W_K^T``
        and ``W_V W_O``, biases included: see :func:`align`), ``{"heads": index group,
        "before": d0, "after": d1}``: the normalised Frobenius distance ``sqrt(sum_i ||P^A_i -
        P^B_i||^2 / sum_i ||P^A_i||^2)`` between A's and B's per-head products before and
        after alignment (0 when B is a permuted copy of A).
    """

    params: PyTree
    state: PyTree
    perms: dict
    objective: Any
    method: str = static_field(default="weights")
    groups: dict = static_field(default_factory=dict)
    param_axes: dict = static_field(default_factory=dict)
    state_axes: dict = static_field(default_factory=dict)
    num_iters: int = static_field(default=0)
    converged: bool = static_field(default=True)
    per: dict = static_field(default_factory=dict)
    head_match: str = static_field(default="weights")
    head_products: dict = static_field(default_factory=dict)
    provenance: dict = static_field(default_factory=dict)

    def apply(self, params: PyTree, state: PyTree = None):
        """Permute another pytree of B's structure (a snapshot of B, its optimiser moments)
        with these permutations; returns ``params`` or ``(params, state)``."""
        axes = {k: tuple(_entry(e) for e in v) for k, v in self.param_axes.items()}
        per = dict(self.per)
        out = _permute_tree(params, axes, self.perms, per)
        if state is None:
            return out
        saxes = {k: tuple(_entry(e) for e in v) for k, v in self.state_axes.items()}
        return out, _permute_tree(state, saxes, self.perms, per)

    def __repr__(self):
        obj = np.asarray(self.objective)
        return (
            f"Alignment({self.method}, {len(self.groups)} groups "
            f"{list(self.groups.values())}, iters={self.num_iters}, converged={self.converged}, "
            f"objective={float(obj[-1]) if obj.size else float('nan'):.6g})"
        )


def _entry(e):
    return tuple(e) if isinstance(e, (list, tuple)) else e


# --------------------------------------------------------------------------------------------
def _np_leaves(tree) -> dict[str, np.ndarray]:
    return {
        p: np.asarray(x, np.float64) for p, x in zip(_tree.leaf_paths(tree), jax.tree.leaves(tree))
    }


def _key_data(key) -> list[int]:
    """A PRNG key's data as integers (typed keys and raw ``uint32`` keys): the seed of the
    sweeps' order and the provenance record."""
    data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    return np.asarray(data).tolist()


def _units_first(x, e, ax, n):
    """Axis ``ax`` (entry ``e``) of ``x`` as ``(n units, everything else)`` (a flattened block's
    middle factor for a derived axis)."""
    x = np.moveaxis(x, ax, 0)
    if isinstance(e, str):
        return x.reshape(n, -1)
    _, outer, inner = e
    x = x.reshape(outer, n, inner, -1)
    return np.moveaxis(x, 1, 0).reshape(n, -1)


def _pair_first(x, j, k, n, m):
    """Axes ``j`` (index units) and ``k`` (per-unit units) of ``x`` first: ``(n, m, rest)``."""
    return np.moveaxis(x, (j, k), (0, 1)).reshape(n, m, -1)


class _Matcher:
    """Weight matching's state: A's and B's leaves (float64), the spec, the current
    permutations; the coordinate steps of :func:`_weight_matching`."""

    def __init__(self, spec: PermutationSpec, pa, pb, *, head_match: str):
        from scipy.optimize import linear_sum_assignment

        self.lsa = linear_sum_assignment
        self.A, self.B = _np_leaves(pa), _np_leaves(pb)
        self.spec, self.axes, self.per = spec, spec.param_axes, dict(spec.per)
        self.kids: dict[str, list] = {}
        for g, h in self.per.items():
            self.kids.setdefault(h, []).append(g)
        self.members = {g: spec.axes_of(g) for g in spec.groups}
        self.perms = {g: np.arange(n) for g, n in spec.groups.items()}
        for g, h in self.per.items():
            self.perms[g] = np.tile(np.arange(spec.groups[g]), (spec.groups[h], 1))
        # a per-unit group sharing a leaf with another of its index group's is "held" in the
        # head step (its current rows applied), the others are optimised jointly with the heads
        shared = set()
        for labs in self.axes.values():
            ks = [e for e in labs if e in self.per]
            if len(ks) > 1:
                shared.update(ks)
        self.shared = shared
        self.products = {}
        if head_match == "products":
            for g, sides in spec._sides.items():
                leaves = {p for side in sides for p, _ in side}
                if not any(sum(e in self.per for e in self.axes[p]) > 1 for p in leaves):
                    self.products[g] = sides

    def permuted(self, path, skip=()):
        return permute_leaf(self.B[path], self.axes[path], self.perms, self.per, np, skip)

    def total(self) -> float:
        return float(sum(np.vdot(self.A[p], self.permuted(p)) for p in self.A))

    def head_products(self, g, X) -> np.ndarray:
        """``(heads, r1, r2)``: group ``g``'s per-head products ``X_1^T X_2`` of its two sides,
        from leaves ``X(path)`` (heads in the order the leaves hold them)."""
        h = self.per[g]
        n, m = self.spec.groups[h], self.spec.groups[g]
        sides = [
            np.concatenate(
                [_pair_first(X(p), self.axes[p].index(h), k, n, m) for p, k in side], axis=2
            )
            for side in self.spec._sides[g]
        ]
        return np.einsum("iar,ias->irs", sides[0], sides[1])

    # -- steps: each returns whether it improved the objective ------------------------------
    def plain_step(self, g) -> bool:
        n = self.spec.groups[g]
        C = np.zeros((n, n))
        for path, ax in self.members[g]:
            e = self.axes[path][ax]
            a = _units_first(self.A[path], e, ax, n)
            b = _units_first(self.permuted(path, (ax,)), e, ax, n)
            C += a @ b.T
        return self._assign(g, C)

    def _assign(self, g, C) -> bool:
        _, cols = self.lsa(C, maximize=True)
        rows = np.arange(C.shape[0])
        old, new = C[rows, self.perms[g]].sum(), C[rows, cols].sum()
        if new > old + 1e-12 * max(1.0, abs(old)):
            self.perms[g] = cols
            return True
        return False

    def row_step(self, g) -> bool:
        """Per-unit group ``g``: one assignment per unit ``i`` of its index group (the other
        permutations held)."""
        h = self.per[g]
        n, m = self.spec.groups[h], self.spec.groups[g]
        C = np.zeros((n, m, m))
        for path, k in self.members[g]:
            j = self.axes[path].index(h)
            a = _pair_first(self.A[path], j, k, n, m)
            b = _pair_first(self.permuted(path, (k,)), j, k, n, m)
            C += np.einsum("iar,icr->iac", a, b)
        improved = False
        rows = np.arange(m)
        for i in range(n):
            _, cols = self.lsa(C[i], maximize=True)
            old, new = C[i][rows, self.perms[g][i]].sum(), C[i][rows, cols].sum()
            if new > old + 1e-12 * max(1.0, abs(old)):
                self.perms[g][i] = cols
                improved = True
        return improved

    def head_step(self, h) -> bool:
        """Index group ``h`` (heads) with its per-unit groups: the score of aligning A's head
        ``i`` with B's head ``b`` is the best of every free per-unit group's permutation for that
        pair (an assignment each: exact block coordinate ascent), plus the held groups' terms at
        their current rows and, for ``head_match="products"``, the products' inner products in
        place of the weights'; then one assignment over heads. Held and product groups then
        take one row step each."""
        n = self.spec.groups[h]
        kids = self.kids[h]
        free = [g for g in kids if g not in self.shared and g not in self.products]
        C = np.zeros((n, n))
        S = {g: np.zeros((n, n, self.spec.groups[g], self.spec.groups[g])) for g in free}
        for path, j in self.members[h]:
            labs = self.axes[path]
            kax = [ax for ax, e in enumerate(labs) if e in kids]
            if any(labs[k] in self.products for k in kax):
                continue  # counted through its group's products below
            if len(kax) == 1 and labs[kax[0]] in free:
                k = kax[0]
                g, m = labs[k], self.spec.groups[labs[k]]
                a = _pair_first(self.A[path], j, k, n, m)
                b = _pair_first(self.permuted(path, (j, k)), j, k, n, m)
                S[g] += np.einsum("iar,bcr->ibac", a, b)
            elif not kax:
                e = labs[j]
                a = _units_first(self.A[path], e, j, n)
                C += a @ _units_first(self.permuted(path, (j,)), e, j, n).T
            else:  # held: B's heads with the current rows of aligned head i
                base = self.permuted(path, (j, *kax))
                a = np.moveaxis(self.A[path], j, 0).reshape(n, -1)
                for i in range(n):
                    bi = base
                    for k in kax:
                        bi = np.take(bi, self.perms[labs[k]][i], axis=k)
                    C[i] += np.moveaxis(bi, j, 0).reshape(n, -1) @ a[i]
        for g in self.kids[h]:
            if g in self.products:
                pa = self.head_products(g, lambda p: self.A[p])
                pb = self.head_products(
                    g, lambda p, g=g: self.permuted(p, self._pair_axes(p, h, g))
                )
                C += np.einsum("irs,brs->ib", pa, pb)
        cur = C[np.arange(n), self.perms[h]].sum()
        best = {}
        for g in free:
            m = self.spec.groups[g]
            rows = np.arange(m)
            best[g] = np.zeros((n, n, m), int)
            for i in range(n):
                cur += S[g][i, self.perms[h][i]][rows, self.perms[g][i]].sum()
                for b in range(n):
                    _, cols = self.lsa(S[g][i, b], maximize=True)
                    best[g][i, b] = cols
                    C[i, b] += S[g][i, b][rows, cols].sum()
        _, cols = self.lsa(C, maximize=True)
        new = C[np.arange(n), cols].sum()
        improved = False
        if new > cur + 1e-12 * max(1.0, abs(cur)):
            self.perms[h] = cols
            for g in free:
                self.perms[g] = best[g][np.arange(n), cols]
            improved = True
        for g in kids:
            if g not in free:
                improved = self.row_step(g) or improved
        return improved

    def _pair_axes(self, path, h, g):
        labs = self.axes[path]
        return tuple(ax for ax, e in enumerate(labs) if e in (h, g))

    def product_distances(self) -> dict:
        """``{group: {"heads", "before", "after"}}`` (see :class:`Alignment`)."""
        out = {}
        for g in self.spec._sides:
            pa = self.head_products(g, lambda p: self.A[p])
            ref = float(np.sum(pa**2))
            d = {}
            for when, X in (("before", lambda p: self.B[p]), ("after", self.permuted)):
                pb = self.head_products(g, X)
                d[when] = float(np.sqrt(np.sum((pa - pb) ** 2) / ref)) if ref > 0 else float("nan")
            out[g] = {"heads": self.per[g], **d}
        return out


def _weight_matching(
    spec: PermutationSpec, pa, pb, *, max_iter: int, key, head_match: str = "weights"
):
    M = _Matcher(spec, pa, pb, head_match=head_match)
    # the order of the groups in each sweep (for key(s): the generator of the integer seed s)
    rng = np.random.default_rng(_validate.key_words(key))
    names = [g for g in spec.groups if g not in M.per]  # per-unit groups move with their heads
    history = [M.total()]
    converged = False
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 - the count is reported
        improved = False
        for gi in rng.permutation(len(names)):
            g = names[gi]
            step = M.head_step if g in M.kids else M.plain_step
            improved = step(g) or improved
        history.append(M.total())
        if not improved:
            converged = True
            break
    return M.perms, np.asarray(history), it, converged, M.product_distances()


def _activation_costs(apply_fn, acts, point, batch, input_key):
    pa, sa, pb, sb = point
    x = batch[input_key]
    za = capture_activations(apply_fn, acts, pa, sa, x)
    zb = capture_activations(apply_fn, acts, pb, sb, x)
    m = x.shape[0]
    out = {}
    for g in za:
        c = None
        for a, b in zip(za[g], zb[g]):
            term = jnp.matmul(a.T, b, precision=jax.lax.Precision.HIGHEST)
            c = term if c is None else c + term
        out[g] = c / m
    return out


def _activation_matching(apply_fn, spec, pa, sa, pb, sb, data, *, batch_size, input_key):
    acts = tuple((g, spec._activations.get(g, ())) for g in spec.groups)
    for g, items in acts:
        if not items:
            raise ValueError(
                f"{_validate.where()}: no activation carries the units of group {g!r}, so activation matching "
                "cannot align it; use method='weights'."
            )
    costs = engine.mean(
        Partial(_activation_costs, apply_fn, acts, input_key=input_key),
        (pa, sa, pb, sb),
        data,
        batch_size=batch_size,
        check_finite=True,
    )
    from scipy.optimize import linear_sum_assignment

    perms = {}
    total = 0.0
    for g in spec.groups:
        C = np.asarray(costs[g], np.float64)
        _, cols = linear_sum_assignment(C, maximize=True)
        perms[g] = cols
        total += float(C[np.arange(C.shape[0]), cols].sum())
    return perms, np.asarray([total])


def _split_model_arg(x, name):
    if isinstance(x, Model):
        return x.params, x.state
    return x, None


def _has_floating_state(state) -> bool:
    return any(jnp.issubdtype(jnp.result_type(x), jnp.floating) for x in jax.tree.leaves(state))


def _network_state(model: Model, arg, state, *, which: str, needed: bool):
    """Network ``which``'s (``"a"`` or ``"b"``) model state: ``state``, else the state of a
    Model passed as its parameters, else ``model.state`` when its parameters are
    ``model.params`` (the model is that network). A model with floating state (batch-norm
    statistics) refuses to guess when the state is ``needed``; otherwise ``model.state`` stands
    in (only its structure is used)."""
    if state is not None:
        return state
    if isinstance(arg, Model):
        return arg.state
    if arg is model.params or not needed or not _has_floating_state(model.state):
        return model.state
    role = (
        "B is permuted with its own statistics"
        if which == "b"
        else "activation matching runs A with its own statistics"
    )
    raise ValueError(
        f"{_validate.where()}: the model has floating state (batch-norm statistics) but network "
        f"{which.upper()}'s state is not given: pass state_{which}=<{which.upper()}'s state> or "
        f"params_{which} as a landscape.Model (e.g. the TrainResult's .model); {role}, and "
        "model.state belongs to another network (the aligned network would not compute "
        f"{which.upper()}'s function)."
    )


@_validate.public("landscape.connect.align")
def align(
    model,
    params_a,
    params_b,
    *,
    method: str = "weights",
    data=None,
    example_input=None,
    state_a=None,
    state_b=None,
    batch_size: int | None = None,
    input_key: str = "x",
    max_iter: int = 100,
    key=None,
    on_unsupported: str = "raise",
    head_match: str = "weights",
) -> Alignment:
    """Permute network B's hidden units to match network A's (Git Re-Basin).

    The permutation groups are derived by tracing ``model.apply_fn`` on an example input
    (:func:`permutation_spec`): dense and convolutional layers, biases, batch norm (scale,
    bias and running statistics) and residual additions (which tie the permutations of every
    layer feeding the same residual stream) are found from the program, not from tables.

    * ``method="weights"`` (weight matching; Ainsworth et al. 2022, Algorithm 1): coordinate
      ascent of ``sum_l <W_A^l, P_l W_B^l P_{l-1}^T>``: for each group in a random order, one
      linear assignment problem with every other group held fixed; sweeps repeat until no
      group improves (at most ``max_iter``). Data-free; needs ``key``.
      Attention heads (groups permuted per head, :class:`PermutationSpec`'s ``per``): a heads
      group is solved jointly with its per-head groups. For every pair (A's head ``i``, B's
      head ``b``) each per-head group's best permutation is one assignment (the query/key
      dimensions, the value dimensions), then one assignment over heads on the pairs' best
      scores: exact block coordinate ascent, so a planted permutation of heads and of every
      head's dimensions is recovered exactly. ``head_match="products"`` scores a pair of heads
      by the inner products of their per-head products instead, ``<W_Q^A (W_K^A)^T, W_Q^B
      (W_K^B)^T> + <W_V^A W_O^A, W_V^B W_O^B>`` (biases included as an extra row), which are
      invariant under the continuous symmetry within a head (``W_Q M``, ``W_K M^{-T}``;
      ``W_V M``, ``M^{-1} W_O``): independently trained heads need not differ by a permutation,
      and a permutation cost then matches heads on an arbitrary basis. The dimensions are then
      permuted by weight matching within the matched heads (a permutation is all an
      interpolation between the two can use). The objective is not guaranteed to increase
      monotonically with products (two costs); ``.head_products`` reports how well the heads'
      products align before and after.
    * ``method="activations"`` (activation matching): for each group, the inner products of
      A's and B's unit activations summed over ``data`` (post-nonlinearity values carrying the
      group, e.g. hidden ReLU outputs and the residual stream), then one assignment problem
      per group. Needs ``data``.

    Args:
      model: the architecture: a :class:`landscape.Model` (or triple).
      params_a, params_b: the two networks' parameters, or :class:`landscape.Model` objects
        (then their states are used as ``state_a``/``state_b``); a model with batch-norm
        statistics needs B's state this way or as ``state_b``.
      method: ``"weights"`` or ``"activations"``.
      data: ``{"x": ...}`` (training data) for activation matching; its first examples also
        serve as the example input.
      example_input: inputs to trace the model with (default: ``data["x"][:2]``, else zeros of
        ``model.spec["input_shape"]``).
      state_a, state_b: the networks' model states (batch-norm statistics); ``state_b`` is
        permuted with B. Default: the state of a Model passed as ``params_a``/``params_b``,
        else ``model.state`` when those parameters are ``model.params`` (``model`` is that
        network). A model with floating state needs B's state, and for activation matching
        A's, from one of these (``ValueError`` otherwise: ``model.state`` is another network's
        statistics).
      batch_size: batches for activation matching.
      input_key: the data's input entry.
      max_iter: weight-matching sweeps.
      key: a JAX PRNG key (``jax.random.key(0)``); required for weight matching: the random
        order of the groups in each sweep (a NumPy generator seeded with the key's data).
        Activation matching is deterministic and accepts ``None``.
      on_unsupported: see :func:`permutation_spec`.
      head_match: ``"weights"`` (default) or ``"products"``: how weight matching scores a pair
        of attention heads (above); models without per-head groups are unaffected.

    Returns:
      :class:`Alignment`: ``.params`` (and ``.state``) is B permuted, computing the same
      function as B; ``.perms`` the permutations.

    Raises:
      UnsupportedModelError: the model has an operation that breaks a group's symmetry; the
        message names it and its source line.
      TypeError: weight matching without ``key``.
      ValueError: a model with batch-norm statistics without B's (or, for activation
        matching, A's) state.
      ValueError, TypeError: mismatched structures or shapes, missing data for activation
        matching, activation matching on a model with per-head groups (not supported: use
        weight matching), bad settings.

    Cost: weight matching: per sweep, one ``n x n`` assignment and ``O(P n)`` flops per
    group (host, float64); a heads group with ``H`` heads adds ``H^2`` assignments of size
    ``d_head`` per per-head group and ``O(H^2 d_head^2 d)`` flops. Activation matching: two
    forward passes over ``data`` plus one assignment per group.

    References:
      Ainsworth, Hayase and Srinivasa 2022, "Git Re-Basin"; Entezari et al. 2022; Li et al.
      2015, "Convergent learning"; Verma and Elbayad 2024, "Merging text transformer models
      from different initializations" (permutations of heads and of the residual stream).
    """
    model = as_model(model)
    _validate.check_choice(method, ALIGN_METHODS, name="method")
    _validate.check_choice(head_match, HEAD_MATCHES, name="head_match")
    if head_match != "weights" and method != "weights":
        raise ValueError(
            f"{_validate.where()}: head_match={head_match!r} is a cost of weight matching; use "
            "method='weights' (activation matching does not align per-head groups)."
        )
    max_iter = _validate.check_positive_int(max_iter, name="max_iter")
    if method == "weights" or key is not None:
        _validate.check_key(key)
    pa, _ = _split_model_arg(params_a, "params_a")
    pb, _ = _split_model_arg(params_b, "params_b")
    state_a = _network_state(model, params_a, state_a, which="a", needed=method == "activations")
    state_b = _network_state(model, params_b, state_b, which="b", needed=True)
    _validate.check_params(pa, name="params_a")
    _validate.check_params(pb, name="params_b")
    _validate.check_same_structure(pa, model.params, name="params_a", ref_name="model.params")
    _validate.check_same_structure(pb, model.params, name="params_b", ref_name="model.params")
    _validate.check_same_structure(state_a, model.state, name="state_a", ref_name="model.state")
    _validate.check_same_structure(state_b, model.state, name="state_b", ref_name="model.state")
    if method == "activations" and data is None:
        raise ValueError(
            f"{_validate.where()}: method='activations' needs data (training inputs)."
        )
    if data is not None:
        _validate.check_data(data)
        if input_key not in data:
            raise ValueError(
                f"{_validate.where()}: data has no {input_key!r} entry; keys {sorted(data)}."
            )
    if example_input is None:
        if data is not None:
            example_input = np.asarray(data[input_key][:2])
        elif model.spec is not None and "input_shape" in model.spec:
            example_input = np.zeros((2, *model.spec["input_shape"]), _tree.dtype_of(model.params))
        else:
            raise ValueError(
                f"{_validate.where()}: give example_input (a batch of inputs) or data so the model can be traced."
            )
    spec = permutation_spec(
        model.replace(params=pa, state=state_a), example_input, on_unsupported=on_unsupported
    )
    products = {}
    if method == "weights":
        perms, history, iters, converged, products = _weight_matching(
            spec, pa, pb, max_iter=max_iter, key=key, head_match=head_match
        )
    else:
        if spec.per:
            raise ValueError(
                f"{_validate.where()}: the model has groups permuted per unit of another group "
                f"(attention heads' dimensions: {sorted(spec.per)[:3]}), which activation "
                "matching does not align; use method='weights'."
            )
        perms, history = _activation_matching(
            model.apply_fn,
            spec,
            pa,
            state_a,
            pb,
            state_b,
            data,
            batch_size=batch_size,
            input_key=input_key,
        )
        iters, converged = 1, True
    perms = {g: np.asarray(p, np.int32) for g, p in perms.items()}
    new_p = _permute_tree(pb, spec.param_axes, perms, spec.per)
    new_s = (
        _permute_tree(state_b, spec.state_axes, perms, spec.per)
        if jax.tree.leaves(state_b)
        else None
    )
    settings = {
        "method": method,
        "max_iter": max_iter,
        "groups": spec.groups,
        "batch_size": batch_size,
        "head_match": head_match,
    }
    prov = _provenance.provenance(
        dtype=_tree.dtype_of(pa),
        seeds=None if key is None else _key_data(key),
        data=None if data is None else _provenance.data_hash(data),
        settings=settings,
    )
    return Alignment(
        params=new_p,
        state=new_s,
        perms=perms,
        objective=history,
        method=method,
        groups=dict(spec.groups),
        param_axes={k: list(v) for k, v in spec.param_axes.items()},
        state_axes={k: list(v) for k, v in spec.state_axes.items()},
        num_iters=int(iters),
        converged=bool(converged),
        per=dict(spec.per),
        head_match=head_match,
        head_products=products,
        provenance=prov,
    )
