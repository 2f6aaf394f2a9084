// Fused CPU primitives for the hot elementwise work of training on a CPU: MLX's own CPU kernels
// for exp, silu, softmax and log-softmax run on one thread without a vectorized exp. Each op
// here is a primitive with a CPU kernel (vectorized exp, rows split over threads) and a
// vector-Jacobian product that is itself a native primitive. float32, CPU streams only: the
// Python side (vantage_core/kernels) keeps MLX's own ops for everything else.
#pragma once

#include "mlx/ops.h"
#include "mlx/primitives.h"

#include <optional>
#include <string>
#include <vector>

namespace mx = mlx::core;

namespace vantage {

// (..., 2H) [gate | up] -> (..., H) silu(gate) * up
mx::array swiglu(const mx::array& gate_up, mx::StreamOrDevice s = {});
// (..., D), (D,) -> (..., D) x * rsqrt(mean(x^2) + eps) * weight
mx::array rms_norm(const mx::array& x, const mx::array& weight, float eps, mx::StreamOrDevice s = {});
// (..., C) logits, (...) int32 targets -> (...) logsumexp(logits) - logits[target]; a target
// outside [0, C) scores 0 and gets no gradient
mx::array cross_entropy(const mx::array& logits, const mx::array& targets, mx::StreamOrDevice s = {});
// softmax over the last axis; causal: row i of the last two axes (Tq, Tk) sees keys
// j <= i + Tk - Tq only (the others get probability 0)
mx::array softmax(const mx::array& x, bool causal, mx::StreamOrDevice s = {});
// Attention over queries q (B, H, Tq, hd) and keys/values k, v (B, H_kv, Tk, hd), any strides
// with the last axis contiguous (views of (B, T, H, hd) projections need no copy): scores
// scale * q k^T + bias (broadcastable to (B, H, Tq, Tk)), causal or not, softmax over the keys,
// times v. Returns (B, Tq, H, hd): the layout the output projection reads. Differentiable in q,
// k, v and bias. The products run as one small GEMM per (batch, head) on the BLAS MLX uses.
mx::array attention(const mx::array& q, const mx::array& k, const mx::array& v, float scale, bool causal,
                    const std::optional<mx::array>& bias, mx::StreamOrDevice s = {});

// x * keep / (1 - p), keep = 0 with probability p: a counter-based mask, a hash of (seed, the
// element's index in row-major order), so the backward pass recomputes it instead of storing it.
// seed: a uint32 scalar (drawn from MLX's generator by the caller)
mx::array dropout(const mx::array& x, const mx::array& seed, float p, mx::StreamOrDevice s = {});

// AdamW (decoupled weight decay, no bias correction: mlx.optimizers.AdamW's defaults) over many
// tensors in one call, their elements split over threads. g = grad * scale; m = b1 m + (1 - b1) g;
// v = b2 v + (1 - b2) g^2; p = p (1 - lr wd) - lr m / (sqrt(v) + eps). lr and scale: float32
// scalars. Returns the new parameters, then the m's, then the v's.
std::vector<mx::array> adamw(const std::vector<mx::array>& params, const std::vector<mx::array>& grads,
                             const std::vector<mx::array>& m, const std::vector<mx::array>& v, const mx::array& lr,
                             const mx::array& scale, float b1, float b2, float eps, float weight_decay,
                             mx::StreamOrDevice s = {});

// The MoE combine: rows (M, d) grouped by expert, weights (N, k), inv (N, k) int32 (the row of each
// token-slot; M or more: a dropped slot) -> (N, d), out[n] = sum_j weights[n, j] * rows[inv[n, j]].
// Each row serves one slot, so the backward pass writes rows without adding.
mx::array moe_combine(const mx::array& rows, const mx::array& weights, const mx::array& inv, mx::StreamOrDevice s = {});

// Mixed precision: op(a) op(b) with a and b rounded to bfloat16 and the products summed in float32
// (gemm_bf16.cpp). a: (M, K), or (K, M) with trans_a; b: (K, N), or (N, K) with trans_b; float32.
// Returns (M, N) float32. Differentiable in a and b: the vjp's two products run through it too
// (dA = dC op(b)^T, dB = op(a)^T dC, the cotangent rounded to bf16 as well).
mx::array matmul_bf16(const mx::array& a, const mx::array& b, bool trans_a, bool trans_b, mx::StreamOrDevice s = {});

// The bf16 GEMM's tile kernel in use ("avx512bf16", "avx2" or "generic"), those this CPU and build
// can run (best first), and a choice among them ("": the best).
const char* bf16_gemm_isa();
std::vector<std::string> bf16_gemm_isas();
void set_bf16_gemm_isa(const std::string& name);

// Shared plumbing of the primitives below: no jvp, no vmap.
class Kernel : public mx::Primitive {
 public:
  explicit Kernel(mx::Stream stream) : mx::Primitive(stream) {}
  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override;
  std::vector<mx::array> jvp(const std::vector<mx::array>&, const std::vector<mx::array>&,
                             const std::vector<int>&) override;
  std::pair<std::vector<mx::array>, std::vector<int>> vmap(const std::vector<mx::array>&,
                                                           const std::vector<int>&) override;
};

#define VANTAGE_PRIMITIVE(NAME)                                                               \
  const char* name() const override { return #NAME; }                                         \
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;

class SwiGLU : public Kernel {
 public:
  using Kernel::Kernel;
  VANTAGE_PRIMITIVE(VantageSwiGLU)
  std::vector<mx::array> vjp(const std::vector<mx::array>&, const std::vector<mx::array>&,
                             const std::vector<int>&, const std::vector<mx::array>&) override;
};

class SwiGLUBackward : public Kernel {  // (gate_up, dy) -> d gate_up
 public:
  using Kernel::Kernel;
  VANTAGE_PRIMITIVE(VantageSwiGLUBackward)
};

class RMSNorm : public Kernel {
 public:
  RMSNorm(mx::Stream stream, float eps) : Kernel(stream), eps_(eps) {}
  VANTAGE_PRIMITIVE(VantageRMSNorm)
  std::vector<mx::array> vjp(const std::vector<mx::array>&, const std::vector<mx::array>&,
                             const std::vector<int>&, const std::vector<mx::array>&) override;
  bool is_equivalent(const mx::Primitive& other) const override {
    return eps_ == static_cast<const RMSNorm&>(other).eps_;
  }

 private:
  float eps_;
};

class RMSNormBackward : public Kernel {  // (x, weight, dy) -> (dx, dweight)
 public:
  RMSNormBackward(mx::Stream stream, float eps) : Kernel(stream), eps_(eps) {}
  VANTAGE_PRIMITIVE(VantageRMSNormBackward)
  bool is_equivalent(const mx::Primitive& other) const override {
    return eps_ == static_cast<const RMSNormBackward&>(other).eps_;
  }

 private:
  float eps_;
};

class CrossEntropy : public Kernel {  // (logits, targets) -> (loss, logsumexp)
 public:
  using Kernel::Kernel;
  VANTAGE_PRIMITIVE(VantageCrossEntropy)
  std::vector<mx::array> vjp(const std::vector<mx::array>&, const std::vector<mx::array>&,
                             const std::vector<int>&, const std::vector<mx::array>&) override;
};

class CrossEntropyBackward : public Kernel {  // (logits, targets, logsumexp, dloss) -> dlogits
 public:
  using Kernel::Kernel;
  VANTAGE_PRIMITIVE(VantageCrossEntropyBackward)
};

class Softmax : public Kernel {
 public:
  Softmax(mx::Stream stream, bool causal) : Kernel(stream), causal_(causal) {}
  VANTAGE_PRIMITIVE(VantageSoftmax)
  std::vector<mx::array> vjp(const std::vector<mx::array>&, const std::vector<mx::array>&,
                             const std::vector<int>&, const std::vector<mx::array>&) override;
  bool is_equivalent(const mx::Primitive& other) const override {
    return causal_ == static_cast<const Softmax&>(other).causal_;
  }

 private:
  bool causal_;
};

class SoftmaxBackward : public Kernel {  // (y, dy) -> dx = y * (dy - sum(dy * y))
 public:
  using Kernel::Kernel;
  VANTAGE_PRIMITIVE(VantageSoftmaxBackward)
};

class Dropout : public Kernel {  // (x, seed) -> y; its vjp is itself on the cotangent
 public:
  Dropout(mx::Stream stream, float p) : Kernel(stream), p_(p) {}
  VANTAGE_PRIMITIVE(VantageDropout)
  std::vector<mx::array> vjp(const std::vector<mx::array>&, const std::vector<mx::array>&,
                             const std::vector<int>&, const std::vector<mx::array>&) override;
  bool is_equivalent(const mx::Primitive& other) const override {
    return p_ == static_cast<const Dropout&>(other).p_;
  }

 private:
  float p_;
};

class Attention : public Kernel {  // (q, k, v[, bias]) -> (out (B, Tq, H, hd), probs (B, H, Tq, Tk))
 public:
  Attention(mx::Stream stream, float scale, bool causal) : Kernel(stream), scale_(scale), causal_(causal) {}
  VANTAGE_PRIMITIVE(VantageAttention)
  std::vector<mx::array> vjp(const std::vector<mx::array>&, const std::vector<mx::array>&,
                             const std::vector<int>&, const std::vector<mx::array>&) override;
  bool is_equivalent(const mx::Primitive& other) const override {
    auto& o = static_cast<const Attention&>(other);
    return scale_ == o.scale_ && causal_ == o.causal_;
  }

 private:
  float scale_;
  bool causal_;
};

// (q, k, v, probs, d out) -> (dq (B, Tq, H, hd), dk, dv (B, Tk, H_kv, hd), d scores (B, H, Tq, Tk))
class AttentionBackward : public Kernel {
 public:
  AttentionBackward(mx::Stream stream, float scale) : Kernel(stream), scale_(scale) {}
  VANTAGE_PRIMITIVE(VantageAttentionBackward)
  bool is_equivalent(const mx::Primitive& other) const override {
    return scale_ == static_cast<const AttentionBackward&>(other).scale_;
  }

 private:
  float scale_;
};

class AdamW : public Kernel {  // (p..., g..., m..., v..., lr, scale) -> (p..., m..., v...)
 public:
  AdamW(mx::Stream stream, float b1, float b2, float eps, float wd)
      : Kernel(stream), b1_(b1), b2_(b2), eps_(eps), wd_(wd) {}
  VANTAGE_PRIMITIVE(VantageAdamW)
  std::vector<mx::array> vjp(const std::vector<mx::array>&, const std::vector<mx::array>&,
                             const std::vector<int>&, const std::vector<mx::array>&) override {
    throw std::runtime_error("the AdamW update has no gradient");
  }
  bool is_equivalent(const mx::Primitive& other) const override {
    auto& o = static_cast<const AdamW&>(other);
    return b1_ == o.b1_ && b2_ == o.b2_ && eps_ == o.eps_ && wd_ == o.wd_;
  }

 private:
  float b1_, b2_, eps_, wd_;
};

class MoECombine : public Kernel {  // (rows, weights, inv) -> out
 public:
  using Kernel::Kernel;
  VANTAGE_PRIMITIVE(VantageMoECombine)
  std::vector<mx::array> vjp(const std::vector<mx::array>&, const std::vector<mx::array>&,
                             const std::vector<int>&, const std::vector<mx::array>&) override;
};

class MoECombineBackward : public Kernel {  // (rows, weights, inv, d out) -> (d rows, d weights)
 public:
  using Kernel::Kernel;
  VANTAGE_PRIMITIVE(VantageMoECombineBackward)
};

class MatmulBF16 : public Kernel {  // (a, b) -> op(a) op(b)
 public:
  MatmulBF16(mx::Stream stream, bool trans_a, bool trans_b) : Kernel(stream), trans_a_(trans_a), trans_b_(trans_b) {}
  VANTAGE_PRIMITIVE(VantageMatmulBF16)
  std::vector<mx::array> vjp(const std::vector<mx::array>&, const std::vector<mx::array>&,
                             const std::vector<int>&, const std::vector<mx::array>&) override;
  bool is_equivalent(const mx::Primitive& other) const override {
    auto& o = static_cast<const MatmulBF16&>(other);
    return trans_a_ == o.trans_a_ && trans_b_ == o.trans_b_;
  }

 private:
  bool trans_a_, trans_b_;
};

// Threads the kernels split their rows over (default: the cores MLX's CPU may use, at most 8).
int num_threads();
void set_num_threads(int n);
// The instruction set the vectorized loops were dispatched to on this CPU.
const char* isa();

}  // namespace vantage
