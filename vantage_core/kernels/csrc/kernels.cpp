// CPU kernels and primitives declared in kernels.h.
//
// Every kernel works on rows: the last axis is contiguous (the ops make their inputs
// row-contiguous first), and rows are split over threads when a call is big enough to pay for
// them. The loops are written so GCC vectorizes them, once per instruction set (target_clones):
// the exponential is a Cephes-style polynomial with a 2^n scale built from the exponent bits,
// about 2 ulp from expf, branch-free.
#include "kernels.h"
#include "common.h"

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <dlfcn.h>
#include <stdexcept>
#include <thread>
#include <tuple>
#include <vector>

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

// How many parts parallel_rows splits `rows` rows of `row_size` elements of work into.
int64_t parts_for(int64_t rows, int64_t row_size) {
  constexpr int64_t min_work = 1 << 16;
  int64_t parts = std::min<int64_t>(num_threads(), std::max<int64_t>(1, rows * row_size / min_work));
  return std::max<int64_t>(1, std::min(parts, rows));
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

// A 32-bit integer hash with low bias (Wellons' lowbias32): every output bit depends on every
// input bit, and it is a bijection, so distinct counters never share a draw.
VANTAGE_INLINE uint32_t hash32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x7feb352dU;
  h ^= h >> 15;
  h *= 0x846ca68bU;
  h ^= h >> 16;
  return h;
}

// y[i] = x[i] * keep_scale where hash(i's low 32 bits * golden + key) >= threshold, else 0; the
// key mixes the seed with i's high 32 bits, so it changes once per 2^32 elements
VANTAGE_CLONES static void dropout_range(const float* x, float* y, int64_t begin, int64_t end, uint32_t seed,
                                         uint32_t threshold, float keep_scale) {
  for (int64_t block = begin; block < end;) {
    uint64_t high = static_cast<uint64_t>(block) >> 32;
    int64_t block_end = std::min<int64_t>(end, static_cast<int64_t>((high + 1) << 32));
    uint32_t key = seed ^ hash32(static_cast<uint32_t>(high) + 0x9e3779b9U);
    for (int64_t i = block; i < block_end; ++i) {
      uint32_t h = hash32(static_cast<uint32_t>(i) * 0x9e3779b9U + key);
      y[i] = h >= threshold ? x[i] * keep_scale : 0.0f;
    }
    block = block_end;
  }
}

VANTAGE_CLONES static void adamw_range(const float* p, const float* g, const float* m, const float* v, float* po,
                                       float* mo, float* vo, int64_t begin, int64_t end, float lr, float scale,
                                       float b1, float b2, float eps, float wd) {
  float decay = 1.0f - lr * wd;
  for (int64_t i = begin; i < end; ++i) {
    float gi = g[i] * scale;
    float mi = b1 * m[i] + (1.0f - b1) * gi;
    float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
    mo[i] = mi;
    vo[i] = vi;
    po[i] = p[i] * decay - lr * mi / (std::sqrt(vi) + eps);
  }
}

VANTAGE_CLONES static void combine_rows(const float* rows, const float* w, const int32_t* inv, float* out, int64_t n0,
                                        int64_t n1, int64_t M, int64_t K, int64_t D) {
  for (int64_t n = n0; n < n1; ++n) {
    float* o = out + n * D;
    std::fill(o, o + D, 0.0f);
    for (int64_t j = 0; j < K; ++j) {
      int64_t r = inv[n * K + j];
      if (r < 0 || r >= M) continue;  // a dropped slot
      const float* x = rows + r * D;
      float wj = w[n * K + j];
      for (int64_t d = 0; d < D; ++d) o[d] += wj * x[d];
    }
  }
}

