// CPU kernels and primitives declared in kernels.h.
//
// Every kernel works on rows: the last axis is contiguous (the ops make their inputs
// row-contiguous first), and rows are split over threads when a call is big enough to pay for
// them. The loops are written so GCC vectorizes them, once per instruction set (target_clones):
// the exponential is a Cephes-style polynomial with a 2^n scale built from the exponent bits,
// about 2 ulp from expf, branch-free.
#include "kernels.h"

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <thread>
#include <vector>

#include "mlx/allocator.h"
#include "mlx/backend/cpu/encoder.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define VANTAGE_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VANTAGE_CLONES
#endif
#define VANTAGE_INLINE static inline __attribute__((always_inline))

namespace vantage {

// ------------------------------------------------------------------------------------------
// math

VANTAGE_INLINE float vexp(float x) {
  // exp(x) = 2^n * exp(r), n = round(x / ln 2), |r| <= ln(2) / 2
  float xc = std::min(std::max(x, -87.33654f), 88.72283f);
  float n = std::nearbyint(xc * 1.44269504088896341f);
  float r = xc - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  float scale = std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
  float y = p * scale;
  y = x < -87.33654f ? 0.0f : y;
  return x > 88.72283f ? INFINITY : y;
}

VANTAGE_INLINE float vsigmoid(float x) { return 1.0f / (1.0f + vexp(-x)); }

// ------------------------------------------------------------------------------------------
// threads

static std::atomic<int> threads_{0};

int num_threads() {
  int n = threads_.load();
  if (n <= 0) {
    n = std::clamp(static_cast<int>(std::thread::hardware_concurrency()), 1, 8);
    threads_.store(n);
  }
  return n;
}

void set_num_threads(int n) { threads_.store(std::max(n, 0)); }

const char* isa() {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return "avx512f";
  if (__builtin_cpu_supports("avx2")) return "avx2";
  return "x86-64";
#elif defined(__aarch64__)
  return "neon";
#else
  return "scalar";
#endif
}

// fn(begin, end, part) over [0, rows), in up to num_threads() parts when the work (elements)
// is large enough that starting threads costs little beside it.
template <typename F>
void parallel_rows(int64_t rows, int64_t row_size, F&& fn) {
  constexpr int64_t min_work = 1 << 16;
  int64_t parts = std::min<int64_t>(num_threads(), std::max<int64_t>(1, rows * row_size / min_work));
  parts = std::max<int64_t>(1, std::min(parts, rows));
  if (parts == 1) {
    fn(int64_t{0}, rows, 0);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(parts - 1);
  int64_t step = (rows + parts - 1) / parts;
  for (int64_t p = 1; p < parts; ++p) {
    int64_t b = p * step, e = std::min(rows, b + step);
    if (b < e) pool.emplace_back([&fn, b, e, p] { fn(b, e, static_cast<int>(p)); });
  }
  fn(int64_t{0}, std::min(rows, step), 0);
  for (auto& t : pool) t.join();
}

// ------------------------------------------------------------------------------------------
// row kernels

VANTAGE_CLONES static void swiglu_rows(const float* gu, float* y, int64_t r0, int64_t r1, int64_t H) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* g = gu + r * 2 * H;
    const float* u = g + H;
    float* o = y + r * H;
    for (int64_t j = 0; j < H; ++j) o[j] = g[j] * vsigmoid(g[j]) * u[j];
  }
}

VANTAGE_CLONES static void swiglu_backward_rows(const float* gu, const float* dy, float* dgu, int64_t r0,
                                                int64_t r1, int64_t H) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* g = gu + r * 2 * H;
    const float* u = g + H;
    const float* d = dy + r * H;
    float* dg = dgu + r * 2 * H;
    float* du = dg + H;
    for (int64_t j = 0; j < H; ++j) {
      float s = vsigmoid(g[j]);
      du[j] = d[j] * g[j] * s;
      dg[j] = d[j] * u[j] * s * (1.0f + g[j] * (1.0f - s));
    }
  }
}

