// Tests of the kernels' parts below the FFI handlers, in the style of XNNPACK's
// microkernel testers: a tester names one configuration (the tile's width, the columns it
// stores, the stride between inputs, the layout and its pattern, the activation), builds
// random weights and inputs, runs the part and compares every output with a plain
// double-precision loop over the dense matrix. tests/pcs/sparse/test_kernel_tiles.py compiles and
// runs it; it prints one line per failure and exits 1 if any.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "conv.h"
#include "product.h"
#include "rows.h"
#include "tiles.h"

namespace pcs {
namespace {

int failures = 0;

void Expect(bool ok, const std::string& what) {
  if (!ok) {
    ++failures;
    std::printf("FAIL %s\n", what.c_str());
  }
}

bool Close(double got, double want) { return std::abs(got - want) <= 1e-4 * (1.0 + std::abs(want)); }

// A pool for the tests: Schedule starts a thread, joined when the pool goes.
class ThreadsPool {
 public:
  explicit ThreadsPool(int64_t threads) : threads_(threads) {}
  ~ThreadsPool() {
    for (std::thread& t : running_) t.join();
  }
  int64_t num_threads() const { return threads_; }
  template <typename Fn>
  void Schedule(Fn&& fn) { running_.emplace_back(std::forward<Fn>(fn)); }

 private:
  int64_t threads_;
  std::vector<std::thread> running_;
};

// A pool whose helpers start only when it is run (or when it goes): helpers that start
// after the loop has returned, as a pool busy with other work starts them.
class LatePool {
 public:
  explicit LatePool(int64_t threads) : threads_(threads) {}
  ~LatePool() { Run(); }
  int64_t num_threads() const { return threads_; }
  template <typename Fn>
  void Schedule(Fn&& fn) { waiting_.emplace_back(std::forward<Fn>(fn)); }
  void Run() {
    for (auto& fn : waiting_) fn();
    waiting_.clear();
  }

 private:
  int64_t threads_;
  std::vector<std::function<void()>> waiting_;
};

// A random W^T (features x fan_in) of the given layout: CSR keeps each weight with
// probability `density`; N:M keeps at most N of every M inputs (fewer, at random, too).
// bfloat16 of v, rounded to nearest even, and the float32 it stands for.
Bf16 ToBf16(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  bits += 0x7fff + ((bits >> 16) & 1);
  return Bf16{static_cast<uint16_t>(bits >> 16)};
}

struct Weights {
  int64_t features, fan_in, n = 0, m = 0;
  std::vector<float> dense;  // W^T, row-major
  std::vector<float> values;
  std::vector<Bf16> half;  // the values in bfloat16, when asked for (dense holds them too)
  std::vector<uint16_t> indices16;
  std::vector<int32_t> indices32, indptr;
  std::vector<uint8_t> positions;

  Weights(int64_t features, int64_t fan_in, double density, int64_t n, int64_t m,
          std::mt19937* rng, bool bfloat16 = false)
      : features(features), fan_in(fan_in), n(n), m(m), dense(features * fan_in, 0.0f) {
    std::uniform_real_distribution<float> value(-1.0f, 1.0f);
    std::bernoulli_distribution keep(density);
    indptr.push_back(0);
    for (int64_t r = 0; r < features; ++r) {
      if (m > 0) {
        for (int64_t g = 0; g < fan_in / m; ++g) {
          std::vector<int64_t> order(m);
          for (int64_t j = 0; j < m; ++j) order[j] = j;
          std::shuffle(order.begin(), order.end(), *rng);
          std::sort(order.begin(), order.begin() + n);
          for (int64_t j = 0; j < n; ++j) {
            const float v = keep(*rng) ? value(*rng) : 0.0f;
            dense[r * fan_in + g * m + order[j]] = v;
            values.push_back(v);
            positions.push_back(static_cast<uint8_t>(order[j]));
          }
        }
      } else {
        for (int64_t k = 0; k < fan_in; ++k) {
          if (!keep(*rng)) continue;
          float v = value(*rng);
          if (bfloat16) {
            half.push_back(ToBf16(v));
            v = ToFloat(half.back());
          }
          dense[r * fan_in + k] = v;
          values.push_back(v);
          indices16.push_back(static_cast<uint16_t>(k));
          indices32.push_back(static_cast<int32_t>(k));
        }
        indptr.push_back(static_cast<int32_t>(values.size()));
      }
    }
  }

