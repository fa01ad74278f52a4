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
// A 1-D or 2-D convolution is taken directly on the padded input (PcsCsrConv): each
// nonzero of an output channel reads a contiguous run of an input row at a fixed offset
// (Park et al., "Faster CNNs with Direct Sparse Convolutions", ICLR 2017), so no patch
// matrix is built (PcsCsrConv, PcsNmConv); 3-D convolutions go through im2col and the
// products above.
//
// Rows are shared out over XLA's intra-op thread pool, or kept on the calling thread
// when the call says so (`threads` = 1: pcs.export measures which is faster for each
// layer on the machine it runs on, since handing work to a second thread can cost more
// than the product). No gradient is defined: the kernels serve inference.

#include <algorithm>
#include <atomic>
#include <chrono>
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

// How long the caller spins on the last blocks before it sleeps: a helper finishing
// within this wakes no one (a futex wake-up costs tens of microseconds).
constexpr std::chrono::microseconds kSpinBeforeSleep{50};

// Which threads a call may use: all of the pool's (kPool) or the calling thread alone.
enum Threads : int64_t { kPool = 0, kCaller = 1 };

// Runs body(begin, end) over [0, n) in blocks of `block`, on the pool and the caller.
// The caller takes blocks too; once none is left it spins for the helpers' last blocks,
// then sleeps until they are done. Helpers that start late find no block left and only
// drop their reference to the shared counters.
template <typename Body>
void ParallelFor(ffi::ThreadPool& pool, int64_t threads, int64_t n, int64_t block,
                 int64_t work, const Body& body) {
  const int64_t blocks = (n + block - 1) / block;
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), blocks - 1);
  if (threads == kCaller || work < kMinParallelWork || helpers <= 0) {
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
  const auto spin_until = std::chrono::steady_clock::now() + kSpinBeforeSleep;
  while (shared->done.load(std::memory_order_acquire) != blocks &&
         std::chrono::steady_clock::now() < spin_until) {
  }
  if (shared->done.load(std::memory_order_acquire) == blocks) return;
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

// Eight floats, and the unaligned view used to load them (GCC/Clang vector extensions:
// AVX registers in the x86-64-v3 clone, pairs of SSE registers in the baseline one).
typedef float Vec8 __attribute__((vector_size(32)));
typedef float Vec8Unaligned __attribute__((vector_size(32), aligned(4)));

PCS_INLINE Vec8 Load8(const float* p) { return *reinterpret_cast<const Vec8Unaligned*>(p); }

// Multiply-adds w * x[0 .. 8V) into acc, V vectors.
template <int V>
PCS_INLINE void Axpy(Vec8* acc, float w, const float* x) {
  const Vec8 broadcast = Vec8{} + w;
  for (int v = 0; v < V; ++v) acc[v] += broadcast * Load8(x + 8 * v);
}

template <int V>
PCS_INLINE void Store(const Vec8* even, const Vec8* odd, int64_t activation, float* y,
                      int64_t valid) {
  for (int v = 0; v < V; ++v) {
    const Vec8 sum = even[v] + odd[v];
    for (int j = 0; j < 8 && 8 * v + j < valid; ++j) y[8 * v + j] = Activate(sum[j], activation);
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

// Columns per panel: x^T is read in panels of `Width` contiguous columns. With 2, 4 or 8
// columns x^T is its own panel; otherwise each panel is copied out (the last one
// zero-padded) into a compact block, as reading it in place, `cols` floats apart, would
// map many inputs to the same cache sets.
int64_t PanelWidth(int64_t cols) {
  return cols <= 2 ? 2 : cols <= 4 ? 4 : cols <= 8 ? 8 : 16;
}

// Copies inputs [k0, k1) of x^T (fan_in, cols) into the panels [cols / width][fan_in][width]
// (the last one zero-padded), 16 inputs at a time: 16 rows of x^T are read in sequence
// while each panel receives a contiguous block.
void Pack(const float* x, int64_t fan_in, int64_t cols, int64_t width, int64_t k0,
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

// Rows [r0, r1) of one panel of y^T = act(W^T x^T + b): x and y point at the panel's
// first column, `x_stride` and `cols` floats per row.
template <int Width, typename Rows>
PCS_INLINE void PanelRows(const Rows& rows, const float* x, int64_t x_stride,
                          const float* bias, int64_t cols, int64_t activation, int64_t r0,
                          int64_t r1, float* y, int64_t valid) {
  for (int64_t r = r0; r < r1; ++r) {
    RowTile<Width>(rows, r, x, x_stride, bias[r], activation, y + r * cols, valid);
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
                          const float* bias, int64_t cols, int64_t width, int64_t activation,
                          int64_t r0, int64_t r1, float* y, int64_t valid) {
  switch (width) {
    case 2: PanelRows<2>(rows, x, x_stride, bias, cols, activation, r0, r1, y, valid); break;
    case 4: PanelRows<4>(rows, x, x_stride, bias, cols, activation, r0, r1, y, valid); break;
    case 8: PanelRows<8>(rows, x, x_stride, bias, cols, activation, r0, r1, y, valid); break;
    default: PanelRows<16>(rows, x, x_stride, bias, cols, activation, r0, r1, y, valid); break;
  }
}

// y^T = act(W^T x^T + b). One column: matrix-vector rows, shared out in blocks. More:
// x^T is packed into panels (in parallel when large), then units of (panel, row block)
// are shared out panel-major, whole panels per task when there are panels enough to keep
// every thread busy, so a panel read into cache serves many rows.
template <typename Rows>
void Product(ffi::ThreadPool& pool, int64_t threads, const Rows& rows, const float* x,
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
PCS_CLONES void ConvUnits(const ConvRows& rows, const float* x, const float* bias,
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
void Convolve(ffi::ThreadPool& pool, int64_t threads, const float* values,
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

// Checks the attributes every handler takes.
ffi::Error CheckOptions(int64_t activation, int64_t threads) {
  if (activation != kIdentity && activation != kRelu) return Mismatch("unknown activation");
  if (threads != kPool && threads != kCaller) {
    return Mismatch("threads must be 0 (the pool) or 1 (the calling thread)");
  }
  return ffi::Error::Success();
}

// Checks that an operand's leading size is 1 (shared) or the instances' count.
bool Shares(int64_t leading, int64_t instances) {
  return leading == 1 || leading == instances;
}

ffi::Error CsrMatmulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                         ffi::Buffer<ffi::F32> values, ffi::AnyBuffer indices,
                         ffi::Buffer<ffi::S32> indptr, ffi::Buffer<ffi::F32> bias,
                         ffi::ResultBuffer<ffi::F32> y, int64_t activation,
                         int64_t threads) {
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
  ffi::Error options = CheckOptions(activation, threads);
  if (options.failure()) return options;
  for (int64_t i = 0; i < instances; ++i) {
    const float* xi = x.typed_data() + (xl == 1 ? 0 : i * fan_in * cols);
    float* yi = y->typed_data() + i * features * cols;
    const float* vi = values.typed_data() + (vl == 1 ? 0 : i * nnz);
    const int32_t* pi = indptr.typed_data() + (pl == 1 ? 0 : i * (features + 1));
    const float* bi = bias.typed_data() + (bl == 1 ? 0 : i * features);
    const int64_t offset = il == 1 ? 0 : i * nnz;
    if (narrow) {
      CsrRows<uint16_t> rows{vi, static_cast<const uint16_t*>(indices.untyped_data()) + offset, pi};
      Product(pool, threads, rows, xi, bi, features, fan_in, cols, nnz, activation, yi);
    } else {
      CsrRows<int32_t> rows{vi, static_cast<const int32_t*>(indices.untyped_data()) + offset, pi};
      Product(pool, threads, rows, xi, bi, features, fan_in, cols, nnz, activation, yi);
    }
  }
  return ffi::Error::Success();
}

// The shapes of a convolution call, checked: z (..., N, phases x C, Hq, Wq), y (..., N, F, Ho, Wo).
ffi::Error ConvShapes(ffi::AnyBuffer::Dimensions xd, ffi::AnyBuffer::Dimensions yd,
                      int64_t window_h, int64_t window_w, int64_t stride_h, int64_t stride_w,
                      ConvShape* s, int64_t* images) {
  if (xd.size() < 4 || yd.size() != xd.size()) {
    return Mismatch("the convolution takes z (..., N, phases x C, Hq, Wq) and gives "
                    "y (..., N, F, Ho, Wo)");
  }
  if (window_h < 1 || window_w < 1 || stride_h < 1 || stride_w < 1) {
    return Mismatch("the window and strides must be positive");
  }
  const int64_t r = xd.size();
  const int64_t phases_w = std::min(stride_w, window_w);
  const int64_t phases = std::min(stride_h, window_h) * phases_w;
  if (xd[r - 3] % phases != 0) return Mismatch("z must hold the read phases of each channel");
  *s = ConvShape{xd[r - 3] / phases, xd[r - 3], xd[r - 2], xd[r - 1], yd[r - 2], yd[r - 1],
                 stride_h, stride_w, phases_w, yd[r - 3]};
  *images = xd[r - 4];
  if (yd[r - 4] != *images) return Mismatch("z and y must hold the same images");
  if (s->ho - 1 + (window_h - 1) / stride_h >= s->hq ||
      s->wo - 1 + (window_w - 1) / stride_w >= s->wq) {
    return Mismatch("the window and strides must fit the padded input");
  }
  return ffi::Error::Success();
}

ffi::Error CsrConvImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                       ffi::Buffer<ffi::F32> values, ffi::AnyBuffer indices,
                       ffi::Buffer<ffi::S32> indptr, ffi::Buffer<ffi::F32> bias,
                       ffi::ResultBuffer<ffi::F32> y, int64_t window_h, int64_t window_w,
                       int64_t stride_h, int64_t stride_w, int64_t activation,
                       int64_t threads) {
  const auto xd = x.dimensions();
  const auto yd = y->dimensions();
  ConvShape s;
  int64_t images;
  ffi::Error error = ConvShapes(xd, yd, window_h, window_w, stride_h, stride_w, &s, &images);
  if (error.failure()) return error;
  error = CheckOptions(activation, threads);
  if (error.failure()) return error;
  const int64_t nnz = values.dimensions().back();
  if (indptr.dimensions().back() != s.features + 1 || bias.dimensions().back() != s.features ||
      indices.dimensions().back() != nnz) {
    return Mismatch("indptr must hold features + 1 entries, bias features, indices nnz");
  }
  const int64_t instances = Leading(yd, 4), xl = Leading(xd, 4);
  const int64_t vl = Leading(values.dimensions(), 1), il = Leading(indices.dimensions(), 1);
  const int64_t pl = Leading(indptr.dimensions(), 1), bl = Leading(bias.dimensions(), 1);
  if (!Shares(xl, instances) || !Shares(vl, instances) || !Shares(il, instances) ||
      !Shares(pl, instances) || !Shares(bl, instances)) {
    return Mismatch("mapped weights must match the mapped inputs in number");
  }
  const bool narrow = indices.element_type() == ffi::DataType::U16;
  if (!narrow && indices.element_type() != ffi::DataType::S32) {
    return Mismatch("column indices must be uint16 or int32");
  }
  const int64_t x_size = images * s.planes * s.hq * s.wq;
  const int64_t y_size = images * s.features * s.ho * s.wo;
  std::vector<int64_t> inputs(nnz), starts(s.features + 1);
  for (int64_t i = 0; i < instances; ++i) {
    const int32_t* pi = indptr.typed_data() + (pl == 1 ? 0 : i * (s.features + 1));
    const int64_t offset = il == 1 ? 0 : i * nnz;
    for (int64_t k = 0; k < nnz; ++k) {
      inputs[k] = narrow ? static_cast<const uint16_t*>(indices.untyped_data())[offset + k]
                         : static_cast<const int32_t*>(indices.untyped_data())[offset + k];
    }
    std::copy(pi, pi + s.features + 1, starts.begin());
    Convolve(pool, threads, values.typed_data() + (vl == 1 ? 0 : i * nnz), inputs, starts, window_w,
             x.typed_data() + (xl == 1 ? 0 : i * x_size),
             bias.typed_data() + (bl == 1 ? 0 : i * s.features), s, images, activation,
             y->typed_data() + i * y_size);
  }
  return ffi::Error::Success();
}

ffi::Error NmConvImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                      ffi::Buffer<ffi::F32> values, ffi::Buffer<ffi::U8> positions,
                      ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::F32> y, int64_t n,
                      int64_t m, int64_t window_h, int64_t window_w, int64_t stride_h,
                      int64_t stride_w, int64_t activation, int64_t threads) {
  const auto xd = x.dimensions();
  const auto yd = y->dimensions();
  const auto vd = values.dimensions();
  ConvShape s;
  int64_t images;
  ffi::Error error = ConvShapes(xd, yd, window_h, window_w, stride_h, stride_w, &s, &images);
  if (error.failure()) return error;
  error = CheckOptions(activation, threads);
  if (error.failure()) return error;
  const int64_t fan_in = window_h * window_w * s.channels;
  if (vd.size() < 2 || n <= 0 || m <= n || m > 256 || fan_in % m != 0) {
    return Mismatch("N:M needs 0 < N < M <= 256 and fan_in a multiple of M");
  }
  const int64_t kept = vd[vd.size() - 1];
  if (vd[vd.size() - 2] != s.features || kept != fan_in / m * n ||
      positions.dimensions().back() != kept || bias.dimensions().back() != s.features) {
    return Mismatch("values and positions must be (features, fan_in / M x N)");
  }
  const int64_t instances = Leading(yd, 4), xl = Leading(xd, 4);
  const int64_t vl = Leading(vd, 2), pl = Leading(positions.dimensions(), 2);
  const int64_t bl = Leading(bias.dimensions(), 1);
  if (!Shares(xl, instances) || !Shares(vl, instances) || !Shares(pl, instances) ||
      !Shares(bl, instances)) {
    return Mismatch("mapped weights must match the mapped inputs in number");
  }
  const int64_t x_size = images * s.planes * s.hq * s.wq;
  const int64_t y_size = images * s.features * s.ho * s.wo;
  const int64_t pairs = s.features * kept;
  std::vector<int64_t> inputs(pairs), starts(s.features + 1);
  for (int64_t o = 0; o <= s.features; ++o) starts[o] = o * kept;
  for (int64_t i = 0; i < instances; ++i) {
    const uint8_t* p = positions.typed_data() + (pl == 1 ? 0 : i * pairs);
    for (int64_t k = 0; k < pairs; ++k) inputs[k] = (k % kept) / n * m + p[k];
    Convolve(pool, threads, values.typed_data() + (vl == 1 ? 0 : i * pairs), inputs, starts, window_w,
             x.typed_data() + (xl == 1 ? 0 : i * x_size),
             bias.typed_data() + (bl == 1 ? 0 : i * s.features), s, images, activation,
             y->typed_data() + i * y_size);
  }
  return ffi::Error::Success();
}

ffi::Error NmMatmulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                        ffi::Buffer<ffi::F32> values, ffi::Buffer<ffi::U8> positions,
                        ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::F32> y, int64_t n,
                        int64_t m, int64_t activation, int64_t threads) {
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
  ffi::Error options = CheckOptions(activation, threads);
  if (options.failure()) return options;
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
    Product(pool, threads, rows, x.typed_data() + (xl == 1 ? 0 : i * fan_in * cols),
            bias.typed_data() + (bl == 1 ? 0 : i * features), features, fan_in, cols,
            features * kept, activation, y->typed_data() + i * features * cols);
  }
  return ffi::Error::Success();
}

}  // namespace
}  // namespace pcs

// The handlers, as XLA FFI symbols; PcsTargets below lists them for registration.
XLA_FFI_DEFINE_HANDLER_SYMBOL(PcsCsrMatmul, pcs::CsrMatmulImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x^T (..., fan_in, columns)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // values (..., nnz)
                                  .Arg<ffi::AnyBuffer>()         // column indices, u16 or s32
                                  .Arg<ffi::Buffer<ffi::S32>>()  // row pointers (..., features+1)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias (..., features)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // y^T (..., features, columns)
                                  .Attr<int64_t>("activation")
                                  .Attr<int64_t>("threads"));

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
                                  .Attr<int64_t>("activation")
                                  .Attr<int64_t>("threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(PcsCsrConv, pcs::CsrConvImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // z (..., N, phases x C, Hq, Wq)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // values (..., nnz)
                                  .Arg<ffi::AnyBuffer>()         // column indices, u16 or s32
                                  .Arg<ffi::Buffer<ffi::S32>>()  // row pointers (..., features+1)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias (..., features)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // y (..., N, features, Ho, Wo)
                                  .Attr<int64_t>("window_h")
                                  .Attr<int64_t>("window_w")
                                  .Attr<int64_t>("stride_h")
                                  .Attr<int64_t>("stride_w")
                                  .Attr<int64_t>("activation")
                                  .Attr<int64_t>("threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(PcsNmConv, pcs::NmConvImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // z (..., N, phases x C, Hq, Wq)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // values (..., features, kept)
                                  .Arg<ffi::Buffer<ffi::U8>>()   // positions in each group
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias (..., features)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // y (..., N, features, Ho, Wo)
                                  .Attr<int64_t>("n")
                                  .Attr<int64_t>("m")
                                  .Attr<int64_t>("window_h")
                                  .Attr<int64_t>("window_w")
                                  .Attr<int64_t>("stride_h")
                                  .Attr<int64_t>("stride_w")
                                  .Attr<int64_t>("activation")
                                  .Attr<int64_t>("threads"));

// The registration list: every FFI target name with its handler, ending in {nullptr, nullptr}.
// pcs/sparse/_kernels.py reads it through ctypes and registers each one for the CPU platform,
// so the names live here only.
extern "C" {
struct PcsTarget {
  const char* name;
  void* handler;
};

const PcsTarget* PcsTargets() {
  static const PcsTarget kTargets[] = {
      {"pcs_csr_matmul", reinterpret_cast<void*>(&PcsCsrMatmul)},
      {"pcs_nm_matmul", reinterpret_cast<void*>(&PcsNmMatmul)},
      {"pcs_csr_conv", reinterpret_cast<void*>(&PcsCsrConv)},
      {"pcs_nm_conv", reinterpret_cast<void*>(&PcsNmConv)},
      {nullptr, nullptr},
  };
  return kTargets;
}
}  // extern "C"
