// Python bindings of the native kernels: vantage_core.kernels._native.
#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/variant.h>
#include <nanobind/stl/vector.h>

#include "kernels.h"

namespace nb = nanobind;
using namespace nb::literals;

NB_MODULE(_native, m) {
  m.doc() = "Vantage's fused CPU kernels for MLX (float32; use vantage_core.kernels, which falls back to MLX)";
  m.attr("mlx_version") = VANTAGE_MLX_VERSION;  // the MLX these were compiled against
  m.def("swiglu", &vantage::swiglu, "gate_up"_a, nb::kw_only(), "stream"_a = nb::none(),
        "(..., 2H) [gate | up] -> (..., H) silu(gate) * up");
  m.def("rms_norm", &vantage::rms_norm, "x"_a, "weight"_a, "eps"_a, nb::kw_only(), "stream"_a = nb::none(),
        "x * rsqrt(mean(x^2, -1) + eps) * weight");
  m.def("cross_entropy", &vantage::cross_entropy, "logits"_a, "targets"_a, nb::kw_only(), "stream"_a = nb::none(),
        "(..., C), (...) -> (...) logsumexp(logits) - logits[target]; out-of-range targets score 0");
  m.def("softmax", &vantage::softmax, "x"_a, "causal"_a = false, nb::kw_only(), "stream"_a = nb::none(),
        "softmax over the last axis; causal masks keys after each query (last two axes: Tq, Tk)");
  m.def("attention", &vantage::attention, "q"_a, "k"_a, "v"_a, "scale"_a, "causal"_a = false, "bias"_a = nb::none(),
        nb::kw_only(), "stream"_a = nb::none(),
        "(B, H, Tq, hd), (B, H_kv, Tk, hd) x2 -> (B, Tq, H, hd) softmax(scale q k^T + bias) v; any strides");
  m.def("adamw", &vantage::adamw, "params"_a, "grads"_a, "m"_a, "v"_a, "lr"_a, "scale"_a, "b1"_a, "b2"_a, "eps"_a,
        "weight_decay"_a, nb::kw_only(), "stream"_a = nb::none(),
        "AdamW over lists of tensors in one call (grads times scale first): the new params, m's, then v's");
  m.def("moe_combine", &vantage::moe_combine, "rows"_a, "weights"_a, "inv"_a, nb::kw_only(), "stream"_a = nb::none(),
        "(M, d) rows by expert, (N, k) weights and row of each token-slot -> (N, d) weighted sums");
  m.def("dropout", &vantage::dropout, "x"_a, "seed"_a, "p"_a, nb::kw_only(), "stream"_a = nb::none(),
        "x * keep / (1 - p): each element dropped with probability p by a hash of (seed, its index)");
  m.def("matmul_bf16", &vantage::matmul_bf16, "a"_a, "b"_a, "trans_a"_a = false, "trans_b"_a = false, nb::kw_only(),
        "stream"_a = nb::none(),
        "op(a) op(b) with a and b rounded to bfloat16, float32 sums; a (M, K) or (K, M) transposed, b (K, N) or (N, K)");
  m.def("bf16_gemm_isa", &vantage::bf16_gemm_isa, "the bf16 GEMM's tile kernel in use: avx512bf16, avx2 or generic");
  m.def("bf16_gemm_isas", &vantage::bf16_gemm_isas, "the bf16 GEMM tile kernels this CPU and build run, best first");
  m.def("set_bf16_gemm_isa", &vantage::set_bf16_gemm_isa, "name"_a, "use this tile kernel ('': the best this CPU runs)");
  m.def("num_threads", &vantage::num_threads, "threads the kernels split rows over");
  m.def("set_num_threads", &vantage::set_num_threads, "n"_a, "0: the default (the cores, at most 8)");
  m.def("isa", &vantage::isa, "the instruction set the vectorized loops run with on this CPU");
}
