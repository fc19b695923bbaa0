"""Curvature operators of the full-data-set mean loss: Hessian, Gauss-Newton, empirical Fisher.

Every product is exact over the whole data set: the per-batch product runs inside the
foundation engine's :func:`landscape.engine.batched_mean` (full batches in one ``lax.scan``,
the remainder weighted by its size), so one product is one compiled program and the batches
are never looped over in Python.

An operator is a :class:`CurvatureOperator`: a pytree whose array leaves are the parameters,
the laid-out data, the model state (inside a :class:`landscape.Loss`) and an optional diagonal
preconditioner, and whose static part is the loss function and the settings. It can therefore
be passed to compiled code as an argument (the Lanczos loop takes it that way), and a new
parameter point or new batch statistics do not recompile anything.

Every estimator (:func:`~landscape.hessian.eigenvalues`, :func:`~landscape.hessian.trace`,
:func:`~landscape.hessian.spectral_density`, :func:`~landscape.hessian.lanczos`) takes an
*operator*: a :class:`CurvatureOperator`, or a plain matvec ``v -> A v`` on pytrees, wrapped once
at the public boundary by :func:`as_operator` into a :class:`MatvecOperator`. Both follow one
protocol:

* ``template``: a params-shaped pytree (arrays or ``jax.ShapeDtypeStruct``) the vectors the user
  sees are shaped like; ``subset``: the :class:`Subset` of its leaves the operator acts on;
  ``num_params``, ``dtype``, ``curvature``;
* ``prepared()`` (traceable) and ``host_prepared()`` (concrete, cached): a :class:`Prepared`,
  the pytree callable ``v -> (A v, finite_flags)`` every compiled loop applies;
* ``check_flags(ok, context)``: turn the flags into a ``FloatingPointError`` naming the batch
  where it can; ``describe()``: the settings recorded in provenance and store manifests.

Two ways to apply a :class:`CurvatureOperator`:

* ``"forward_over_reverse"``: ``jax.jvp`` of ``jax.grad`` per batch (for the Hessian), or the
  ``jvp -> output-space Hessian -> vjp`` chain (GGN) and ``jvp -> vjp`` of the per-example loss
  vector (empirical Fisher). Memory: one batch's activations (about 3x a gradient's).
* ``"linearize"``: ``jax.linearize`` the whole batched product once with respect to the vector
  (at ``v = 0``). Everything that does not depend on the vector (the forward pass, softmax
  probabilities, ReLU masks, the backward pass of the gradient) is computed once and kept for all
  batches; each later product only runs the tangent computations. This is how PyHessian's
  single-batch mode gets its speed (it keeps the gradient's graph). Memory: the residuals of all
  batches (roughly activations x data-set size). ``"auto"`` (the default) linearises when the
  residuals take between :data:`LINEARIZE_MIN_BYTES` (4 MiB: smaller problems gain nothing and pay
  one more compilation) and :data:`LINEARIZE_MAX_BYTES` (1 GiB).
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import inspect
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial, register_pytree_node_class

from landscape import engine
from landscape import tree as _tree
from landscape import validate as _validate
from landscape.losses import Loss, cross_entropy, mse

PyTree = Any

CURVATURES = ("hessian", "ggn", "fisher", "residual")
METHODS = ("auto", "forward_over_reverse", "linearize")

LINEARIZE_MAX_BYTES = 1 << 30
"""``method="auto"`` linearises once when the kept residuals take at most this many bytes."""

LINEARIZE_MIN_BYTES = 4 << 20
"""...and at least this many: below it a product takes well under a millisecond, the saved
forward pass is negligible and the extra compiled program costs more than it saves."""

__all__ = [
    "CURVATURES",
    "CurvatureOperator",
    "LINEARIZE_MAX_BYTES",
    "MatvecOperator",
    "Prepared",
    "as_operator",
    "hvp",
    "make_hvp",
]


# --------------------------------------------------------------------------------------------
# Parameter subsets
# --------------------------------------------------------------------------------------------
class Subset:
    """Which leaves of the parameters a vector lives on (static, hashable).

    With no filter the vectors are the parameters' own pytree. With a filter they are a flat dict
    ``{leaf_path: array}`` of the selected leaves, so Krylov bases only hold the subset.
    """

    def __init__(self, treedef, paths: tuple[str, ...], selected: tuple[int, ...] | None):
        self.treedef = treedef
        self.paths = paths
        self.selected = selected

    def _key(self):
        return (self.treedef, self.paths, self.selected)

    def __hash__(self):
        return hash(self._key())

    def __eq__(self, other):
        return isinstance(other, Subset) and self._key() == other._key()

    @property
    def is_all(self) -> bool:
        return self.selected is None

    @property
    def selected_paths(self) -> tuple[str, ...]:
        if self.selected is None:
            return self.paths
        return tuple(self.paths[i] for i in self.selected)

    def restrict(self, tree: PyTree) -> PyTree:
        """The subset's part of a params-shaped pytree."""
        if self.selected is None:
            return tree
        leaves = self.treedef.flatten_up_to(tree)
        return {self.paths[i]: leaves[i] for i in self.selected}

    def merge(self, params: PyTree, sub: PyTree) -> PyTree:
        """``params`` with the subset's leaves replaced by ``sub``."""
        if self.selected is None:
            return sub
        leaves = list(self.treedef.flatten_up_to(params))
        for i in self.selected:
            leaves[i] = sub[self.paths[i]]
        return jax.tree.unflatten(self.treedef, leaves)

    def embed(self, sub: PyTree, like: PyTree, *, leading: tuple[int, ...] = ()) -> PyTree:
        """A params-shaped pytree holding ``sub`` on the subset and zeros elsewhere.

        ``leading`` is an extra leading shape carried by every leaf of ``sub`` (e.g. ``(k,)``).
        """
        if self.selected is None:
            return sub
        leaves = self.treedef.flatten_up_to(like)
        out = []
        sel = set(self.selected)
        for i, (p, x) in enumerate(zip(self.paths, leaves)):
            if i in sel:
                out.append(sub[p])
            else:
                out.append(jnp.zeros(leading + tuple(np.shape(x)), jnp.result_type(x)))
        return jax.tree.unflatten(self.treedef, out)

    def layer_of(self, path: str) -> str:
        """The layer a leaf belongs to: its path without the last component."""
        return path.rsplit("/", 1)[0] if "/" in path else path


