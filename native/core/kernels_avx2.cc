// AVX2 + FMA kernels (x86-64 with GCC or Clang): 8 floats per vector, 24-row tiles.
#include "kernels.h"
// The training kernels' layout and intrinsics, declared before any target is selected.
#include "train_layout.h"
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#endif

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define IAF_VEC 8
#define IAF_ROW_VECTORS 3
#define IAF_COLUMN_GROUP 4
#define IAF_TRAIN_VEC 8
#include <immintrin.h>
// 32 x 32 -> 64-bit products of the low words (Philox) and vector square roots (Box-Muller).
#define IAF_MUL_EPU32(a, k) (vu) _mm256_mul_epu32((__m256i)(a), (__m256i)(vu{} + (k)))
#define IAF_SQRT_PD(d) (vd) _mm256_sqrt_pd((__m256d)(d))
// Fused multiply-adds are explicit (the build never contracts a * b + c).
#define IAF_FMADD(a, b, c) (vf) _mm256_fmadd_ps((__m256)(a), (__m256)(b), (__m256)(c))
#define IAF_FMADD1(a, b, c) __builtin_fmaf(a, b, c)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
namespace {
#include "kernels_impl.h"
}  // namespace
// The training kernels, built for the same instruction set (train_kernels.h).
namespace iaflow {
namespace training {
namespace {
#include "train_kernels.h"
}  // namespace
}  // namespace training
}  // namespace iaflow
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

namespace iaflow {
const KernelTable* avx2Kernels() {
  static const KernelTable table{"avx2", kVec, kTile, linearKernel, linearRowKernel, affineKernel, headPushKernel, solveKernel, headPushRowKernel, affineRowKernel, normalsKernel};
  return &table;
}
const TrainKernelTable* avx2TrainKernels() {
  static const TrainKernelTable table{"avx2", training::kVec, training::netForward, training::netBackward};
  return &table;
}
}  // namespace iaflow
#else
namespace iaflow {
const KernelTable* avx2Kernels() { return nullptr; }
const TrainKernelTable* avx2TrainKernels() { return nullptr; }
}  // namespace iaflow
#endif