  // act(W^T x^T + b) for rows [0, features) and columns [0, cols) of x^T (fan_in, stride).
  double Reference(int64_t r, const std::vector<float>& x, int64_t stride, int64_t col,
                   const std::vector<float>& bias, int64_t activation) const {
    double sum = bias[r];
    for (int64_t k = 0; k < fan_in; ++k) sum += double(dense[r * fan_in + k]) * x[k * stride + col];
    return activation == kRelu ? std::max(sum, 0.0) : sum;
  }
};

std::vector<float> Random(int64_t size, std::mt19937* rng) {
  std::uniform_real_distribution<float> value(-1.0f, 1.0f);
  std::vector<float> out(size);
  for (float& v : out) v = value(*rng);
  return out;
}

// One row tile: RowTile<Width> through PanelUnit over every row, `valid` columns stored,
// inputs `stride` floats apart (at least Width: the tile reads Width columns).
class RowTileTester {
 public:
  RowTileTester& width(int64_t v) { width_ = v; return *this; }
  RowTileTester& valid(int64_t v) { valid_ = v; return *this; }
  RowTileTester& stride(int64_t v) { stride_ = v; return *this; }
  RowTileTester& n_m(int64_t n, int64_t m) { n_ = n; m_ = m; return *this; }
  RowTileTester& narrow(bool v) { narrow_ = v; return *this; }
  RowTileTester& bfloat16(bool v) { bfloat16_ = v; return *this; }
  RowTileTester& activation(int64_t v) { activation_ = v; return *this; }

  template <typename Rows>
  void Check(const Rows& rows, const Weights& w, const std::string& name) const {
    std::mt19937 rng(7);
    const std::vector<float> x = Random(w.fan_in * stride_, &rng);
    const std::vector<float> bias = Random(w.features, &rng);
    std::vector<float> y(w.features * stride_, 123.0f);
    PanelUnit(rows, x.data(), stride_, bias.data(), stride_, width_, activation_, 0,
              w.features, y.data(), valid_);
    for (int64_t r = 0; r < w.features; ++r) {
      for (int64_t c = 0; c < stride_; ++c) {
        const double want = c < valid_ ? w.Reference(r, x, stride_, c, bias, activation_) : 123.0;
        Expect(Close(y[r * stride_ + c], want),
               name + " width " + std::to_string(width_) + " valid " + std::to_string(valid_) +
                   " row " + std::to_string(r) + " column " + std::to_string(c));
      }
    }
  }

  void Test() const {
    std::mt19937 rng(width_ * 1000 + valid_ * 10 + n_);
    const int64_t fan_in = m_ > 0 ? 8 * m_ : 37;
    const Weights w(13, fan_in, 0.7, n_, m_, &rng, bfloat16_);
    if (bfloat16_) {
      Check(CsrRows<uint16_t, Bf16>{w.half.data(), w.indices16.data(), w.indptr.data()}, w,
            "csr16 bf16");
    } else if (m_ > 0) {
      Check(NmRows{w.values.data(), w.positions.data(), fan_in / m_, n_, m_}, w,
            "n_m " + std::to_string(n_) + ":" + std::to_string(m_));
    } else if (narrow_) {
      Check(CsrRows<uint16_t>{w.values.data(), w.indices16.data(), w.indptr.data()}, w, "csr16");
    } else {
      Check(CsrRows<int32_t>{w.values.data(), w.indices32.data(), w.indptr.data()}, w, "csr32");
    }
  }

