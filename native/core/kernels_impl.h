// Kernel bodies, compiled once per instruction set: each kernels_<isa>.cc sets
// IAF_VEC (floats per vector), IAF_ROW_VECTORS (vectors per tile column) and
// IAF_COLUMN_GROUP (units in the widest register block), optionally
// IAF_MUL_EPU32 and IAF_SQRT_PD (the normals' 32 x 32 -> 64-bit products and
// square roots as intrinsics), selects its target, then includes this file
// inside an anonymous namespace. Everything here has
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

// a * b + c: one fused multiply-add where the instruction set has it, else a multiply and an add
// (the build passes -ffp-contract=off, so nothing is fused behind the code's back).
#ifndef IAF_FMADD
#define IAF_FMADD(a, b, c) ((a) * (b) + (c))
#define IAF_FMADD1(a, b, c) ((a) * (b) + (c))
#endif

// The register blocks pass their accumulators by reference: they must be inlined, or the sums
// live in memory (GCC kept accumulate<2>, the sequential direction's heads, out of line: a quarter
// of that direction's time went to spilled sums).
#define IAF_ALWAYS_INLINE inline __attribute__((always_inline))

constexpr int kVec = IAF_VEC;
constexpr int kRowVectors = IAF_ROW_VECTORS;
constexpr int kTile = kVec * kRowVectors;
constexpr int kGroup = IAF_COLUMN_GROUP;

inline vf load(const float* p) { return *reinterpret_cast<const vf*>(p); }
inline void store(float* p, vf v) { *reinterpret_cast<vf*>(p) = v; }
// A broadcast. s - 0 is s for every s (-0 included), so the compiler drops the
// subtraction and broadcasts straight from memory (or into an FMA's operand);
// 0 + s would turn -0 into +0 and costs an add per weight.
inline vf splat(float s) { return s - vf{}; }
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

// Inputs [k0, k1) added to a register block of kColumns units (weights w[k * stride + c]) x the
// tile's rows, one multiply-add per term in index order: the sums of `linear` and the heads' pushes.
template <int kColumns>
IAF_ALWAYS_INLINE void addTerms(const float* w, long stride, const float* xT, int k0, int k1,
                                vf (&acc)[kColumns][kRowVectors]) {
  for (int k = k0; k < k1; ++k) {
    vf x[kRowVectors];
    for (int v = 0; v < kRowVectors; ++v) x[v] = load(xT + k * kTile + v * kVec);
    const float* wk = w + k * stride;
    for (int c = 0; c < kColumns; ++c) {
      const vf b = splat(wk[c]);
      for (int v = 0; v < kRowVectors; ++v) acc[c][v] = IAF_FMADD(b, x[v], acc[c][v]);
    }
  }
}

