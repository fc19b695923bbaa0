"""ntk: empirical and analytic (infinite-width) neural tangent kernels on current JAX."""

from ntk._arch import Architecture as Architecture
from ntk._arch import parallel as parallel
from ntk._arch import residual as residual
from ntk._arch import serial as serial
from ntk._layers import ABRelu as ABRelu
from ntk._layers import ArchitectureError as ArchitectureError
from ntk._layers import AvgPool as AvgPool
from ntk._layers import Conv as Conv
from ntk._layers import Dense as Dense
from ntk._layers import Elementwise as Elementwise
from ntk._layers import Erf as Erf
from ntk._layers import Flatten as Flatten
from ntk._layers import Gelu as Gelu
from ntk._layers import GlobalAvgPool as GlobalAvgPool
from ntk._layers import Identity as Identity
from ntk._layers import LayerNorm as LayerNorm
from ntk._layers import LeakyRelu as LeakyRelu
from ntk._layers import Relu as Relu
from ntk._analytic import Kernel as Kernel
from ntk._analytic import kernel as kernel
from ntk._analytic import kernel_fn as kernel_fn
from ntk._empirical import empirical_nngp as empirical_nngp
from ntk._empirical import empirical_ntk as empirical_ntk
from ntk._empirical import empirical_ntk_fn as empirical_ntk_fn
