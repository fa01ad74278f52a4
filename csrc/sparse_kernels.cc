// Sparse x dense products for pruned Dense and Conv layers, as XLA FFI handlers on CPU.
//
// Every product is y^T = act(W^T x^T + b): the weights are stored per output feature
// (compressed rows of W^T), and x^T is (fan_in, columns) with the columns (batch, or
// batch x spatial positions for a convolution) contiguous; a Dense layer's x (columns,
// fan_in) and y (columns, features) are taken as they are (`layout` = 1), x transposed into
// the panels below as they are packed. For one nonzero w of row r at
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
//
// The parts, one concept each: common.h (options), parallel.h (the pool and the parallel
// loop), rows.h (the layouts' rows), tiles.h (the SIMD tiles), product.h (the product),
// conv.h (the direct convolution); this file holds the XLA FFI handlers, which check
// their operands, and the registration list.

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <type_traits>
#include <vector>

#include "conv.h"
#include "product.h"
#include "rows.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace pcs {
namespace {

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

// An operand under vmap (vmap_method='expand_dims'): the dimensions before its last
// `trailing` ones are the mapped instances, absent (one copy shared by every instance) or
// as many as the output's. Offset(i) is where instance i starts, in elements.
struct Mapped {
  int64_t count;  // the product of the leading dimensions, 1 when there are none
  int64_t size;   // the elements of one instance

