"""Permutation alignment of two networks: weight matching and activation matching.

Both methods find, for every permutation group of the model (derived by tracing it, see
:func:`landscape.connect.permutation_spec`), the permutation of network B's units that best
matches network A's, solving linear assignment problems with
``scipy.optimize.linear_sum_assignment``.
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
    _group_of,
    _permute_tree,
    capture_activations,
    expand_perm,
    permutation_spec,
)

PyTree = Any

ALIGN_METHODS = ("weights", "activations")

__all__ = ["ALIGN_METHODS", "Alignment", "align"]


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
    provenance: dict = static_field(default_factory=dict)

    def apply(self, params: PyTree, state: PyTree = None):
        """Permute another pytree of B's structure (a snapshot of B, its optimiser moments)
        with these permutations; returns ``params`` or ``(params, state)``."""
        axes = {k: tuple(_entry(e) for e in v) for k, v in self.param_axes.items()}
        out = _permute_tree(params, axes, self.perms)
        if state is None:
            return out
        saxes = {k: tuple(_entry(e) for e in v) for k, v in self.state_axes.items()}
        return out, _permute_tree(state, saxes, self.perms)

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
    return {p: np.asarray(x, np.float64) for p, x in zip(_tree.leaf_paths(tree), jax.tree.leaves(tree))}


def _key_data(key) -> list[int]:
    """A PRNG key's data as integers (typed keys and raw ``uint32`` keys): the seed of the
    sweeps' order and the provenance record."""
    data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    return np.asarray(data).tolist()


def _weight_matching(spec: PermutationSpec, pa, pb, *, max_iter: int, key):
    from scipy.optimize import linear_sum_assignment

    A, B = _np_leaves(pa), _np_leaves(pb)
    axes = spec.param_axes
    members = {g: spec.axes_of(g) for g in spec.groups}
    perms = {g: np.arange(n) for g, n in spec.groups.items()}
    # the order of the groups in each sweep (for key(s): the generator of the integer seed s)
    rng = np.random.default_rng(_validate.key_words(key))

    def permuted(path, except_ax=None):
        x = B[path]
        for ax, e in enumerate(axes[path]):
            if e is not None and ax != except_ax:
                x = np.take(x, expand_perm(e, perms[_group_of(e)]), axis=ax)
        return x

    def units_first(x, path, ax, n):
        """The axis ``ax`` as ``(n units, everything else)`` (a flattened block's middle
        factor for a derived axis)."""
        e = axes[path][ax]
        x = np.moveaxis(x, ax, 0)
        if isinstance(e, str):
            return x.reshape(n, -1)
        _, outer, inner = e
        x = x.reshape(outer, n, inner, -1)
        return np.moveaxis(x, 1, 0).reshape(n, -1)

    def total():
        return float(sum(np.vdot(A[p], permuted(p)) for p in A))

    history = [total()]
    converged = False
    it = 0
    names = list(spec.groups)
    for it in range(1, max_iter + 1):  # noqa: B007 - the count is reported
        improved = False
        for gi in rng.permutation(len(names)):
            g = names[gi]
            n = spec.groups[g]
            C = np.zeros((n, n))
            for path, ax in members[g]:
                a = units_first(A[path], path, ax, n)
                b = units_first(permuted(path, ax), path, ax, n)
                C += a @ b.T
            _, cols = linear_sum_assignment(C, maximize=True)
            rows = np.arange(n)
            old = C[rows, perms[g]].sum()
            new = C[rows, cols].sum()
            if new > old + 1e-12 * max(1.0, abs(old)):
                perms[g] = cols
                improved = True
        history.append(total())
        if not improved:
            converged = True
            break
    return perms, np.asarray(history), it, converged


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
    role = ("B is permuted with its own statistics" if which == "b"
            else "activation matching runs A with its own statistics")
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
        matching, bad settings.

    Cost: weight matching: per sweep, one ``n x n`` assignment and ``O(P n)`` flops per
    group (host, float64). Activation matching: two forward passes over ``data`` plus one
    assignment per group.

    References:
      Ainsworth, Hayase and Srinivasa 2022, "Git Re-Basin"; Entezari et al. 2022; Li et al.
      2015, "Convergent learning".
    """
    model = as_model(model)
    _validate.check_choice(method, ALIGN_METHODS, name="method")
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
        raise ValueError(f"{_validate.where()}: method='activations' needs data (training inputs).")
    if data is not None:
        _validate.check_data(data)
        if input_key not in data:
            raise ValueError(f"{_validate.where()}: data has no {input_key!r} entry; keys {sorted(data)}.")
    if example_input is None:
        if data is not None:
            example_input = np.asarray(data[input_key][:2])
        elif model.spec is not None and "input_shape" in model.spec:
            example_input = np.zeros((2, *model.spec["input_shape"]), _tree.dtype_of(model.params))
        else:
            raise ValueError(
                f"{_validate.where()}: give example_input (a batch of inputs) or data so the model can be traced."
            )
    spec = permutation_spec(model.replace(params=pa, state=state_a), example_input,
                            on_unsupported=on_unsupported)
    if method == "weights":
        perms, history, iters, converged = _weight_matching(spec, pa, pb, max_iter=max_iter, key=key)
    else:
        perms, history = _activation_matching(
            model.apply_fn, spec, pa, state_a, pb, state_b, data, batch_size=batch_size,
            input_key=input_key,
        )
        iters, converged = 1, True
    perms = {g: np.asarray(p, np.int32) for g, p in perms.items()}
    new_p = _permute_tree(pb, spec.param_axes, perms)
    new_s = _permute_tree(state_b, spec.state_axes, perms) if jax.tree.leaves(state_b) else None
    settings = {"method": method, "max_iter": max_iter, "groups": spec.groups,
                "batch_size": batch_size}
    prov = _provenance.provenance(
        dtype=_tree.dtype_of(pa), seeds=None if key is None else _key_data(key),
        data=None if data is None else _provenance.data_hash(data), settings=settings,
    )
    return Alignment(
        params=new_p, state=new_s, perms=perms, objective=history, method=method,
        groups=dict(spec.groups), param_axes={k: list(v) for k, v in spec.param_axes.items()},
        state_axes={k: list(v) for k, v in spec.state_axes.items()}, num_iters=int(iters),
        converged=bool(converged), provenance=prov,
    )