 private:
  int64_t width_ = 8, valid_ = 8, stride_ = 16, n_ = 0, m_ = 0, activation_ = kIdentity;
  bool narrow_ = true, bfloat16_ = false;
};

// The one-column rows (DotRows) and the whole product (Product, with packing and the
// parallel loop on a real pool), at `cols` columns, x and y in `layout`.
void TestProduct(int64_t features, int64_t fan_in, int64_t cols, int64_t n, int64_t m,
                 int64_t threads, int64_t activation, bool bfloat16 = false,
                 int64_t layout = kColumns) {
  std::mt19937 rng(features + fan_in + cols);
  const Weights w(features, fan_in, 0.5, n, m, &rng, bfloat16);
  const std::vector<float> x_t = Random(fan_in * cols, &rng), bias = Random(features, &rng);
  std::vector<float> x = x_t;  // x (cols, fan_in) for kRows: the transpose of x^T
  if (layout == kRows) {
    for (int64_t k = 0; k < fan_in; ++k) {
      for (int64_t c = 0; c < cols; ++c) x[c * fan_in + k] = x_t[k * cols + c];
    }
  }
  std::vector<float> y(features * cols, std::nanf(""));  // a store missed stays NaN
  ThreadsPool pool(3);
  const std::string name = "product " + std::to_string(features) + "x" +
                           std::to_string(fan_in) + " cols " + std::to_string(cols) +
                           (m > 0 ? " n_m" : bfloat16 ? " csr bf16" : " csr") + " threads " +
                           std::to_string(threads) + (layout == kRows ? " rows" : " columns");
  const int64_t nnz = static_cast<int64_t>(w.values.size());
  if (bfloat16) {
    CsrRows<uint16_t, Bf16> rows{w.half.data(), w.indices16.data(), w.indptr.data()};
    Product(pool, threads, rows, x.data(), bias.data(), features, fan_in, cols, nnz,
            activation, layout, y.data());
  } else if (m > 0) {
    NmRows rows{w.values.data(), w.positions.data(), fan_in / m, n, m};
    Product(pool, threads, rows, x.data(), bias.data(), features, fan_in, cols, nnz,
            activation, layout, y.data());
  } else {
    CsrRows<uint16_t> rows{w.values.data(), w.indices16.data(), w.indptr.data()};
    Product(pool, threads, rows, x.data(), bias.data(), features, fan_in, cols, nnz,
            activation, layout, y.data());
  }
  for (int64_t r = 0; r < features; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const float got = layout == kRows ? y[c * features + r] : y[r * cols + c];
      Expect(Close(got, w.Reference(r, x_t, cols, c, bias, activation)),
             name + " row " + std::to_string(r) + " column " + std::to_string(c));
    }
  }
}

// The direct convolution: a (kh, kw, C, F) kernel with strides (sh, sw) on one image of
// H x W, against the convolution summed in double over the dense kernel.
void TestConvolution(int64_t kh, int64_t kw, int64_t channels, int64_t features, int64_t sh,
                     int64_t sw, int64_t height, int64_t width, int64_t threads) {
  std::mt19937 rng(kh * 100 + kw * 10 + sh + height);
  const int64_t fan_in = kh * kw * channels;
  const Weights w(features, fan_in, 0.4, 0, 0, &rng);  // rows: inputs (kh, kw, c)
  const int64_t ho = (height - kh) / sh + 1, wo = (width - kw) / sw + 1;
  const std::vector<float> image = Random(channels * height * width, &rng);  // (C, H, W)
  const std::vector<float> bias = Random(features, &rng);
  // The stride phases: z[(a, b, c), i, j] = x[c, sh i + a, sw j + b].
  const int64_t pa = std::min(sh, kh), pb = std::min(sw, kw);
  const int64_t hq = (height + sh - 1) / sh, wq = (width + sw - 1) / sw;
  std::vector<float> z(pa * pb * channels * hq * wq, 0.0f);
  for (int64_t a = 0; a < pa; ++a)
    for (int64_t b = 0; b < pb; ++b)
      for (int64_t c = 0; c < channels; ++c)
        for (int64_t i = 0; i < hq; ++i)
          for (int64_t j = 0; j < wq; ++j)
            if (sh * i + a < height && sw * j + b < width)
              z[(((a * pb + b) * channels + c) * hq + i) * wq + j] =
                  image[(c * height + sh * i + a) * width + sw * j + b];
  std::vector<int64_t> inputs(w.indices32.begin(), w.indices32.end());
  std::vector<int64_t> starts(w.indptr.begin(), w.indptr.end());
  const ConvShape shape{channels, pa * pb * channels, hq, wq, ho, wo, sh, sw, pb, features};
  std::vector<float> y(features * ho * wo, 0.0f);
  ThreadsPool pool(3);
  Convolve(pool, threads, w.values.data(), inputs, starts, kh, kw, z.data(), bias.data(), shape,
           1, kIdentity, y.data());
  for (int64_t o = 0; o < features; ++o) {
    for (int64_t i = 0; i < ho; ++i) {
      for (int64_t j = 0; j < wo; ++j) {
        double sum = bias[o];
        for (int64_t a = 0; a < kh; ++a)
          for (int64_t b = 0; b < kw; ++b)
            for (int64_t c = 0; c < channels; ++c)
              sum += double(w.dense[o * fan_in + (a * kw + b) * channels + c]) *
                     image[(c * height + sh * i + a) * width + sw * j + b];
        Expect(Close(y[(o * ho + i) * wo + j], sum),
               "conv " + std::to_string(kh) + "x" + std::to_string(kw) + " stride " +
                   std::to_string(sh) + "x" + std::to_string(sw) + " out " +
                   std::to_string(o) + "," + std::to_string(i) + "," + std::to_string(j));
      }
    }
  }
}

// Both parallel loops run every block exactly once, over n not a multiple of the block,
// with helpers that run alongside (ThreadsPool) and with helpers that start only after the
// caller has run every block (LatePool), who must then find none: checked when the loop
// returns (every block done by then) and again once the pool's helpers have all run.
template <typename Pool>
void TestParallelLoops(int64_t threads, const std::string& pool_name) {
  for (int64_t n : {1, 15, 16, 17, 1000, 4099}) {
    for (bool shares : {false, true}) {
      std::vector<std::atomic<int>> runs(n);
      for (auto& r : runs) r = 0;
      auto body = [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) runs[i].fetch_add(1);
      };
      auto check = [&](const std::string& when) {
        int64_t wrong = 0;
        for (auto& r : runs) wrong += r.load() != 1;
        Expect(wrong == 0, std::string(shares ? "ParallelShares" : "ParallelFor") + " on " +
                               pool_name + " with " + std::to_string(threads) + " threads, n " +
                               std::to_string(n) + ", " + when + ": " + std::to_string(wrong) +
                               " items not run exactly once");
      };
      {
        Pool pool(threads);
        const int64_t work = int64_t{1} << 20;  // past kMinParallelWork
        if (shares) {
          ParallelShares(pool, kPool, n, 16, work, body);
        } else {
          ParallelFor(pool, kPool, n, 16, work, body);
        }
        check("when the loop returns");
      }
      check("after the pool's helpers");
    }
  }
}

