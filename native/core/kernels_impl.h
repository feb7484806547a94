// Kernel bodies, compiled once per instruction set: each kernels_<isa>.cc sets
// IAF_VEC (floats per vector), IAF_ROW_VECTORS (vectors per tile column) and
// IAF_COLUMN_GROUP (units per register block), selects its target, then
// includes this file inside an anonymous namespace. Everything here has
// internal linkage and calls nothing inline from elsewhere, so code built for
// one instruction set can never be linked into another's callers.
//
// GNU vector extensions (GCC, Clang). MSVC builds use kernels_portable.cc's scalar path.

using iaflow::LinearView;
using iaflow::kActELU;
using iaflow::kActNone;
using iaflow::kActReLU;
using iaflow::kActTanh;

typedef float vf __attribute__((vector_size(IAF_VEC * 4), aligned(4)));
typedef int vi __attribute__((vector_size(IAF_VEC * 4), aligned(4)));

constexpr int kVec = IAF_VEC;
constexpr int kRowVectors = IAF_ROW_VECTORS;
constexpr int kTile = kVec * kRowVectors;
constexpr int kGroup = IAF_COLUMN_GROUP;

inline vf load(const float* p) { return *reinterpret_cast<const vf*>(p); }
inline void store(float* p, vf v) { *reinterpret_cast<vf*>(p) = v; }
inline vf splat(float s) { return vf{} + s; }
inline vf select(vi mask, vf yes, vf no) { return (vf)(((vi)yes & mask) | ((vi)no & ~mask)); }
inline vf vmax(vf a, vf b) { return select(a > b, a, b); }
inline vf vmin(vf a, vf b) { return select(a < b, a, b); }
inline vf vabs(vf a) { return (vf)((vi)a & 0x7fffffff); }

// exp and log after Cephes' expf/logf: about 1 ulp over the ranges used here.
inline vf vexp(vf x) {
  x = vmin(vmax(x, splat(-87.3f)), splat(88.7f));
  const vf magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const vf n = (x * 1.44269504088896341f + magic) - magic;
  const vf r = x - n * 0.693359375f + n * 2.12194440e-4f;
  vf p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const vf y = p * r * r + r + 1.0f;
  const vi exponent = (__builtin_convertvector(n, vi) + 127) << 23;
  return y * (vf)exponent;
}

// Natural log for positive normal inputs.
inline vf vlog(vf x) {
  const vi bits = (vi)x;
  vi e = ((bits >> 23) & 0xff) - 126;
  vf m = (vf)((bits & 0x007fffff) | 0x3f000000);  // mantissa in [0.5, 1)
  const vi small = m < 0.707106781186547524f;
  e = e + small;  // small is -1 where true
  m = select(small, m + m - 1.0f, m - 1.0f);
  const vf z = m * m;
  vf y = splat(7.0376836292e-2f);
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  const vf ef = __builtin_convertvector(e, vf);
  y = y - ef * 2.12194440e-4f;
  y = y - 0.5f * z;
  return m + y + ef * 0.693359375f;
}

// log(1 + e^x), stable for both signs.
inline vf vsoftplus(vf x) { return vmax(x, splat(0.0f)) + vlog(1.0f + vexp(-vabs(x))); }

template <int kAct>
inline vf activate(vf x) {
  if (kAct == kActReLU) return vmax(x, splat(0.0f));
  if (kAct == kActTanh) {
    const vf t = vexp(-2.0f * vmin(vabs(x), splat(9.0f)));
    const vf r = (1.0f - t) / (1.0f + t);
    return select(x < 0.0f, -r, r);
  }
  if (kAct == kActELU) return select(x > 0.0f, x, vexp(vmin(x, splat(0.0f))) - 1.0f);
  return x;
}

// A register block: kColumns units x the tile's rows, over `depth` inputs.
template <int kColumns>
inline void accumulate(const LinearView& L, const float* xT, int j0, int depth, vf (&acc)[kColumns][kRowVectors]) {
  for (int c = 0; c < kColumns; ++c)
    for (int v = 0; v < kRowVectors; ++v) acc[c][v] = splat(L.bias[j0 + c]);
  const float* w = L.weightKM + j0;
  for (int k = 0; k < depth; ++k) {
    vf x[kRowVectors];
    for (int v = 0; v < kRowVectors; ++v) x[v] = load(xT + k * kTile + v * kVec);
    const float* wk = w + static_cast<long>(k) * L.outStride;
    for (int c = 0; c < kColumns; ++c) {
      const vf b = splat(wk[c]);
      for (int v = 0; v < kRowVectors; ++v) acc[c][v] += b * x[v];
    }
  }
}

