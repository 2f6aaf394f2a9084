"""Let glibc keep freed memory for reuse instead of returning large blocks to the kernel.

MLX's CPU backend mallocs a fresh buffer for every array. glibc serves blocks above its mmap
threshold (at most 32 MiB, adjusted as it goes) with a new ``mmap`` each time and gives them
back on ``free``, so every training step pays page faults and the kernel's zeroing for its
largest arrays again (about a tenth of a step of the tiny config here: see
``benchmarks/train_step.py``). Raising the mmap and trim thresholds to 1 GiB makes those blocks
come from the heap and be reused.

Skipped when the user set any ``MALLOC_*`` variable, off the GNU C library, or with
``VANTAGE_MALLOC=default``.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
THRESHOLD = 1 << 30

_status: str | None = None


def keep_freed_memory() -> str:
    """Raise glibc's mmap and trim thresholds once; returns one sentence on what was done."""
    global _status
    if _status is not None:
        return _status
    if os.environ.get("VANTAGE_MALLOC", "").strip().lower() == "default":
        _status = "VANTAGE_MALLOC=default: glibc's own thresholds"
    elif any(k.startswith("MALLOC_") for k in os.environ):
        _status = "MALLOC_* is set: left to it"
    elif not sys.platform.startswith("linux"):
        _status = f"not changed on {sys.platform}"
    else:
        try:
            libc = ctypes.CDLL(None)
            ok = libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD) == 1 and libc.mallopt(M_TRIM_THRESHOLD, THRESHOLD) == 1
        except (OSError, AttributeError):  # not glibc (musl has no mallopt)
            ok = False
        _status = ("glibc keeps freed blocks up to 1 GiB for reuse (mmap and trim thresholds)" if ok
                   else "not glibc: the C library's own thresholds")
    return _status
