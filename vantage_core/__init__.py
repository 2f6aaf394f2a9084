"""Vantage: a toolkit for Mixture-of-Experts text-to-SQL research.

Importing the package first loads an optimized BLAS (see :mod:`vantage_core.blas`), so every
module of Vantage, and every plugin, may import ``mlx.core`` afterwards at full speed, and lets
glibc reuse freed memory (see :mod:`vantage_core.allocator`).
"""

import pluggy

from vantage_core import allocator as _allocator
from vantage_core import blas as _blas

_blas.load()
_allocator.keep_freed_memory()

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("vantage")
"""Marker for plugin hook implementations: ``@hookimpl def register_routers(register): ...``"""

__all__ = ["hookimpl", "__version__"]