VANTAGE_CLONES static void rms_rows(const float* x, const float* w, float* y, int64_t r0, int64_t r1, int64_t D,
                                    float eps) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * D;
    float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
    for (int64_t j = 0; j < D; ++j) ss += xr[j] * xr[j];
    float inv = 1.0f / std::sqrt(ss / static_cast<float>(D) + eps);
    float* yr = y + r * D;
    for (int64_t j = 0; j < D; ++j) yr[j] = xr[j] * inv * w[j];
  }
}

VANTAGE_CLONES static void rms_backward_rows(const float* x, const float* w, const float* dy, float* dx, float* dw,
                                             int64_t r0, int64_t r1, int64_t D, float eps) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * D;
    const float* dr = dy + r * D;
    float ss = 0.0f, dot = 0.0f;
#pragma omp simd reduction(+ : ss, dot)
    for (int64_t j = 0; j < D; ++j) {
      ss += xr[j] * xr[j];
      dot += dr[j] * w[j] * xr[j];
    }
    float inv = 1.0f / std::sqrt(ss / static_cast<float>(D) + eps);
    float c = inv * inv * inv * dot / static_cast<float>(D);
    float* o = dx + r * D;
    for (int64_t j = 0; j < D; ++j) {
      o[j] = inv * dr[j] * w[j] - c * xr[j];
      dw[j] += dr[j] * xr[j] * inv;
    }
  }
}

VANTAGE_CLONES static float row_max(const float* x, int64_t n) {
  float m = -INFINITY;
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < n; ++j) m = std::max(m, x[j]);
  return m;
}

VANTAGE_CLONES static float row_sum_exp(const float* x, int64_t n, float m) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < n; ++j) s += vexp(x[j] - m);
  return s;
}

VANTAGE_CLONES static float store_exp(const float* x, float* y, int64_t n, float m) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < n; ++j) {
    y[j] = vexp(x[j] - m);
    s += y[j];
  }
  return s;
}

VANTAGE_CLONES static void scale(float* y, int64_t n, float c) {
  for (int64_t j = 0; j < n; ++j) y[j] *= c;
}

VANTAGE_CLONES static void scaled_exp(const float* x, float* y, int64_t n, float m, float scale) {
  for (int64_t j = 0; j < n; ++j) y[j] = vexp(x[j] - m) * scale;
}

static float row_logsumexp(const float* x, int64_t n) {
  if (n == 0) return -INFINITY;
  float m = row_max(x, n);
  if (!std::isfinite(m)) return m;  // all -inf: -inf; any +inf or NaN: itself
  return m + std::log(row_sum_exp(x, n, m));
}

static void cross_entropy_rows(const float* logits, const int32_t* targets, float* loss, float* lse, int64_t r0,
                               int64_t r1, int64_t C) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* l = logits + r * C;
    lse[r] = row_logsumexp(l, C);
    int32_t t = targets[r];
    loss[r] = (t >= 0 && t < C) ? lse[r] - l[t] : 0.0f;
  }
}

static void cross_entropy_backward_rows(const float* logits, const int32_t* targets, const float* lse,
                                        const float* dloss, float* dlogits, int64_t r0, int64_t r1, int64_t C) {
  for (int64_t r = r0; r < r1; ++r) {
    float* o = dlogits + r * C;
    int32_t t = targets[r];
    if (t < 0 || t >= C) {
      std::memset(o, 0, sizeof(float) * C);
      continue;
    }
    scaled_exp(logits + r * C, o, C, lse[r], dloss[r]);
    o[t] -= dloss[r];
  }
}

