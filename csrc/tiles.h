// The SIMD tiles: one output row over a tile of contiguous columns (vectors of 8 floats,
// GCC/Clang vector extensions), the matrix-vector rows for one column, the packing of x^T
// (or of x, a row per input: PackRows) into panels of columns, and the transposed write of
// a tile into y (columns, features): TileToRows.

#ifndef PCS_CSRC_TILES_H_
#define PCS_CSRC_TILES_H_

#include <algorithm>
#include <cstdint>

#include "common.h"

namespace pcs {

// Multiply-adds w * x[0 .. 8V) into acc, V vectors.
template <int V>
PCS_INLINE void Axpy(Vec8* acc, float w, const float* x) {
  const Vec8 broadcast = Vec8{} + w;
  for (int v = 0; v < V; ++v) acc[v] += broadcast * Load8(x + 8 * v);
}

// act(even + odd) into y[0 .. valid): whole vectors stored as vectors (the ReLU as a mask
// that clears the negative lanes and keeps a NaN, as Activate does), the rest lane by lane.
// A row with few nonzeros is mostly this store: 37 against 44 us for 4096 rows of 16
// columns with 1666 nonzeros in all, on the Zen 4 measured.
template <int V>
PCS_INLINE void Store(const Vec8* even, const Vec8* odd, int64_t activation, float* y,
                      int64_t valid) {
  for (int v = 0; v < V; ++v) {
    Vec8 sum = even[v] + odd[v];
    if (activation == kRelu) {
      sum = reinterpret_cast<Vec8>(reinterpret_cast<Bits8>(sum) &
                                   ~reinterpret_cast<Bits8>(sum < Vec8{}));
    }
    if (8 * (v + 1) <= valid) {
      *reinterpret_cast<Vec8Unaligned*>(y + 8 * v) = sum;
    } else {
      for (int j = 0; 8 * v + j < valid; ++j) y[8 * v + j] = sum[j];
    }
  }
}

// One output row over `Width` contiguous columns (`stride` floats from one input's
// columns to the next's), into y (the first `valid` columns are stored; the columns up
// to `Width` must be readable). Two accumulator sets take alternate nonzeros, so
// consecutive multiply-adds do not wait on each other.
template <int Width, typename Rows>
PCS_INLINE void RowTile(const Rows& rows, int64_t r, const float* x, int64_t stride,
                        float bias, int64_t activation, float* y, int64_t valid) {
  if constexpr (Width >= 8) {
    constexpr int V = Width / 8;
    Vec8 even[V], odd[V];
    for (int v = 0; v < V; ++v) {
      even[v] = Vec8{} + bias;
      odd[v] = Vec8{};
    }
    rows.Visit(
        r,
        [&](float w0, int64_t i0, float w1, int64_t i1) {
          Axpy<V>(even, w0, x + i0 * stride);
          Axpy<V>(odd, w1, x + i1 * stride);
        },
        [&](float w, int64_t i) { Axpy<V>(even, w, x + i * stride); });
    Store<V>(even, odd, activation, y, valid);
  } else {
    float acc[Width];
    for (int j = 0; j < Width; ++j) acc[j] = bias;
    auto add = [&](float w, int64_t i) {
      const float* xi = x + i * stride;
      for (int j = 0; j < Width; ++j) acc[j] += w * xi[j];
    };
    rows.Visit(
        r,
        [&](float w0, int64_t i0, float w1, int64_t i1) {
          add(w0, i0);
          add(w1, i1);
        },
        add);
    for (int64_t j = 0; j < valid; ++j) y[j] = Activate(acc[j], activation);
  }
}

// Columns per panel: x^T is read in panels of `Width` contiguous columns. With 2, 4, 8 or
// 16 columns x^T is its own panel (x, a row per input, is always packed); otherwise each
// panel is copied out (the last one zero-padded) into a compact block, as reading it in
// place, `cols` floats apart, would map many inputs to the same cache sets.
inline int64_t PanelWidth(int64_t cols) {
  return cols <= 2 ? 2 : cols <= 4 ? 4 : cols <= 8 ? 8 : 16;
}

// Copies inputs [k0, k1) of x^T (fan_in, cols) into the panels [cols / width][fan_in][width]
// (the last one zero-padded), 16 inputs at a time: 16 rows of x^T are read in sequence
// while each panel receives a contiguous block.
inline void Pack(const float* x, int64_t fan_in, int64_t cols, int64_t width, int64_t k0,
          int64_t k1, float* panels) {
  for (int64_t kb = k0; kb < k1; kb += 16) {
    const int64_t kend = std::min(k1, kb + 16);
    for (int64_t c0 = 0; c0 < cols; c0 += width) {
      const int64_t valid = std::min(width, cols - c0);
      float* panel = panels + (c0 / width) * fan_in * width;
      for (int64_t k = kb; k < kend; ++k) {
        const float* from = x + k * cols + c0;
        float* to = panel + k * width;
        for (int64_t j = 0; j < valid; ++j) to[j] = from[j];
        for (int64_t j = valid; j < width; ++j) to[j] = 0.0f;
      }
    }
  }
}

// Vector shuffles (GCC 12+, Clang); PCS_NO_SHUFFLE builds the scalar path instead (the
// tile test builds both).
#if defined(__has_builtin) && !defined(PCS_NO_SHUFFLE)
#if __has_builtin(__builtin_shufflevector)
#define PCS_HAS_SHUFFLE 1
#endif
#endif

#ifdef PCS_HAS_SHUFFLE
// Columns 0..7 of the 8 x 8 block m[0..7] (rows): unpack pairs of rows, then pairs of
// pairs, then the two 128-bit halves.
PCS_INLINE void Transpose8(Vec8* m) {
  Vec8 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = __builtin_shufflevector(m[i], m[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[i + 1] = __builtin_shufflevector(m[i], m[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = __builtin_shufflevector(t[i], t[i + 2], 0, 1, 8, 9, 4, 5, 12, 13);
    u[i + 1] = __builtin_shufflevector(t[i], t[i + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    u[i + 2] = __builtin_shufflevector(t[i + 1], t[i + 3], 0, 1, 8, 9, 4, 5, 12, 13);
    u[i + 3] = __builtin_shufflevector(t[i + 1], t[i + 3], 2, 3, 10, 11, 6, 7, 14, 15);
  }
  for (int j = 0; j < 4; ++j) {
    m[j] = __builtin_shufflevector(u[j], u[j + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    m[j + 4] = __builtin_shufflevector(u[j], u[j + 4], 4, 5, 6, 7, 12, 13, 14, 15);
  }
}
#endif

// Copies inputs [k0, k1) of x (cols, fan_in), one row per column, into the same panels
// (the transpose of Pack's source), kPackRowsInputs inputs at a time, so that the panel
// rows they fill stay in cache while the panel's columns are filled. Blocks of 8 columns
// by 8 inputs are transposed in registers where the compiler has vector shuffles (8 loads
// and 8 stores of eight floats, where a value at a time is 64 loads and 64 stores, each
// store to another panel row: 8 against 20-28 us for 16 columns of 4096 inputs on the
// Zen 4 measured); the rest is copied one value at a time.
constexpr int64_t kPackRowsInputs = 256;
PCS_CLONES inline void PackRows(const float* x, int64_t fan_in, int64_t cols, int64_t width,
                                int64_t k0, int64_t k1, float* panels) {
  for (int64_t kb = k0; kb < k1; kb += kPackRowsInputs) {
    const int64_t kend = std::min(k1, kb + kPackRowsInputs);
    for (int64_t c0 = 0; c0 < cols; c0 += width) {
      const int64_t valid = std::min(width, cols - c0);
      float* panel = panels + (c0 / width) * fan_in * width;
      int64_t j = 0;
#ifdef PCS_HAS_SHUFFLE
      for (; j + 8 <= valid; j += 8) {
        const float* from = x + (c0 + j) * fan_in;
        int64_t k = kb;
        for (; k + 8 <= kend; k += 8) {
          Vec8 m[8];
          for (int i = 0; i < 8; ++i) m[i] = Load8(from + i * fan_in + k);
          Transpose8(m);
          for (int t = 0; t < 8; ++t) {
            *reinterpret_cast<Vec8Unaligned*>(panel + (k + t) * width + j) = m[t];
          }
        }
        for (; k < kend; ++k) {
          for (int i = 0; i < 8; ++i) panel[k * width + j + i] = from[i * fan_in + k];
        }
      }
#endif
      for (; j < valid; ++j) {
        const float* from = x + (c0 + j) * fan_in;
        for (int64_t k = kb; k < kend; ++k) panel[k * width + j] = from[k];
      }
      for (; j < width; ++j) {
        for (int64_t k = kb; k < kend; ++k) panel[k * width + j] = 0.0f;
      }
    }
  }
}

// Writes a tile of `rows` output rows by `valid` columns (row-major, `width` floats per
// row) into y (columns, features) at column 0, row 0: each column's values become one run
// of its row of y. 8 x 8 blocks are transposed in registers where the compiler has vector
// shuffles, 8 columns at a time down the tile's rows, so that only 8 lines of y are being
// written at once (y's rows lie `features` floats apart, often a multiple of 4 KB, all in
// the same cache set: 16 lines at once, in the tile's row order, outnumber the set's ways
// and each is evicted half-written: 25 against 17 us for 4096 rows by 16 columns on the
// Zen 4 measured); the rest is copied one value at a time.
PCS_CLONES inline void TileToRows(const float* tile, int64_t width, int64_t rows, int64_t valid,
                                  float* y, int64_t features) {
  int64_t done = 0;  // the rows stored
#ifdef PCS_HAS_SHUFFLE
  done = rows - rows % 8;
  for (int64_t c = 0; c + 8 <= valid; c += 8) {
    for (int64_t r = 0; r < done; r += 8) {
      Vec8 m[8];
      for (int i = 0; i < 8; ++i) m[i] = Load8(tile + (r + i) * width + c);
      Transpose8(m);
      for (int j = 0; j < 8; ++j) {
        *reinterpret_cast<Vec8Unaligned*>(y + (c + j) * features + r) = m[j];
      }
    }
  }
  for (int64_t c = valid - valid % 8; c < valid; ++c) {
    for (int64_t r = 0; r < done; ++r) y[c * features + r] = tile[r * width + c];
  }
#endif
  for (int64_t r = done; r < rows; ++r) {
    for (int64_t c = 0; c < valid; ++c) y[c * features + r] = tile[r * width + c];
  }
}

// Rows [r0, r1) of one panel of y^T = act(W^T x^T + b): x points at the panel's first
// column, y at row r0's; x has `x_stride` floats per row, y `y_row` floats from one output
// row to the next.
template <int Width, typename Rows>
PCS_INLINE void PanelRows(const Rows& rows, const float* x, int64_t x_stride,
                          const float* bias, int64_t y_row, int64_t activation, int64_t r0,
                          int64_t r1, float* y, int64_t valid) {
  for (int64_t r = r0; r < r1; ++r) {
    RowTile<Width>(rows, r, x, x_stride, bias[r], activation, y + (r - r0) * y_row, valid);
  }
}

// The row loops, compiled for AVX2 + FMA and for the baseline ISA (picked at load time).
template <typename Rows>
PCS_CLONES void DotRows(const Rows& rows, const float* x, const float* bias,
                        int64_t activation, int64_t r0, int64_t r1, float* y) {
  for (int64_t r = r0; r < r1; ++r) y[r] = Activate(bias[r] + rows.Dot(r, x), activation);
}

template <typename Rows>
PCS_CLONES void PanelUnit(const Rows& rows, const float* x, int64_t x_stride,
                          const float* bias, int64_t y_row, int64_t width, int64_t activation,
                          int64_t r0, int64_t r1, float* y, int64_t valid) {
  switch (width) {
    case 2: PanelRows<2>(rows, x, x_stride, bias, y_row, activation, r0, r1, y, valid); break;
    case 4: PanelRows<4>(rows, x, x_stride, bias, y_row, activation, r0, r1, y, valid); break;
    case 8: PanelRows<8>(rows, x, x_stride, bias, y_row, activation, r0, r1, y, valid); break;
    default: PanelRows<16>(rows, x, x_stride, bias, y_row, activation, r0, r1, y, valid); break;
  }
}

}  // namespace pcs

#endif  // PCS_CSRC_TILES_H_
