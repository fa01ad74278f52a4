// Sparse x dense products for pruned Dense and Conv layers, as XLA FFI handlers on CPU.
//
// Every product is y^T = act(W^T x^T + b): the weights are stored per output feature
// (compressed rows of W^T), and x^T is (fan_in, columns) with the columns (batch, or
// batch x spatial positions for a convolution) contiguous. For one nonzero w of row r at
// input k, the inner loop broadcasts w and multiply-adds it into a tile of contiguous
// columns of x^T's row k, so the vector width comes from the dense dimension (Elsen et
// al., "Fast Sparse ConvNets", CVPR 2020). With one column (batch 1) that tile is one
// value: the matrix-vector product, where the win is the bytes moved (4-byte values and
// 2-byte indices per nonzero against 4 bytes per weight dense).
//
// Rows are shared out over XLA's intra-op thread pool. No gradient is defined: the
// kernels serve inference.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

#define PCS_INLINE inline __attribute__((always_inline))
#if defined(__x86_64__) && defined(__GNUC__)
#define PCS_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define PCS_CLONES
#endif

namespace pcs {
namespace {

// Products smaller than this many multiply-adds run on the calling thread alone.
constexpr int64_t kMinParallelWork = 1 << 19;
// Output rows per unit of work: enough to amortise scheduling, few enough to balance.
// Many columns: blocks big enough that each panel of x^T, read once into cache, serves
// many rows before the next panel.
constexpr int64_t kRowsPerBlock = 16;
constexpr int64_t kRowsPerPanelBlock = 128;

enum Activation : int64_t { kIdentity = 0, kRelu = 1 };

// Runs body(begin, end) over [0, n) in blocks of `block`, on the pool and the caller.
// The caller takes blocks too and returns once every block is done; helpers that start
// late find no block left and only drop their reference to the shared counters.
template <typename Body>
void ParallelFor(ffi::ThreadPool& pool, int64_t n, int64_t block, int64_t work,
                 const Body& body) {
  const int64_t blocks = (n + block - 1) / block;
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), blocks - 1);
  if (work < kMinParallelWork || helpers <= 0) {
    body(0, n);
    return;
  }
  struct Shared {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::mutex mutex;
    std::condition_variable finished;
  };
  auto shared = std::make_shared<Shared>();
  auto run = [shared, blocks, block, n, body]() {
    for (int64_t b = shared->next.fetch_add(1); b < blocks; b = shared->next.fetch_add(1)) {
      body(b * block, std::min(n, (b + 1) * block));
      if (shared->done.fetch_add(1) + 1 == blocks) {
        std::lock_guard<std::mutex> lock(shared->mutex);
        shared->finished.notify_all();
      }
    }
  };
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule(decltype(run)(run));  // a copy each
  run();
  std::unique_lock<std::mutex> lock(shared->mutex);
  shared->finished.wait(lock, [&] { return shared->done.load() == blocks; });
}

inline float Activate(float v, int64_t activation) {
  return activation == kRelu ? std::max(v, 0.0f) : v;
}

// Where the nonzeros of one output row are and which x^T row each one reads.
// CSR: explicit column indices. `Visit(r, f)` calls f(value, input) for each nonzero.
template <typename Index>
struct CsrRows {
  const float* values;
  const Index* indices;
  const int32_t* indptr;

  // Calls pair(w0, input0, w1, input1) for two nonzeros at a time, then one(w, input).
  template <typename Pair, typename One>
  PCS_INLINE void Visit(int64_t r, Pair&& pair, One&& one) const {
    int64_t k = indptr[r];
    const int64_t end = indptr[r + 1];
    for (; k + 2 <= end; k += 2) {
      pair(values[k], static_cast<int64_t>(indices[k]), values[k + 1],
           static_cast<int64_t>(indices[k + 1]));
    }
    if (k < end) one(values[k], static_cast<int64_t>(indices[k]));
  }

  // One column: a gather-dot with four independent accumulators.
  PCS_INLINE float Dot(int64_t r, const float* x) const {
    float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
    int64_t k = indptr[r];
    const int64_t end = indptr[r + 1];
    for (; k + 4 <= end; k += 4) {
      a0 += values[k] * x[indices[k]];
      a1 += values[k + 1] * x[indices[k + 1]];
      a2 += values[k + 2] * x[indices[k + 2]];
      a3 += values[k + 3] * x[indices[k + 3]];
    }
    for (; k < end; ++k) a0 += values[k] * x[indices[k]];
    return (a0 + a1) + (a2 + a3);
  }
};