def make_subset(params: PyTree, params_filter) -> Subset:
    """Resolve ``params_filter`` (glob pattern(s), or a predicate on leaf paths) to a
    :class:`Subset`.

    A pattern selects a leaf when it matches the leaf's slash path (``fnmatch`` rules, e.g.
    ``"layers/1/*"``, ``"*kernel"``) or names one of its parent folders (``"layers/1"``).
    """
    leaves, treedef = jax.tree.flatten(params)
    paths = tuple(_tree.leaf_paths(params))
    if params_filter is None:
        return Subset(treedef, paths, None)
    if callable(params_filter):
        pred = params_filter
    else:
        pats = [params_filter] if isinstance(params_filter, str) else list(params_filter)
        if not pats or not all(isinstance(p, str) for p in pats):
            raise TypeError(
                f"{_validate.where()}: params_filter must be a glob pattern, a sequence of patterns or a "
                f"callable(path) -> bool; got {params_filter!r}."
            )

        def pred(path):
            for pat in pats:
                pat = pat.rstrip("/")
                if fnmatch.fnmatchcase(path, pat) or fnmatch.fnmatchcase(path, pat + "/*"):
                    return True
            return False

    selected = tuple(i for i, p in enumerate(paths) if pred(p))
    if not selected:
        raise ValueError(
            f"{_validate.where()}: params_filter {params_filter!r} matches no parameter; the leaf paths are "
            f"{list(paths)}."
        )
    if len(selected) == len(paths):
        return Subset(treedef, paths, None)
    return Subset(treedef, paths, selected)


# --------------------------------------------------------------------------------------------
# Output-space pieces (GGN, Fisher)
# --------------------------------------------------------------------------------------------
@register_pytree_node_class
class _Pieces:
    """``outputs(params, batch)``, ``output_loss(outputs, batch)`` and ``penalty(params)``.

    Built from a :class:`landscape.Loss` (its own pieces) or from a model triple plus an output
    loss. ``kind`` is ``"cross_entropy"``, ``"mse"`` or ``None`` (a user callable: its
    output-space Hessian product is computed by forward-over-reverse on the outputs).
    """

    def __init__(self, loss, apply_fn, state, output_loss, kind, input_key, target_key):
        self.loss = loss  # a landscape.Loss or None
        self.apply_fn = apply_fn
        self.state = state
        self.output_loss_fn = output_loss
        self.kind = kind
        self.input_key = input_key
        self.target_key = target_key

    def tree_flatten(self):
        return (self.loss, self.state), (
            self.apply_fn,
            self.output_loss_fn,
            self.kind,
            self.input_key,
            self.target_key,
        )

    @classmethod
    def tree_unflatten(cls, aux, children):
        loss, state = children
        apply_fn, output_loss, kind, ik, tk = aux
        return cls(loss, apply_fn, state, output_loss, kind, ik, tk)

    def outputs(self, params, batch):
        if self.loss is not None:
            return self.loss.outputs(params, batch)
        out, _ = self.apply_fn(params, self.state, batch[self.input_key], train=False)
        return out

    def output_loss(self, outputs, batch):
        if self.loss is not None:
            return self.loss.output_loss(outputs, batch)
        if self.kind == "cross_entropy":
            return cross_entropy(outputs, batch[self.target_key])
        if self.kind == "mse":
            return mse(outputs, batch[self.target_key])
        return self.output_loss_fn(outputs, batch)

    def penalty(self, params):
        if self.loss is not None:
            return self.loss.penalty(params)
        return 0.0

    def output_hvp(self, outputs, u, batch):
        """Product of the output-space Hessian of the batch-mean loss with ``u``.

        Analytic for cross-entropy (``(diag(p) - p p^T) u / B`` per example, scaled by the label
        mass for soft labels) and MSE (``u / outputs.size``); forward-over-reverse otherwise.
        """
        if self.kind == "cross_entropy":
            t = batch[self.target_key]
            p = jax.nn.softmax(outputs, axis=-1)
            pu = p * u
            hu = pu - p * jnp.sum(pu, axis=-1, keepdims=True)
            if not jnp.issubdtype(t.dtype, jnp.integer):
                hu = hu * jnp.sum(t, axis=-1, keepdims=True).astype(hu.dtype)
            n = math.prod(outputs.shape[:-1])
            return hu / jnp.asarray(n, hu.dtype)
        if self.kind == "mse":
            return u / jnp.asarray(outputs.size, u.dtype)
        g = jax.grad(lambda o: self.output_loss(o, batch))
        return jax.jvp(g, (outputs,), (u,))[1]

    def example_losses(self, outputs, batch):
        """Per-example losses (the data term) as a vector, from batch outputs."""

        def one(o, b):
            return self.output_loss(o[None], jax.tree.map(lambda a: a[None], b))

        return jax.vmap(one)(outputs, batch)