VANTAGE_CLONES static void combine_backward_rows(const float* rows, const float* w, const int32_t* inv,
                                                 const float* dout, float* drows, float* dw, int64_t n0, int64_t n1,
                                                 int64_t M, int64_t K, int64_t D) {
  for (int64_t n = n0; n < n1; ++n) {
    const float* g = dout + n * D;
    for (int64_t j = 0; j < K; ++j) {
      int64_t r = inv[n * K + j];
      if (r < 0 || r >= M) {
        dw[n * K + j] = 0.0f;
        continue;
      }
      const float* x = rows + r * D;
      float* dx = drows + r * D;
      float wj = w[n * K + j], dot = 0.0f;
#pragma omp simd reduction(+ : dot)
      for (int64_t d = 0; d < D; ++d) {
        dot += g[d] * x[d];
        dx[d] = wj * g[d];
      }
      dw[n * K + j] = dot;
    }
  }
}

// ------------------------------------------------------------------------------------------
// attention: small GEMMs per (batch, head) on the BLAS MLX itself calls (OpenBLAS when Vantage
// loaded it, else the wheel's own), reading strided operands in place

extern "C" void cblas_sgemm(int order, int trans_a, int trans_b, int m, int n, int k, float alpha, const float* a,
                            int lda, const float* b, int ldb, float beta, float* c, int ldc);

namespace {
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;

// A (batch, head, time, hd) operand: its base and the element strides of batch, head and time;
// hd is contiguous.
struct Heads {
  float* p;
  int64_t sb, sh, st;
  float* at(int64_t b, int64_t h) const { return p + b * sb + h * sh; }
  int ld(int64_t cols) const { return static_cast<int>(std::max(st, cols)); }  // a one-row operand may have any stride
};

// The operand as it lies in memory when its hd axis is contiguous and its rows do not overlap
// (logical axes of `a`: batch, head, time, hd at positions ax[0..3]); else a packed copy in
// `scratch`.
Heads heads_of(const mx::array& a, const int ax[4], std::vector<float>& scratch) {
  auto st = a.strides();
  auto sh = a.shape();
  int64_t D = sh[ax[3]], T = sh[ax[2]];
  auto* base = const_cast<float*>(a.data<float>());
  if ((st[ax[3]] == 1 || D <= 1) && (T <= 1 || static_cast<int64_t>(st[ax[2]]) >= D))
    return {base, static_cast<int64_t>(st[ax[0]]), static_cast<int64_t>(st[ax[1]]), static_cast<int64_t>(st[ax[2]])};
  int64_t B = sh[ax[0]], H = sh[ax[1]];
  scratch.resize(static_cast<size_t>(B * H * T * D));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t t = 0; t < T; ++t)
        for (int64_t d = 0; d < D; ++d)
          scratch[((b * H + h) * T + t) * D + d] =
              base[b * st[ax[0]] + h * st[ax[1]] + t * st[ax[2]] + d * st[ax[3]]];
  return {scratch.data(), H * T * D, T * D, D};
}

// While our threads each run small GEMMs, OpenBLAS must not start its own threads for them too
// (two callers then wait on its one thread pool); one thread per call while the guard lives.
// Found by name at run time: with another BLAS there is nothing to set.
class SingleThreadedBlas {
 public:
  explicit SingleThreadedBlas(bool active) {
    static auto get = reinterpret_cast<int (*)()>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
    static auto set = reinterpret_cast<void (*)(int)>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
    if (active && get && set && (before_ = get()) > 1) {
      set(1);
      set_ = set;
    }
  }
  ~SingleThreadedBlas() {
    if (set_) set_(before_);
  }

 private:
  int before_ = 1;
  void (*set_)(int) = nullptr;
};

void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int lda, const float* b,
          int ldb, float beta, float* c, int ldc) {
  cblas_sgemm(kRowMajor, ta ? kTrans : kNoTrans, tb ? kTrans : kNoTrans, static_cast<int>(m), static_cast<int>(n),
              static_cast<int>(k), alpha, a, lda, b, ldb, beta, c, ldc);
}

constexpr int kHeadMajor[4] = {0, 1, 2, 3};  // (B, H, T, hd)
constexpr int kTimeMajor[4] = {0, 2, 1, 3};  // (B, T, H, hd)
}  // namespace

// ------------------------------------------------------------------------------------------
// primitives

static int64_t last_dim(const mx::array& a) { return a.ndim() ? a.shape(-1) : 1; }