  Mapped(ffi::AnyBuffer::Dimensions dims, int64_t trailing) : count(1), size(1) {
    const int64_t rank = dims.size();
    for (int64_t i = 0; i < rank; ++i) (i + trailing < rank ? count : size) *= dims[i];
  }
  int64_t Offset(int64_t i) const { return count == 1 ? 0 : i * size; }
};

// Checks that every operand is shared or mapped as many times as there are instances.
ffi::Error CheckMapped(int64_t instances, std::initializer_list<Mapped> operands) {
  for (const Mapped& operand : operands) {
    if (operand.count != 1 && operand.count != instances) {
      return Mismatch("mapped weights must match the mapped inputs in number");
    }
  }
  return ffi::Error::Success();
}

// The values' type: float32, or bfloat16 (half).
ffi::Error ValueType(const ffi::AnyBuffer& values, bool* half) {
  *half = values.element_type() == ffi::DataType::BF16;
  if (!*half && values.element_type() != ffi::DataType::F32) {
    return Mismatch("CSR values must be float32 or bfloat16");
  }
  return ffi::Error::Success();
}

// The values of instance i as float32 (bfloat16 widened into `widened`).
const float* FloatValues(const ffi::AnyBuffer& values, bool half, const Mapped& mapped,
                         int64_t i, std::vector<float>* widened) {
  if (!half) return static_cast<const float*>(values.untyped_data()) + mapped.Offset(i);
  const Bf16* from = static_cast<const Bf16*>(values.untyped_data()) + mapped.Offset(i);
  widened->resize(mapped.size);
  for (int64_t k = 0; k < mapped.size; ++k) (*widened)[k] = ToFloat(from[k]);
  return widened->data();
}

// The column indices' type: uint16 (narrow) or int32.
ffi::Error IndexType(const ffi::AnyBuffer& indices, bool* narrow) {
  *narrow = indices.element_type() == ffi::DataType::U16;
  if (!*narrow && indices.element_type() != ffi::DataType::S32) {
    return Mismatch("column indices must be uint16 or int32");
  }
  return ffi::Error::Success();
}

#define PCS_RETURN_IF_ERROR(expr)        \
  do {                                   \
    ffi::Error pcs_error = (expr);       \
    if (pcs_error.failure()) return pcs_error; \
  } while (0)

// The (fan_in, columns, features) of a product's x and y in `layout`, checked.
ffi::Error ProductShape(ffi::AnyBuffer::Dimensions xd, ffi::AnyBuffer::Dimensions yd,
                        int64_t layout, int64_t* fan_in, int64_t* cols, int64_t* features) {
  if (layout != kColumns && layout != kRows) {
    return Mismatch("layout must be 0 (x^T, y^T: a column per input) or 1 (x, y: a row per "
                    "input)");
  }
  if (xd.size() < 2 || yd.size() != xd.size()) {
    return Mismatch(layout == kRows ? "x must be (..., columns, fan_in)"
                                    : "x^T must be (..., fan_in, columns)");
  }
  const int64_t r = xd.size(), first = layout == kRows ? r - 1 : r - 2;
  const int64_t across = layout == kRows ? r - 2 : r - 1;
  *fan_in = xd[first];
  *cols = xd[across];
  *features = yd[first];
  if (yd[across] != *cols) return Mismatch("x and y must hold the same columns");
  return ffi::Error::Success();
}

ffi::Error CsrMatmulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                         ffi::AnyBuffer values, ffi::AnyBuffer indices,
                         ffi::Buffer<ffi::S32> indptr, ffi::Buffer<ffi::F32> bias,
                         ffi::ResultBuffer<ffi::F32> y, int64_t activation,
                         int64_t threads, int64_t layout) {
  const auto xd = x.dimensions();
  const auto yd = y->dimensions();
  int64_t fan_in, cols, features;
  PCS_RETURN_IF_ERROR(ProductShape(xd, yd, layout, &fan_in, &cols, &features));
  const int64_t nnz = values.dimensions().back();
  if (indptr.dimensions().back() != features + 1 || bias.dimensions().back() != features ||
      indices.dimensions().back() != nnz) {
    return Mismatch("indptr must hold features + 1 entries, bias features, indices nnz");
  }
  const Mapped out(yd, 2), xm(xd, 2), vm(values.dimensions(), 1), im(indices.dimensions(), 1);
  const Mapped pm(indptr.dimensions(), 1), bm(bias.dimensions(), 1);
  PCS_RETURN_IF_ERROR(CheckMapped(out.count, {xm, vm, im, pm, bm}));
  bool narrow, half;
  PCS_RETURN_IF_ERROR(IndexType(indices, &narrow));
  PCS_RETURN_IF_ERROR(ValueType(values, &half));
  PCS_RETURN_IF_ERROR(CheckOptions(activation, threads));
  for (int64_t i = 0; i < out.count; ++i) {
    const float* xi = x.typed_data() + xm.Offset(i);
    const int32_t* pi = indptr.typed_data() + pm.Offset(i);
    const float* bi = bias.typed_data() + bm.Offset(i);
    float* yi = y->typed_data() + out.Offset(i);
    // The four (value, index) types, each its own instance of the loops.
    auto product = [&](const auto* value, const auto* index) {
      CsrRows<std::remove_cv_t<std::remove_pointer_t<decltype(index)>>,
              std::remove_cv_t<std::remove_pointer_t<decltype(value)>>>
          rows{value + vm.Offset(i), index + im.Offset(i), pi};
      Product(pool, threads, rows, xi, bi, features, fan_in, cols, nnz, activation, layout, yi);
    };
    const void* v = values.untyped_data();
    const void* k = indices.untyped_data();
    if (half && narrow) product(static_cast<const Bf16*>(v), static_cast<const uint16_t*>(k));
    if (half && !narrow) product(static_cast<const Bf16*>(v), static_cast<const int32_t*>(k));
    if (!half && narrow) product(static_cast<const float*>(v), static_cast<const uint16_t*>(k));
    if (!half && !narrow) product(static_cast<const float*>(v), static_cast<const int32_t*>(k));
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
                       ffi::AnyBuffer values, ffi::AnyBuffer indices,
                       ffi::Buffer<ffi::S32> indptr, ffi::Buffer<ffi::F32> bias,
                       ffi::ResultBuffer<ffi::F32> y, int64_t window_h, int64_t window_w,
                       int64_t stride_h, int64_t stride_w, int64_t activation,
                       int64_t threads) {
  const auto xd = x.dimensions();
  const auto yd = y->dimensions();
  ConvShape s;
  int64_t images;
  PCS_RETURN_IF_ERROR(ConvShapes(xd, yd, window_h, window_w, stride_h, stride_w, &s, &images));
  PCS_RETURN_IF_ERROR(CheckOptions(activation, threads));
  const int64_t nnz = values.dimensions().back();
  if (indptr.dimensions().back() != s.features + 1 || bias.dimensions().back() != s.features ||
      indices.dimensions().back() != nnz) {
    return Mismatch("indptr must hold features + 1 entries, bias features, indices nnz");
  }
  const Mapped out(yd, 4), xm(xd, 4), vm(values.dimensions(), 1), im(indices.dimensions(), 1);
  const Mapped pm(indptr.dimensions(), 1), bm(bias.dimensions(), 1);
  PCS_RETURN_IF_ERROR(CheckMapped(out.count, {xm, vm, im, pm, bm}));
  bool narrow, half;
  PCS_RETURN_IF_ERROR(IndexType(indices, &narrow));
  PCS_RETURN_IF_ERROR(ValueType(values, &half));
  std::vector<int64_t> inputs(nnz), starts(s.features + 1);
  std::vector<float> widened;
  for (int64_t i = 0; i < out.count; ++i) {
    const int32_t* pi = indptr.typed_data() + pm.Offset(i);
    if (narrow) {
      const uint16_t* from = static_cast<const uint16_t*>(indices.untyped_data()) + im.Offset(i);
      std::copy(from, from + nnz, inputs.begin());
    } else {
      const int32_t* from = static_cast<const int32_t*>(indices.untyped_data()) + im.Offset(i);
      std::copy(from, from + nnz, inputs.begin());
    }
    std::copy(pi, pi + s.features + 1, starts.begin());
    Convolve(pool, threads, FloatValues(values, half, vm, i, &widened), inputs, starts,
             window_h, window_w, x.typed_data() + xm.Offset(i), bias.typed_data() + bm.Offset(i),
             s, images, activation, y->typed_data() + out.Offset(i));
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
  PCS_RETURN_IF_ERROR(ConvShapes(xd, yd, window_h, window_w, stride_h, stride_w, &s, &images));
  PCS_RETURN_IF_ERROR(CheckOptions(activation, threads));
  const int64_t fan_in = window_h * window_w * s.channels;
  if (vd.size() < 2 || n <= 0 || m <= n || m > 256 || fan_in % m != 0) {
    return Mismatch("N:M needs 0 < N < M <= 256 and fan_in a multiple of M");
  }
  const int64_t kept = vd[vd.size() - 1];
  if (vd[vd.size() - 2] != s.features || kept != fan_in / m * n ||
      positions.dimensions().back() != kept || bias.dimensions().back() != s.features) {
    return Mismatch("values and positions must be (features, fan_in / M x N)");
  }
  const Mapped out(yd, 4), xm(xd, 4), vm(vd, 2), pm(positions.dimensions(), 2);
  const Mapped bm(bias.dimensions(), 1);
  PCS_RETURN_IF_ERROR(CheckMapped(out.count, {xm, vm, pm, bm}));
  const int64_t pairs = s.features * kept;
  std::vector<int64_t> inputs(pairs), starts(s.features + 1);
  for (int64_t o = 0; o <= s.features; ++o) starts[o] = o * kept;
  for (int64_t i = 0; i < out.count; ++i) {
    const uint8_t* p = positions.typed_data() + pm.Offset(i);
    for (int64_t k = 0; k < pairs;) {  // pair k of a row keeps position p[k] of group g
      for (int64_t g = 0; g < kept / n; ++g) {
        for (int64_t t = 0; t < n; ++t, ++k) inputs[k] = g * m + p[k];
      }
    }
    Convolve(pool, threads, values.typed_data() + vm.Offset(i), inputs, starts, window_h,
             window_w, x.typed_data() + xm.Offset(i), bias.typed_data() + bm.Offset(i), s,
             images, activation, y->typed_data() + out.Offset(i));
  }
  return ffi::Error::Success();
}

ffi::Error NmMatmulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                        ffi::Buffer<ffi::F32> values, ffi::Buffer<ffi::U8> positions,
                        ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::F32> y, int64_t n,
                        int64_t m, int64_t activation, int64_t threads, int64_t layout) {
  const auto xd = x.dimensions();
  const auto yd = y->dimensions();
  const auto vd = values.dimensions();
  int64_t fan_in, cols, features;
  PCS_RETURN_IF_ERROR(ProductShape(xd, yd, layout, &fan_in, &cols, &features));
  if (vd.size() < 2) return Mismatch("values must be (..., features, kept)");
  const int64_t kept = vd[vd.size() - 1];
  if (n <= 0 || m <= n || m > 256 || fan_in % m != 0) {
    return Mismatch("N:M needs 0 < N < M <= 256 and fan_in a multiple of M");
  }
  const int64_t groups = fan_in / m;
  if (kept != groups * n || positions.dimensions().back() != kept ||
      bias.dimensions().back() != features || vd[vd.size() - 2] != features) {
    return Mismatch("values and positions must be (features, fan_in / M x N)");
  }
  PCS_RETURN_IF_ERROR(CheckOptions(activation, threads));
  const Mapped out(yd, 2), xm(xd, 2), vm(vd, 2), pm(positions.dimensions(), 2);
  const Mapped bm(bias.dimensions(), 1);
  PCS_RETURN_IF_ERROR(CheckMapped(out.count, {xm, vm, pm, bm}));
  for (int64_t i = 0; i < out.count; ++i) {
    NmRows rows{values.typed_data() + vm.Offset(i), positions.typed_data() + pm.Offset(i),
                groups, n, m};
    Product(pool, threads, rows, x.typed_data() + xm.Offset(i), bias.typed_data() + bm.Offset(i),
            features, fan_in, cols, features * kept, activation, layout,
            y->typed_data() + out.Offset(i));
  }
  return ffi::Error::Success();
}

#undef PCS_RETURN_IF_ERROR

}  // namespace
}  // namespace pcs