// N:M: per row, `groups` groups of N values with their positions p < M; group g holds
// inputs g * M .. g * M + M - 1.
struct NmRows {
  const float* values;
  const uint8_t* positions;
  int64_t groups, n, m;

  template <typename Pair, typename One>
  PCS_INLINE void Visit(int64_t r, Pair&& pair, One&& one) const {
    const float* v = values + r * groups * n;
    const uint8_t* p = positions + r * groups * n;
    const int64_t kept = groups * n;
    auto input = [&](int64_t k) { return (k / n) * m + static_cast<int64_t>(p[k]); };
    int64_t k = 0;
    if (n == 2) {  // the common 2:M patterns: a pair per group, no division
      for (int64_t g = 0; g < groups; ++g, k += 2) {
        pair(v[k], g * m + p[k], v[k + 1], g * m + static_cast<int64_t>(p[k + 1]));
      }
      return;
    }
    for (; k + 2 <= kept; k += 2) pair(v[k], input(k), v[k + 1], input(k + 1));
    if (k < kept) one(v[k], input(k));
  }

  // One column: four groups at a time into four accumulators.
  PCS_INLINE float Dot(int64_t r, const float* x) const {
    const float* v = values + r * groups * n;
    const uint8_t* p = positions + r * groups * n;
    auto group = [&](int64_t g) {
      float sum = 0.0f;
      for (int64_t j = 0; j < n; ++j) sum += v[g * n + j] * x[g * m + p[g * n + j]];
      return sum;
    };
    float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
    int64_t g = 0;
    for (; g + 4 <= groups; g += 4) {
      a0 += group(g);
      a1 += group(g + 1);
      a2 += group(g + 2);
      a3 += group(g + 3);
    }
    for (; g < groups; ++g) a0 += group(g);
    return (a0 + a1) + (a2 + a3);
  }
};

// One output row, `Width` contiguous columns of a panel (`stride` floats per input),
// into y (the first `valid` of them are stored). Two accumulator sets take alternate
// nonzeros, so consecutive multiply-adds do not wait on each other.
template <int Width, typename Rows>
PCS_INLINE void RowTile(const Rows& rows, int64_t r, const float* x, int64_t stride,
                        float bias, int64_t activation, float* y, int64_t valid) {
  float even[Width], odd[Width];
  for (int j = 0; j < Width; ++j) {
    even[j] = bias;
    odd[j] = 0.0f;
  }
  rows.Visit(
      r,
      [&](float w0, int64_t i0, float w1, int64_t i1) {
        const float* x0 = x + i0 * stride;
        const float* x1 = x + i1 * stride;
        for (int j = 0; j < Width; ++j) {
          even[j] += w0 * x0[j];
          odd[j] += w1 * x1[j];
        }
      },
      [&](float w, int64_t i) {
        const float* xi = x + i * stride;
        for (int j = 0; j < Width; ++j) even[j] += w * xi[j];
      });
  if (valid == Width) {
    for (int j = 0; j < Width; ++j) y[j] = Activate(even[j] + odd[j], activation);
  } else {
    for (int j = 0; j < valid; ++j) y[j] = Activate(even[j] + odd[j], activation);
  }
}

// Columns per panel: x^T is read in panels of `Width` contiguous columns. With 2, 4 or 8
// columns x^T is its own panel; otherwise it is repacked into panels (the last one
// zero-padded), so each nonzero reads `Width` consecutive floats of a compact block.
int64_t PanelWidth(int64_t cols) {
  return cols <= 2 ? 2 : cols <= 4 ? 4 : cols <= 8 ? 8 : 16;
}

// Copies x^T (fan_in, cols) into panels [cols / width][fan_in][width].
void Pack(const float* x, int64_t fan_in, int64_t cols, int64_t width, float* panels) {
  for (int64_t c0 = 0; c0 < cols; c0 += width) {
    const int64_t valid = std::min(width, cols - c0);
    float* panel = panels + (c0 / width) * fan_in * width;
    for (int64_t k = 0; k < fan_in; ++k) {
      const float* from = x + k * cols + c0;
      float* to = panel + k * width;
      for (int64_t j = 0; j < valid; ++j) to[j] = from[j];
      for (int64_t j = valid; j < width; ++j) to[j] = 0.0f;
    }
  }
}

// Rows [r0, r1) of y^T = act(W^T x^T + b) for all `cols` columns, from the panels.
template <int Width, typename Rows>
PCS_INLINE void PanelRows(const Rows& rows, const float* panels, const float* bias,
                          int64_t fan_in, int64_t cols, int64_t activation, int64_t r0,
                          int64_t r1, float* y) {
  for (int64_t c0 = 0; c0 < cols; c0 += Width) {
    const float* panel = panels + (c0 / Width) * fan_in * Width;
    const int64_t valid = std::min<int64_t>(Width, cols - c0);
    for (int64_t r = r0; r < r1; ++r) {
      RowTile<Width>(rows, r, panel, Width, bias[r], activation, y + r * cols + c0, valid);
    }
  }
}