static int64_t rows_of(const mx::array& a) {
  int64_t c = last_dim(a);
  return c ? static_cast<int64_t>(a.size()) / c : 0;
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

void Attention::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  allocate(outputs);
  const auto &q = inputs[0], &k = inputs[1];
  int64_t B = q.shape(0), H = q.shape(1), Tq = q.shape(2), D = q.shape(3), Hkv = k.shape(1), Tk = k.shape(2);
  dispatch(stream(), inputs, outputs,
           [inputs, out = outputs[0], probs = outputs[1], B, H, Tq, D, Hkv, Tk, scale = scale_,
            causal = causal_]() mutable {
             float* o = out.data<float>();
             if (Tk == 0) std::fill(o, o + out.size(), 0.0f);
             if (Tk == 0 || Tq == 0 || B * H == 0) return;
             std::vector<float> sq, sk, sv;
             Heads hq = heads_of(inputs[0], kHeadMajor, sq), hk = heads_of(inputs[1], kHeadMajor, sk),
                   hv = heads_of(inputs[2], kHeadMajor, sv);
             Heads ho{o, Tq * H * D, D, H * D};
             float* pr = probs.data<float>();
             bool has_bias = inputs.size() > 3;  // broadcast to (B, H, Tq, Tk): any strides
             const float* bp = has_bias ? inputs[3].data<float>() : nullptr;
             auto bs = has_bias ? inputs[3].strides() : mx::Strides{0, 0, 0, 0};
             int64_t group = H / Hkv, work = Tq * Tk * (2 * D + 8);
             SingleThreadedBlas guard(parts_for(B * H, work) > 1);
             parallel_rows(B * H, work, [&](int64_t t0, int64_t t1, int) {
               for (int64_t task = t0; task < t1; ++task) {
                 int64_t b = task / H, h = task % H, g = h / group;
                 float* P = pr + task * Tq * Tk;
                 gemm(false, true, Tq, Tk, D, scale, hq.at(b, h), hq.ld(D), hk.at(b, g), hk.ld(D), 0.0f, P,
                      static_cast<int>(Tk));
                 if (bp) {
                   for (int64_t i = 0; i < Tq; ++i) {
                     const float* br = bp + b * bs[0] + h * bs[1] + i * bs[2];
                     float* row = P + i * Tk;
                     for (int64_t j = 0; j < Tk; ++j) row[j] += br[j * bs[3]];
                   }
                 }
                 softmax_rows(P, P, 0, Tq, Tk, causal ? Tq : 0);
                 gemm(false, false, Tq, D, Tk, 1.0f, P, static_cast<int>(Tk), hv.at(b, g), hv.ld(D), 0.0f,
                      ho.at(b, h), ho.ld(D));
               }
             });
           });
}

