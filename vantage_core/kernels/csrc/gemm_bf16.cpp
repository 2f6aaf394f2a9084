// The GEMM of mixed-precision training: C = op(A) op(B) with A and B rounded to bfloat16 and the
// products summed in float32.
//
// Both operands are packed first, rounded: the rows of op(A) and the columns of op(B) as pairs of
// bf16 along k, op(B) in panels of 16 columns. The AVX512-BF16 tile kernel reads each pair as one
// 32-bit word (the even k in the low half: the layout VDPBF16PS reads); the AVX2 and plain C++
// ones read the pair as two floats (the odd k first), so that no instruction of theirs unpacks.
// Every tile kernel sums into float32 accumulators in the order VDPBF16PS is defined with:
// acc += a[k+1] b[k+1], then acc += a[k] b[k], k rising. The product of two bf16 values is exact
// in float32, so a fused and a separate multiply-add give the same sum, and the tile kernels
// (chosen at run time) compute the same values from the same inputs, apart from float32 denormal
// sums, which VDPBF16PS flushes to zero. K is walked in blocks (the partial sums wait in C
// between blocks, unrounded), which changes no sum. Rounding to bf16 is to nearest even, zero
// and denormals to a signed zero, NaN to a quiet NaN, as VCVTNEPS2BF16 does.
#include "common.h"
#include "kernels.h"

#include <atomic>
#include <bit>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__x86_64__) && (defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 10))
#define VANTAGE_X86_TILES 1
#include <immintrin.h>
#endif