// The handlers, as XLA FFI symbols; PcsTargets below lists them for registration.
XLA_FFI_DEFINE_HANDLER_SYMBOL(PcsCsrMatmul, pcs::CsrMatmulImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x^T or x, as `layout` says
                                  .Arg<ffi::AnyBuffer>()         // values (..., nnz), f32 or bf16
                                  .Arg<ffi::AnyBuffer>()         // column indices, u16 or s32
                                  .Arg<ffi::Buffer<ffi::S32>>()  // row pointers (..., features+1)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias (..., features)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // y^T or y, as `layout` says
                                  .Attr<int64_t>("activation")
                                  .Attr<int64_t>("threads")
                                  .Attr<int64_t>("layout"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(PcsNmMatmul, pcs::NmMatmulImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x^T or x, as `layout` says
                                  .Arg<ffi::Buffer<ffi::F32>>()  // values (..., features, kept)
                                  .Arg<ffi::Buffer<ffi::U8>>()   // positions in each group
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias (..., features)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // y^T or y, as `layout` says
                                  .Attr<int64_t>("n")
                                  .Attr<int64_t>("m")
                                  .Attr<int64_t>("activation")
                                  .Attr<int64_t>("threads")
                                  .Attr<int64_t>("layout"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(PcsCsrConv, pcs::CsrConvImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // z (..., N, phases x C, Hq, Wq)
                                  .Arg<ffi::AnyBuffer>()         // values (..., nnz), f32 or bf16
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
// pcs/sparse/_compiled.py reads it through ctypes and registers each one for the CPU platform,
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

