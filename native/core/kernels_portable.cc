// Portable kernels: the baseline vector width of the target (SSE2 on x86-64,
// NEON on arm64) through GNU vector extensions, or plain scalar loops under
// compilers without them (MSVC). Correct everywhere; the fallback when no
// wider instruction set is available.
#include "kernels.h"
// The training kernels' layout, declared before the kernels that use it.
#include "train_layout.h"

#if defined(__GNUC__) || defined(__clang__)
#define IAF_VEC 4
#define IAF_ROW_VECTORS 4
#define IAF_COLUMN_GROUP 3
#if defined(__x86_64__)
#include <emmintrin.h>
// SSE2 (the x86-64 baseline): 32 x 32 -> 64-bit products (Philox) and square roots (Box-Muller).
#define IAF_MUL_EPU32(a, k) (vu) _mm_mul_epu32((__m128i)(a), (__m128i)(vu{} + (k)))
#define IAF_SQRT_PD(d) (vd) _mm_sqrt_pd((__m128d)(d))
#endif
namespace {
#include "kernels_impl.h"
}  // namespace
namespace iaflow {
const KernelTable* portableKernels() {
  static const KernelTable table{"portable", kVec, kTile, linearKernel, linearRowKernel, affineKernel, headPushKernel, solveKernel, headPushRowKernel, affineRowKernel, normalsKernel};
  return &table;
}
}  // namespace iaflow
#else
#include <cmath>

#include "flow_math.h"
namespace {
constexpr int kTile = 16;
using iaflow::LinearView;

float activateScalar(int activation, float x) {
  switch (activation) {
    case iaflow::kActReLU: return x > 0.0f ? x : 0.0f;
    case iaflow::kActTanh: return std::tanh(x);
    case iaflow::kActELU: return x > 0.0f ? x : std::expm1(x);
    default: return x;
  }
}

void linearKernel(const LinearView& L, const float* xT, float* yT, int lo, int hi, int activation,
                  const float* residualT, float* preActT) {
  for (int j = lo; j < hi; ++j) {
    float acc[kTile];
    for (int r = 0; r < kTile; ++r) acc[r] = L.bias[j];
    for (int k = 0; k < L.prefix[j]; ++k) {
      const float w = L.weightKM[static_cast<long>(k) * L.outStride + j];
      for (int r = 0; r < kTile; ++r) acc[r] += w * xT[k * kTile + r];
    }
    for (int r = 0; r < kTile; ++r) {
      if (residualT) acc[r] += residualT[j * kTile + r];
      if (preActT) preActT[j * kTile + r] = acc[r];
      yT[j * kTile + r] = activateScalar(activation, acc[r]);
    }
  }
}

void linearRowKernel(const LinearView& L, const float* x, float* y, int lo, int hi, int activation,
                     const float* residual, float* preAct) {
  for (int j = lo; j < hi; ++j) {
    float acc = L.bias[j];
    for (int k = 0; k < L.prefix[j]; ++k) acc += x[k] * L.weightKM[static_cast<long>(k) * L.outStride + j];
    if (residual) acc += residual[j];
    if (preAct) preAct[j] = acc;
    y[j] = activateScalar(activation, acc);
  }
}

void affineKernel(const LinearView& head, const float* hT, const float* inT, float* outT, float* logDet, int p0,
                  int p1, int scaleKind) {
  for (int p = p0; p < p1; ++p) {
    const int depth = head.prefix[2 * p + 1];
    for (int r = 0; r < kTile; ++r) {
      float rawShift = head.bias[2 * p], rawScale = head.bias[2 * p + 1];
      for (int k = 0; k < depth; ++k) {
        const float* wk = head.weightKM + static_cast<long>(k) * head.outStride;
        rawShift += wk[2 * p] * hT[k * kTile + r];
        rawScale += wk[2 * p + 1] * hT[k * kTile + r];
      }
      const iaflow::Affine a = iaflow::affineFromRaw(static_cast<iaflow::ScaleKind>(scaleKind), rawScale, rawShift);
      outT[p * kTile + r] = inT[p * kTile + r] * a.scale + a.shift;
      logDet[r] += a.logScale;
    }
  }
}

void headPushKernel(const LinearView& head, const float* hT, float* rawT, int k0, int k1, int c0, int c1) {
  for (int c = c0; c < c1; ++c)
    for (int r = 0; r < kTile; ++r) {
      float sum = rawT[c * kTile + r];
      for (int k = k0; k < k1; ++k) sum += head.weightKM[static_cast<long>(k) * head.outStride + c] * hT[k * kTile + r];
      rawT[c * kTile + r] = sum;
    }
}

void solveKernel(const float* rawT, const float* inT, float* outT, float* logDet, int p, int scaleKind) {
  for (int r = 0; r < kTile; ++r) {
    const iaflow::Affine a =
        iaflow::affineFromRaw(static_cast<iaflow::ScaleKind>(scaleKind), rawT[(2 * p + 1) * kTile + r], rawT[2 * p * kTile + r]);
    outT[p * kTile + r] = iaflow::solveAffine(inT[p * kTile + r], a, logDet[r]);
  }
}

void headPushRowKernel(const LinearView& head, const float* h, float* raw, int k0, int k1, int c0, int c1) {
  for (int c = c0; c < c1; ++c) {
    float sum = raw[c];
    for (int k = k0; k < k1; ++k) sum += head.weightKM[static_cast<long>(k) * head.outStride + c] * h[k];
    raw[c] = sum;
  }
}

void affineRowKernel(const float* raw, const float* in, float* out, float* logDet, int p0, int p1, int scaleKind,
                     bool inverse) {
  for (int p = p0; p < p1; ++p) {
    const iaflow::Affine a = iaflow::affineFromRaw(static_cast<iaflow::ScaleKind>(scaleKind), raw[2 * p + 1], raw[2 * p]);
    if (inverse) {
      out[p] = iaflow::solveAffine(in[p], a, *logDet);
    } else {
      out[p] = in[p] * a.scale + a.shift;
      *logDet += a.logScale;
    }
  }
}

void normalsKernel(uint64_t seed, uint64_t firstRow, int rows, int dim, float* out) {
  float four[4];
  for (int r = 0; r < rows; ++r)
    for (int block = 0; 4 * block < dim; ++block) {
      iaflow::standardNormals4(seed, firstRow + r, static_cast<uint32_t>(block), four);
      for (int c = 0; c < 4 && 4 * block + c < dim; ++c) out[static_cast<size_t>(r) * dim + 4 * block + c] = four[c];
    }
}
}  // namespace
namespace iaflow {
const KernelTable* portableKernels() {
  static const KernelTable table{"portable", 1, kTile, linearKernel, linearRowKernel, affineKernel, headPushKernel, solveKernel, headPushRowKernel, affineRowKernel, normalsKernel};
  return &table;
}
}  // namespace iaflow
#endif

// ---- Training kernels (train_kernels.h): four floats per vector (SSE2, NEON), or plain
// loops of four where GNU vector extensions are missing (MSVC) ----
#define IAF_TRAIN_VEC 4
namespace iaflow {
namespace training {
namespace {
#include "train_kernels.h"
}  // namespace
}  // namespace training
const TrainKernelTable* portableTrainKernels() {
  static const TrainKernelTable table{"portable", training::kVec, training::netForward, training::netBackward};
  return &table;
}
}  // namespace iaflow
