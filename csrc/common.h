// What every part of the kernels shares: the activation and thread options, the vectors
// of eight floats, and the attributes that inline the loops and compile them for the CPU
// at hand.

#ifndef PCS_CSRC_COMMON_H_
#define PCS_CSRC_COMMON_H_

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace pcs {

// Inlined into the loops that call it.
#define PCS_INLINE inline __attribute__((always_inline))
// The row loops, the packing and the transposed store are compiled twice, for AVX2 + FMA
// and for the baseline ISA; the loader picks one for the CPU it runs on. PCS_ONE_ISA
// compiles them once, for the -march given: that is how the tile test checks the baseline
// clone, which the loader runs only on a CPU without AVX2.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(PCS_ONE_ISA)
#define PCS_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define PCS_CLONES
#endif

enum Activation : int64_t { kIdentity = 0, kRelu = 1 };

// Which threads a call may use: the pool's and the caller (kPool) or the caller alone.
enum Threads : int64_t { kPool = 0, kCaller = 1 };

// Where a product's inputs and outputs lie: kColumns, x^T (fan_in, columns) and y^T
// (features, columns); kRows, x (columns, fan_in) and y (columns, features), a row per
// input as a dense layer takes them, so that no transpose runs around the product.
enum Layout : int64_t { kColumns = 0, kRows = 1 };

inline float Activate(float v, int64_t activation) {
  return activation == kRelu ? std::max(v, 0.0f) : v;
}

// A bfloat16 value: the top 16 bits of a float32 (same exponent, 8 bits of mantissa).
struct Bf16 {
  uint16_t bits;
};

PCS_INLINE float ToFloat(float v) { return v; }
PCS_INLINE float ToFloat(Bf16 v) {
  const uint32_t widened = static_cast<uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &widened, sizeof(f));
  return f;
}

// Eight floats, and the unaligned views used to load them (GCC/Clang vector extensions:
// AVX registers in the x86-64-v3 clone, pairs of SSE registers in the baseline one).
typedef float Vec8 __attribute__((vector_size(32)));
typedef float Vec8Unaligned __attribute__((vector_size(32), aligned(4)));
typedef uint16_t Half8Unaligned __attribute__((vector_size(16), aligned(2), may_alias));
typedef uint32_t Bits8 __attribute__((vector_size(32)));

PCS_INLINE Vec8 Load8(const float* p) { return *reinterpret_cast<const Vec8Unaligned*>(p); }
// Eight bfloat16 values widened to float32: each one's bits moved to the top half.
PCS_INLINE Vec8 Load8(const Bf16* p) {
  const Half8Unaligned bits = *reinterpret_cast<const Half8Unaligned*>(p);
  return reinterpret_cast<Vec8>(__builtin_convertvector(bits, Bits8) << 16);
}

}  // namespace pcs

#endif  // PCS_CSRC_COMMON_H_