def _pieces_for(loss_fn, model, output_loss) -> _Pieces | None:
    if isinstance(loss_fn, Loss) and model is None:
        return _Pieces(loss_fn, None, None, None, loss_fn.kind, loss_fn.input_key, loss_fn.target_key)
    if model is None:
        return None
    from landscape._model import as_model

    m = as_model(model)
    if output_loss is None:
        if isinstance(loss_fn, Loss):
            output_loss = loss_fn.kind
        else:
            raise ValueError(
                f"{_validate.where()}: with a plain loss_fn and model=..., pass output_loss='cross_entropy', "
                "'mse' or a callable(outputs, batch) -> scalar batch mean."
            )
    if isinstance(output_loss, str):
        _validate.check_choice(output_loss, ("cross_entropy", "mse"), name="output_loss")
        return _Pieces(None, m.apply_fn, m.state, None, output_loss, "x", "y")
    _validate.check_callable(output_loss, name="output_loss")
    return _Pieces(None, m.apply_fn, m.state, output_loss, None, "x", "y")


# --------------------------------------------------------------------------------------------
# Per-batch products (module level: static, hashable)
# --------------------------------------------------------------------------------------------
def _loss_value(loss_fn, params, batch):
    return engine.loss_and_aux(loss_fn, params, batch)[0]


def _batch_hessian(op, params, batch, v):
    sub0 = op.subset.restrict(params)

    def f(sub):
        return _loss_value(op.loss_fn, op.subset.merge(params, sub), batch)

    return jax.jvp(jax.grad(f), (sub0,), (v,))[1]


def _batch_ggn(op, params, batch, v, *, with_penalty=True):
    sub0 = op.subset.restrict(params)
    pieces = op.pieces

    def out_fn(sub):
        return pieces.outputs(op.subset.merge(params, sub), batch)

    f, f_jvp = jax.linearize(out_fn, sub0)
    hu = pieces.output_hvp(f, f_jvp(v), batch)
    (res,) = jax.linear_transpose(f_jvp, sub0)(hu.astype(f.dtype))
    if with_penalty and (pieces.loss is None or pieces.loss.weight_decay):

        def pen(sub):
            return jnp.asarray(pieces.penalty(op.subset.merge(params, sub)))

        res = _tree.add(res, jax.jvp(jax.grad(pen), (sub0,), (v,))[1])
    return res


def _batch_fisher(op, params, batch, v):
    sub0 = op.subset.restrict(params)
    pieces = op.pieces

    if pieces is not None:

        def losses(sub):
            return pieces.example_losses(pieces.outputs(op.subset.merge(params, sub), batch), batch)
    else:

        def losses(sub):
            p = op.subset.merge(params, sub)

            def one(b):
                return _loss_value(op.loss_fn, p, jax.tree.map(lambda a: a[None], b))

            return jax.vmap(one)(batch)

    ell, l_jvp = jax.linearize(losses, sub0)
    gv = l_jvp(v)
    b = ell.shape[0]
    (res,) = jax.linear_transpose(l_jvp, sub0)(gv / jnp.asarray(b, gv.dtype))
    return res


def _batch_residual(op, params, batch, v):
    pieces = op.pieces
    if pieces.loss is None:  # a plain loss_fn: the Hessian minus the GGN, whatever the loss holds
        h = _batch_hessian(op, params, batch, v)
        g = _batch_ggn(op, params, batch, v, with_penalty=True)
        return _tree.sub(h, g)
    # a landscape.Loss is output_loss(outputs) + penalty, so H - GGN = sum_c r_c d2 f_c with the
    # output residual r = dL/df held fixed: one Hessian-vector product of r . f
    sub0 = op.subset.restrict(params)
    out = pieces.outputs(params, batch)
    r = jax.lax.stop_gradient(jax.grad(lambda o: pieces.output_loss(o, batch))(out))

    def f(sub):
        return jnp.sum(r * pieces.outputs(op.subset.merge(params, sub), batch))

    return jax.jvp(jax.grad(f), (sub0,), (v,))[1]


_BATCH_PRODUCTS = {
    "hessian": _batch_hessian,
    "ggn": _batch_ggn,
    "fisher": _batch_fisher,
    "residual": _batch_residual,
}


