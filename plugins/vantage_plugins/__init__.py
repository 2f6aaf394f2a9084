"""Vantage's built-in plugins, registered through the ``vantage`` entry-point group exactly as a
third-party plugin registers its own (see ``pyproject.toml``)."""

import vantage_core.api  # noqa: F401  (loads the optimized BLAS before any plugin imports mlx)