// The epilogue: optional residual input, optional pre-activation copy, activation.
template <int kAct>
inline vf finish(vf sum, const float* residual, float* preAct, long at) {
  if (residual) sum += load(residual + at);
  if (preAct) store(preAct + at, sum);
  return activate<kAct>(sum);
}

template <int kColumns, int kAct>
inline void columnBlock(const LinearView& L, const float* xT, float* yT, int j0, int depth, const float* residualT,
                        float* preActT) {
  vf acc[kColumns][kRowVectors];
  accumulate<kColumns>(L, xT, j0, depth, acc);
  for (int c = 0; c < kColumns; ++c)
    for (int v = 0; v < kRowVectors; ++v) {
      const long at = (j0 + c) * kTile + v * kVec;
      store(yT + at, finish<kAct>(acc[c][v], residualT, preActT, at));
    }
}

template <int kAct>
void linearFor(const LinearView& L, const float* xT, float* yT, int lo, int hi, const float* residualT,
               float* preActT) {
  int j = lo;
  // Units are sorted by degree, so a block's last unit reads the most inputs; the
  // others' weights past their own prefix are zero. Zero tiles beyond are skipped.
  for (; j + kGroup <= hi; j += kGroup)
    columnBlock<kGroup, kAct>(L, xT, yT, j, L.prefix[j + kGroup - 1], residualT, preActT);
  for (; j < hi; ++j) columnBlock<1, kAct>(L, xT, yT, j, L.prefix[j], residualT, preActT);
}

void linearKernel(const LinearView& L, const float* xT, float* yT, int lo, int hi, int activation,
                  const float* residualT, float* preActT) {
  switch (activation) {
    case kActReLU: return linearFor<kActReLU>(L, xT, yT, lo, hi, residualT, preActT);
    case kActTanh: return linearFor<kActTanh>(L, xT, yT, lo, hi, residualT, preActT);
    case kActELU: return linearFor<kActELU>(L, xT, yT, lo, hi, residualT, preActT);
    default: return linearFor<kActNone>(L, xT, yT, lo, hi, residualT, preActT);
  }
}

// ---- one row at a time, vectorised across units ----

template <int kVectors, int kAct>
inline void rowBlock(const LinearView& L, const float* x, float* y, int j0, int depth, const float* residual,
                     float* preAct) {
  vf acc[kVectors];
  for (int b = 0; b < kVectors; ++b) acc[b] = load(L.bias + j0 + b * kVec);
  const float* w = L.weightKM + j0;
  for (int k = 0; k < depth; ++k) {
    const vf xk = splat(x[k]);
    const float* wk = w + static_cast<long>(k) * L.outStride;
    for (int b = 0; b < kVectors; ++b) acc[b] += xk * load(wk + b * kVec);
  }
  for (int b = 0; b < kVectors; ++b) {
    const long at = j0 + b * kVec;
    store(y + at, finish<kAct>(acc[b], residual, preAct, at));
  }
}

template <int kAct>
void linearRowFor(const LinearView& L, const float* x, float* y, int lo, int hi, const float* residual,
                  float* preAct) {
  constexpr int kWide = 4;  // four independent accumulators hide the FMA latency
  int j = lo;
  for (; j + kWide * kVec <= hi; j += kWide * kVec)
    rowBlock<kWide, kAct>(L, x, y, j, L.prefix[j + kWide * kVec - 1], residual, preAct);
  for (; j + kVec <= hi; j += kVec) rowBlock<1, kAct>(L, x, y, j, L.prefix[j + kVec - 1], residual, preAct);
  for (; j < hi; ++j) {  // tail: one unit at a time
    float sum = L.bias[j];
    for (int k = 0; k < L.prefix[j]; ++k) sum += x[k] * L.weightKM[static_cast<long>(k) * L.outStride + j];
    if (residual) sum += residual[j];
    if (preAct) preAct[j] = sum;
    y[j] = activate<kAct>(splat(sum))[0];
  }
}