# --------------------------------------------------------------------------------------------
# The operator
# --------------------------------------------------------------------------------------------
@register_pytree_node_class
class CurvatureOperator:
    """A symmetric curvature operator of the full-data-set mean loss (see :func:`make_hvp`).

    Calling it applies the product to a params-shaped vector (one compiled program; components
    outside ``params_filter`` are ignored and come back as zeros). Inside compiled code use
    :meth:`matvec` on subset vectors (what the Lanczos loop does).

    Attributes:
      curvature: ``"hessian"``, ``"ggn"``, ``"fisher"`` or ``"residual"`` (Hessian minus GGN).
      method: ``"forward_over_reverse"`` or ``"linearize"`` (resolved from ``"auto"``).
      subset: the :class:`Subset` of parameters the operator acts on.
      num_params: the dimension of the operator (parameters in the subset).
      dtype: the dtype of the vectors (the subset's parameter dtype).
    """

    def __init__(self, loss_fn, params, batched, pieces, scale, *, curvature, subset, method):
        self.loss_fn = loss_fn
        self.params = params
        self.batched = batched
        self.pieces = pieces
        self.scale = scale
        self.curvature = curvature
        self.subset = subset
        self.method = method
        self._prepared = None  # host cache of the linearised map (not part of the pytree)

    # pytree protocol ---------------------------------------------------------------------
    def tree_flatten(self):
        children = (self.loss_fn, self.params, self.batched, self.pieces, self.scale)
        return children, (self.curvature, self.subset, self.method)

    @classmethod
    def tree_unflatten(cls, aux, children):
        curvature, subset, method = aux
        return cls(*children, curvature=curvature, subset=subset, method=method)

    # description -----------------------------------------------------------------------------
    @property
    def num_params(self) -> int:
        return _tree.size(self.subset.restrict(self.params))

    @property
    def dtype(self):
        return _tree.dtype_of(self.subset.restrict(self.params))

    def __repr__(self):
        sub = "all" if self.subset.is_all else list(self.subset.selected_paths)
        return (
            f"CurvatureOperator({self.curvature}, method={self.method}, num_params={self.num_params}, "
            f"params={sub}, batches={self.batched!r}, preconditioned={self.scale is not None})"
        )

    def zeros(self) -> PyTree:
        """A zero vector of the operator's (subset) shape."""
        return _zeros_jit(self.subset.restrict(self.params))

    # the operator protocol ---------------------------------------------------------------------
    template_name = "params"

    @property
    def template(self) -> PyTree:
        """The params-shaped pytree the user's vectors are shaped like (the parameters)."""
        return self.params

    def restrict(self, v: PyTree) -> PyTree:
        """A params-shaped vector's subset part, in the operator's dtype."""
        return self.subset.restrict(_tree.cast(v, self.dtype))

    def check_flags(self, ok, context: str | None = None) -> None:
        """Raise ``FloatingPointError`` unless every finite flag of a product is set; names the
        batch for forward-over-reverse products (one flag per batch)."""
        ok = np.asarray(ok)
        if ok.all():
            return
        what = "curvature-vector product" + (f" ({context})" if context else "")
        raise_nonfinite(ok, self if self.method == "forward_over_reverse" else None, what=what)

    def describe(self) -> dict:
        """Settings recorded in provenance (and in a store's manifest)."""
        return {
            "curvature": self.curvature, "method": self.method, "batch_size": self.batched.batch_size,
            "num_examples": self.batched.num_examples,
            "params_filter": None if self.subset.is_all else list(self.subset.selected_paths),
        }

    # traceable products --------------------------------------------------------------------
    def matvec_with_flags(self, v: PyTree) -> tuple[PyTree, jax.Array]:
        """Traceable product on a subset vector; also returns one finite flag per batch."""
        fn = functools.partial(_BATCH_PRODUCTS[self.curvature], self)
        if self.scale is not None:
            v = jax.tree.map(jnp.multiply, self.scale, v)

        def per_batch(params, batch, v):
            return fn(params, batch, v)

        out, ok = engine.batched_mean(per_batch, self.params, self.batched, v)
        out = _tree.cast(out, self.dtype) if self.dtype != _tree.dtype_of(out) else out
        if self.scale is not None:
            out = jax.tree.map(jnp.multiply, self.scale, out)
        return out, ok

    def matvec(self, v: PyTree) -> PyTree:
        """Traceable product on a subset vector (``{path: leaf}`` dict with a filter)."""
        return self.matvec_with_flags(v)[0]

    def prepared(self) -> Prepared:
        """Traceable: the operator ready for many products (linearised once if ``method`` says
        so). Call inside compiled code before a loop of products."""
        if self.method == "linearize":
            _, lin = jax.linearize(self.matvec, self.zeros())
            return Prepared(matvec_fn=lin)
        return Prepared(op=self)

    # host convenience ------------------------------------------------------------------------
    @_validate.public("landscape.hessian.CurvatureOperator")
    def __call__(self, v: PyTree, *, check_finite: bool = True) -> PyTree:
        check_vector(v, self.params, name="v")
        sub = self.subset.restrict(_tree.cast(v, self.dtype))
        if self.method == "linearize":
            prep = self.host_prepared()
            ps, pd = engine.split_fn(prep)
            out, ok = _apply_prepared_jit(ps, pd, sub)
        else:
            s, d = engine.split_fn(self)
            out, ok = _apply_jit(s, d, sub)
        if check_finite:
            raise_nonfinite(ok, self)
        return self.subset.embed(out, self.params)

    def replace_method(self, method: str) -> CurvatureOperator:
        """The same operator applied with another ``method``."""
        return CurvatureOperator(
            self.loss_fn, self.params, self.batched, self.pieces, self.scale,
            curvature=self.curvature, subset=self.subset, method=method,
        )

    def host_prepared(self) -> Prepared:
        """The prepared operator as concrete arrays (linearised once, cached on this object)."""
        if self._prepared is None:
            if self.method == "linearize":
                s, d = engine.split_fn(self)
                self._prepared = _prepare_jit(s, d)
            else:
                self._prepared = Prepared(op=self)
        return self._prepared