// A register block: kColumns units x the tile's rows, over `depth` inputs.
template <int kColumns>
IAF_ALWAYS_INLINE void accumulate(const LinearView& L, const float* xT, int j0, int depth, vf (&acc)[kColumns][kRowVectors]) {
  for (int c = 0; c < kColumns; ++c)
    for (int v = 0; v < kRowVectors; ++v) acc[c][v] = splat(L.bias[j0 + c]);
  addTerms<kColumns>(L.weightKM + j0, L.outStride, xT, 0, depth, acc);
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

// One block of `width` units (1 <= width <= kColumns) starting at unit j. Units are sorted
// by degree, so a block's last unit reads the most inputs; the others' weights past their own
// prefix are zero and add exact zeros. Zero tiles beyond the last unit's prefix are skipped.
template <int kColumns, int kAct>
inline void columnBlockOfWidth(int width, const LinearView& L, const float* xT, float* yT, int j,
                               const float* residualT, float* preActT) {
  if (width == kColumns) columnBlock<kColumns, kAct>(L, xT, yT, j, L.prefix[j + kColumns - 1], residualT, preActT);
  else if (kColumns > 1) columnBlockOfWidth<(kColumns > 1 ? kColumns - 1 : 1), kAct>(width, L, xT, yT, j, residualT, preActT);
}

// Units [lo, hi) in the fewest blocks of at most kGroup units, their widths as even as possible:
// a degree group of 8 units in the sequential direction runs as 4 + 4 (16 accumulators each)
// rather than 6 + 2, whose second block has too few independent sums to hide the FMA latency.
template <int kAct>
void linearFor(const LinearView& L, const float* xT, float* yT, int lo, int hi, const float* residualT,
               float* preActT) {
  const int units = hi - lo;
  if (units <= 0) return;
  const int blocks = (units + kGroup - 1) / kGroup;
  const int narrow = units / blocks;  // each block has narrow or narrow + 1 units
  const int wide = units % blocks;    // the first `wide` blocks have narrow + 1
  for (int b = 0, j = lo; b < blocks; ++b) {
    const int width = narrow + (b < wide ? 1 : 0);
    columnBlockOfWidth<kGroup, kAct>(width, L, xT, yT, j, residualT, preActT);
    j += width;
  }
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
    for (int b = 0; b < kVectors; ++b) acc[b] = IAF_FMADD(xk, load(wk + b * kVec), acc[b]);
  }
  for (int b = 0; b < kVectors; ++b) {
    const long at = j0 + b * kVec;
    store(y + at, finish<kAct>(acc[b], residual, preAct, at));
  }
}