void AttentionBackward::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  allocate(outputs);
  const auto &q = inputs[0], &k = inputs[1];
  int64_t B = q.shape(0), H = q.shape(1), Tq = q.shape(2), D = q.shape(3), Hkv = k.shape(1), Tk = k.shape(2);
  dispatch(stream(), inputs, outputs, [inputs, outputs, B, H, Tq, D, Hkv, Tk, scale = scale_]() mutable {
    if (Tk == 0 || Tq == 0 || B * H == 0) {  // else every element is written below
      for (auto& a : outputs) std::fill(a.data<float>(), a.data<float>() + a.size(), 0.0f);
      return;
    }
    std::vector<float> sq, sk, sv, so;
    Heads hq = heads_of(inputs[0], kHeadMajor, sq), hk = heads_of(inputs[1], kHeadMajor, sk),
          hv = heads_of(inputs[2], kHeadMajor, sv), hdo = heads_of(inputs[4], kTimeMajor, so);
    const float* pr = inputs[3].data<float>();
    Heads dq{outputs[0].data<float>(), Tq * H * D, D, H * D};
    Heads dk{outputs[1].data<float>(), Tk * Hkv * D, D, Hkv * D};
    Heads dv{outputs[2].data<float>(), Tk * Hkv * D, D, Hkv * D};
    float* ds = outputs[3].data<float>();
    int64_t group = H / Hkv;
    int ldk = static_cast<int>(Tk);
    int64_t work = group * Tq * Tk * (4 * D + 8);
    SingleThreadedBlas guard(parts_for(B * Hkv, work) > 1);
    // one task per (batch, key/value head): the query heads sharing it add into its gradients
    parallel_rows(B * Hkv, work, [&](int64_t t0, int64_t t1, int) {
      for (int64_t task = t0; task < t1; ++task) {
        int64_t b = task / Hkv, g = task % Hkv;
        for (int64_t h = g * group; h < (g + 1) * group; ++h) {
          const float* P = pr + (b * H + h) * Tq * Tk;
          float* dS = ds + (b * H + h) * Tq * Tk;
          float beta = h == g * group ? 0.0f : 1.0f;
          gemm(false, true, Tq, Tk, D, 1.0f, hdo.at(b, h), hdo.ld(D), hv.at(b, g), hv.ld(D), 0.0f, dS, ldk);  // dP
          softmax_backward_rows(P, dS, dS, 0, Tq, Tk);  // d scores, in place
          gemm(false, false, Tq, D, Tk, scale, dS, ldk, hk.at(b, g), hk.ld(D), 0.0f, dq.at(b, h), dq.ld(D));
          gemm(true, false, Tk, D, Tq, scale, dS, ldk, hq.at(b, h), hq.ld(D), beta, dk.at(b, g), dk.ld(D));
          gemm(true, false, Tk, D, Tq, 1.0f, P, ldk, hdo.at(b, h), hdo.ld(D), beta, dv.at(b, g), dv.ld(D));
        }
      }
    });
  });
}

std::vector<mx::array> Attention::vjp(const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
                                      const std::vector<int>& argnums, const std::vector<mx::array>& outputs) {
  const auto &q = primals[0], &k = primals[1];
  int B = q.shape(0), H = q.shape(1), Tq = q.shape(2), D = q.shape(3), Hkv = k.shape(1), Tk = k.shape(2);
  auto grads = mx::array::make_arrays(
      {{B, Tq, H, D}, {B, Tk, Hkv, D}, {B, Tk, Hkv, D}, {B, H, Tq, Tk}}, {mx::float32, mx::float32, mx::float32, mx::float32},
      std::make_shared<AttentionBackward>(stream(), scale_), {primals[0], primals[1], primals[2], outputs[1], cotangents[0]});
  std::vector<mx::array> out;
  for (int a : argnums) {
    // q, k, v: the (B, T, H, hd) gradients seen as (B, H, T, hd); bias: the scores' gradient
    out.push_back(a < 3 ? mx::transpose(grads[a], {0, 2, 1, 3}, stream()) : grads[3]);
  }
  return out;
}

void AdamW::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  allocate(outputs);
  dispatch(stream(), inputs, outputs, [inputs, outputs, b1 = b1_, b2 = b2_, eps = eps_, wd = wd_]() mutable {
    size_t n = outputs.size() / 3;
    float lr = *inputs[4 * n].data<float>(), scale = *inputs[4 * n + 1].data<float>();
    // chunks of at most 32k elements over all tensors, split over the threads
    constexpr int64_t chunk = 1 << 15;
    std::vector<std::tuple<size_t, int64_t, int64_t>> parts;
    for (size_t t = 0; t < n; ++t)
      for (int64_t b = 0; b < static_cast<int64_t>(inputs[t].size()); b += chunk)
        parts.emplace_back(t, b, std::min<int64_t>(b + chunk, inputs[t].size()));
    parallel_rows(static_cast<int64_t>(parts.size()), chunk, [&](int64_t c0, int64_t c1, int) {
      for (int64_t c = c0; c < c1; ++c) {
        auto [t, b, e] = parts[c];
        adamw_range(inputs[t].data<float>(), inputs[n + t].data<float>(), inputs[2 * n + t].data<float>(),
                    inputs[3 * n + t].data<float>(), outputs[t].data<float>(), outputs[n + t].data<float>(),
                    outputs[2 * n + t].data<float>(), b, e, lr, scale, b1, b2, eps, wd);
      }
    });
  });
}

