// Portable kernels: the baseline vector width of the target (SSE2 on x86-64,
// NEON on arm64) through GNU vector extensions, or plain scalar loops under
// compilers without them (MSVC). Correct everywhere; the fallback when no
// wider instruction set is available.
#include "kernels.h"

#if defined(__GNUC__) || defined(__clang__)
#define IAF_VEC 4
#define IAF_ROW_VECTORS 4
#define IAF_COLUMN_GROUP 3
namespace {
#include "kernels_impl.h"
}  // namespace
namespace iaflow {
const KernelTable* portableKernels() {
  static const KernelTable table{"portable", kVec, kTile, linearKernel, linearRowKernel, affineKernel};
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
                  int p1, int scaleKind, bool inverse) {
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
      const float in = inT[p * kTile + r];
      if (inverse) {
        outT[p * kTile + r] = iaflow::solveAffine(in, a, logDet[r]);
      } else {
        outT[p * kTile + r] = in * a.scale + a.shift;
        logDet[r] += a.logScale;
      }
    }
  }
}
}  // namespace
namespace iaflow {
const KernelTable* portableKernels() {
  static const KernelTable table{"portable", 1, kTile, linearKernel, linearRowKernel, affineKernel};
  return &table;
}
}  // namespace iaflow
#endif