@register_pytree_node_class
class Prepared:
    """An operator ready for repeated products: the one callable ``v -> (A v, finite_flags)``
    every compiled loop applies (Lanczos steps, trace probes, residual checks).

    It holds either a :class:`CurvatureOperator` applied forward-over-reverse (one finite flag
    per batch) or a function ``v -> A v`` (a linearised operator, or a user matvec; one flag in
    total). A pytree: its arrays are arguments of the compiled loops, its functions static.
    """

    def __init__(self, op: CurvatureOperator | None = None, matvec_fn=None):
        self.op = op
        self.matvec_fn = matvec_fn

    def tree_flatten(self):
        return (self.op, self.matvec_fn), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)

    def __call__(self, v):
        if self.matvec_fn is not None:
            # a user's matvec or a linearised product, inside a compiled loop: its convolutions
            # in XLA:CPU's fast form (a curvature product gets that from batched_mean)
            out = engine.canonical_convs(self.matvec_fn)(v)
            return out, engine.all_finite(out)[None]
        return self.op.matvec_with_flags(v)


class MatvecOperator:
    """A user matvec ``v -> A v`` behind the operator protocol (built by :func:`as_operator`).

    ``matvec_fn`` maps pytrees shaped like ``template`` to pytrees of the same structure and shapes; it
    must be traceable by JAX (it runs inside compiled loops), symmetric (``<u, A v> = <A u, v>``,
    what Lanczos assumes) and hashable: a module-level function, or a
    ``jax.tree_util.Partial`` whose array arguments travel as arguments of the compiled programs
    (not baked in as constants). It is a static argument of those programs: pass the same
    function again and nothing recompiles; a new lambda or closure per call recompiles.
    """

    template_name = "like"
    curvature = "matvec"

    def __init__(self, matvec_fn, template: PyTree):
        self.matvec_fn = matvec_fn
        self.template = template
        self.subset = make_subset(template, None)

    @property
    def num_params(self) -> int:
        return int(sum(math.prod(np.shape(x)) for x in jax.tree.leaves(self.template)))

    @property
    def dtype(self):
        return _tree.dtype_of(self.template)

    def __repr__(self):
        return f"MatvecOperator({_fn_name(self.matvec_fn)}, num_params={self.num_params}, dtype={np.dtype(self.dtype)})"

    def restrict(self, v: PyTree) -> PyTree:
        """Vectors reach a matvec as given (the whole template, its own dtypes)."""
        return v

    def prepared(self) -> Prepared:
        return Prepared(matvec_fn=self.matvec_fn)

    host_prepared = prepared

    def check_flags(self, ok, context: str | None = None) -> None:
        ok = np.asarray(ok)
        if not ok.all():
            at = f" ({context})" if context else ""
            raise FloatingPointError(f"{_validate.where()}: non-finite matvec product{at}.")

    def describe(self) -> dict:
        return {"operator": "matvec", "matvec": _fn_name(self.matvec_fn)}


def _fn_name(matvec_fn) -> str:
    f = matvec_fn.func if isinstance(matvec_fn, Partial) else matvec_fn
    name = f"{getattr(f, '__module__', None) or ''}.{getattr(f, '__qualname__', type(f).__name__)}"
    return f"Partial({name})" if isinstance(matvec_fn, Partial) else name


@functools.partial(jax.jit, static_argnames=("s",))
def _apply_jit(s, d, v):
    op = engine.merge_fn(s, d)
    return op.matvec_with_flags(v)


@functools.partial(jax.jit, static_argnames=("s",))
def _prepare_jit(s, d):
    return engine.merge_fn(s, d).prepared()


@functools.partial(jax.jit, static_argnames=("s",))
def _apply_prepared_jit(s, d, v):
    return engine.merge_fn(s, d)(v)


def raise_nonfinite(ok, op: CurvatureOperator | None, *, what: str = "curvature-vector product"):
    """Raise ``FloatingPointError`` naming the batches whose product was not finite."""
    ok = np.asarray(ok)
    if ok.all():
        return
    if op is not None and ok.shape[0] == (op.batched.num_batches + (1 if op.batched.rest_size else 0)):
        engine.raise_nonfinite(ok, op.batched, what=what)
    raise FloatingPointError(f"{_validate.where()}: non-finite {what}.")


# --------------------------------------------------------------------------------------------
# Building operators
# --------------------------------------------------------------------------------------------
@jax.jit
def _zeros_jit(tree):
    return _tree.zeros_like(tree)


@jax.jit
def _norm_jit(v):
    return _tree.norm(v)


@jax.jit
def _min_jit(tree):
    return jnp.min(jnp.stack([jnp.min(x) for x in jax.tree.leaves(tree)]))