void MoECombine::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  allocate(outputs);
  dispatch(stream(), inputs, outputs,
           [rows = inputs[0].data<float>(), w = inputs[1].data<float>(), inv = inputs[2].data<int32_t>(),
            out = outputs[0].data<float>(), M = static_cast<int64_t>(inputs[0].shape(0)),
            N = static_cast<int64_t>(inputs[1].shape(0)), K = static_cast<int64_t>(inputs[1].shape(1)),
            D = last_dim(outputs[0])] {
             parallel_rows(N, K * D, [&](int64_t n0, int64_t n1, int) { combine_rows(rows, w, inv, out, n0, n1, M, K, D); });
           });
}

void MoECombineBackward::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  allocate(outputs);
  dispatch(stream(), inputs, outputs,
           [rows = inputs[0].data<float>(), w = inputs[1].data<float>(), inv = inputs[2].data<int32_t>(),
            dout = inputs[3].data<float>(), drows = outputs[0].data<float>(), dw = outputs[1].data<float>(),
            M = static_cast<int64_t>(inputs[0].shape(0)), N = static_cast<int64_t>(inputs[1].shape(0)),
            K = static_cast<int64_t>(inputs[1].shape(1)), D = last_dim(inputs[3])] {
             std::fill(drows, drows + M * D, 0.0f);  // rows no slot reads (none when nothing is dropped)
             parallel_rows(N, 2 * K * D, [&](int64_t n0, int64_t n1, int) {
               combine_backward_rows(rows, w, inv, dout, drows, dw, n0, n1, M, K, D);
             });
           });
}

std::vector<mx::array> MoECombine::vjp(const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
                                       const std::vector<int>& argnums, const std::vector<mx::array>&) {
  auto grads = mx::array::make_arrays({primals[0].shape(), primals[1].shape()}, {mx::float32, mx::float32},
                                      std::make_shared<MoECombineBackward>(stream()),
                                      {primals[0], primals[1], primals[2], mx::contiguous(cotangents[0], false, stream())});
  std::vector<mx::array> out;
  for (int a : argnums) out.push_back(a < 2 ? grads[a] : mx::zeros_like(primals[2], stream()));
  return out;
}

void Dropout::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  allocate(outputs);
  // p in [0, 1): the threshold is p * 2^32, below which a draw drops its element
  auto threshold = static_cast<uint32_t>(std::min(static_cast<double>(p_) * 4294967296.0, 4294967295.0));
  dispatch(stream(), inputs, outputs,
           [x = inputs[0].data<float>(), seed = inputs[1].data<uint32_t>(), y = outputs[0].data<float>(),
            n = static_cast<int64_t>(inputs[0].size()), threshold, scale = 1.0f / (1.0f - p_)] {
             parallel_rows(n, 1, [&](int64_t b, int64_t e, int) { dropout_range(x, y, b, e, *seed, threshold, scale); });
           });
}

std::vector<mx::array> Dropout::vjp(const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
                                    const std::vector<int>& argnums, const std::vector<mx::array>&) {
  // the same mask (same seed, same indices) on the cotangent
  std::vector<mx::array> out;
  for (int a : argnums) {
    if (a == 0) {
      out.push_back(mx::array(primals[0].shape(), mx::float32, std::make_shared<Dropout>(stream(), p_),
                              {mx::contiguous(cotangents[0], false, stream()), primals[1]}));
    } else {
      out.push_back(mx::zeros_like(primals[1], stream()));
    }
  }
  return out;
}

// ------------------------------------------------------------------------------------------
// ops

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

