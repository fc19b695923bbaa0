"""The model triple ``(apply_fn, params, state)`` and adapters from Flax NNX and Linen.

``apply_fn(params, state, x, *, train=False) -> (outputs, new_state)``:

* ``params``: the trainable pytree (plain nested dicts of arrays),
* ``state``: the non-trainable pytree (batch-norm statistics, dropout RNG counters; ``{}``
  for stateless models),
* ``train=False`` (the default, used by every analysis) is evaluation mode: batch norm uses
  its running averages, dropout is off, and ``new_state is state``.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax

from landscape import validate as _validate

if TYPE_CHECKING:
    from flax import nnx

# Flax is imported where a Flax object is built or run, not with the package (flax.nnx alone
# takes about 0.3 s to import): a model triple of plain functions never needs it.

PyTree = Any


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
    """A model triple. Unpacks as ``apply_fn, params, state = model``.

    Attributes:
      apply_fn: ``apply_fn(params, state, x, *, train=False) -> (outputs, new_state)``.
        A static argument of compiled code: keep using the same object to avoid recompiling.
      params: trainable parameters (pytree of arrays).
      state: non-trainable state (pytree; ``{}`` if none).
      spec: how to rebuild the architecture (``{"name": ..., "kwargs": ...}`` for models from
        :func:`landscape.make_model`), used by :func:`landscape.load_run`; ``None`` otherwise.
    """

    apply_fn: Callable
    params: PyTree
    state: PyTree = dataclasses.field(default_factory=dict)
    spec: dict | None = None

    def __iter__(self):
        yield self.apply_fn
        yield self.params
        yield self.state

    def __len__(self):
        return 3

    def __getitem__(self, i):
        return (self.apply_fn, self.params, self.state)[i]

    def replace(self, **changes) -> Model:
        return dataclasses.replace(self, **changes)

    def __call__(self, x, *, params=None, state=None, train: bool = False):
        """Outputs on ``x`` (evaluation mode unless ``train``), for quick use in notebooks."""
        out, _ = self.apply_fn(
            self.params if params is None else params,
            self.state if state is None else state,
            x,
            train=train,
        )
        return out

    @property
    def num_params(self) -> int:
        from landscape import tree as _tree

        return _tree.size(self.params)

    def __repr__(self):
        name = (self.spec or {}).get("name", getattr(self.apply_fn, "__name__", "model"))
        return f"Model({name}, num_params={self.num_params}, state_leaves={len(jax.tree.leaves(self.state))})"


@_validate.public("landscape.as_model")
def as_model(model) -> Model:
    """Accept a :class:`Model` or any ``(apply_fn, params, state)`` triple."""
    if isinstance(model, Model):
        return model
    if _is_nnx_module(model):
        return from_nnx(model)
    if isinstance(model, tuple) and len(model) == 3 and callable(model[0]):
        return Model(model[0], model[1], model[2])
    raise TypeError(
        f"{_validate.where()}: model must be a landscape.Model or an (apply_fn, params, state) triple "
        f"(use landscape.from_nnx(module) for a Flax NNX module); got {type(model).__name__}."
    )


def _is_nnx_module(obj) -> bool:
    """``isinstance(obj, nnx.Module)`` without importing Flax: if ``flax.nnx`` was never
    imported, ``obj`` cannot be one."""
    nnx = sys.modules.get("flax.nnx")
    return nnx is not None and isinstance(obj, nnx.Module)


class NNXApply:
    """``apply_fn`` of an NNX module (built by :func:`from_nnx`): static graph definitions,
    arrays as arguments.

    Attributes:
      graphdef_eval, graphdef_train: the module's ``nnx`` graph definitions in evaluation and
        training mode (``nnx.merge(graphdef_eval, params, state)`` rebuilds the module).

    Equal graph definitions compare equal, so models of one architecture share compiled
    programs. Subclass it to run the module another way while keeping the graph definitions
    (as :mod:`ntk` does for its architectures: ``super().__init__(graphdef_eval,
    graphdef_train, name)``, then override ``__call__``, ``__eq__`` and ``__hash__``).
    """

    def __init__(self, graphdef_eval, graphdef_train, name: str):
        self.graphdef_eval = graphdef_eval
        self.graphdef_train = graphdef_train
        self.__name__ = name

    def __call__(self, params, state, x, *, train: bool = False):
        from flax import nnx

        graphdef = self.graphdef_train if train else self.graphdef_eval
        module = nnx.merge(graphdef, params, state)
        out = module(x)
        if not train:
            return out, state
        _, _, new_state = nnx.split(module, nnx.Param, ...)
        return out, nnx.to_pure_dict(new_state)

    # Graph definitions compare by value: two models of the same architecture share one apply_fn
    # identity for compilation caches (engine, training), whatever their parameters.
    def __eq__(self, other):
        return (
            isinstance(other, NNXApply)
            and self.graphdef_eval == other.graphdef_eval
            and self.graphdef_train == other.graphdef_train
        )

    def __hash__(self):
        return hash((NNXApply, self.graphdef_eval, self.graphdef_train))

    def __repr__(self):
        # the digest of the graph definitions (memory addresses removed) tells architectures
        # apart in stores and provenance (a ReLU and a tanh MLP have equal parameters)
        return f"<apply_fn of {self.__name__} {_graph_digest(self.graphdef_eval, self.graphdef_train)}>"


def _graph_digest(*graphdefs) -> str:
    import hashlib
    import re

    text = re.sub(r" at 0x[0-9a-fA-F]+", "", "".join(repr(g) for g in graphdefs))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@_validate.public("landscape.from_nnx")
def from_nnx(module: nnx.Module, *, spec: dict | None = None) -> Model:
    """Build the model triple from a Flax NNX module.

    The module is split once into a static graph definition (one for evaluation mode, one for
    training mode, set with ``module.eval()`` / ``module.train()``), the ``nnx.Param``
    variables (``params``) and everything else (``state``: batch statistics, RNG counters).
    Both are returned as plain nested dicts (``nnx.to_pure_dict``). The module itself is not
    modified.

    Recipe for your own module::

        model = landscape.from_nnx(MyNet(rngs=nnx.Rngs(0)))
        loss_fn = landscape.make_loss_fn(model, "cross_entropy")
        value = landscape.evaluate(loss_fn, model.params, data)

    Args:
      module: an ``nnx.Module`` whose ``__call__(x)`` returns the outputs.
      spec: optional description used to rebuild the architecture when loading a run.

    Returns:
      A :class:`Model`.
    """
    if not _is_nnx_module(module):
        raise TypeError(
            f"landscape.from_nnx: module must be a flax.nnx.Module; got {type(module).__name__}."
        )
    from flax import nnx

    eval_module = nnx.clone(module)
    eval_module.eval()
    train_module = nnx.clone(module)
    train_module.train()
    graphdef_eval, params, state = nnx.split(eval_module, nnx.Param, ...)
    graphdef_train, _, _ = nnx.split(train_module, nnx.Param, ...)
    apply_fn = NNXApply(graphdef_eval, graphdef_train, type(module).__name__)
    return Model(apply_fn, nnx.to_pure_dict(params), nnx.to_pure_dict(state), spec)


class _LinenApply:
    def __init__(self, module, train_arg: str | None, mutable: tuple[str, ...], rng_name):
        self.module = module
        self.train_arg = train_arg
        self.mutable = mutable
        self.rng_name = rng_name
        self.__name__ = type(module).__name__

    def __call__(self, params, state, x, *, train: bool = False):
        kwargs = {}
        if self.train_arg == "train":
            kwargs["train"] = train
        elif self.train_arg == "deterministic":
            kwargs["deterministic"] = not train
        elif self.train_arg == "use_running_average":
            kwargs["use_running_average"] = not train
        variables = {"params": params, **{k: v for k, v in state.items() if k != "rng"}}
        rngs = None
        if train and "rng" in state:
            key = state["rng"]
            key, sub = jax.random.split(key)
            rngs = {self.rng_name: sub}
        if train and self.mutable:
            out, updates = self.module.apply(
                variables, x, mutable=list(self.mutable), rngs=rngs, **kwargs
            )
            new_state = {**state, **updates}
            if "rng" in state:
                new_state["rng"] = key
            return out, new_state
        out = self.module.apply(variables, x, rngs=rngs, **kwargs)
        if train and "rng" in state:
            return out, {**state, "rng": key}
        return out, state


@_validate.public("landscape.from_linen")
def from_linen(
    module,
    variables: dict,
    *,
    train_arg: str | None = "auto",
    dropout_key=None,
    rng_name: str = "dropout",
) -> Model:
    """Build the model triple from a Flax Linen module and its variables.

    Args:
      module: a ``flax.linen.Module``.
      variables: ``module.init(...)`` output: ``{"params": ..., "batch_stats": ..., ...}``.
        ``params`` become the trainable pytree; every other collection becomes ``state``.
      train_arg: the keyword of ``module.__call__`` that switches training mode: ``"train"``,
        ``"deterministic"`` (inverted), ``"use_running_average"`` (inverted), ``None`` (no such
        argument), or ``"auto"`` (detect from the signature).
      dropout_key: PRNG key for dropout in training mode (stored in ``state["rng"]``).
      rng_name: the RNG stream name the module uses for dropout.
    """
    if not isinstance(variables, dict) or "params" not in variables:
        raise TypeError(
            f"{_validate.where()}: variables must be a dict with a 'params' collection; got {type(variables).__name__}."
        )
    if train_arg == "auto":
        try:
            sig = inspect.signature(module.__call__).parameters
        except (TypeError, ValueError):
            sig = {}
        train_arg = next(
            (a for a in ("train", "deterministic", "use_running_average") if a in sig), None
        )
    _validate.check_choice(
        train_arg, (None, "train", "deterministic", "use_running_average"), name="train_arg"
    )
    params = variables["params"]
    state = {k: v for k, v in variables.items() if k != "params"}
    mutable = tuple(k for k in state)
    if dropout_key is not None:
        state["rng"] = dropout_key
    apply_fn = _LinenApply(module, train_arg, mutable, rng_name)
    return Model(apply_fn, dict(params), state, None)
