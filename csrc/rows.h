// The two compressed layouts as rows of W^T: where the nonzeros of one output row are
// and which input each reads (CSR: explicit column indices; N:M: a position in each group
// of M inputs).

#ifndef PCS_CSRC_ROWS_H_
#define PCS_CSRC_ROWS_H_

#include <cstdint>

#include "common.h"

namespace pcs {

// Where the nonzeros of one output row are and which x^T row each one reads.
// CSR: explicit column indices. `Visit(r, f)` calls f(value, input) for each nonzero.
// The values are float32 or bfloat16 (`Bf16`, widened to float32 as they are read).
template <typename Index, typename Value = float>
struct CsrRows {
  const Value* values;
  const Index* indices;
  const int32_t* indptr;

  PCS_INLINE float W(int64_t k) const { return ToFloat(values[k]); }

  // Calls pair(w0, input0, w1, input1) for two nonzeros at a time, then one(w, input).
  template <typename Pair, typename One>
  PCS_INLINE void Visit(int64_t r, Pair&& pair, One&& one) const {
    int64_t k = indptr[r];
    const int64_t end = indptr[r + 1];
    for (; k + 2 <= end; k += 2) {
      pair(W(k), static_cast<int64_t>(indices[k]), W(k + 1),
           static_cast<int64_t>(indices[k + 1]));
    }
    if (k < end) one(W(k), static_cast<int64_t>(indices[k]));
  }

  // One column: eight nonzeros at a time, their values loaded as one vector and their
  // inputs gathered into another (eight scalar loads: faster than AVX2's gather
  // instruction on the Zen 3 measured, 0.36 against 0.50 ns a nonzero, and 25% faster
  // than four scalar accumulators), into two accumulators; the remainder one by one.
  // (Inlined functions, not lambdas: a lambda returning a vector is its own function,
  // compiled for the baseline ISA, which passes vectors differently from the AVX2 clone.)
  PCS_INLINE Vec8 Gather8(const float* x, int64_t k) const {
    const Index* i = indices + k;
    return Vec8{x[i[0]], x[i[1]], x[i[2]], x[i[3]], x[i[4]], x[i[5]], x[i[6]], x[i[7]]};
  }

  PCS_INLINE float Dot(int64_t r, const float* x) const {
    int64_t k = indptr[r];
    const int64_t end = indptr[r + 1];
    Vec8 a0{}, a1{};
    for (; k + 16 <= end; k += 16) {
      a0 += Load8(values + k) * Gather8(x, k);
      a1 += Load8(values + k + 8) * Gather8(x, k + 8);
    }
    if (k + 8 <= end) {
      a0 += Load8(values + k) * Gather8(x, k);
      k += 8;
    }
    a0 += a1;
    float sum = ((a0[0] + a0[4]) + (a0[1] + a0[5])) + ((a0[2] + a0[6]) + (a0[3] + a0[7]));
    for (; k < end; ++k) sum += W(k) * x[indices[k]];
    return sum;
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

}  // namespace pcs

#endif  // PCS_CSRC_ROWS_H_