// One whole stripe of kRowStripe units from the packed copy: the same sums, in the same order, as
// rowBlock over those units, with the weights read in order.
template <int kAct>
inline void stripeBlock(const LinearView& L, const float* x, float* y, int j0, const float* residual, float* preAct) {
  constexpr int kVectors = iaflow::kRowStripe / kVec;
  vf acc[kVectors];
  for (int b = 0; b < kVectors; ++b) acc[b] = load(L.bias + j0 + b * kVec);
  const int depth = L.prefix[j0 + iaflow::kRowStripe - 1];
  const float* w = L.rowStripes + L.rowStripeOffset[j0 / iaflow::kRowStripe];
  for (int k = 0; k < depth; ++k, w += iaflow::kRowStripe) {
    const vf xk = splat(x[k]);
    for (int b = 0; b < kVectors; ++b) acc[b] = IAF_FMADD(xk, load(w + b * kVec), acc[b]);
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
  if (L.rowStripes)
    for (; j % iaflow::kRowStripe == 0 && j + iaflow::kRowStripe <= hi; j += iaflow::kRowStripe)
      stripeBlock<kAct>(L, x, y, j, residual, preAct);
  for (; j + kWide * kVec <= hi; j += kWide * kVec)
    rowBlock<kWide, kAct>(L, x, y, j, L.prefix[j + kWide * kVec - 1], residual, preAct);
  // Fewer than kWide vectors left (a degree group of the sequential direction is often one to
  // three): one block with that many sums, walking the inputs once rather than once per vector.
  switch ((hi - j) / kVec) {
    case 3: rowBlock<3, kAct>(L, x, y, j, L.prefix[j + 3 * kVec - 1], residual, preAct); j += 3 * kVec; break;
    case 2: rowBlock<2, kAct>(L, x, y, j, L.prefix[j + 2 * kVec - 1], residual, preAct); j += 2 * kVec; break;
    case 1: rowBlock<1, kAct>(L, x, y, j, L.prefix[j + kVec - 1], residual, preAct); j += kVec; break;
    default: break;
  }
  if (j < hi && j + kVec <= L.outStride) {
    // The last units, fewer than a vector: one vector whose lanes past hi (later units or padding,
    // inside the row's storage) are computed and dropped, so the inputs are walked once.
    const int j0 = j;
    vf acc = load(L.bias + j0);
    const float* w = L.weightKM + j0;
    for (int k = 0; k < L.prefix[hi - 1]; ++k) acc = IAF_FMADD(splat(x[k]), load(w + static_cast<long>(k) * L.outStride), acc);
    for (; j < hi; ++j) {
      float sum = acc[j - j0];
      if (residual) sum += residual[j];
      if (preAct) preAct[j] = sum;
      y[j] = activate<kAct>(splat(sum))[0];
    }
  }
  for (; j < hi; ++j) {  // tail: one unit at a time
    float sum = L.bias[j];
    for (int k = 0; k < L.prefix[j]; ++k) sum = IAF_FMADD1(x[k], L.weightKM[static_cast<long>(k) * L.outStride + j], sum);
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

// scale and log scale from the raw output a (docs/DESIGN.md's three parameterizations).
template <int kScale>
inline void scaleOf(vf a, vf& scale, vf& logScale) {
  if (kScale == 0) {  // softplus(a) + 1e-3
    scale = vsoftplus(a) + iaflow::kSoftplusFloor;
    logScale = vlog(scale);
  } else if (kScale == 1) {  // exp of the soft-clipped a
    logScale = a / (1.0f + vabs(a) * (1.0f / iaflow::kExpSoftClip));
    scale = vexp(logScale);
  } else {  // gated: sigmoid(a + 2)
    const vf g = a + iaflow::kGateBias;
    scale = 1.0f / (1.0f + vexp(-g));
    logScale = -vsoftplus(-g);
  }
}

// One vector of rows of position p: out = in * scale + shift (logDet += log scale), or the inverse
// (as flow_math.h's solveAffine: a solution past float32 is +-infinity, its log-scale left out).
template <int kScale, bool kInverse>
inline vf affineElement(vf rawShift, vf rawScale, vf in, vf& ld) {
  vf scale, logScale;
  scaleOf<kScale>(rawScale, scale, logScale);
  vf shift = rawShift;
  if (kScale == 2) shift = (1.0f - scale) * shift;
  if (kInverse) {
    const vf u = (in - shift) / scale;
    const vi finite = vabs(u) <= iaflow::kFloatMax;
    ld -= select(finite, logScale, splat(0.0f));
    return select(finite, u, select(u < 0.0f, splat(-__builtin_huge_valf()), splat(__builtin_huge_valf())));
  }
  ld += logScale;
  return in * scale + shift;
}

template <int kPositions, int kScale>
inline void affineBlock(const LinearView& head, const float* hT, const float* inT, float* outT, float* logDet, int p0) {
  vf acc[2 * kPositions][kRowVectors];
  accumulate<2 * kPositions>(head, hT, 2 * p0, head.prefix[2 * p0 + 2 * kPositions - 1], acc);
  for (int v = 0; v < kRowVectors; ++v) {
    vf ld = load(logDet + v * kVec);
    for (int q = 0; q < kPositions; ++q) {
      const long at = (p0 + q) * kTile + v * kVec;
      store(outT + at, affineElement<kScale, false>(acc[2 * q][v], acc[2 * q + 1][v], load(inT + at), ld));
    }
    store(logDet + v * kVec, ld);
  }
}

// Positions per register block of the heads: two columns (shift, scale) each.
constexpr int kHeadPositions = kGroup / 2 > 0 ? kGroup / 2 : 1;

template <int kPositions, int kScale>
inline void affineRun(const LinearView& head, const float* hT, const float* inT, float* outT, float* logDet, int p,
                      int p1) {
  for (; p + kPositions <= p1; p += kPositions) affineBlock<kPositions, kScale>(head, hT, inT, outT, logDet, p);
  if (kPositions > 1 && p < p1) affineRun<(kPositions > 1 ? kPositions - 1 : 1), kScale>(head, hT, inT, outT, logDet, p, p1);
}

void affineKernel(const LinearView& head, const float* hT, const float* inT, float* outT, float* logDet, int p0,
                  int p1, int scaleKind) {
  switch (scaleKind) {
    case 0: return affineRun<kHeadPositions, 0>(head, hT, inT, outT, logDet, p0, p1);
    case 1: return affineRun<kHeadPositions, 1>(head, hT, inT, outT, logDet, p0, p1);
    default: return affineRun<kHeadPositions, 2>(head, hT, inT, outT, logDet, p0, p1);
  }
}

// ---- the sequential direction's heads, pushed ----
// Inputs [k0, k1) of the head (last hidden layer units already computed) added to the raw sums
// of columns [c0, c1): kColumns columns x the tile's rows per register block, one multiply-add per
// term with accumulate's operands. The caller starts the sums at the bias and pushes each column's
// inputs in index order, so position p's raw shift and scale are the parallel direction's bits.
template <int kColumns>
IAF_ALWAYS_INLINE void pushBlock(const LinearView& head, const float* hT, float* rawT, int k0, int k1, int c0) {
  vf acc[kColumns][kRowVectors];
  for (int c = 0; c < kColumns; ++c)
    for (int v = 0; v < kRowVectors; ++v) acc[c][v] = load(rawT + (c0 + c) * kTile + v * kVec);
  addTerms<kColumns>(head.weightKM + c0, head.outStride, hT, k0, k1, acc);
  for (int c = 0; c < kColumns; ++c)
    for (int v = 0; v < kRowVectors; ++v) store(rawT + (c0 + c) * kTile + v * kVec, acc[c][v]);
}

// The last width (< kColumns) columns in one block.
template <int kColumns>
inline void pushBlockOfWidth(int width, const LinearView& head, const float* hT, float* rawT, int k0, int k1, int c) {
  if (width == kColumns) pushBlock<kColumns>(head, hT, rawT, k0, k1, c);
  else if (kColumns > 1) pushBlockOfWidth<(kColumns > 1 ? kColumns - 1 : 1)>(width, head, hT, rawT, k0, k1, c);
}

void headPushKernel(const LinearView& head, const float* hT, float* rawT, int k0, int k1, int c0, int c1) {
  if (k1 <= k0) return;
  int c = c0;
  for (; c + kGroup <= c1; c += kGroup) pushBlock<kGroup>(head, hT, rawT, k0, k1, c);
  if (c < c1) pushBlockOfWidth<kGroup>(c1 - c, head, hT, rawT, k0, k1, c);
}

// Position p's inverse affine step from its pushed raw sums (columns 2p, 2p + 1 of rawT).
template <int kScale>
void solveFor(const float* rawT, const float* inT, float* outT, float* logDet, int p) {
  for (int v = 0; v < kRowVectors; ++v) {
    vf ld = load(logDet + v * kVec);
    const long at = p * kTile + v * kVec;
    store(outT + at, affineElement<kScale, true>(load(rawT + 2 * p * kTile + v * kVec),
                                                 load(rawT + (2 * p + 1) * kTile + v * kVec), load(inT + at), ld));
    store(logDet + v * kVec, ld);
  }
}

void solveKernel(const float* rawT, const float* inT, float* outT, float* logDet, int p, int scaleKind) {
  switch (scaleKind) {
    case 0: return solveFor<0>(rawT, inT, outT, logDet, p);
    case 1: return solveFor<1>(rawT, inT, outT, logDet, p);
    default: return solveFor<2>(rawT, inT, outT, logDet, p);
  }
}

// headPushKernel for one row, row-major, vectorised across the columns: the same terms in the
// same order with the same multiply-adds, so a row alone gives its tile's bits.
template <int kVectors>
inline void pushRowBlock(const LinearView& head, const float* h, float* raw, int k0, int k1, int c0) {
  vf acc[kVectors];
  for (int b = 0; b < kVectors; ++b) acc[b] = load(raw + c0 + b * kVec);
  const float* w = head.weightKM + c0;
  for (int k = k0; k < k1; ++k) {
    const vf hk = splat(h[k]);
    const float* wk = w + static_cast<long>(k) * head.outStride;
    for (int b = 0; b < kVectors; ++b) acc[b] = IAF_FMADD(load(wk + b * kVec), hk, acc[b]);
  }
  for (int b = 0; b < kVectors; ++b) store(raw + c0 + b * kVec, acc[b]);
}

void headPushRowKernel(const LinearView& head, const float* h, float* raw, int k0, int k1, int c0, int c1) {
  if (k1 <= k0) return;
  constexpr int kWide = 4;
  int c = c0;
  for (; c + kWide * kVec <= c1; c += kWide * kVec) pushRowBlock<kWide>(head, h, raw, k0, k1, c);
  for (; c + kVec <= c1; c += kVec) pushRowBlock<1>(head, h, raw, k0, k1, c);
  // The last columns, fewer than a vector: one vector when the row's storage (outStride) holds it
  // (its lanes past c1, later columns or padding, are computed and dropped: a later column gets
  // these inputs when its own block's push comes), else one column at a time.
  if (c < c1 && c + kVec <= head.outStride) {
    alignas(64) float lanes[kVec];
    const float* w = head.weightKM + c;
    vf acc = load(raw + c);
    for (int k = k0; k < k1; ++k) acc = IAF_FMADD(load(w + static_cast<long>(k) * head.outStride), splat(h[k]), acc);
    store(lanes, acc);
    for (int q = 0; c + q < c1; ++q) raw[c + q] = lanes[q];
    return;
  }
  for (; c < c1; ++c) {
    float sum = raw[c];
    for (int k = k0; k < k1; ++k) sum = IAF_FMADD1(head.weightKM[static_cast<long>(k) * head.outStride + c], h[k], sum);
    raw[c] = sum;
  }
}

// The one-row affine step: up to kVec positions per vector through affineElement, as affineBlock,
// so each element is computed by the same operations.
template <int kScale, bool kInverse>
void affineRowFor(const float* raw, const float* in, float* out, float* logDet, int p0, int p1) {
  alignas(64) float rawScale[kVec], rawShift[kVec], value[kVec], result[kVec], logScales[kVec];
  for (int p = p0; p < p1; p += kVec) {
    const int n = p1 - p < kVec ? p1 - p : kVec;
    for (int q = 0; q < kVec; ++q) {
      rawShift[q] = q < n ? raw[2 * (p + q)] : 0.0f;
      rawScale[q] = q < n ? raw[2 * (p + q) + 1] : 0.0f;
      value[q] = q < n ? in[p + q] : 0.0f;
    }
    // lanes: each position's signed log-scale (0 - x is -x exactly), summed in position order below.
    vf lanes = splat(0.0f);
    store(result, affineElement<kScale, kInverse>(load(rawShift), load(rawScale), load(value), lanes));
    store(logScales, lanes);
    float ld = *logDet;
    for (int q = 0; q < n; ++q) {
      out[p + q] = result[q];
      ld += logScales[q];
    }
    *logDet = ld;
  }
}

void affineRowKernel(const float* raw, const float* in, float* out, float* logDet, int p0, int p1, int scaleKind,
                     bool inverse) {
  switch (scaleKind * 2 + (inverse ? 1 : 0)) {
    case 0: return affineRowFor<0, false>(raw, in, out, logDet, p0, p1);
    case 1: return affineRowFor<0, true>(raw, in, out, logDet, p0, p1);
    case 2: return affineRowFor<1, false>(raw, in, out, logDet, p0, p1);
    case 3: return affineRowFor<1, true>(raw, in, out, logDet, p0, p1);
    case 4: return affineRowFor<2, false>(raw, in, out, logDet, p0, p1);
    default: return affineRowFor<2, true>(raw, in, out, logDet, p0, p1);
  }
}

// ---- the standard-normal stream: normals.h on kLanes Philox blocks per vector ----

#include "normals.h"

typedef double vd __attribute__((vector_size(IAF_VEC * 4)));
typedef uint64_t vu __attribute__((vector_size(IAF_VEC * 4)));
constexpr int kLanes = kVec / 2;

struct VectorLanes {
  using D = vd;
  using U = vu;
  static U asBits(D d) { return (U)d; }
  static D asDouble(U u) { return (D)u; }
  static D sqrt(D d) {
#if defined(IAF_SQRT_PD)
    return IAF_SQRT_PD(d);
#else
    for (int i = 0; i < kLanes; ++i) d[i] = __builtin_sqrt(d[i]);
    return d;
#endif
  }
  static U mulWide(U a, uint64_t k) {
#if defined(IAF_MUL_EPU32)
    return IAF_MUL_EPU32(a, k);
#else
    return a * k;
#endif
  }
};

// The same templates on one lane, for the blocks left over after the last full vector.
struct OneLane {
  using D = double;
  using U = uint64_t;
  static U asBits(D d) {
    U u;
    __builtin_memcpy(&u, &d, sizeof u);
    return u;
  }
  static D asDouble(U u) {
    D d;
    __builtin_memcpy(&d, &u, sizeof d);
    return d;
  }
  static D sqrt(D d) { return __builtin_sqrt(d); }
  static U mulWide(U a, uint64_t k) { return a * k; }
};

// Dimensions 4 block .. of one row, the last block cut at dim.
inline void storeBlock(float* rowOut, int dim, int block, double z0, double z1, double z2, double z3) {
  float* o = rowOut + 4 * block;
  const int left = dim - 4 * block;
  o[0] = static_cast<float>(z0);
  if (left > 1) o[1] = static_cast<float>(z1);
  if (left > 2) o[2] = static_cast<float>(z2);
  if (left > 3) o[3] = static_cast<float>(z3);
}

// Philox blocks are numbered row by row (block b of row r is r * blocks + b) and
// handed to the lanes in that order.
void normalsKernel(uint64_t seed, uint64_t firstRow, int rows, int dim, float* out) {
  const int blocks = (dim + 3) / 4;
  const int64_t total = static_cast<int64_t>(rows) * blocks;
  const uint32_t key0 = static_cast<uint32_t>(seed), key1 = static_cast<uint32_t>(seed >> 32);
  int row = 0, block = 0;  // of the next Philox block
  int64_t done = 0;
  for (; done + kLanes <= total; done += kLanes) {
    vu c0, c1, c2, c3;
    int rowOf[kLanes], blockOf[kLanes];
    for (int i = 0; i < kLanes; ++i) {
      const uint64_t r = firstRow + static_cast<uint64_t>(row);
      c0[i] = static_cast<uint64_t>(block);
      c1[i] = static_cast<uint32_t>(r);
      c2[i] = static_cast<uint32_t>(r >> 32);
      c3[i] = kPhiloxStreamTag;
      rowOf[i] = row;
      blockOf[i] = block;
      if (++block == blocks) {
        block = 0;
        ++row;
      }
    }
    philoxLanes<VectorLanes>(c0, c1, c2, c3, key0, key1);
    vd z0, z1, z2, z3;
    boxMuller<VectorLanes>(c0, c1, z0, z1);
    boxMuller<VectorLanes>(c2, c3, z2, z3);
    for (int i = 0; i < kLanes; ++i)
      storeBlock(out + static_cast<int64_t>(rowOf[i]) * dim, dim, blockOf[i], z0[i], z1[i], z2[i], z3[i]);
  }
  for (; done < total; ++done) {
    const uint64_t r = firstRow + static_cast<uint64_t>(row);
    uint64_t c0 = static_cast<uint64_t>(block), c1 = static_cast<uint32_t>(r), c2 = static_cast<uint32_t>(r >> 32),
             c3 = kPhiloxStreamTag;
    philoxLanes<OneLane>(c0, c1, c2, c3, key0, key1);
    double z0, z1, z2, z3;
    boxMuller<OneLane>(c0, c1, z0, z1);
    boxMuller<OneLane>(c2, c3, z2, z3);
    storeBlock(out + static_cast<int64_t>(row) * dim, dim, block, z0, z1, z2, z3);
    if (++block == blocks) {
      block = 0;
      ++row;
    }
  }
}