static void softmax_rows(const float* x, float* y, int64_t r0, int64_t r1, int64_t C, int64_t Tq) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * C;
    float* yr = y + r * C;
    int64_t n = Tq > 0 ? std::clamp<int64_t>(r % Tq + C - Tq + 1, 0, C) : C;  // keys this row sees
    if (n > 0) {
      scale(yr, n, 1.0f / store_exp(xr, yr, n, row_max(xr, n)));
    }
    std::fill(yr + n, yr + C, 0.0f);
  }
}

VANTAGE_CLONES static void softmax_backward_rows(const float* y, const float* dy, float* dx, int64_t r0, int64_t r1,
                                                 int64_t C) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* yr = y + r * C;
    const float* dr = dy + r * C;
    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
    for (int64_t j = 0; j < C; ++j) dot += yr[j] * dr[j];
    float* o = dx + r * C;
    for (int64_t j = 0; j < C; ++j) o[j] = yr[j] * (dr[j] - dot);
  }
}

// ------------------------------------------------------------------------------------------
// primitives

static void allocate(std::vector<mx::array>& outputs) {
  for (auto& out : outputs) out.set_data(mx::allocator::malloc(out.nbytes()));
}

static int64_t last_dim(const mx::array& a) { return a.ndim() ? a.shape(-1) : 1; }

static int64_t rows_of(const mx::array& a) {
  int64_t c = last_dim(a);
  return c ? static_cast<int64_t>(a.size()) / c : 0;
}

// The encoder runs `task` on the CPU stream's thread once the inputs are ready; the arrays are
// registered with it so their buffers live until then.
template <typename F>
static void dispatch(mx::Stream stream, const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs,
                     F&& task) {
  auto& encoder = mx::cpu::get_command_encoder(stream);
  for (auto& a : inputs) encoder.set_input_array(a);
  for (auto& a : outputs) encoder.set_output_array(a);
  encoder.dispatch(std::forward<F>(task));
}

void Kernel::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error(std::string(name()) + " has no GPU kernel; Vantage uses MLX's own ops there");
}

std::vector<mx::array> Kernel::jvp(const std::vector<mx::array>&, const std::vector<mx::array>&,
                                   const std::vector<int>&) {
  throw std::runtime_error(std::string(name()) + " has no jvp");
}

std::pair<std::vector<mx::array>, std::vector<int>> Kernel::vmap(const std::vector<mx::array>&,
                                                                 const std::vector<int>&) {
  throw std::runtime_error(std::string(name()) + " has no vmap");
}

void SwiGLU::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  allocate(outputs);
  dispatch(stream(), inputs, outputs,
           [gu = inputs[0].data<float>(), y = outputs[0].data<float>(), rows = rows_of(outputs[0]),
            H = last_dim(outputs[0])] {
             parallel_rows(rows, 3 * H, [&](int64_t b, int64_t e, int) { swiglu_rows(gu, y, b, e, H); });
           });
}

void SwiGLUBackward::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  allocate(outputs);
  dispatch(stream(), inputs, outputs,
           [gu = inputs[0].data<float>(), dy = inputs[1].data<float>(), dgu = outputs[0].data<float>(),
            rows = rows_of(inputs[1]), H = last_dim(inputs[1])] {
             parallel_rows(rows, 5 * H,
                           [&](int64_t b, int64_t e, int) { swiglu_backward_rows(gu, dy, dgu, b, e, H); });
           });
}

std::vector<mx::array> SwiGLU::vjp(const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
                                   const std::vector<int>&, const std::vector<mx::array>&) {
  auto dy = mx::contiguous(cotangents[0], false, stream());
  return {mx::array(primals[0].shape(), mx::float32, std::make_shared<SwiGLUBackward>(stream()), {primals[0], dy})};
}

void RMSNorm::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  allocate(outputs);
  dispatch(stream(), inputs, outputs,
           [x = inputs[0].data<float>(), w = inputs[1].data<float>(), y = outputs[0].data<float>(),
            rows = rows_of(inputs[0]), D = last_dim(inputs[0]), eps = eps_] {
             parallel_rows(rows, 2 * D, [&](int64_t b, int64_t e, int) { rms_rows(x, w, y, b, e, D, eps); });
           });
}