void linearRowKernel(const LinearView& L, const float* x, float* y, int lo, int hi, int activation,
                     const float* residual, float* preAct) {
  switch (activation) {
    case kActReLU: return linearRowFor<kActReLU>(L, x, y, lo, hi, residual, preAct);
    case kActTanh: return linearRowFor<kActTanh>(L, x, y, lo, hi, residual, preAct);
    case kActELU: return linearRowFor<kActELU>(L, x, y, lo, hi, residual, preAct);
    default: return linearRowFor<kActNone>(L, x, y, lo, hi, residual, preAct);
  }
}

// scale and log scale from the raw output a (DESIGN.md's three parameterizations).
template <int kScale>
inline void scaleOf(vf a, vf& scale, vf& logScale) {
  if (kScale == 0) {  // softplus(a) + 1e-3
    scale = vsoftplus(a) + 1e-3f;
    logScale = vlog(scale);
  } else if (kScale == 1) {  // exp of the soft-clipped a
    logScale = a / (1.0f + vabs(a) * (1.0f / 6.907755278982137f));
    scale = vexp(logScale);
  } else {  // gated: sigmoid(a + 2)
    const vf g = a + 2.0f;
    scale = 1.0f / (1.0f + vexp(-g));
    logScale = -vsoftplus(-g);
  }
}

template <int kPositions, int kScale, bool kInverse>
inline void affineBlock(const LinearView& head, const float* hT, const float* inT, float* outT, float* logDet, int p0) {
  vf acc[2 * kPositions][kRowVectors];
  accumulate<2 * kPositions>(head, hT, 2 * p0, head.prefix[2 * p0 + 2 * kPositions - 1], acc);
  for (int v = 0; v < kRowVectors; ++v) {
    vf ld = load(logDet + v * kVec);
    for (int q = 0; q < kPositions; ++q) {
      const int p = p0 + q;
      vf scale, logScale;
      scaleOf<kScale>(acc[2 * q + 1][v], scale, logScale);
      vf shift = acc[2 * q][v];
      if (kScale == 2) shift = (1.0f - scale) * shift;
      const vf in = load(inT + p * kTile + v * kVec);
      if (kInverse) {  // as flow_math.h's solveAffine: a solution past float32 is +-infinity
        const vf u = (in - shift) / scale;
        const vi finite = vabs(u) <= 3.402823466e38f;
        store(outT + p * kTile + v * kVec, select(finite, u, select(u < 0.0f, splat(-__builtin_huge_valf()), splat(__builtin_huge_valf()))));
        ld -= select(finite, logScale, splat(0.0f));
      } else {
        store(outT + p * kTile + v * kVec, in * scale + shift);
        ld += logScale;
      }
    }
    store(logDet + v * kVec, ld);
  }
}

template <int kScale, bool kInverse>
void affineFor(const LinearView& head, const float* hT, const float* inT, float* outT, float* logDet, int p0, int p1) {
  int p = p0;
  for (; p + 2 <= p1; p += 2) affineBlock<2, kScale, kInverse>(head, hT, inT, outT, logDet, p);
  for (; p < p1; ++p) affineBlock<1, kScale, kInverse>(head, hT, inT, outT, logDet, p);
}

void affineKernel(const LinearView& head, const float* hT, const float* inT, float* outT, float* logDet, int p0,
                  int p1, int scaleKind, bool inverse) {
  switch (scaleKind * 2 + (inverse ? 1 : 0)) {
    case 0: return affineFor<0, false>(head, hT, inT, outT, logDet, p0, p1);
    case 1: return affineFor<0, true>(head, hT, inT, outT, logDet, p0, p1);
    case 2: return affineFor<1, false>(head, hT, inT, outT, logDet, p0, p1);
    case 3: return affineFor<1, true>(head, hT, inT, outT, logDet, p0, p1);
    case 4: return affineFor<2, false>(head, hT, inT, outT, logDet, p0, p1);
    default: return affineFor<2, true>(head, hT, inT, outT, logDet, p0, p1);
  }
}
