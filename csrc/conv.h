// The direct sparse convolution on the padded input split into its stride phases (Park
// et al., "Faster CNNs with Direct Sparse Convolutions", ICLR 2017): no patch matrix.

#ifndef PCS_CSRC_CONV_H_
#define PCS_CSRC_CONV_H_

#include <cstdint>
#include <vector>

#include "common.h"
#include "parallel.h"
#include "product.h"
#include "tiles.h"

namespace pcs {

// Direct convolution (strides s_h, s_w; image n, output channel o):
//   y[n, o, i, j] = act(b[o] + sum over nonzeros (kh, kw, c) of w * x[n, c, s_h i + kh, s_w j + kw])
// on the padded input split into the stride phases that the window reads,
//   z[n, (a, b, c), i, j] = x[n, c, s_h i + a, s_w j + b],   a < min(s_h, kh), b < min(s_w, kw),
// where the strided convolution is a stride-1 one: nonzero (kh, kw, c) reads z at channel
// (kh mod s_h, kw mod s_w, c) and offset (kh div s_h, kw div s_w). Each nonzero is a
// fixed offset into z, so it multiply-adds one contiguous run of an input row into a
// tile of an output row: no patch matrix. Both formats reach it as rows of
// (value, offset) pairs.
struct ConvRows {
  const float* values;
  const int64_t* offsets;
  const int64_t* starts;  // row o's pairs are [starts[o], starts[o + 1])
};

// One tile of 8 V output columns of an output row: vectors, alternate nonzeros into two
// accumulator sets; a row's last, partial tile takes a scalar loop.
template <int V>
PCS_INLINE void ConvTile(const ConvRows& rows, int64_t o, const float* x, float bias,
                         int64_t activation, float* y, int64_t valid) {
  int64_t k = rows.starts[o];
  const int64_t end = rows.starts[o + 1];
  if (valid == 8 * V) {
    Vec8 even[V], odd[V];
    for (int v = 0; v < V; ++v) {
      even[v] = Vec8{} + bias;
      odd[v] = Vec8{};
    }
    for (; k + 2 <= end; k += 2) {
      Axpy<V>(even, rows.values[k], x + rows.offsets[k]);
      Axpy<V>(odd, rows.values[k + 1], x + rows.offsets[k + 1]);
    }
    if (k < end) Axpy<V>(even, rows.values[k], x + rows.offsets[k]);
    Store<V>(even, odd, activation, y, valid);
    return;
  }
  float acc[8 * V];
  for (int64_t j = 0; j < valid; ++j) acc[j] = bias;
  for (; k < end; ++k) {
    const float w = rows.values[k];
    const float* xk = x + rows.offsets[k];
    for (int64_t j = 0; j < valid; ++j) acc[j] += w * xk[j];
  }
  for (int64_t j = 0; j < valid; ++j) y[j] = Activate(acc[j], activation);
}

// channels: C; planes: the phases read times C, each hq x wq; phases_w: min(s_w, kw).
struct ConvShape {
  int64_t channels, planes, hq, wq, ho, wo, sh, sw, phases_w, features;
};

// Units [u0, u1) of (image, output channel) pairs, each a whole output plane. Each output
// row is cut into tiles of 32, then 16, then 8 columns, and a last one of fewer.
PCS_CLONES inline void ConvUnits(const ConvRows& rows, const float* x, const float* bias,
                          const ConvShape& s, int64_t activation, int64_t u0, int64_t u1,
                          float* y) {
  for (int64_t u = u0; u < u1; ++u) {
    const int64_t n = u / s.features, o = u % s.features;
    const float* image = x + n * s.planes * s.hq * s.wq;
    float* plane = y + u * s.ho * s.wo;
    for (int64_t i = 0; i < s.ho; ++i) {
      const float* from = image + i * s.wq;
      float* to = plane + i * s.wo;
      int64_t j = 0;
      for (; j + 32 <= s.wo; j += 32) ConvTile<4>(rows, o, from + j, bias[o], activation, to + j, 32);
      for (; j + 16 <= s.wo; j += 16) ConvTile<2>(rows, o, from + j, bias[o], activation, to + j, 16);
      for (; j + 8 <= s.wo; j += 8) ConvTile<1>(rows, o, from + j, bias[o], activation, to + j, 8);
      if (j < s.wo) ConvTile<1>(rows, o, from + j, bias[o], activation, to + j, s.wo - j);
    }
  }
}

// The convolution for rows whose pairs read kernel inputs `inputs[k]` (in the kernel's
// (window, channels) order: input = (kh window_w + kw) C + c).
template <typename Pool>
void Convolve(Pool& pool, int64_t threads, const float* values,
              const std::vector<int64_t>& inputs,
              const std::vector<int64_t>& starts, int64_t window_w, const float* x,
              const float* bias, const ConvShape& s, int64_t images, int64_t activation,
              float* y) {
  std::vector<int64_t> offsets(inputs.size());
  for (size_t k = 0; k < inputs.size(); ++k) {
    const int64_t c = inputs[k] % s.channels, window = inputs[k] / s.channels;
    const int64_t kh = window / window_w, kw = window % window_w;
    const int64_t phase = (kh % s.sh) * s.phases_w + kw % s.sw;
    offsets[k] = (phase * s.channels + c) * s.hq * s.wq + (kh / s.sh) * s.wq + kw / s.sw;
  }
  const ConvRows rows{values, offsets.data(), starts.data()};
  const int64_t work = static_cast<int64_t>(inputs.size()) * images * s.ho * s.wo;
  ParallelFor(pool, threads, images * s.features, kRowsPerBlock, work, [&](int64_t u0, int64_t u1) {
    ConvUnits(rows, x, bias, s, activation, u0, u1, y);
  });
}

}  // namespace pcs

#endif  // PCS_CSRC_CONV_H_
