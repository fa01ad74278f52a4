// y^T = act(W^T x^T + b) for a layer: its rows shared out over the threads, one column
// as matrix-vector rows, more columns through packed panels and row tiles.

#ifndef PCS_CSRC_PRODUCT_H_
#define PCS_CSRC_PRODUCT_H_

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common.h"
#include "parallel.h"
#include "tiles.h"

namespace pcs {

// Output rows per unit of work: enough to amortise scheduling, few enough to balance.
// Many columns: blocks big enough that each panel of x^T, read once into cache, serves
// many rows before the next panel.
constexpr int64_t kRowsPerBlock = 16;
constexpr int64_t kRowsPerPanelBlock = 128;

// y^T = act(W^T x^T + b). One column: matrix-vector rows, shared out in blocks. More:
// x^T is packed into panels (in parallel when large), then units of (panel, row block)
// are shared out panel-major, whole panels per task when there are panels enough to keep
// every thread busy, so a panel read into cache serves many rows.
template <typename Pool, typename Rows>
void Product(Pool& pool, int64_t threads, const Rows& rows, const float* x,
             const float* bias, int64_t features, int64_t fan_in, int64_t cols,
             int64_t nonzeros, int64_t activation, float* y) {
  if (cols == 1) {
    ParallelFor(pool, threads, features, kRowsPerBlock, nonzeros, [&](int64_t r0, int64_t r1) {
      DotRows(rows, x, bias, activation, r0, r1, y);
    });
    return;
  }
  const int64_t width = PanelWidth(cols);
  const int64_t panels = (cols + width - 1) / width;
  const float* packed = x;
  // The caller's buffer, kept between calls (no page faults per call); the pool's threads
  // see it through this pointer, as a thread_local name means each thread's own.
  thread_local std::vector<float> buffer;
  if (cols != width) {
    buffer.resize(panels * width * fan_in);
    float* panel_data = buffer.data();
    ParallelFor(pool, threads, fan_in, 64, fan_in * cols, [&](int64_t k0, int64_t k1) {
      Pack(x, fan_in, cols, width, k0, k1, panel_data);
    });
    packed = panel_data;
  }
  const int64_t block = cols > 8 ? kRowsPerPanelBlock : kRowsPerBlock;
  const int64_t row_blocks = (features + block - 1) / block;
  const int64_t per_task = panels >= 4 * (pool.num_threads() + 1) ? row_blocks : 1;
  ParallelFor(pool, threads, panels * row_blocks, per_task, nonzeros * cols, [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t p = u / row_blocks, r0 = (u % row_blocks) * block;
      PanelUnit(rows, packed + p * fan_in * width, width, bias, cols, width, activation, r0,
                std::min(features, r0 + block), y + p * width,
                std::min(width, cols - p * width));
    }
  });
}

}  // namespace pcs

#endif  // PCS_CSRC_PRODUCT_H_
