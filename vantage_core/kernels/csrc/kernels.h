// Fused CPU primitives for the hot elementwise work of training on a CPU: MLX's own CPU kernels
// for exp, silu, softmax and log-softmax run on one thread without a vectorized exp. Each op
// here is a primitive with a CPU kernel (vectorized exp, rows split over threads) and a
// vector-Jacobian product that is itself a native primitive. float32, CPU streams only: the
// Python side (vantage_core/kernels) keeps MLX's own ops for everything else.
#pragma once

#include "mlx/ops.h"
#include "mlx/primitives.h"

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

// Threads the kernels split their rows over (default: the cores MLX's CPU may use, at most 8).
int num_threads();
void set_num_threads(int n);
// The instruction set the vectorized loops were dispatched to on this CPU.
const char* isa();

}  // namespace vantage
