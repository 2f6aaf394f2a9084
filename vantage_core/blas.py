"""Load an optimized BLAS into the global symbol scope before MLX is first imported.

The Linux ``mlx[cpu]`` wheel links netlib's reference BLAS, whose fp32 sgemm runs about 30x
slower than OpenBLAS. Symbols already in the global scope win over the wheel's own library, so
loading OpenBLAS (or MKL) with ``RTLD_GLOBAL`` before ``mlx.core`` is imported makes MLX use it.

Set ``VANTAGE_BLAS`` to a library path to choose one, or to ``none`` to keep the bundled one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import sys
import warnings
from dataclasses import dataclass

CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
)


@dataclass
class BlasStatus:
    loaded: str | None  # path we loaded, None when nothing was loaded
    reason: str  # one sentence a person can read


_status: BlasStatus | None = None


def _candidates() -> list[str]:
    found = [p for p in CANDIDATES if os.path.exists(p)]
    name = ctypes.util.find_library("openblas")
    if name:
        found.append(name)
    # Intel's `mkl` wheel puts libmkl_rt into <prefix>/lib.
    found += sorted(glob.glob(os.path.join(sys.prefix, "lib", "libmkl_rt.so*")))
    return found


def load() -> BlasStatus:
    """Load the first optimized BLAS found; idempotent. Returns what happened."""
    global _status
    if _status is not None:
        return _status
    choice = os.environ.get("VANTAGE_BLAS", "").strip()
    if choice.lower() == "none":
        _status = BlasStatus(None, "VANTAGE_BLAS=none: MLX keeps the BLAS bundled with its wheel")
        return _status
    if sys.platform != "linux":
        _status = BlasStatus(None, f"not needed on {sys.platform}")
        return _status
    if "mlx.core" in sys.modules:
        _status = BlasStatus(
            None, "mlx.core was imported before vantage_core; its BLAS can no longer be swapped "
            "(import vantage_core first)")
        warnings.warn(_status.reason, RuntimeWarning, stacklevel=2)
        return _status
    paths = [choice] if choice else _candidates()
    errors = []
    for path in paths:
        try:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        except OSError as exc:
            errors.append(f"{path}: {exc}")
            continue
        _status = BlasStatus(path, f"loaded {path} before mlx.core")
        return _status
    if choice:
        raise RuntimeError(f"VANTAGE_BLAS={choice!r} could not be loaded: {'; '.join(errors)}")
    _status = BlasStatus(
        None, "no optimized BLAS found: fp32 matmul in MLX runs about 30x slower. Install "
        "Debian's libopenblas0-pthread (apt-get install libopenblas0-pthread) or "
        "`pip install mkl`, or set VANTAGE_BLAS=/path/to/libopenblas.so")
    warnings.warn(_status.reason, RuntimeWarning, stacklevel=2)
    return _status


def active_blas() -> str:
    """The BLAS library mapped into this process, read from /proc/self/maps."""
    try:
        with open("/proc/self/maps") as f:
            libs = {line.split()[-1] for line in f if ".so" in line}
    except OSError:
        return "unknown (no /proc/self/maps)"
    for key in ("libopenblas", "libmkl_rt", "libblis", "libblas"):
        hits = sorted(p for p in libs if os.path.basename(p).startswith(key))
        if hits:
            name = "netlib reference BLAS (slow)" if key == "libblas" else key[3:]
            return f"{name}: {hits[0]}"
    return "none mapped yet"
