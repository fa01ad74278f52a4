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

// R output rows (i .. i + R) of one full tile of 8 V columns: each nonzero's value and
// offset are read once for all R rows, row r reading its input r wq further on. R V = 8
// accumulators, as ConvTile's two sets of V = 4. In a probe of ResNet-20's 95%-sparse
// layers at batch 1 (Zen 4) this took 4-8 us off each layer's 22-71 us call: a row's
// nonzeros are a scalar load of each value and offset and a broadcast per tile, now per
// R tiles.
template <int V, int R>
PCS_INLINE void ConvTileRows(const ConvRows& rows, int64_t o, const float* x, int64_t wq,
                             float bias, int64_t activation, float* y, int64_t wo) {
  Vec8 acc[R][V], zero[V];
  for (int v = 0; v < V; ++v) {
    for (int r = 0; r < R; ++r) acc[r][v] = Vec8{} + bias;
    zero[v] = Vec8{};
  }
  for (int64_t k = rows.starts[o]; k < rows.starts[o + 1]; ++k) {
    const float w = rows.values[k];
    const float* xk = x + rows.offsets[k];
    for (int r = 0; r < R; ++r) Axpy<V>(acc[r], w, xk + r * wq);
  }
  for (int r = 0; r < R; ++r) Store<V>(acc[r], zero, activation, y + r * wo, 8 * V);
}

// channels: C; planes: the phases read times C, each hq x wq; phases_w: min(s_w, kw).
struct ConvShape {
  int64_t channels, planes, hq, wq, ho, wo, sh, sw, phases_w, features;
};

// The columns [j, j + 8 V) of every output row of one plane: R = 8 / V rows at a time,
// the rows left over one by one.
template <int V>
PCS_INLINE void ConvBand(const ConvRows& rows, int64_t o, const float* image, float bias,
                         const ConvShape& s, int64_t activation, float* plane, int64_t j) {
  constexpr int R = 8 / V;
  int64_t i = 0;
  for (; i + R <= s.ho; i += R) {
    ConvTileRows<V, R>(rows, o, image + i * s.wq + j, s.wq, bias, activation,
                       plane + i * s.wo + j, s.wo);
  }
  for (; i < s.ho; ++i) {
    ConvTile<V>(rows, o, image + i * s.wq + j, bias, activation, plane + i * s.wo + j, 8 * V);
  }
}

// Units [u0, u1) of (image, output channel) pairs, each a whole output plane. The plane's
// columns are cut into bands of 32, then 16, then 8 (ConvBand), and a last one of fewer,
// a row at a time.
PCS_CLONES inline void ConvUnits(const ConvRows& rows, const float* x, const float* bias,
                          const ConvShape& s, int64_t activation, int64_t u0, int64_t u1,
                          float* y) {
  for (int64_t u = u0; u < u1; ++u) {
    const int64_t n = u / s.features, o = u % s.features;
    const float* image = x + n * s.planes * s.hq * s.wq;
    float* plane = y + u * s.ho * s.wo;
    int64_t j = 0;
    for (; j + 32 <= s.wo; j += 32) ConvBand<4>(rows, o, image, bias[o], s, activation, plane, j);
    for (; j + 16 <= s.wo; j += 16) ConvBand<2>(rows, o, image, bias[o], s, activation, plane, j);
    for (; j + 8 <= s.wo; j += 8) ConvBand<1>(rows, o, image, bias[o], s, activation, plane, j);
    if (j < s.wo) {
      for (int64_t i = 0; i < s.ho; ++i) {
        ConvTile<1>(rows, o, image + i * s.wq + j, bias[o], activation, plane + i * s.wo + j,
                    s.wo - j);
      }
    }
  }
}

// The convolution for rows whose pairs read kernel inputs `inputs[k]` (in the kernel's
// (window, channels) order: input = (kh window_w + kw) C + c, each below window_h
// window_w C). Each input's offset into z comes from a table filled by loops over the
// window: no division per nonzero. Dividing for each took 104 us per call of ResNet-20
// at 95%, batch 1 (Zen 4; a counter in a probe's copy of the kernels).
template <typename Pool>
void Convolve(Pool& pool, int64_t threads, const float* values,
              const std::vector<int64_t>& inputs,
              const std::vector<int64_t>& starts, int64_t window_h, int64_t window_w,
              const float* x, const float* bias, const ConvShape& s, int64_t images,
              int64_t activation, float* y) {
  const int64_t plane = s.hq * s.wq;
  std::vector<int64_t> at(window_h * window_w * s.channels);
  for (int64_t kh = 0; kh < window_h; ++kh) {
    for (int64_t kw = 0; kw < window_w; ++kw) {
      const int64_t phase = (kh % s.sh) * s.phases_w + kw % s.sw;
      const int64_t first = phase * s.channels * plane + (kh / s.sh) * s.wq + kw / s.sw;
      int64_t* window = at.data() + (kh * window_w + kw) * s.channels;
      for (int64_t c = 0; c < s.channels; ++c) window[c] = first + c * plane;
    }
  }
  std::vector<int64_t> offsets(inputs.size());
  for (size_t k = 0; k < inputs.size(); ++k) offsets[k] = at[inputs[k]];
  const ConvRows rows{values, offsets.data(), starts.data()};
  const int64_t work = static_cast<int64_t>(inputs.size()) * images * s.ho * s.wo;
  ParallelFor(pool, threads, images * s.features, kRowsPerBlock, work, [&](int64_t u0, int64_t u1) {
    ConvUnits(rows, x, bias, s, activation, u0, u1, y);
  });
}

}  // namespace pcs

#endif  // PCS_CSRC_CONV_H_
