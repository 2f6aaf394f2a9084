"""Vantage: a toolkit for Mixture-of-Experts text-to-SQL research.

Importing the package first loads an optimized BLAS (see :mod:`vantage_core.blas`), so every
module of Vantage, and every plugin, may import ``mlx.core`` afterwards at full speed.
"""

import pluggy

from vantage_core import blas as _blas

_blas.load()

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("vantage")
"""Marker for plugin hook implementations: ``@hookimpl def register_routers(register): ...``"""

__all__ = ["hookimpl", "__version__"]