namespace vantage {

namespace {

// f rounded to bf16 (to nearest even; zero and denormals to a signed zero, NaN to a quiet NaN),
// as a float. Branch-free, so that the packing loops vectorize.
float bf16_round(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  uint32_t nearest = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
  uint32_t r = (u & 0x7fffffffu) > 0x7f800000u ? (u | 0x00400000u) & 0xffff0000u : nearest;
  return std::bit_cast<float>((u & 0x7f800000u) == 0 ? u & 0x80000000u : r);
}

// The operands of C (m x n, row-major, ldc) = op(A) op(B), op(A) m x k, op(B) k x n.
struct GemmOperands {
  bool trans_a, trans_b;
  int64_t m, n, k;
  const float* a;
  int64_t lda;
  const float* b;
  int64_t ldb;
  float* c;
  int64_t ldc;
};

// A matrix read as R(r, kk) = x[r * rs + kk * cs].
struct Strided {
  const float* x;
  int64_t rs, cs;
};

// How a tile kernel reads a pair of rounded values: one word (even k low), or two floats W apart
// (odd k first).
struct PairWords {
  using T = uint32_t;
  static constexpr int size = 1;
  static void put(T* o, int, float even, float odd) {
    o[0] = (std::bit_cast<uint32_t>(even) >> 16) | (std::bit_cast<uint32_t>(odd) & 0xffff0000u);
  }
};

struct SplitFloats {
  using T = float;
  static constexpr int size = 2;
  static void put(T* o, int w, float even, float odd) {
    o[0] = odd;
    o[w] = even;
  }
};

constexpr int kPackRows = 16, kPackK = 32;

// One block of R (rows [r0, r0 + nr), nr <= 16; k [k0, k0 + 32)) rounded into `tile`, zeros past
// `rows` and `k`; read along whichever stride is 1 (one of them is). A full block runs loops of
// constant length, which the compiler vectorizes whole.
void round_block(Strided m, int64_t rows, int64_t k, int64_t r0, int64_t nr, int64_t k0,
                 float (&tile)[kPackRows][kPackK]) {
  int64_t real_rows = std::clamp<int64_t>(rows - r0, 0, nr), real_k = std::clamp<int64_t>(k - k0, 0, kPackK);
  const float* x = m.x + r0 * m.rs + k0 * m.cs;
  bool full = real_rows == kPackRows && real_k == kPackK;
  if (full && m.cs == 1) {
    for (int i = 0; i < kPackRows; ++i)
      for (int j = 0; j < kPackK; ++j) tile[i][j] = bf16_round(x[i * m.rs + j]);
  } else if (full && m.rs == 1) {
    for (int j = 0; j < kPackK; ++j)
      for (int i = 0; i < kPackRows; ++i) tile[i][j] = bf16_round(x[j * m.cs + i]);
  } else {
    std::memset(tile, 0, sizeof tile);
    for (int64_t i = 0; i < real_rows; ++i)
      for (int64_t j = 0; j < real_k; ++j) tile[i][j] = bf16_round(x[i * m.rs + j * m.cs]);
  }
}

// pack_rows for W = 1 when R's rows are contiguous (the common op(A)): each row straight through.
template <typename L>
void pack_contiguous_rows(Strided m, int64_t rows, int64_t k, int64_t kp, int64_t r0, int64_t r1,
                          typename L::T* out) {
  for (int64_t r = r0; r < r1; ++r) {
    typename L::T* o = out + r * kp * L::size;
    if (r >= rows) {
      std::memset(o, 0, sizeof(typename L::T) * kp * L::size);
      continue;
    }
    const float* x = m.x + r * m.rs;
    int64_t full = k / 2;
    for (int64_t p = 0; p < full; ++p) L::put(o + p * L::size, 1, bf16_round(x[2 * p]), bf16_round(x[2 * p + 1]));
    if (full < kp) L::put(o + full * L::size, 1, bf16_round(x[2 * full]), 0.0f);
  }
}

// Rows [r0, r1) of R (rows x k), rounded, in groups of W rows: pair p of row r at
// out + ((r / W) kp + p) W L::size + r % W (r0 a multiple of W). Rows from `rows` on, and the
// missing partner of an odd k, are zero. Blocks of 16 rows and 32 k pass through a tile in L1:
// read along the source's unit stride, written along the layout's.
template <int W, typename L>
void pack_rows(Strided m, int64_t rows, int64_t k, int64_t kp, int64_t r0, int64_t r1, typename L::T* out) {
  if (W == 1 && m.cs == 1) {  // rows in, rows out: no tile needed
    pack_contiguous_rows<L>(m, rows, k, kp, r0, r1, out);
    return;
  }
  float tile[kPackRows][kPackK];
  for (int64_t rb = r0; rb < r1; rb += kPackRows) {
    int64_t nr = std::min<int64_t>(kPackRows, r1 - rb);
    for (int64_t k0 = 0; k0 < 2 * kp; k0 += kPackK) {
      round_block(m, rows, k, rb, nr, k0, tile);
      int64_t p0 = k0 / 2, pairs = std::min<int64_t>(kPackK / 2, kp - p0);
      if (W == 1 && nr == kPackRows && pairs == kPackK / 2) {
        for (int i = 0; i < kPackRows; ++i)
          for (int p = 0; p < kPackK / 2; ++p)
            L::put(out + ((rb + i) * kp + p0 + p) * L::size, W, tile[i][2 * p], tile[i][2 * p + 1]);
      } else if constexpr (W == 1) {
        for (int64_t i = 0; i < nr; ++i)
          for (int64_t p = 0; p < pairs; ++p)
            L::put(out + ((rb + i) * kp + p0 + p) * L::size, W, tile[i][2 * p], tile[i][2 * p + 1]);
      } else {
        for (int64_t p = 0; p < pairs; ++p)
          for (int64_t i = 0; i < nr; ++i)
            L::put(out + (((rb + i) / W * kp + p0 + p) * W) * L::size + (rb + i) % W, W, tile[i][2 * p],
                   tile[i][2 * p + 1]);
      }
    }
  }
}

// A tile kernel: MR rows of packed op(A) (`a`: the first row at its first pair; a row holds
// `stride` pairs) times NR packed columns of op(B) (`b`: the first 16-column panel at its first
// pair; a panel holds `stride` pairs of 16 columns), over `count` pairs, into c (MR x NR, rows
// ldc apart): added to what c holds when `add`, else written.
using TileFn = void (*)(const void* a, const void* b, int64_t stride, int64_t count, float* c, int64_t ldc, bool add);

struct TileKernel {
  const char* name;
  int mr, nr;
  bool words;  // PairWords (else SplitFloats)
  TileFn fn;
  bool (*runs_here)();
};

void tile_generic(const void* pa, const void* pb, int64_t stride, int64_t count, float* c, int64_t ldc, bool add) {
  const auto* a = static_cast<const float*>(pa);
  const auto* b = static_cast<const float*>(pb);
  float acc[4][16];
  for (int r = 0; r < 4; ++r)
    for (int j = 0; j < 16; ++j) acc[r][j] = add ? c[r * ldc + j] : 0.0f;
  for (int64_t p = 0; p < count; ++p) {
    const float* bp = b + p * 32;  // 16 odd, then 16 even
    for (int half = 0; half < 2; ++half) {
      for (int r = 0; r < 4; ++r) {
        float ar = a[(r * stride + p) * 2 + half];
        for (int j = 0; j < 16; ++j) acc[r][j] += ar * bp[half * 16 + j];
      }
    }
  }
  for (int r = 0; r < 4; ++r) std::memcpy(c + r * ldc, acc[r], sizeof acc[r]);
}

bool always() { return true; }

#ifdef VANTAGE_X86_TILES

// The accumulators are named one by one: GCC keeps an array of them in memory, not in registers.
#define VANTAGE_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5)

__attribute__((target("avx2,fma"))) void tile_avx2(const void* pa, const void* pb, int64_t stride, int64_t count,
                                                   float* c, int64_t ldc, bool add) {
  const auto* a = static_cast<const float*>(pa);
  const auto* b = static_cast<const float*>(pb);
#define VANTAGE_INIT(r)                                                    \
  __m256 c##r##0 = add ? _mm256_loadu_ps(c + r * ldc) : _mm256_setzero_ps(); \
  __m256 c##r##1 = add ? _mm256_loadu_ps(c + r * ldc + 8) : _mm256_setzero_ps();
  VANTAGE_ROWS(VANTAGE_INIT)
#undef VANTAGE_INIT
  for (int64_t p = 0; p < count; ++p) {
    const float* bp = b + p * 32;
    const float* ap = a + p * 2;
    for (int half = 0; half < 2; ++half) {  // the odd k, then the even k
      __m256 b0 = _mm256_loadu_ps(bp + half * 16), b1 = _mm256_loadu_ps(bp + half * 16 + 8);
#define VANTAGE_STEP(r)                                                   \
  {                                                                       \
    __m256 ar = _mm256_broadcast_ss(ap + r * stride * 2 + half);          \
    c##r##0 = _mm256_fmadd_ps(ar, b0, c##r##0);                           \
    c##r##1 = _mm256_fmadd_ps(ar, b1, c##r##1);                           \
  }
      VANTAGE_ROWS(VANTAGE_STEP)
#undef VANTAGE_STEP
    }
  }
#define VANTAGE_STORE(r)                    \
  _mm256_storeu_ps(c + r * ldc, c##r##0); \
  _mm256_storeu_ps(c + r * ldc + 8, c##r##1);
  VANTAGE_ROWS(VANTAGE_STORE)
#undef VANTAGE_STORE
}
#undef VANTAGE_ROWS

#define VANTAGE_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)

// Compiled wherever the compiler knows the instruction; tests/test_precision.py runs it where the
// CPU has AVX512-BF16 and checks it bit for bit against tile_generic.
__attribute__((target("avx512f,avx512bf16"))) void tile_avx512bf16(const void* pa, const void* pb, int64_t stride,
                                                                    int64_t count, float* c, int64_t ldc, bool add) {
  const auto* a = static_cast<const uint32_t*>(pa);
  const auto* b = static_cast<const uint32_t*>(pb);
  const uint32_t* b1 = b + stride * 16;  // the second panel
#define VANTAGE_INIT(r)                                                    \
  __m512 c##r##0 = add ? _mm512_loadu_ps(c + r * ldc) : _mm512_setzero_ps(); \
  __m512 c##r##1 = add ? _mm512_loadu_ps(c + r * ldc + 16) : _mm512_setzero_ps();
  VANTAGE_ROWS(VANTAGE_INIT)
#undef VANTAGE_INIT
  for (int64_t p = 0; p < count; ++p) {
    __m512bh w0 = (__m512bh)_mm512_loadu_si512(b + p * 16), w1 = (__m512bh)_mm512_loadu_si512(b1 + p * 16);
#define VANTAGE_STEP(r)                                                              \
  {                                                                                  \
    __m512bh pair = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[r * stride + p])); \
    c##r##0 = _mm512_dpbf16_ps(c##r##0, pair, w0);                                   \
    c##r##1 = _mm512_dpbf16_ps(c##r##1, pair, w1);                                   \
  }
    VANTAGE_ROWS(VANTAGE_STEP)
#undef VANTAGE_STEP
  }
#define VANTAGE_STORE(r)                    \
  _mm512_storeu_ps(c + r * ldc, c##r##0); \
  _mm512_storeu_ps(c + r * ldc + 16, c##r##1);
  VANTAGE_ROWS(VANTAGE_STORE)
#undef VANTAGE_STORE
}
#undef VANTAGE_ROWS

bool has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

bool has_avx512bf16() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16");
}

#endif

// Best first.
const std::vector<TileKernel>& tile_kernels() {
  static const std::vector<TileKernel> all = {
#ifdef VANTAGE_X86_TILES
      {"avx512bf16", 8, 32, true, tile_avx512bf16, has_avx512bf16},
      {"avx2", 6, 16, false, tile_avx2, has_avx2},
#endif
      {"generic", 4, 16, false, tile_generic, always},
  };
  return all;
}

std::atomic<int> chosen_{-1};  // index into tile_kernels(); -1: the best this CPU runs

const TileKernel& tile_kernel() {
  int i = chosen_.load();
  if (i >= 0) return tile_kernels()[i];
  for (const auto& t : tile_kernels())
    if (t.runs_here()) return t;
  return tile_kernels().back();
}

int64_t round_up(int64_t x, int64_t to) { return (x + to - 1) / to * to; }

constexpr int64_t kPairsPerBlock = 256;  // k walked in blocks of 512: a 16-column panel's block is 32 KiB

// A buffer that grows to the largest size asked and is kept: the next call on this thread (MLX's
// CPU stream) packs into it again, where a fresh buffer per call would cost page faults and
// zeroing about as long as the packing itself.
class Scratch {
 public:
  void* get(size_t bytes) {
    if (bytes > size_) {
      std::free(data_);
      size_ = (bytes + 63) / 64 * 64;
      data_ = std::aligned_alloc(64, size_);
      if (data_ == nullptr) {
        size_ = 0;
        throw std::bad_alloc();
      }
    }
    return data_;
  }
  ~Scratch() { std::free(data_); }

 private:
  void* data_ = nullptr;
  size_t size_ = 0;
};

thread_local Scratch a_scratch, b_scratch;

// Packed operands: op(A)'s rows padded to the tile's height, op(B)'s columns to 32, k to even;
// 4-byte elements, one (PairWords) or two (SplitFloats) per pair.
struct Packed {
  const char* a_base;
  const char* b_base;
  int64_t kp, mp, np, per_pair;
  const void* a(int64_t row, int64_t pair) const { return a_base + 4 * (row * kp + pair) * per_pair; }
  const void* b(int64_t col, int64_t pair) const { return b_base + 4 * (col * kp + pair * 16) * per_pair; }
};

template <typename L>
Packed pack_as(const GemmOperands& g, int64_t mp, int64_t np) {
  int64_t kp = (g.k + 1) / 2;
  auto* pa = static_cast<typename L::T*>(a_scratch.get(static_cast<size_t>(mp * kp * L::size) * 4));
  auto* pb = static_cast<typename L::T*>(b_scratch.get(static_cast<size_t>(np * kp * L::size) * 4));
  Strided ra = g.trans_a ? Strided{g.a, 1, g.lda} : Strided{g.a, g.lda, 1};  // op(A)
  Strided rb = g.trans_b ? Strided{g.b, g.ldb, 1} : Strided{g.b, 1, g.ldb};  // op(B)^T
  int64_t a_blocks = (mp + kPackRows - 1) / kPackRows, b_blocks = np / kPackRows;
  parallel_rows(a_blocks, kPackRows * 2 * kp, [&](int64_t b0, int64_t b1, int) {
    pack_rows<1, L>(ra, g.m, g.k, kp, b0 * kPackRows, std::min(mp, b1 * kPackRows), pa);
  });
  parallel_rows(b_blocks, kPackRows * 2 * kp, [&](int64_t b0, int64_t b1, int) {
    pack_rows<16, L>(rb, g.n, g.k, kp, b0 * kPackRows, b1 * kPackRows, pb);
  });
  return {reinterpret_cast<const char*>(pa), reinterpret_cast<const char*>(pb), kp, mp, np, L::size};
}

Packed pack(const GemmOperands& g, const TileKernel& t) {
  int64_t mp = round_up(g.m, t.mr), np = round_up(g.n, 32);
  return t.words ? pack_as<PairWords>(g, mp, np) : pack_as<SplitFloats>(g, mp, np);
}

// One tile (rows [i0, i0 + mr), columns [j0, j0 + nr)) over the pairs [p0, p0 + count): in C
// itself when it lies inside, else through a scratch tile for the part that does.
void run_tile(const TileKernel& t, const Packed& pk, const GemmOperands& g, int64_t i0, int64_t j0, int64_t p0,
              int64_t count, float* scratch) {
  int64_t rows = std::min<int64_t>(t.mr, g.m - i0), cols = std::min<int64_t>(t.nr, g.n - j0);
  bool add = p0 > 0;
  float* c = g.c + i0 * g.ldc + j0;
  if (rows == t.mr && cols == t.nr) {
    t.fn(pk.a(i0, p0), pk.b(j0, p0), pk.kp, count, c, g.ldc, add);
    return;
  }
  for (int64_t i = 0; add && i < rows; ++i) std::memcpy(scratch + i * t.nr, c + i * g.ldc, sizeof(float) * cols);
  t.fn(pk.a(i0, p0), pk.b(j0, p0), pk.kp, count, scratch, t.nr, add);
  for (int64_t i = 0; i < rows; ++i) std::memcpy(c + i * g.ldc, scratch + i * t.nr, sizeof(float) * cols);
}

void gemm_bf16(const GemmOperands& g) {
  if (g.m == 0 || g.n == 0) return;
  if (g.k == 0) {
    for (int64_t i = 0; i < g.m; ++i) std::fill(g.c + i * g.ldc, g.c + i * g.ldc + g.n, 0.0f);
    return;
  }
  const TileKernel& t = tile_kernel();
  Packed pk = pack(g, t);
  // Tasks: chunks of up to 128 rows times column chunks, enough of them for every thread;
  // inside, each k block of a column panel is reused across the chunk's rows.
  int64_t row_blocks = pk.mp / t.mr, col_blocks = pk.np / t.nr;
  int64_t per_row_chunk = std::max<int64_t>(1, 128 / t.mr);
  int64_t row_chunks = (row_blocks + per_row_chunk - 1) / per_row_chunk;
  int64_t col_chunks = std::clamp<int64_t>((2 * num_threads() + row_chunks - 1) / row_chunks, 1, col_blocks);
  int64_t per_col_chunk = (col_blocks + col_chunks - 1) / col_chunks;
  int64_t macs = per_row_chunk * t.mr * per_col_chunk * t.nr * g.k;
  parallel_rows(row_chunks * col_chunks, macs / 8, [&](int64_t t0, int64_t t1, int) {
    std::vector<float> scratch(static_cast<size_t>(t.mr * t.nr));
    for (int64_t task = t0; task < t1; ++task) {
      int64_t rc = task / col_chunks, cc = task % col_chunks;
      int64_t rb_end = std::min(row_blocks, (rc + 1) * per_row_chunk);
      int64_t cb_end = std::min(col_blocks, (cc + 1) * per_col_chunk);
      for (int64_t p0 = 0; p0 < pk.kp; p0 += kPairsPerBlock) {
        int64_t count = std::min(kPairsPerBlock, pk.kp - p0);
        for (int64_t cb = cc * per_col_chunk; cb < cb_end; ++cb)
          for (int64_t rb = rc * per_row_chunk; rb < rb_end; ++rb)
            if (rb * t.mr < g.m && cb * t.nr < g.n)  // padding-only tiles write nothing
              run_tile(t, pk, g, rb * t.mr, cb * t.nr, p0, count, scratch.data());
      }
    }
  });
}

}  // namespace

const char* bf16_gemm_isa() { return tile_kernel().name; }

std::vector<std::string> bf16_gemm_isas() {
  std::vector<std::string> out;
  for (const auto& t : tile_kernels())
    if (t.runs_here()) out.emplace_back(t.name);
  return out;
}

void set_bf16_gemm_isa(const std::string& name) {
  if (name.empty()) {
    chosen_.store(-1);
    return;
  }
  const auto& all = tile_kernels();
  std::string valid;
  for (size_t i = 0; i < all.size(); ++i) {
    if (all[i].runs_here()) {
      if (name == all[i].name) {
        chosen_.store(static_cast<int>(i));
        return;
      }
      valid += std::string(valid.empty() ? "" : ", ") + all[i].name;
    }
  }
  throw std::invalid_argument("bf16 GEMM kernel '" + name + "' does not run on this CPU or build; valid: " + valid +
                              " (or '' for the best)");
}

// ------------------------------------------------------------------------------------------
// the primitive

void MatmulBF16::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  allocate(outputs);
  const auto &a = inputs[0], &b = inputs[1];
  GemmOperands g{trans_a_, trans_b_, outputs[0].shape(0), outputs[0].shape(1), trans_a_ ? a.shape(0) : a.shape(1),
                 a.data<float>(), a.shape(1), b.data<float>(), b.shape(1), outputs[0].data<float>(),
                 outputs[0].shape(1)};
  dispatch(stream(), inputs, outputs, [g] { gemm_bf16(g); });
}

std::vector<mx::array> MatmulBF16::vjp(const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
                                       const std::vector<int>& argnums, const std::vector<mx::array>&) {
  // C = op(A) op(B): dA = dC op(B)^T, dB = op(A)^T dC, each written in A's and B's own layout
  const auto &a = primals[0], &b = primals[1], &dc = cotangents[0];
  auto s = stream();
  std::vector<mx::array> out;
  for (int arg : argnums) {
    if (arg == 0) {
      out.push_back(trans_a_ ? matmul_bf16(b, dc, trans_b_, true, s) : matmul_bf16(dc, b, false, !trans_b_, s));
    } else {
      out.push_back(trans_b_ ? matmul_bf16(dc, a, true, trans_a_, s) : matmul_bf16(a, dc, !trans_a_, false, s));
    }
  }
  return out;
}

mx::array matmul_bf16(const mx::array& a, const mx::array& b, bool trans_a, bool trans_b, mx::StreamOrDevice s) {
  require_float32(a, "matmul_bf16", "a");
  require_float32(b, "matmul_bf16", "b");
  if (a.ndim() != 2 || b.ndim() != 2) throw std::invalid_argument("matmul_bf16: a and b must be 2-D");
  int m = a.shape(trans_a ? 1 : 0), k = a.shape(trans_a ? 0 : 1);
  int kb = b.shape(trans_b ? 1 : 0), n = b.shape(trans_b ? 0 : 1);
  if (k != kb)
    throw std::invalid_argument("matmul_bf16: op(a) is (" + std::to_string(m) + ", " + std::to_string(k) +
                                ") but op(b) is (" + std::to_string(kb) + ", " + std::to_string(n) + ")");
  auto stream = mx::to_stream(s);
  return mx::array({m, n}, mx::float32, std::make_shared<MatmulBF16>(stream, trans_a, trans_b),
                   {mx::contiguous(a, false, stream), mx::contiguous(b, false, stream)});
}

}  // namespace vantage