// The row loop, compiled for AVX2 + FMA and for the baseline ISA (picked at load time).
template <typename Rows>
PCS_CLONES void ProductRows(const Rows& rows, const float* x, const float* panels,
                            const float* bias, int64_t fan_in, int64_t cols,
                            int64_t activation, int64_t r0, int64_t r1, float* y) {
  switch (PanelWidth(cols)) {
    case 2:
      if (cols == 1) {  // the matrix-vector product
        for (int64_t r = r0; r < r1; ++r) y[r] = Activate(bias[r] + rows.Dot(r, x), activation);
      } else {
        PanelRows<2>(rows, panels, bias, fan_in, cols, activation, r0, r1, y);
      }
      break;
    case 4: PanelRows<4>(rows, panels, bias, fan_in, cols, activation, r0, r1, y); break;
    case 8: PanelRows<8>(rows, panels, bias, fan_in, cols, activation, r0, r1, y); break;
    case 16: PanelRows<16>(rows, panels, bias, fan_in, cols, activation, r0, r1, y); break;
    default: PanelRows<32>(rows, panels, bias, fan_in, cols, activation, r0, r1, y); break;
  }
}

template <typename Rows>
void Product(ffi::ThreadPool& pool, const Rows& rows, const float* x, const float* bias,
             int64_t features, int64_t fan_in, int64_t cols, int64_t nonzeros,
             int64_t activation, float* y) {
  const int64_t width = PanelWidth(cols);
  std::vector<float> packed;
  const float* panels = x;
  if (cols > 1 && cols != width) {
    packed.resize((cols + width - 1) / width * width * fan_in);
    Pack(x, fan_in, cols, width, packed.data());
    panels = packed.data();
  }
  const int64_t block = cols > 8 ? kRowsPerPanelBlock : kRowsPerBlock;
  ParallelFor(pool, features, block, nonzeros * cols, [&](int64_t r0, int64_t r1) {
    ProductRows(rows, x, panels, bias, fan_in, cols, activation, r0, r1, y);
  });
}

// Leading dimensions (from vmap with expand_dims): the product of all but the last
// `trailing` dimensions, 1 when there are none.
int64_t Leading(ffi::AnyBuffer::Dimensions dims, int64_t trailing) {
  int64_t count = 1;
  for (int64_t i = 0; i + trailing < static_cast<int64_t>(dims.size()); ++i) count *= dims[i];
  return count;
}

ffi::Error Mismatch(const std::string& what) {
  return ffi::Error::InvalidArgument("pcs sparse kernel: " + what);
}

// Checks that an operand's leading size is 1 (shared) or the instances' count.
bool Shares(int64_t leading, int64_t instances) {
  return leading == 1 || leading == instances;
}

ffi::Error CsrMatmulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                         ffi::Buffer<ffi::F32> values, ffi::AnyBuffer indices,
                         ffi::Buffer<ffi::S32> indptr, ffi::Buffer<ffi::F32> bias,
                         ffi::ResultBuffer<ffi::F32> y, int64_t activation) {
  const auto xd = x.dimensions();
  const auto yd = y->dimensions();
  if (xd.size() < 2 || yd.size() != xd.size()) return Mismatch("x^T must be (..., fan_in, columns)");
  const int64_t fan_in = xd[xd.size() - 2], cols = xd[xd.size() - 1];
  const int64_t features = yd[yd.size() - 2];
  const int64_t nnz = values.dimensions().back();
  const int64_t instances = Leading(yd, 2), xl = Leading(xd, 2);
  const int64_t vl = Leading(values.dimensions(), 1), il = Leading(indices.dimensions(), 1);
  const int64_t pl = Leading(indptr.dimensions(), 1), bl = Leading(bias.dimensions(), 1);
  if (indptr.dimensions().back() != features + 1 || bias.dimensions().back() != features ||
      indices.dimensions().back() != nnz || yd[yd.size() - 1] != cols) {
    return Mismatch("indptr must hold features + 1 entries, bias features, indices nnz");
  }
  if (!Shares(xl, instances) || !Shares(vl, instances) || !Shares(il, instances) || !Shares(pl, instances) ||
      !Shares(bl, instances)) {
    return Mismatch("mapped weights must match the mapped inputs in number");
  }
  const bool narrow = indices.element_type() == ffi::DataType::U16;
  if (!narrow && indices.element_type() != ffi::DataType::S32) {
    return Mismatch("column indices must be uint16 or int32");
  }
  if (activation != kIdentity && activation != kRelu) return Mismatch("unknown activation");
  for (int64_t i = 0; i < instances; ++i) {
    const float* xi = x.typed_data() + (xl == 1 ? 0 : i * fan_in * cols);
    float* yi = y->typed_data() + i * features * cols;
    const float* vi = values.typed_data() + (vl == 1 ? 0 : i * nnz);
    const int32_t* pi = indptr.typed_data() + (pl == 1 ? 0 : i * (features + 1));
    const float* bi = bias.typed_data() + (bl == 1 ? 0 : i * features);
    const int64_t offset = il == 1 ? 0 : i * nnz;
    if (narrow) {
      CsrRows<uint16_t> rows{vi, static_cast<const uint16_t*>(indices.untyped_data()) + offset, pi};
      Product(pool, rows, xi, bi, features, fan_in, cols, nnz, activation, yi);
    } else {
      CsrRows<int32_t> rows{vi, static_cast<const int32_t*>(indices.untyped_data()) + offset, pi};
      Product(pool, rows, xi, bi, features, fan_in, cols, nnz, activation, yi);
    }
  }
  return ffi::Error::Success();
}

