"""Loss-surface slices (Li et al. 2018; Goodfellow et al. 2015): directions, 1-D and 2-D
slices, interpolation, trajectory PCA, all exact over the whole data set and evaluated by the
foundation's grid evaluator (:mod:`landscape.grid`).

Plots are in :mod:`landscape.plot` (``plot_slice``, ``plot_contour``, ``plot_contourf``,
``plot_surface3d``, ``plot_trajectory``).
"""

from landscape.surface._adaptive import Adaptive as Adaptive
from landscape.surface._directions import Direction as Direction
from landscape.surface._directions import as_direction as as_direction
from landscape.surface._directions import direction_between as direction_between
from landscape.surface._directions import direction_from_spec as direction_from_spec
from landscape.surface._directions import filter_norms as filter_norms
from landscape.surface._directions import hessian_directions as hessian_directions
from landscape.surface._directions import normalize_direction as normalize_direction
from landscape.surface._directions import random_direction as random_direction
from landscape.surface._directions import random_directions as random_directions
from landscape.surface._fast import AffineFirstLayer as AffineFirstLayer
from landscape.surface._fast import affine_first_layer as affine_first_layer
from landscape.surface._pca import PCAResult as PCAResult
from landscape.surface._pca import pca_directions as pca_directions
from landscape.surface._slices import SliceResult as SliceResult
from landscape.surface._slices import interpolate as interpolate
from landscape.surface._slices import slice_1d as slice_1d
from landscape.surface._slices import slice_2d as slice_2d

__all__ = [
    "Adaptive",
    "AffineFirstLayer",
    "Direction",
    "PCAResult",
    "SliceResult",
    "affine_first_layer",
    "as_direction",
    "direction_between",
    "direction_from_spec",
    "filter_norms",
    "hessian_directions",
    "interpolate",
    "normalize_direction",
    "pca_directions",
    "random_direction",
    "random_directions",
    "slice_1d",
    "slice_2d",
]