@functools.partial(jax.jit, static_argnames=("dtype",))
def _rsqrt_jit(tree, dtype):
    return jax.tree.map(lambda x: jax.lax.rsqrt(x.astype(dtype)), tree)


def check_vector(v, params, *, name: str, allow_zero: bool = True, ref_name: str = "params") -> None:
    """A params-shaped, finite (and, unless ``allow_zero``, nonzero) vector."""
    _validate.check_same_structure(v, params, name=name, ref_name=ref_name)
    _validate.check_finite(v, name=name)
    if not allow_zero and float(_norm_jit(v)) == 0.0:
        raise ValueError(f"{_validate.where()}: {name} is the zero vector; a starting/probe vector must be nonzero.")


def _residual_bytes(op: CurvatureOperator) -> int:
    """Bytes of the residuals ``jax.linearize`` would keep for ``op`` (traced, not run)."""
    s, d = engine.split_fn(op.replace_method("linearize"))
    shapes = jax.eval_shape(lambda dd: engine.merge_fn(s, dd).prepared(), d)
    return int(sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(shapes.matvec_fn)))


_AUTO_CACHE: dict = {}


def _resolve_method(op: CurvatureOperator, method: str) -> str:
    """``"auto"``: linearise when the residuals take between :data:`LINEARIZE_MIN_BYTES` and
    :data:`LINEARIZE_MAX_BYTES` (decided by tracing once per loss function, shapes and settings;
    cached)."""
    if method != "auto":
        return method
    s, d = engine.split_fn(op)
    shapes = tuple(None if x is None else (tuple(np.shape(x)), str(jnp.result_type(x))) for x in d)
    key = (s, shapes)
    if key not in _AUTO_CACHE:
        try:
            nbytes = _residual_bytes(op)
            choice = "linearize" if LINEARIZE_MIN_BYTES <= nbytes <= LINEARIZE_MAX_BYTES else "forward_over_reverse"
        except Exception:  # pragma: no cover - not linearisable: fall back
            choice = "forward_over_reverse"
        if len(_AUTO_CACHE) > 256:
            _AUTO_CACHE.clear()
        _AUTO_CACHE[key] = choice
    return _AUTO_CACHE[key]


@_validate.public("landscape.hessian.make_hvp")
def make_hvp(
    loss_fn: Callable,
    params: PyTree,
    data: PyTree,
    *,
    curvature: str = "hessian",
    model=None,
    output_loss=None,
    params_filter=None,
    preconditioner: PyTree | None = None,
    batch_size: int | None = None,
    method: str = "auto",
) -> CurvatureOperator:
    """Factory: the curvature operator of the full-data-set mean loss, ready for many products.

    Its keyword-only parameters are the operator settings, declared here once: the one-shots
    (``eigenvalues(loss_fn, params, data, **settings)``, ...) accept exactly these.

    Returns a :class:`CurvatureOperator` ``op``; ``op(v)`` is one exact product over the whole
    data set in one compiled program (compiled once per loss function, shapes and settings:
    reuse ``op``, or call ``make_hvp`` again with the same ``loss_fn`` object, and nothing
    recompiles). It is also a pytree, so it can be passed to your own ``jax.jit`` code and used
    there through ``op.matvec``.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar`` (or ``(scalar, aux)``): the batch mean. A
        :class:`landscape.Loss` also provides the pieces the GGN and Fisher need (model outputs,
        output loss, L2 penalty). Weight decay inside the loss is part of every curvature.
      params: the point (pytree of float arrays).
      data: dict of arrays with a leading example axis, or a prepared
        :class:`landscape.engine.Batched`.
      curvature: ``"hessian"`` (exact), ``"ggn"`` (Gauss-Newton ``J^T H_out J`` averaged over
        examples, plus the penalty's Hessian; analytic output-space Hessian for cross-entropy and
        MSE), ``"fisher"`` (empirical Fisher ``mean_i g_i g_i^T`` of the per-example data-term
        gradients, computed as ``G^T (G v) / n`` without materialising per-example gradients) or
        ``"residual"`` (Hessian minus GGN, Papyan 2019).
      model: for ``"ggn"``/``"fisher"`` with a plain ``loss_fn``: the model triple
        ``(apply_fn, params, state)`` whose outputs the loss sees (inputs from ``batch["x"]``).
      output_loss: with ``model``: ``"cross_entropy"``, ``"mse"`` or ``f(outputs, batch)``.
      params_filter: restrict to a subset of parameters: glob pattern(s) on slash leaf paths
        (``"layers/1/*"``, ``"layers/1"``, ``["*kernel"]``) or a predicate on paths. The operator
        is then the corresponding diagonal block.
      preconditioner: a params-shaped positive diagonal ``P``; the operator becomes the
        symmetric ``P^{-1/2} A P^{-1/2}`` (same eigenvalues as ``P^{-1} A``).
      batch_size: examples per batch of the data-set reduction (default: the engine's).
      method: ``"forward_over_reverse"``, ``"linearize"`` (keep the residuals of all batches,
        faster products) or ``"auto"`` (linearise when the residuals take 4 MiB to 1 GiB,
        decided by tracing once).

    Returns:
      A :class:`CurvatureOperator`.

    Cost:
      One product: about 2 gradient evaluations of compute (forward-over-reverse) or 1.5
      (linearised), memory of one batch (forward-over-reverse) or of all batches' residuals
      (linearised).

    Raises:
      TypeError, ValueError: invalid loss, parameters, data, settings; GGN/Fisher without the
        pieces they need; a filter that matches nothing.

    Example:
      >>> op = landscape.hessian.make_hvp(loss_fn, params, data)
      >>> hv = op(v)          # params-shaped
      >>> top = landscape.hessian.eigenvalues(op, k=5, key=key)  # every estimator takes it
      >>> tr = landscape.hessian.trace(op, key=key)

    References:
      Pearlmutter 1994 (fast exact Hessian-vector products); Schraudolph 2002 (Gauss-Newton
      products); Martens 2020 (GGN, empirical Fisher); Papyan 2019 (Hessian = GGN + residual).
    """
    _validate.check_callable(loss_fn, name="loss_fn")
    _validate.check_params(params)
    for path, x in zip(_tree.leaf_paths(params), jax.tree.leaves(params)):
        if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
            raise TypeError(f"{_validate.where()}: params leaf '{path}' must be a float array; got dtype {jnp.result_type(x)}.")
    _validate.check_choice(curvature, CURVATURES, name="curvature")
    _validate.check_choice(method, METHODS, name="method")
    batched = engine.batch(data, batch_size)
    engine.check_loss(loss_fn, params, batched)
    subset = make_subset(params, params_filter)
    pieces = None
    if curvature == "hessian" and (isinstance(loss_fn, Loss) or (model is not None and output_loss is not None)):
        # not needed for products; kept so that trace(estimator="auto") can take the exact route
        pieces = _pieces_for(loss_fn, model, output_loss)
    elif curvature in ("ggn", "residual") or (curvature == "fisher" and (model is not None or isinstance(loss_fn, Loss))):
        pieces = _pieces_for(loss_fn, model, output_loss)
        if pieces is None and curvature != "fisher":
            raise ValueError(
                f"{_validate.where()}: curvature={curvature!r} needs the model's outputs: pass a landscape.Loss "
                "(landscape.make_loss_fn(model, ...)) as loss_fn, or model=(apply_fn, params, state) "
                "and output_loss=..."
            )
    scale = None
    if preconditioner is not None:
        _validate.check_same_structure(preconditioner, params, name="preconditioner")
        _validate.check_finite(preconditioner, name="preconditioner")
        if float(_min_jit(preconditioner)) <= 0:
            raise ValueError(f"{_validate.where()}: preconditioner must be strictly positive (a diagonal P > 0).")
        scale = subset.restrict(_rsqrt_jit(preconditioner, _tree.dtype_of(params)))
    op = CurvatureOperator(
        loss_fn, params, batched, pieces, scale, curvature=curvature, subset=subset, method="forward_over_reverse"
    )
    return op.replace_method(_resolve_method(op, method))


