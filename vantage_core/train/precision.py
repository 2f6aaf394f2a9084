"""Which precision a run's GEMMs use: ``train.precision`` resolved once, on this machine.

``fp32``: float32 products. ``bf16``: the products of the forward and backward passes (the
decoder's and the schema encoder's projections, the experts, the output heads) take inputs rounded
to bfloat16 and sum in float32 (:func:`vantage_core.kernels.matmul_precision`); weights, optimizer
state, norms, softmax, attention and the loss stay float32. ``auto``: bf16 where the CPU has
AVX512-BF16 (VDPBF16PS: two bf16 multiply-adds per float32 lane in one instruction), fp32
elsewhere, where bf16 inputs cost accuracy and gain no speed. ``VANTAGE_PRECISION=fp32`` forces
fp32 whatever the config says.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from vantage_core import kernels
from vantage_core.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16")
ENV = "VANTAGE_PRECISION"


@dataclass(frozen=True)
class Precision:
    """A resolved ``train.precision``."""

    requested: str  # auto | fp32 | bf16, as configured
    name: str  # fp32 | bf16: what the GEMMs run in
    reason: str  # why, in one sentence

    def __str__(self) -> str:
        return f"train.precision {self.requested} -> {self.name}: {self.reason}"


def forced_fp32() -> bool:
    """Whether ``VANTAGE_PRECISION`` forces fp32; an error for any value but fp32 (or unset)."""
    value = os.environ.get(ENV, "").strip()
    if value and value.lower() != "fp32":
        raise ConfigError(f"{ENV}={value!r}: the one valid value is fp32 (forces float32 GEMMs whatever "
                          f"train.precision says); unset it to follow train.precision")
    return bool(value)


def cpu_has_bf16() -> bool:
    """Whether this CPU runs the native bf16 GEMM on AVX512-BF16 (VDPBF16PS)."""
    return "avx512bf16" in kernels.bf16_gemm_isas()


def resolve_precision(requested: str) -> Precision:
    """``train.precision`` on this machine and process (its environment included)."""
    if requested not in PRECISIONS:
        raise ConfigError(f"train.precision: {requested!r}; valid: {', '.join(PRECISIONS)}")
    if forced_fp32():
        return Precision(requested, "fp32", f"{ENV}=fp32 forces float32")
    if requested == "fp32":
        return Precision(requested, "fp32", "as configured")
    if requested == "bf16":
        return Precision(requested, "bf16", f"as configured, on {kernels.bf16_gemm()}")
    if cpu_has_bf16():
        return Precision(requested, "bf16", f"this CPU has AVX512-BF16: {kernels.bf16_gemm()}")
    if not kernels.bf16_gemm_isas():
        return Precision(requested, "fp32", f"no native bf16 GEMM here, only {kernels.bf16_gemm()}")
    return Precision(requested, "fp32", "this CPU has no AVX512-BF16, where bf16 GEMMs are no faster than float32")


def describe(requested: str = "auto") -> str:
    """What ``requested`` resolves to here, in one line (``vantage doctor``)."""
    try:
        resolved = resolve_precision(requested)
    except ConfigError as exc:
        return f"error: {exc}"
    isas = kernels.bf16_gemm_isas()
    return f"{resolved} (bf16 GEMM tile kernels here: {', '.join(isas)})" if isas else str(resolved)
