"""Hessian spectra of the full-data-set loss: exact curvature products, Lanczos, top-k
eigenpairs, trace, spectral density (SLQ), sharpness.

Every quantity is computed from exact products over the whole data set (the foundation engine
accumulates the batches in one compiled program). Plots live in :mod:`landscape.plot`
(:func:`~landscape.plot.plot_density`, :func:`~landscape.plot.plot_sharpness`, ...).

Operators are first-class inputs. The estimators :func:`eigenvalues`, :func:`trace` and
:func:`spectral_density` (and :func:`lanczos`) take an operator, through one driver:

* a :class:`CurvatureOperator` from the factory :func:`make_hvp` (build it once, use it for
  several analyses: ``op = make_hvp(loss_fn, params, data, curvature="ggn")``, then
  ``eigenvalues(op, k=5, key=key)``, ``trace(op, key=key)``);
* any matvec ``v -> A v`` on pytrees, with ``like=`` a template of its vectors (arrays or
  ``jax.ShapeDtypeStruct``): it must be traceable, symmetric and hashable (a module-level
  function or a ``jax.tree_util.Partial`` carrying its arrays; a new lambda per call
  recompiles);
* or, as a one-shot for notebooks, ``loss_fn, params, data`` with the operator settings of
  :func:`make_hvp` as keywords (``curvature``, ``model``, ``output_loss``, ``params_filter``,
  ``preconditioner``, ``batch_size``, ``method``: declared once, in :func:`make_hvp`).

Randomness is explicit: every function that draws random vectors takes a required ``key``.
"""

from landscape.hessian._analysis import DecompositionResult as DecompositionResult
from landscape.hessian._analysis import OverlapResult as OverlapResult
from landscape.hessian._analysis import SharpnessResult as SharpnessResult
from landscape.hessian._analysis import adaptive_sharpness as adaptive_sharpness
from landscape.hessian._analysis import epsilon_sharpness as epsilon_sharpness
from landscape.hessian._analysis import ggn_decomposition as ggn_decomposition
from landscape.hessian._analysis import gradient_overlap as gradient_overlap
from landscape.hessian._analysis import sharpness as sharpness
from landscape.hessian._classes import ClassDecompositionResult as ClassDecompositionResult
from landscape.hessian._classes import class_decomposition as class_decomposition
from landscape.hessian._classes import class_operators as class_operators
from landscape.hessian._density import DensityResult as DensityResult
from landscape.hessian._density import smooth_density as smooth_density
from landscape.hessian._density import spectral_density as spectral_density
from landscape.hessian._eigen import EigenResult as EigenResult
from landscape.hessian._eigen import eigenvalues as eigenvalues
from landscape.hessian._heads import GROUPS as GROUPS
from landscape.hessian._heads import HeadSpectraResult as HeadSpectraResult
from landscape.hessian._heads import block_selection as block_selection
from landscape.hessian._heads import head_selection as head_selection
from landscape.hessian._heads import head_spectra as head_spectra
from landscape.hessian._lanczos import LanczosResult as LanczosResult
from landscape.hessian._lanczos import lanczos as lanczos
from landscape.hessian._lanczos import tridiagonal_eigh as tridiagonal_eigh
from landscape.hessian._operators import CurvatureOperator as CurvatureOperator
from landscape.hessian._operators import hvp as hvp
from landscape.hessian._operators import make_hvp as make_hvp
from landscape.hessian._select import SelectedOperator as SelectedOperator
from landscape.hessian._select import Selection as Selection
from landscape.hessian._select import Slice as Slice
from landscape.hessian._select import attention_layers as attention_layers
from landscape.hessian._select import restrict as restrict
from landscape.hessian._select import select as select
from landscape.hessian._through_training import SpectraCallback as SpectraCallback
from landscape.hessian._through_training import SpectraResult as SpectraResult
from landscape.hessian._through_training import spectra_callback as spectra_callback
from landscape.hessian._trace import TraceResult as TraceResult
from landscape.hessian._trace import trace as trace
from landscape.hessian._tracking import adam_preconditioner as adam_preconditioner
from landscape.hessian._tracking import sharpness_callback as sharpness_callback
from landscape.hessian._tracking import stability_threshold as stability_threshold

__all__ = [
    "CurvatureOperator",
    "DecompositionResult",
    "DensityResult",
    "EigenResult",
    "GROUPS",
    "HeadSpectraResult",
    "LanczosResult",
    "OverlapResult",
    "SelectedOperator",
    "Selection",
    "SharpnessResult",
    "Slice",
    "SpectraCallback",
    "SpectraResult",
    "TraceResult",
    "adam_preconditioner",
    "adaptive_sharpness",
    "attention_layers",
    "block_selection",
    "class_decomposition",
    "class_operators",
    "ClassDecompositionResult",
    "eigenvalues",
    "epsilon_sharpness",
    "ggn_decomposition",
    "gradient_overlap",
    "head_selection",
    "head_spectra",
    "hvp",
    "lanczos",
    "make_hvp",
    "restrict",
    "select",
    "sharpness",
    "sharpness_callback",
    "smooth_density",
    "spectra_callback",
    "spectral_density",
    "stability_threshold",
    "trace",
    "tridiagonal_eigh",
]
