// AVX-512 kernels (x86-64 with GCC or Clang): 16 floats per vector, 64-row tiles,
// register blocks of 6 units x 4 vectors (24 of the 32 registers accumulate, so
// each FMA's latency hides behind the other 23).
#include "kernels.h"
// The training kernels' layout and intrinsics, declared before any target is selected.
#include "train_layout.h"
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#endif

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define IAF_VEC 16
#define IAF_ROW_VECTORS 4
#define IAF_COLUMN_GROUP 6
#define IAF_TRAIN_VEC 16
#include <immintrin.h>
// 32 x 32 -> 64-bit products of the low words (Philox) and vector square roots (Box-Muller).
// The zero-masked forms: GCC 12's unmasked ones start from a self-initialised "undefined"
// vector that -Wuninitialized flags once inlined into normals.h's fp-contract=off code.
#define IAF_MUL_EPU32(a, k) (vu) _mm512_maskz_mul_epu32(0xFF, (__m512i)(a), (__m512i)(vu{} + (k)))
#define IAF_SQRT_PD(d) (vd) _mm512_maskz_sqrt_pd(0xFF, (__m512d)(d))
// Fused multiply-adds are explicit (the build never contracts a * b + c): the tile and the
// one-row paths then round every product alike.
#define IAF_FMADD(a, b, c) (vf) _mm512_fmadd_ps((__m512)(a), (__m512)(b), (__m512)(c))
#define IAF_FMADD1(a, b, c) __builtin_fmaf(a, b, c)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx2,fma")
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
const KernelTable* avx512Kernels() {
  static const KernelTable table{"avx512", kVec, kTile, linearKernel, linearRowKernel, affineKernel, headPushKernel, solveKernel, headPushRowKernel, affineRowKernel, normalsKernel};
  return &table;
}
const TrainKernelTable* avx512TrainKernels() {
  static const TrainKernelTable table{"avx512", training::kVec, training::netForward, training::netBackward};
  return &table;
}
}  // namespace iaflow
#else
namespace iaflow {
const KernelTable* avx512Kernels() { return nullptr; }
const TrainKernelTable* avx512TrainKernels() { return nullptr; }
}  // namespace iaflow
#endif