// The store of two accumulator vectors, by hand: the sum, through the ReLU where asked
// (a NaN stays NaN, -0 stays -0, as std::max(v, 0) leaves them), only `valid` lanes written.
void TestStore() {
  const float nan = std::nanf("");
  const Vec8 even[2] = {{nan, -1.0f, 2.0f, -0.0f, 3.0f, -4.0f, 0.5f, -0.5f},
                        {1.0f, -2.0f, 3.0f, -3.0f, 4.0f, -5.0f, 6.0f, -7.0f}};
  const Vec8 odd[2] = {{1.0f, 0.5f, 1.0f, -0.0f, -4.0f, 5.0f, 0.0f, 0.0f}, {}};
  const float sums[16] = {nan, -0.5f, 3.0f, -0.0f, -1.0f, 1.0f, 0.5f, -0.5f,
                          1.0f, -2.0f, 3.0f, -3.0f, 4.0f, -5.0f, 6.0f, -7.0f};
  for (int64_t activation : {kIdentity, kRelu}) {
    for (int64_t valid : {16, 11, 8, 3}) {
      float y[17];
      std::fill(y, y + 17, 42.0f);
      Store<2>(even, odd, activation, y, valid);
      for (int64_t j = 0; j < 17; ++j) {
        const float want = j >= valid ? 42.0f
                           : activation == kRelu && sums[j] < 0.0f ? 0.0f : sums[j];
        const bool same = std::isnan(want) ? std::isnan(y[j])
                                           : y[j] == want && std::signbit(y[j]) == std::signbit(want);
        Expect(same, "store activation " + std::to_string(activation) + " valid " +
                         std::to_string(valid) + " lane " + std::to_string(j));
      }
    }
  }
}

}  // namespace
}  // namespace pcs