void RMSNormBackward::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  allocate(outputs);
  dispatch(stream(), inputs, outputs,
           [x = inputs[0].data<float>(), w = inputs[1].data<float>(), dy = inputs[2].data<float>(),
            dx = outputs[0].data<float>(), dw = outputs[1].data<float>(), rows = rows_of(inputs[0]),
            D = last_dim(inputs[0]), eps = eps_] {
             // each part sums its rows' weight gradient apart; the parts are added at the end
             std::vector<std::vector<float>> partial(num_threads(), std::vector<float>(D, 0.0f));
             parallel_rows(rows, 4 * D, [&](int64_t b, int64_t e, int p) {
               rms_backward_rows(x, w, dy, dx, partial[p].data(), b, e, D, eps);
             });
             std::fill(dw, dw + D, 0.0f);
             for (auto& part : partial)
               for (int64_t j = 0; j < D; ++j) dw[j] += part[j];
           });
}

std::vector<mx::array> RMSNorm::vjp(const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
                                    const std::vector<int>& argnums, const std::vector<mx::array>&) {
  auto dy = mx::contiguous(cotangents[0], false, stream());
  auto grads = mx::array::make_arrays({primals[0].shape(), primals[1].shape()}, {mx::float32, mx::float32},
                                      std::make_shared<RMSNormBackward>(stream(), eps_),
                                      {primals[0], primals[1], dy});
  std::vector<mx::array> out;
  for (int a : argnums) out.push_back(grads[a]);
  return out;
}

void CrossEntropy::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  allocate(outputs);
  dispatch(stream(), inputs, outputs,
           [logits = inputs[0].data<float>(), targets = inputs[1].data<int32_t>(),
            loss = outputs[0].data<float>(), lse = outputs[1].data<float>(),
            rows = static_cast<int64_t>(inputs[1].size()), C = last_dim(inputs[0])] {
             parallel_rows(rows, 2 * C, [&](int64_t b, int64_t e, int) {
               cross_entropy_rows(logits, targets, loss, lse, b, e, C);
             });
           });
}

void CrossEntropyBackward::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  allocate(outputs);
  dispatch(stream(), inputs, outputs,
           [logits = inputs[0].data<float>(), targets = inputs[1].data<int32_t>(), lse = inputs[2].data<float>(),
            dloss = inputs[3].data<float>(), dlogits = outputs[0].data<float>(),
            rows = static_cast<int64_t>(inputs[1].size()), C = last_dim(inputs[0])] {
             parallel_rows(rows, 2 * C, [&](int64_t b, int64_t e, int) {
               cross_entropy_backward_rows(logits, targets, lse, dloss, dlogits, b, e, C);
             });
           });
}

std::vector<mx::array> CrossEntropy::vjp(const std::vector<mx::array>& primals,
                                         const std::vector<mx::array>& cotangents, const std::vector<int>& argnums,
                                         const std::vector<mx::array>& outputs) {
  // Only the loss is differentiated: the log-sum-exp output is the backward pass's own input.
  auto dloss = mx::contiguous(cotangents[0], false, stream());
  std::vector<mx::array> out;
  for (int a : argnums) {
    if (a == 0) {
      out.push_back(mx::array(primals[0].shape(), mx::float32, std::make_shared<CrossEntropyBackward>(stream()),
                              {primals[0], primals[1], outputs[1], dloss}));
    } else {
      out.push_back(mx::zeros_like(primals[1], stream()));
    }
  }
  return out;
}

