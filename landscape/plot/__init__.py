"""Plots (matplotlib only). Functions take result objects and an optional ``ax``, return the
axes, and never call ``plt.show()``. Importing :mod:`landscape` does not import this module.

New figures use constrained layout (a plain ``savefig`` keeps every label), curves that may
coincide get distinct line styles and markers, and legends go where they hide no data
(:func:`place_legend`, also for the caller's own axes)."""

from landscape.plot._connect import *  # noqa: F403
from landscape.plot._heads import *  # noqa: F403
from landscape.plot._hessian import *  # noqa: F403
from landscape.plot._lr import *  # noqa: F403
from landscape.plot._meanfield import *  # noqa: F403
from landscape.plot._monitor import *  # noqa: F403
from landscape.plot._signal import *  # noqa: F403
from landscape.plot._sparsity import *  # noqa: F403
from landscape.plot._spectra_training import *  # noqa: F403
from landscape.plot._style import *  # noqa: F403
from landscape.plot._surface import *  # noqa: F403
