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
// A cache line, in bytes and in floats.
constexpr uintptr_t kLineBytes = 64;
constexpr int64_t kLineFloats = kLineBytes / sizeof(float);

// y^T = act(W^T x^T + b), x and y laid out as `layout` says. One column: matrix-vector
// rows, shared out in blocks. More: x is packed into panels of x^T (in parallel when
// large; x^T given in place when it is one panel already, x a row per input always
// packed), then units of (panel, row block) are
// shared out panel-major, whole panels per task when there are panels enough to keep
// every thread busy, so a panel read into cache serves many rows.
template <typename Pool, typename Rows>
void Product(Pool& pool, int64_t threads, const Rows& rows, const float* x,
             const float* bias, int64_t features, int64_t fan_in, int64_t cols,
             int64_t nonzeros, int64_t activation, int64_t layout, float* y) {
  if (cols == 1) {  // one column: both layouts are the same vectors
    ParallelShares(pool, threads, features, kRowsPerBlock, nonzeros, [&](int64_t r0, int64_t r1) {
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
  if (layout == kRows || cols != width) {
    // Each panel row starts on a 64-byte cache line: a 16-float row then spans one line,
    // not two (the batched products ran 25-35% faster on the Zen 3 measured).
    buffer.resize(panels * width * fan_in + kLineFloats);
    float* panel_data = reinterpret_cast<float*>(
        (reinterpret_cast<uintptr_t>(buffer.data()) + kLineBytes - 1) & ~(kLineBytes - 1));
    const int64_t inputs = layout == kRows ? kPackRowsInputs : 64;  // per task
    ParallelFor(pool, threads, fan_in, inputs, fan_in * cols, [&](int64_t k0, int64_t k1) {
      if (layout == kRows) {
        PackRows(x, fan_in, cols, width, k0, k1, panel_data);
      } else {
        Pack(x, fan_in, cols, width, k0, k1, panel_data);
      }
    });
    packed = panel_data;
  }
  const int64_t block = cols > 8 ? kRowsPerPanelBlock : kRowsPerBlock;
  const int64_t row_blocks = (features + block - 1) / block;
  const int64_t per_task = panels >= 4 * (pool.num_threads() + 1) ? row_blocks : 1;
  const int64_t units = panels * row_blocks;
  ParallelFor(pool, threads, units, per_task, nonzeros * cols, [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t p = u / row_blocks, r0 = (u % row_blocks) * block;
      const int64_t r1 = std::min(features, r0 + block), valid = std::min(width, cols - p * width);
      const float* panel = packed + p * fan_in * width;
      if (layout == kColumns) {
        PanelUnit(rows, panel, width, bias, cols, width, activation, r0, r1,
                  y + r0 * cols + p * width, valid);
        continue;
      }
      // A row per input: the unit's tile is made in a compact block, as for x^T, then
      // written out transposed (stored in place, a column's values would lie `features`
      // floats apart, the same cache sets for every column).
      thread_local std::vector<float> tile;
      tile.resize(block * width);
      PanelUnit(rows, panel, width, bias, width, width, activation, r0, r1, tile.data(), valid);
      TileToRows(tile.data(), width, r1 - r0, valid, y + p * width * features + r0, features);
    }
  });
}

}  // namespace pcs

#endif  // PCS_CSRC_PRODUCT_H_