void Softmax::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  allocate(outputs);
  const auto& x = inputs[0];
  int64_t Tq = causal_ && x.ndim() >= 2 ? x.shape(-2) : 0;
  dispatch(stream(), inputs, outputs,
           [xp = x.data<float>(), y = outputs[0].data<float>(), rows = rows_of(x), C = last_dim(x), Tq] {
             parallel_rows(rows, 2 * C, [&](int64_t b, int64_t e, int) { softmax_rows(xp, y, b, e, C, Tq); });
           });
}

void SoftmaxBackward::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  allocate(outputs);
  dispatch(stream(), inputs, outputs,
           [y = inputs[0].data<float>(), dy = inputs[1].data<float>(), dx = outputs[0].data<float>(),
            rows = rows_of(inputs[0]), C = last_dim(inputs[0])] {
             parallel_rows(rows, 2 * C, [&](int64_t b, int64_t e, int) { softmax_backward_rows(y, dy, dx, b, e, C); });
           });
}

std::vector<mx::array> Softmax::vjp(const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
                                    const std::vector<int>&, const std::vector<mx::array>& outputs) {
  auto dy = mx::contiguous(cotangents[0], false, stream());
  return {mx::array(primals[0].shape(), mx::float32, std::make_shared<SoftmaxBackward>(stream()), {outputs[0], dy})};
}

// ------------------------------------------------------------------------------------------
// ops

static void require_float32(const mx::array& a, const char* op, const char* what) {
  if (a.dtype() != mx::float32)
    throw std::invalid_argument(std::string(op) + ": " + what + " must be float32");
}

mx::array swiglu(const mx::array& gate_up, mx::StreamOrDevice s) {
  require_float32(gate_up, "swiglu", "gate_up");
  if (gate_up.ndim() == 0 || gate_up.shape(-1) % 2)
    throw std::invalid_argument("swiglu: the last axis of gate_up must have an even size ([gate | up])");
  auto shape = gate_up.shape();
  shape.back() /= 2;
  auto stream = mx::to_stream(s);
  return mx::array(shape, mx::float32, std::make_shared<SwiGLU>(stream), {mx::contiguous(gate_up, false, stream)});
}

mx::array rms_norm(const mx::array& x, const mx::array& weight, float eps, mx::StreamOrDevice s) {
  require_float32(x, "rms_norm", "x");
  require_float32(weight, "rms_norm", "weight");
  if (x.ndim() == 0 || weight.ndim() != 1 || weight.shape(0) != x.shape(-1))
    throw std::invalid_argument("rms_norm: weight must be 1-D with the size of x's last axis");
  auto stream = mx::to_stream(s);
  return mx::array(x.shape(), mx::float32, std::make_shared<RMSNorm>(stream, eps),
                   {mx::contiguous(x, false, stream), mx::contiguous(weight, false, stream)});
}

mx::array cross_entropy(const mx::array& logits, const mx::array& targets, mx::StreamOrDevice s) {
  require_float32(logits, "cross_entropy", "logits");
  auto lead = logits.shape();
  if (lead.empty()) throw std::invalid_argument("cross_entropy: logits need a class axis");
  lead.pop_back();
  if (targets.shape() != lead)
    throw std::invalid_argument("cross_entropy: targets must have the shape of logits without its last axis");
  auto stream = mx::to_stream(s);
  auto outs = mx::array::make_arrays({lead, lead}, {mx::float32, mx::float32}, std::make_shared<CrossEntropy>(stream),
                                     {mx::contiguous(logits, false, stream),
                                      mx::contiguous(mx::astype(targets, mx::int32, stream), false, stream)});
  return outs[0];
}

mx::array softmax(const mx::array& x, bool causal, mx::StreamOrDevice s) {
  require_float32(x, "softmax", "x");
  if (x.ndim() == 0) throw std::invalid_argument("softmax: x needs at least one axis");
  auto stream = mx::to_stream(s);
  return mx::array(x.shape(), mx::float32, std::make_shared<Softmax>(stream, causal),
                   {mx::contiguous(x, false, stream)});
}

}  // namespace vantage