# --------------------------------------------------------------------------------------------
# The curvature settings: declared once (make_hvp's keyword-only parameters)
# --------------------------------------------------------------------------------------------
CURVATURE_SETTINGS: tuple[inspect.Parameter, ...] = tuple(
    p for p in inspect.signature(make_hvp).parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY
)
"""The settings of an operator built from ``loss_fn, params, data``: ``curvature``, ``model``,
``output_loss``, ``params_filter``, ``preconditioner``, ``batch_size``, ``method`` (from
:func:`make_hvp`'s signature, so they are declared in one place)."""


def curvature_keywords(*, exclude: tuple[str, ...] = (), defaults: dict | None = None):
    """Decorator for a public function ``f(..., *, <own settings>, **curvature)`` whose
    ``**curvature`` goes to :func:`make_hvp`.

    The wrapper checks the keyword names once per call (a ``TypeError`` naming the public
    function, the bad keyword and the allowed ones; a required keyword-only ``key`` that is
    missing gets the house message) and exposes the full ``__signature__``: the function's own
    parameters followed by :data:`CURVATURE_SETTINGS` (less ``exclude``, with ``defaults``
    overriding make_hvp's), so ``inspect.signature(f).bind(...)`` accepts exactly what a call
    accepts. Apply it beneath :func:`landscape.validate.public`.
    """
    defaults = defaults or {}

    def decorate(f):
        sig = inspect.signature(f)
        own = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        curv = [p.replace(default=defaults.get(p.name, p.default)) for p in CURVATURE_SETTINGS
                if p.name not in exclude]
        own_kw = tuple(p.name for p in own if p.kind is inspect.Parameter.KEYWORD_ONLY)
        by_name = {p.name for p in own if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                      inspect.Parameter.KEYWORD_ONLY)}
        allowed = frozenset(by_name) | {p.name for p in curv}
        needs_key = "key" in sig.parameters and sig.parameters["key"].default is inspect.Parameter.empty

        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            bad = [k for k in kwargs if k not in allowed]
            if bad:
                raise TypeError(_bad_keyword_message(f.__name__, bad[0], own_kw, curv, exclude))
            if needs_key and "key" not in kwargs:
                _validate.check_key(None)
            return f(*args, **kwargs)

        wrapper.__signature__ = sig.replace(parameters=own + curv)
        wrapper.curvature_settings = tuple(p.name for p in curv)
        return wrapper

    return decorate


