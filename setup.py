"""Builds the native CPU kernels (vantage_core/kernels/csrc) with CMake, as MLX documents for C++
extensions; everything else about the package is in pyproject.toml.

The extension is optional: where it cannot be built (no compiler, no CMake) the install goes on
without it and ``vantage doctor`` says MLX's own ops are in use. ``VANTAGE_REQUIRE_NATIVE=1``
makes a failed build fail the install (CI sets it).
"""

import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

try:
    from mlx.extension import CMakeBuild, CMakeExtension
except ImportError:  # MLX is a build requirement; a build without it skips the kernels
    CMakeBuild, CMakeExtension = build_ext, None


class OptionalCMakeBuild(CMakeBuild):
    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001  (CMake or compiler failures of any kind)
            if os.environ.get("VANTAGE_REQUIRE_NATIVE") == "1":
                raise
            print(f"warning: Vantage's native kernels were not built ({exc}); MLX's own ops will be used",
                  file=sys.stderr)


extensions = [] if CMakeExtension is None else [CMakeExtension("vantage_core.kernels._native",
                                                               sourcedir="vantage_core/kernels/csrc")]
setup(ext_modules=extensions, cmdclass={"build_ext": OptionalCMakeBuild})
