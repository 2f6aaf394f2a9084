"""Quantized weights: writing them (``vantage export --quantize``) and the form they run in.

An export quantized to 8 or 4 bits stores MLX's affine format (packed integers, a scale and a
bias per group of ``group_size`` inputs). How those layers run once loaded is
``inference.quantized``:

- ``native``: as stored, through MLX's ``quantized_matmul``;
- ``dequantize``: once, at load, back to float layers (``nn.Linear``, ``nn.Embedding``, float
  expert weights) holding exactly the weights ``quantized_matmul`` applies; the export still
  saves disk and download;
- ``auto`` (the default): ``dequantize`` on the CPU, ``native`` on a GPU. MLX's CPU
  ``quantized_matmul`` is slower than an fp32 matmul at every shape the models use, from one
  row to thousands (``benchmarks/quantized.py``; figures in ``docs/quantization.md``).
"""

from __future__ import annotations

from typing import Any

import vantage_core  # noqa: F401  (the optimized BLAS before mlx)
import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_unflatten

from vantage_core.errors import ConfigError

QUANTIZED_FORMS = ("auto", "dequantize", "native")


def quantize_model(model: Any, bits: int, group_size: int = 64) -> int:
    """Quantize the model's linear and embedding layers in place (MLX's ``nn.quantize``).

    Layers whose input width is not a multiple of ``group_size`` stay in float, and so do the
    routers (a few weights, and their argmax decides everything downstream). Returns the number
    of layers quantized.
    """
    if bits not in (4, 8):
        raise ConfigError(f"quantization bits: {bits}; valid: 4, 8")
    count = 0

    def predicate(path: str, module: Any) -> bool:
        nonlocal count
        if not hasattr(module, "to_quantized") or ".router" in f".{path}":
            return False
        widths = module.quantizable_widths() if hasattr(module, "quantizable_widths") else \
            [module.weight.shape[-1]] if getattr(module, "weight", None) is not None else []
        if not widths or any(w % group_size for w in widths):
            return False
        count += 1
        return True

    nn.quantize(model, group_size=group_size, bits=bits, class_predicate=predicate)
    return count


def runtime_form(choice: str, device: mx.Device | None = None) -> str:
    """``"dequantize"`` or ``"native"``: how quantized layers run on ``device`` (default: MLX's
    default device) for the ``inference.quantized`` value ``choice``."""
    if choice not in QUANTIZED_FORMS:
        raise ConfigError(f"inference.quantized: {choice!r}; valid: {', '.join(QUANTIZED_FORMS)}")
    if choice != "auto":
        return choice
    device = device or mx.default_device()
    return "dequantize" if device.type == mx.DeviceType.cpu else "native"


def describe_form(choice: str = "auto") -> str:
    """One line for ``vantage doctor``: how 8- and 4-bit exports run here, and why."""
    device = mx.default_device()
    where = f"the {device.type.name.upper()}"
    if runtime_form(choice, device) == "dequantize":
        return (f"8/4-bit exports dequantized to float once at load on {where} (inference.quantized: {choice}; "
                f"MLX's CPU quantized_matmul is slower than fp32 matmul)")
    return f"8/4-bit exports run through quantized_matmul on {where} (inference.quantized: {choice})"


def dequantize_model(model: Any) -> int:
    """Turn every quantized layer of ``model`` back into its float form, in place: MLX's
    ``QuantizedLinear`` and ``QuantizedEmbedding`` into ``Linear`` and ``Embedding``, and any
    other module with a ``to_float()`` (the expert banks) through it. Returns the number of
    layers turned."""
    swaps, count = [], 0
    for path, module in model.named_modules():
        if isinstance(module, nn.QuantizedLinear):
            swaps.append((path, float_linear(module)))
        elif isinstance(module, nn.QuantizedEmbedding):
            swaps.append((path, float_embedding(module)))
        elif getattr(module, "bits", None) and hasattr(module, "to_float"):
            module.to_float()
            count += 1
    if swaps:
        model.update_modules(tree_unflatten(swaps))
    return count + len(swaps)


def dequantized_weight(module: Any) -> mx.array:
    """The float (out, in) weight a quantized layer's ``quantized_matmul`` applies."""
    return mx.dequantize(module["weight"], module["scales"], module.get("biases"), group_size=module.group_size,
                         bits=module.bits, mode=getattr(module, "mode", "affine"), dtype=module["scales"].dtype)


def float_linear(module: nn.QuantizedLinear) -> nn.Linear:
    """An ``nn.Linear`` computing what ``module`` computes, from its dequantized weight."""
    weight = dequantized_weight(module)
    out = nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in module)
    out.weight = weight
    if "bias" in module:
        out.bias = module["bias"]
    return out


def float_embedding(module: nn.QuantizedEmbedding) -> nn.Embedding:
    """An ``nn.Embedding`` (and its ``as_linear``) holding ``module``'s dequantized table."""
    weight = dequantized_weight(module)
    out = nn.Embedding(weight.shape[0], weight.shape[1])
    out.weight = weight
    return out
