"""What ``vantage doctor`` checks: the MLX install, its device and BLAS, and their speed."""

from __future__ import annotations

import platform
import time
from typing import Iterator

from vantage_core import blas


def sgemm_gflops(size: int = 1024, repeats: int = 10) -> tuple[float, float]:
    """Measured fp32 matmul rate (GFLOP/s) of MLX and of numpy, on the same square size."""
    import mlx.core as mx
    import numpy as np

    flops = 2.0 * size ** 3
    a = mx.random.normal((size, size))
    mx.eval(a @ a)
    start = time.perf_counter()
    for _ in range(repeats):
        mx.eval(a @ a)
    mlx_rate = flops * repeats / (time.perf_counter() - start) / 1e9
    b = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    b @ b
    start = time.perf_counter()
    for _ in range(repeats):
        b @ b
    np_rate = flops * repeats / (time.perf_counter() - start) / 1e9
    return mlx_rate, np_rate


def report(size: int = 1024) -> Iterator[str]:
    import mlx.core as mx

    status = blas.load()
    yield f"python        {platform.python_version()} ({platform.machine()}, {platform.system()})"
    yield f"mlx           {mx.__version__}, default device {mx.default_device()}"
    yield f"blas loading  {status.reason}"
    yield f"blas active   {blas.active_blas()}"
    mlx_rate, np_rate = sgemm_gflops(size)
    ratio = mlx_rate / np_rate
    verdict = "ok" if ratio >= 0.6 else "SLOW: see 'blas loading' above"
    yield f"sgemm {size}    mlx {mlx_rate:.1f} GFLOP/s, numpy {np_rate:.1f} GFLOP/s, ratio {ratio:.2f} ({verdict})"
    from vantage_core import kernels

    yield f"kernels       native {kernels.status().reason}"
    from vantage_core.train.precision import describe

    yield f"precision     {describe()}"
    from vantage_core import allocator

    yield f"allocator     {allocator.keep_freed_memory()}"
    from vantage_core.model.quantization import describe_form

    yield f"quantized     {describe_form()}"
    from vantage_core.plugins import registry

    reg = registry()
    counts = ", ".join(f"{len(reg.names(k))} {k}" for k in ("router", "expert", "schema_encoder", "dataset", "metric"))
    yield f"plugins       {counts}"