mx::array attention(const mx::array& q, const mx::array& k, const mx::array& v, float scale, bool causal,
                    const std::optional<mx::array>& bias, mx::StreamOrDevice s) {
  for (auto [a, what] : {std::pair{&q, "q"}, {&k, "k"}, {&v, "v"}}) {
    require_float32(*a, "attention", what);
    if (a->ndim() != 4) throw std::invalid_argument(std::string("attention: ") + what + " must be 4-D (B, H, T, hd)");
  }
  int B = q.shape(0), H = q.shape(1), Tq = q.shape(2), D = q.shape(3), Hkv = k.shape(1), Tk = k.shape(2);
  if (k.shape() != v.shape() || k.shape(0) != B || k.shape(3) != D)
    throw std::invalid_argument("attention: k and v must be (B, H_kv, Tk, hd) with q's B and hd");
  if (Hkv == 0 || H % Hkv) throw std::invalid_argument("attention: the key/value heads must divide the query heads");
  if (causal && bias) throw std::invalid_argument("attention: pass either causal or bias");
  auto stream = mx::to_stream(s);
  std::vector<mx::array> inputs = {q, k, v};
  if (bias) {
    require_float32(*bias, "attention", "bias");
    inputs.push_back(mx::broadcast_to(*bias, {B, H, Tq, Tk}, stream));
  }
  auto outs = mx::array::make_arrays({{B, Tq, H, D}, {B, H, Tq, Tk}}, {mx::float32, mx::float32},
                                     std::make_shared<Attention>(stream, scale, causal), inputs);
  return outs[0];
}

std::vector<mx::array> adamw(const std::vector<mx::array>& params, const std::vector<mx::array>& grads,
                             const std::vector<mx::array>& m, const std::vector<mx::array>& v, const mx::array& lr,
                             const mx::array& scale, float b1, float b2, float eps, float weight_decay,
                             mx::StreamOrDevice s) {
  size_t n = params.size();
  if (grads.size() != n || m.size() != n || v.size() != n)
    throw std::invalid_argument("adamw: params, grads, m and v must be lists of the same length");
  if (n == 0) return {};
  auto stream = mx::to_stream(s);
  std::vector<mx::array> inputs;
  std::vector<mx::Shape> shapes;
  for (const auto* list : {&params, &grads, &m, &v}) {
    for (size_t t = 0; t < n; ++t) {
      const auto& a = (*list)[t];
      require_float32(a, "adamw", "every tensor");
      if (a.shape() != params[t].shape())
        throw std::invalid_argument("adamw: tensor " + std::to_string(t) + " has mismatched shapes");
      inputs.push_back(mx::contiguous(a, false, stream));
    }
  }
  for (int copy = 0; copy < 3; ++copy)
    for (size_t t = 0; t < n; ++t) shapes.push_back(params[t].shape());
  inputs.push_back(mx::reshape(mx::astype(lr, mx::float32, stream), {}, stream));
  inputs.push_back(mx::reshape(mx::astype(scale, mx::float32, stream), {}, stream));
  return mx::array::make_arrays(shapes, std::vector<mx::Dtype>(3 * n, mx::float32),
                                std::make_shared<AdamW>(stream, b1, b2, eps, weight_decay), inputs);
}

mx::array moe_combine(const mx::array& rows, const mx::array& weights, const mx::array& inv, mx::StreamOrDevice s) {
  require_float32(rows, "moe_combine", "rows");
  require_float32(weights, "moe_combine", "weights");
  if (rows.ndim() != 2 || weights.ndim() != 2 || inv.shape() != weights.shape())
    throw std::invalid_argument("moe_combine: rows must be (M, d), weights and inv (N, k)");
  auto stream = mx::to_stream(s);
  return mx::array({weights.shape(0), rows.shape(1)}, mx::float32, std::make_shared<MoECombine>(stream),
                   {mx::contiguous(rows, false, stream), mx::contiguous(weights, false, stream),
                    mx::stop_gradient(mx::contiguous(mx::astype(inv, mx::int32, stream), false, stream), stream)});
}

mx::array dropout(const mx::array& x, const mx::array& seed, float p, mx::StreamOrDevice s) {
  require_float32(x, "dropout", "x");
  if (!(p >= 0.0f && p < 1.0f)) throw std::invalid_argument("dropout: p must be in [0, 1)");
  if (seed.size() != 1) throw std::invalid_argument("dropout: seed must be a single uint32");
  auto stream = mx::to_stream(s);
  return mx::array(x.shape(), mx::float32, std::make_shared<Dropout>(stream, p),
                   {mx::contiguous(x, false, stream),
                    mx::stop_gradient(mx::reshape(mx::astype(seed, mx::uint32, stream), {}, stream), stream)});
}

}  // namespace vantage