def _bad_keyword_message(fname, bad, own_kw, curv, exclude) -> str:
    names = [p.name for p in curv]
    close = difflib.get_close_matches(bad, list(own_kw) + names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    if bad in exclude:
        return (
            f"{_validate.where()}: {bad}= is not a setting here ({fname} sets it itself); its operator "
            f"settings are {', '.join(names)}."
        )
    return (
        f"{_validate.where()}: unexpected keyword argument {bad!r}{hint}; {fname} takes "
        f"{', '.join(own_kw)}, and the operator settings of landscape.hessian.make_hvp: {', '.join(names)}."
    )


@_validate.public("landscape.hessian.hvp")
@curvature_keywords(exclude=(), defaults={"method": "forward_over_reverse"})
def hvp(loss_fn: Callable, params: PyTree, data: PyTree, v: PyTree, *, check_finite: bool = True,
        **curvature) -> PyTree:
    """One exact curvature-vector product ``A v`` over the whole data set.

    ``A`` is the Hessian of the data-set mean loss (forward-over-reverse, per batch, accumulated
    by the engine in one compiled call), or the GGN / empirical Fisher / residual. For many
    products build the operator once with :func:`make_hvp`.

    Args:
      loss_fn, params, data: see :func:`make_hvp`.
      v: params-shaped vector (same tree structure and leaf shapes as ``params``).
      check_finite: raise when the product is not finite.
      **curvature: the operator settings of :func:`make_hvp` (``curvature``, ``model``,
        ``output_loss``, ``params_filter``, ``preconditioner``, ``batch_size``, ``method``;
        here ``method`` defaults to ``"forward_over_reverse"``: one product gains nothing from
        linearising).

    Returns:
      ``A v``, params-shaped (zeros outside ``params_filter``).

    Cost:
      One product (about two gradient evaluations); memory of one batch.

    Raises:
      ValueError: ``v`` does not match ``params`` or is not finite.
      FloatingPointError: (with ``check_finite``) the product was not finite; names the batches.
      TypeError: a keyword that is neither ``check_finite`` nor a setting of :func:`make_hvp`.
    """
    op = make_hvp(loss_fn, params, data, **{"method": "forward_over_reverse", **curvature})
    return op(v, check_finite=check_finite)


def as_operator(operator, *, like: PyTree | None = None):
    """The operator protocol for ``operator``: a :class:`CurvatureOperator` or
    :class:`MatvecOperator` as is; a plain matvec ``v -> A v`` wrapped (once) with ``like`` as
    the template of its vectors.

    Raises:
      TypeError: not callable, unhashable, or a plain matvec without ``like``.
      ValueError: ``like`` is not a pytree of float arrays, or the matvec's output is not shaped
        like its input.
    """
    if isinstance(operator, (CurvatureOperator, MatvecOperator)):
        return operator
    _validate.check_callable(operator, name="operator")
    if not isinstance(operator, Partial) and not _is_hashable(operator):
        raise TypeError(
            f"{_validate.where()}: a matvec must be hashable (a module-level function or "
            f"jax.tree_util.Partial); got {type(operator).__name__}."
        )
    if like is None:
        raise TypeError(
            f"{_validate.where()}: a plain matvec needs like=, a params-shaped pytree (arrays or "
            "jax.ShapeDtypeStruct) its vectors are shaped like."
        )
    template = _template(like)
    _check_matvec_shapes(operator, template)
    return MatvecOperator(operator, template)


def _template(like: PyTree) -> PyTree:
    leaves = jax.tree.leaves(like)
    if not leaves:
        raise ValueError(f"{_validate.where()}: like must be a non-empty pytree of arrays; got {like!r}.")
    for path, x in zip(_tree.leaf_paths(like), leaves):
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise TypeError(
                f"{_validate.where()}: like leaf '{path}' must be an array or jax.ShapeDtypeStruct; "
                f"got {type(x).__name__}."
            )
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"{_validate.where()}: like leaf '{path}' must be floating; got dtype {x.dtype}.")
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(tuple(np.shape(x)), x.dtype), like)


_MATVEC_CHECKED: dict = {}


def _check_matvec_shapes(fn, template) -> None:
    """The matvec maps template-shaped vectors to template-shaped vectors (traced once per
    function, argument shapes and template; cached)."""
    s, d = engine.split_fn(fn)
    key = (s, tuple(None if x is None else (np.shape(x), str(x.dtype)) for x in d), jax.tree.structure(template),
           tuple((x.shape, str(x.dtype)) for x in jax.tree.leaves(template)))
    if key in _MATVEC_CHECKED:
        return
    out = jax.eval_shape(fn, template)
    if jax.tree.structure(out) != jax.tree.structure(template) or any(
        np.shape(a) != np.shape(b) for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(template))
    ):
        raise ValueError(
            f"{_validate.where()}: the matvec must return a vector shaped like its input (like); "
            f"got {_validate.describe(out)} from {_validate.describe(template)}."
        )
    if len(_MATVEC_CHECKED) > 256:
        _MATVEC_CHECKED.clear()
    _MATVEC_CHECKED[key] = True


def _is_hashable(x) -> bool:
    try:
        hash(x)
    except TypeError:
        return False
    return True
