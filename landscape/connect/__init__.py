"""Mode connectivity: paths between trained solutions, barriers, curves, alignment, planes.

* Paths (:func:`linear_path`, :func:`bezier`, :func:`polychain`, re-exported from the
  foundation's :mod:`landscape.paths`): pytrees whose control points are one parameter pytree
  with a leading axis; ``path(t)`` works inside compiled code.
* :func:`profile`: loss and metrics along a path over whole data sets (the foundation's grid
  evaluator, :mod:`landscape.grid`; 61 points by default, refined around the maximum), with
  the grid's batch-norm policies (default ``"auto"``: re-estimated for batch-norm models);
  :func:`barrier`: every barrier convention, labelled.
* :func:`fit_curve`: Garipov et al.'s curve finding (Bezier or PolyChain) with Optax.
* :func:`align`: permutation alignment (weight or activation matching) with permutation groups
  derived by tracing the model (:func:`permutation_spec`).
* :func:`curve_plane`: the plane through the endpoints and the bend, with the curve on it.
"""

from landscape.connect._align import Alignment as Alignment
from landscape.connect._align import align as align
from landscape.connect._fit import CurveResult as CurveResult
from landscape.connect._fit import CurveTrainingError as CurveTrainingError
from landscape.connect._fit import fit_curve as fit_curve
from landscape.connect._plane import PlaneResult as PlaneResult
from landscape.connect._plane import curve_plane as curve_plane
from landscape.connect._profile import CONVENTIONS as CONVENTIONS
from landscape.connect._profile import Barrier as Barrier
from landscape.connect._profile import Profile as Profile
from landscape.connect._profile import barrier as barrier
from landscape.connect._profile import profile as profile
from landscape.connect._trace import PermutationSpec as PermutationSpec
from landscape.connect._trace import permutation_spec as permutation_spec
from landscape.connect._trace import permute as permute
from landscape.paths import PATH_KINDS as PATH_KINDS
from landscape.paths import Path as Path
from landscape.paths import bezier as bezier
from landscape.paths import linear_path as linear_path
from landscape.paths import polychain as polychain

__all__ = [
    "CONVENTIONS",
    "PATH_KINDS",
    "Alignment",
    "Barrier",
    "CurveResult",
    "CurveTrainingError",
    "Path",
    "PermutationSpec",
    "PlaneResult",
    "Profile",
    "align",
    "barrier",
    "bezier",
    "curve_plane",
    "fit_curve",
    "linear_path",
    "permutation_spec",
    "permute",
    "polychain",
    "profile",
]