ffi::Error NmMatmulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                        ffi::Buffer<ffi::F32> values, ffi::Buffer<ffi::U8> positions,
                        ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::F32> y, int64_t n,
                        int64_t m, int64_t activation) {
  const auto xd = x.dimensions();
  const auto yd = y->dimensions();
  const auto vd = values.dimensions();
  if (xd.size() < 2 || yd.size() != xd.size() || vd.size() < 2) {
    return Mismatch("x^T must be (..., fan_in, columns), values (..., features, kept)");
  }
  const int64_t fan_in = xd[xd.size() - 2], cols = xd[xd.size() - 1];
  const int64_t features = vd[vd.size() - 2], kept = vd[vd.size() - 1];
  if (n <= 0 || m <= n || m > 256 || fan_in % m != 0) {
    return Mismatch("N:M needs 0 < N < M <= 256 and fan_in a multiple of M");
  }
  const int64_t groups = fan_in / m;
  if (kept != groups * n || positions.dimensions().back() != kept ||
      bias.dimensions().back() != features || yd[yd.size() - 2] != features ||
      yd[yd.size() - 1] != cols) {
    return Mismatch("values and positions must be (features, fan_in / M x N)");
  }
  if (activation != kIdentity && activation != kRelu) return Mismatch("unknown activation");
  const int64_t instances = Leading(yd, 2), xl = Leading(xd, 2);
  const int64_t vl = Leading(vd, 2), pl = Leading(positions.dimensions(), 2);
  const int64_t bl = Leading(bias.dimensions(), 1);
  if (!Shares(xl, instances) || !Shares(vl, instances) || !Shares(pl, instances) ||
      !Shares(bl, instances)) {
    return Mismatch("mapped weights must match the mapped inputs in number");
  }
  for (int64_t i = 0; i < instances; ++i) {
    NmRows rows{values.typed_data() + (vl == 1 ? 0 : i * features * kept),
                positions.typed_data() + (pl == 1 ? 0 : i * features * kept),
                groups, n, m};
    Product(pool, rows, x.typed_data() + (xl == 1 ? 0 : i * fan_in * cols),
            bias.typed_data() + (bl == 1 ? 0 : i * features), features, fan_in, cols,
            features * kept, activation, y->typed_data() + i * features * cols);
  }
  return ffi::Error::Success();
}

}  // namespace
}  // namespace pcs

// The registration list: each symbol below is registered by pcs/sparse/_kernels.py.
XLA_FFI_DEFINE_HANDLER_SYMBOL(PcsCsrMatmul, pcs::CsrMatmulImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x^T (..., fan_in, columns)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // values (..., nnz)
                                  .Arg<ffi::AnyBuffer>()         // column indices, u16 or s32
                                  .Arg<ffi::Buffer<ffi::S32>>()  // row pointers (..., features+1)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias (..., features)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // y^T (..., features, columns)
                                  .Attr<int64_t>("activation"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(PcsNmMatmul, pcs::NmMatmulImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x^T (..., fan_in, columns)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // values (..., features, kept)
                                  .Arg<ffi::Buffer<ffi::U8>>()   // positions in each group
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias (..., features)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // y^T (..., features, columns)
                                  .Attr<int64_t>("n")
                                  .Attr<int64_t>("m")
                                  .Attr<int64_t>("activation"));