int main() {
  pcs::TestStore();
  for (int64_t threads : {2, 3, 5}) {
    pcs::TestParallelLoops<pcs::ThreadsPool>(threads, "a pool");
    pcs::TestParallelLoops<pcs::LatePool>(threads, "a late pool");
  }
  using pcs::RowTileTester;
  for (int64_t width : {2, 4, 8, 16}) {
    for (int64_t valid = 1; valid <= width; ++valid) {
      for (int64_t activation : {pcs::kIdentity, pcs::kRelu}) {
        RowTileTester().width(width).valid(valid).activation(activation).Test();
        RowTileTester().width(width).valid(valid).activation(activation).narrow(false).Test();
        RowTileTester().width(width).valid(valid).stride(width).activation(activation).Test();
        RowTileTester().width(width).valid(valid).bfloat16(true).activation(activation).Test();
        for (auto [n, m] : {std::pair<int64_t, int64_t>{2, 4}, {1, 4}, {3, 8}, {1, 2}}) {
          RowTileTester().width(width).valid(valid).n_m(n, m).activation(activation).Test();
        }
      }
    }
  }
  for (int64_t threads : {pcs::kPool, pcs::kCaller}) {
    for (int64_t layout : {pcs::kColumns, pcs::kRows}) {
      for (int64_t cols : {1, 2, 3, 8, 12, 16, 17, 28, 40}) {
        pcs::TestProduct(70, 96, cols, 0, 0, threads, pcs::kRelu, false, layout);
        pcs::TestProduct(70, 96, cols, 2, 4, threads, pcs::kIdentity, false, layout);
        pcs::TestProduct(70, 96, cols, 0, 0, threads, pcs::kRelu, true, layout);
      }
      pcs::TestProduct(4000, 300, 1, 0, 0, threads, pcs::kIdentity, false, layout);  // parallel
      pcs::TestProduct(300, 400, 64, 0, 0, threads, pcs::kIdentity, false, layout);  // panels
      // inputs past PackRows' blocks and its 8 x 8 transposes, 5 columns past the last 8,
      // 5 rows past TileToRows' last 8
      pcs::TestProduct(45, 301, 29, 0, 0, threads, pcs::kIdentity, false, layout);
    }
    pcs::TestConvolution(3, 3, 4, 5, 1, 1, 12, 45, threads);  // bands of 32, 8 and the rest
    pcs::TestConvolution(3, 3, 4, 5, 2, 2, 11, 20, threads);
    // bands of 32, 16 and 8 columns and 1 more; 11 rows: 2, 4 and 8 at a time, the rest alone
    pcs::TestConvolution(3, 3, 4, 5, 1, 1, 13, 59, threads);
    // stride 2 through the bands: 19 rows (9 pairs and 1), 34 columns (32 and 2)
    pcs::TestConvolution(3, 3, 4, 5, 2, 2, 40, 70, threads);
    pcs::TestConvolution(1, 3, 2, 3, 1, 2, 1, 40, threads);   // a 1-D convolution
    pcs::TestConvolution(3, 3, 8, 40, 1, 1, 16, 16, threads);  // parallel over channels
  }
  std::printf("%d failures\n", pcs::failures);
  return pcs::failures == 0 ? 0 : 1;
}
