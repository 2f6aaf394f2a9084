// What every kernel source shares: rows split over threads, how a primitive's CPU work is
// handed to MLX's stream (outputs allocated, the task queued with its arrays), input checks.
#pragma once

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "mlx/allocator.h"
#include "mlx/array.h"
#include "mlx/backend/cpu/encoder.h"

namespace vantage {

namespace mx = mlx::core;

int num_threads();

// How many parts parallel_rows splits `rows` rows of `row_size` elements of work into: up to
// num_threads(), when the work is large enough that starting threads costs little beside it.
int64_t parts_for(int64_t rows, int64_t row_size);

// fn(begin, end, part) over [0, rows), in parts_for(rows, row_size) parts on as many threads.
template <typename F>
void parallel_rows(int64_t rows, int64_t row_size, F&& fn) {
  int64_t parts = parts_for(rows, row_size);
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

inline void allocate(std::vector<mx::array>& outputs) {
  for (auto& out : outputs) out.set_data(mx::allocator::malloc(out.nbytes()));
}

// The encoder runs `task` on the CPU stream's thread once the inputs are ready; the arrays are
// registered with it so their buffers live until then.
template <typename F>
void dispatch(mx::Stream stream, const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs, F&& task) {
  auto& encoder = mx::cpu::get_command_encoder(stream);
  for (auto& a : inputs) encoder.set_input_array(a);
  for (auto& a : outputs) encoder.set_output_array(a);
  encoder.dispatch(std::forward<F>(task));
}

inline void require_float32(const mx::array& a, const char* op, const char* what) {
  if (a.dtype() != mx::float32) throw std::invalid_argument(std::string(op) + ": " + what + " must be float32");
}

}  // namespace vantage
