"""landscape-ntk: loss-landscape geometry for JAX/Flax models.

Analyses: :mod:`landscape.hessian` (curvature spectra), :mod:`landscape.surface` (loss-surface
slices), :mod:`landscape.connect` (mode connectivity), :mod:`landscape.diagnostics`
(trainability), :mod:`landscape.sparsity` (lottery tickets, instability); plots in :mod:`landscape.plot` (imported
explicitly: it needs matplotlib). Kernels: the sibling package :mod:`ntk`.

The foundation: the model triple (:class:`Model`, :func:`from_nnx`, :func:`from_linen`), losses
(:func:`make_loss_fn`), embedded data (:func:`load_data`), models (:func:`make_model`), training
(:func:`train`), runs on disk (:func:`save_run`, :func:`load_run`), the exact batched engine
(:func:`evaluate`, :func:`value_and_grad`, :mod:`landscape.engine`), the grid evaluator
(:mod:`landscape.grid`, :class:`GridSettings`), paths (:mod:`landscape.paths`), the store of
resumable jobs (:class:`Store`), pytree algebra (:mod:`landscape.tree`), boundary checks
(:mod:`landscape.validate`), and the primitives several analyses share: Gaussian expectations
of elementwise functions (:mod:`landscape.expectations`) and per-example Jacobians with their
Gram matrices (:mod:`landscape.jacobians`).

Importing ``landscape`` (or any foundation module, e.g. ``from landscape import engine``) loads
only the foundation; the analyses load on first use (``landscape.hessian``, or ``from landscape
import hessian``), so :mod:`ntk`, which builds on the foundation alone, never pulls them in.
Flax loads when a model is built (:func:`make_model`, :func:`from_nnx`) and Optax when one is
trained, so the import costs JAX and the foundation only. The ``landscape`` command
(:mod:`landscape.cli`) imports the package without even the foundation: its names then load on
first use (PEP 562), and ``landscape --help`` and ``--version`` never import JAX.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING

from landscape import (
    _cache,
    _startup,  # noqa: F401 - first: Ctrl-C while the command starts up
)

__version__ = "0.1.0"

if TYPE_CHECKING:  # what _FOUNDATION binds (for type checkers and IDEs), and the lazy analyses
    from landscape import batchnorm as batchnorm
    from landscape import connect as connect
    from landscape import diagnostics as diagnostics
    from landscape import engine as engine
    from landscape import expectations as expectations
    from landscape import grid as grid
    from landscape import hessian as hessian
    from landscape import jacobians as jacobians
    from landscape import paths as paths
    from landscape import sparsity as sparsity
    from landscape import store as store
    from landscape import surface as surface
    from landscape import tree as tree
    from landscape import validate as validate
    from landscape._cache import status as compilation_cache_status
    from landscape._model import Model as Model
    from landscape._model import NNXApply as NNXApply
    from landscape._model import as_model as as_model
    from landscape._model import from_linen as from_linen
    from landscape._model import from_nnx as from_nnx
    from landscape._provenance import data_hash as data_hash
    from landscape._provenance import provenance as provenance
    from landscape._result import Result as Result
    from landscape._result import result as result
    from landscape._result import static_field as static_field
    from landscape.batchnorm import reestimate_bn as reestimate_bn
    from landscape.data import Dataset as Dataset
    from landscape.data import load_data as load_data
    from landscape.engine import evaluate as evaluate
    from landscape.engine import value_and_grad as value_and_grad
    from landscape.grid import GridSettings as GridSettings
    from landscape.losses import Loss as Loss
    from landscape.losses import make_loss_fn as make_loss_fn
    from landscape.models import make_model as make_model
    from landscape.runs import load_run as load_run
    from landscape.runs import save_run as save_run
    from landscape.store import Store as Store
    from landscape.train import TrainingDivergedError as TrainingDivergedError
    from landscape.train import TrainState as TrainState
    from landscape.train import callback as callback
    from landscape.train import make_optimizer as make_optimizer
    from landscape.train import make_schedule as make_schedule
    from landscape.train import train as train

# The foundation's public names: name -> "module" (the module itself) or "module:attribute", in
# the order they are imported. ``landscape.train`` is the function (bound after the module of
# the same name is imported).
_FOUNDATION: dict[str, str] = {
    "batchnorm": "landscape.batchnorm",
    "engine": "landscape.engine",
    "expectations": "landscape.expectations",
    "grid": "landscape.grid",
    "jacobians": "landscape.jacobians",
    "paths": "landscape.paths",
    "store": "landscape.store",
    "tree": "landscape.tree",
    "validate": "landscape.validate",
    "compilation_cache_status": "landscape._cache:status",
    "Model": "landscape._model:Model",
    "NNXApply": "landscape._model:NNXApply",
    "as_model": "landscape._model:as_model",
    "from_linen": "landscape._model:from_linen",
    "from_nnx": "landscape._model:from_nnx",
    "data_hash": "landscape._provenance:data_hash",
    "provenance": "landscape._provenance:provenance",
    "Result": "landscape._result:Result",
    "result": "landscape._result:result",
    "static_field": "landscape._result:static_field",
    "reestimate_bn": "landscape.batchnorm:reestimate_bn",
    "Dataset": "landscape.data:Dataset",
    "load_data": "landscape.data:load_data",
    "evaluate": "landscape.engine:evaluate",
    "value_and_grad": "landscape.engine:value_and_grad",
    "GridSettings": "landscape.grid:GridSettings",
    "Loss": "landscape.losses:Loss",
    "make_loss_fn": "landscape.losses:make_loss_fn",
    "make_model": "landscape.models:make_model",
    "load_run": "landscape.runs:load_run",
    "save_run": "landscape.runs:save_run",
    "Store": "landscape.store:Store",
    "TrainingDivergedError": "landscape.train:TrainingDivergedError",
    "TrainState": "landscape.train:TrainState",
    "callback": "landscape.train:callback",
    "make_optimizer": "landscape.train:make_optimizer",
    "make_schedule": "landscape.train:make_schedule",
    "train": "landscape.train:train",
}

# the analyses, plots, report and command line: loaded on first use (PEP 562)
_LAZY_MODULES = {"connect", "diagnostics", "hessian", "sparsity", "surface", "plot", "study", "cli"}

_STATE = {"loaded": False, "loading": False}


def _resolve(name: str):
    module, _, attr = _FOUNDATION[name].partition(":")
    __import__(module)  # as an import statement does (-X importtime does not see import_module)
    value = sys.modules[module]
    return getattr(value, attr) if attr else value


def _load_foundation() -> None:
    """Import the foundation (JAX with it), bind its public names here, then turn on JAX's
    persistent compilation cache (:mod:`landscape._cache`); once. The package import does this,
    except in the ``landscape`` command, where the command does before it runs (and the first
    public name that is not a module, ``landscape.Model``, looked up before that)."""
    if _STATE["loaded"] or _STATE["loading"]:
        return
    _STATE["loading"] = True
    try:
        for name in _FOUNDATION:
            globals()[name] = _resolve(name)
        _cache.enable()  # JAX's persistent compilation cache, unless configured already
        _STATE["loaded"] = True
    finally:
        _STATE["loading"] = False


def __getattr__(name: str):
    if name in _LAZY_MODULES:
        return importlib.import_module(f"landscape.{name}")
    if name in _FOUNDATION:
        if _STATE["loading"] or ":" not in _FOUNDATION[name]:
            # a module (``from landscape import engine``, as the foundation's modules import
            # each other) is imported alone, as Python would import it without this hook
            return _resolve(name)
        _load_foundation()  # the command line imported the package without the foundation
        return globals()[name]
    raise AttributeError(f"module 'landscape' has no attribute {name!r}")


def __dir__():
    # the foundation and the analyses are listed; plot, report and cli (matplotlib, the command
    # line) are not, so introspection (dir, autodoc, getmembers) never imports matplotlib
    return sorted(set(globals()) | set(_FOUNDATION) | {"connect", "diagnostics", "hessian", "sparsity", "surface"})


# ``landscape --help`` and ``--version`` need neither JAX nor the foundation (landscape.cli)
if not _startup._is_command_line():
    _load_foundation()

__all__ = [
    "Dataset",
    "GridSettings",
    "Loss",
    "Model",
    "NNXApply",
    "Result",
    "Store",
    "TrainState",
    "TrainingDivergedError",
    "as_model",
    "batchnorm",
    "callback",
    "compilation_cache_status",
    "connect",
    "data_hash",
    "diagnostics",
    "engine",
    "expectations",
    "evaluate",
    "from_linen",
    "from_nnx",
    "grid",
    "jacobians",
    "hessian",
    "load_data",
    "load_run",
    "make_loss_fn",
    "make_model",
    "make_optimizer",
    "make_schedule",
    "paths",
    "provenance",
    "reestimate_bn",
    "result",
    "save_run",
    "sparsity",
    "static_field",
    "store",
    "surface",
    "train",
    "tree",
    "validate",
    "value_and_grad",
]
