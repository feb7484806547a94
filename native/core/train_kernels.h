// The training kernels: the three staircase products of a masked linear layer,
// one MADE layer's forward and backward along its parallel direction, and the
// whole flow's. train.cc includes this file twice: once for the build's
// baseline instruction set and once under `#pragma GCC target("avx2,fma")`,
// each inside its own namespace IAF_TRAIN_ISA, and picks one at run time. It
// relies on the types train.cc defines before including it; include nowhere else.
// (No include guard, on purpose.)

namespace iaflow {
namespace {
namespace IAF_TRAIN_ISA {

// ---------------------------------------------------------------------------
// Products. Fast path: register tiles of rows x kBlock columns along the staircase.

// V8 (eight floats; defined per instruction set before this file is included):
// V8::load / store (unaligned), V8::splat, madd(acc, x, w) = acc + x * w.

template <int R, bool kAct, Activation A>
inline void forwardRows(const TLinear& L, const float* W, const float* B, const float* X, int xs, float* Y) {
  const int os = L.outStride;
  for (int jb = 0, blk = 0; jb < L.out; jb += kBlock, ++blk) {
    const int depth = L.blockDepth[blk];
    V8 acc[R][2];
    const V8 b0 = V8::load(B + jb), b1 = V8::load(B + jb + 8);
    for (int r = 0; r < R; ++r) {
      acc[r][0] = b0;
      acc[r][1] = b1;
    }
    const float* w = W + jb;
    for (int k = 0; k < depth; ++k) {
      const float* wk = w + static_cast<size_t>(k) * os;
      const V8 w0 = V8::load(wk), w1 = V8::load(wk + 8);
      for (int r = 0; r < R; ++r) {
        const V8 x = V8::splat(X[r * xs + k]);
        acc[r][0] = madd(acc[r][0], x, w0);
        acc[r][1] = madd(acc[r][1], x, w1);
      }
    }
    for (int r = 0; r < R; ++r) {
      float* y = Y + r * os + jb;
      acc[r][0].store(y);
      acc[r][1].store(y + 8);
      if (kAct)
        for (int c = 0; c < kBlock; ++c) y[c] = activate<A>(y[c]);
    }
  }
}

template <int R>
inline void inputGradRows(const TLinear& L, const float* WT, const float* GY, float* GX, int gxs, bool accumulate) {
  const int os = L.outStride, is = L.inStride;
  for (int kb = 0, blk = 0; kb < L.in; kb += kBlock, ++blk) {
    V8 acc[R][2];
    for (int r = 0; r < R; ++r) {
      if (accumulate) {
        acc[r][0] = V8::load(GX + r * gxs + kb);
        acc[r][1] = V8::load(GX + r * gxs + kb + 8);
      } else {
        acc[r][0] = V8::splat(0.0f);
        acc[r][1] = V8::splat(0.0f);
      }
    }
    for (int j = L.firstReader[blk]; j < L.out; ++j) {
      const float* wj = WT + static_cast<size_t>(j) * is + kb;
      const V8 w0 = V8::load(wj), w1 = V8::load(wj + 8);
      for (int r = 0; r < R; ++r) {
        const V8 g = V8::splat(GY[r * os + j]);
        acc[r][0] = madd(acc[r][0], g, w0);
        acc[r][1] = madd(acc[r][1], g, w1);
      }
    }
    for (int r = 0; r < R; ++r) {
      acc[r][0].store(GX + r * gxs + kb);
      acc[r][1].store(GX + r * gxs + kb + 8);
    }
  }
}

// GW[t][c] += sum_r X[r][t] GY[r][c] for K rows t of a column block.
template <int K>
inline void weightGradRows(const float* X, int xs, const float* GY, int os, int rows, float* GW) {
  V8 acc[K][2];
  for (int t = 0; t < K; ++t) {
    acc[t][0] = V8::splat(0.0f);
    acc[t][1] = V8::splat(0.0f);
  }
  for (int r = 0; r < rows; ++r) {
    const V8 g0 = V8::load(GY + r * os), g1 = V8::load(GY + r * os + 8);
    const float* x = X + r * xs;
    for (int t = 0; t < K; ++t) {
      const V8 xv = V8::splat(x[t]);
      acc[t][0] = madd(acc[t][0], xv, g0);
      acc[t][1] = madd(acc[t][1], xv, g1);
    }
  }
  for (int t = 0; t < K; ++t) {
    float* gw = GW + static_cast<size_t>(t) * os;
    madd(V8::load(gw), V8::splat(1.0f), acc[t][0]).store(gw);
    madd(V8::load(gw + 8), V8::splat(1.0f), acc[t][1]).store(gw + 8);
  }
}

template <bool kAct, Activation A>
void linearForward(const TLinear& L, const float* W, const float* B, const float* X, int xs, int rows, float* Y,
                   bool reference) {
  const int os = L.outStride;
  if (reference) {
    // The simple dense path: every weight, zeros included, row by row.
    for (int r = 0; r < rows; ++r) {
      float* y = Y + r * os;
      for (int j = 0; j < os; ++j) y[j] = B[j];
      for (int k = 0; k < L.in; ++k) {
        const float x = X[r * xs + k];
        const float* wk = W + static_cast<size_t>(k) * os;
        for (int j = 0; j < L.out; ++j) y[j] += x * wk[j];
      }
      if (kAct)
        for (int j = 0; j < os; ++j) y[j] = activate<A>(y[j]);
    }
    return;
  }
  int r = 0;
  for (; r + 4 <= rows; r += 4) forwardRows<4, kAct, A>(L, W, B, X + r * xs, xs, Y + r * os);
  for (; r < rows; ++r) forwardRows<1, kAct, A>(L, W, B, X + r * xs, xs, Y + r * os);
}

// GX (= or +=) GY W^T. GX rows have stride gxs >= inStride; its padding columns get zeros.
void inputGrad(const TLinear& L, const float* W, const float* WT, const float* GY, int rows, float* GX, int gxs,
               bool accumulate, bool reference) {
  const int os = L.outStride;
  if (reference) {
    for (int r = 0; r < rows; ++r) {
      for (int k = 0; k < L.in; ++k) {
        const float* wk = W + static_cast<size_t>(k) * os;
        float sum = 0.0f;
        for (int j = 0; j < L.out; ++j) sum += wk[j] * GY[r * os + j];
        if (accumulate) GX[r * gxs + k] += sum;
        else GX[r * gxs + k] = sum;
      }
      if (!accumulate)
        for (int k = L.in; k < L.inStride; ++k) GX[r * gxs + k] = 0.0f;
    }
    return;
  }
  int r = 0;
  for (; r + 4 <= rows; r += 4) inputGradRows<4>(L, WT, GY + r * os, GX + r * gxs, gxs, accumulate);
  for (; r < rows; ++r) inputGradRows<1>(L, WT, GY + r * os, GX + r * gxs, gxs, accumulate);
}

// GW += X^T GY over the staircase, GB += column sums of GY.
void weightGrad(const TLinear& L, const float* X, int xs, const float* GY, int rows, float* GW, float* GB,
                bool reference) {
  const int os = L.outStride;
  if (reference) {
    for (int r = 0; r < rows; ++r) {
      for (int k = 0; k < L.in; ++k) {
        const float x = X[r * xs + k];
        float* gw = GW + static_cast<size_t>(k) * os;
        for (int j = 0; j < L.out; ++j) gw[j] += x * GY[r * os + j];
      }
    }
  } else {
    for (int jb = 0, blk = 0; jb < L.out; jb += kBlock, ++blk) {
      const int depth = L.blockDepth[blk];
      int k = 0;
      for (; k + 4 <= depth; k += 4)
        weightGradRows<4>(X + k, xs, GY + jb, os, rows, GW + static_cast<size_t>(k) * os + jb);
      for (; k < depth; ++k) weightGradRows<1>(X + k, xs, GY + jb, os, rows, GW + static_cast<size_t>(k) * os + jb);
    }
  }
  for (int r = 0; r < rows; ++r)
    for (int j = 0; j < os; ++j) GB[j] += GY[r * os + j];
}

// ---------------------------------------------------------------------------
// One MADE layer along its parallel direction: v = u * scale(u) + shift(u).

// What the heads read, rows of stride outStride of the last hidden layer: act(...) of the last
// layer, or the stream h in a residual MADE.
inline float* headInput(const TMade& m, Workspace& ws) {
  const size_t last = m.hidden.size() - 1;
  return ws.cache.data() + kTile * (m.residual ? m.cacheStream[last] : m.cacheHidden[last]);
}

template <Activation A, ScaleKind S>
void madeForward(const Net& net, const TMade& m, Workspace& ws, int rows) {
  const int dim = net.dim, ds = net.dimStride;
  const float* P = net.params.data();
  float* u = ws.cache.data() + kTile * m.cacheInput;
  for (int r = 0; r < rows; ++r)
    for (int p = 0; p < dim; ++p) u[r * ds + p] = ws.points[r * dim + m.dimAtPosition[p]];
  const float* x = u;
  int xs = ds;
  for (size_t l = 0; l < m.hidden.size(); ++l) {
    const TLinear& L = m.hidden[l];
    float* h = ws.cache.data() + kTile * m.cacheHidden[l];
    if (m.residual && l % 2 == 0) {
      // The stream: h_l = W_l x + b_l (+ h_{l-2}); this layer's output is act(h_l).
      float* stream = ws.cache.data() + kTile * m.cacheStream[l];
      linearForward<false, A>(L, P + L.w, P + L.b, x, xs, rows, stream, net.reference);
      const int hs = L.outStride;
      const float* before = l > 0 ? ws.cache.data() + kTile * m.cacheStream[l - 2] : nullptr;
      for (int i = 0; i < rows * hs; ++i) {
        if (before) stream[i] += before[i];
        h[i] = activate<A>(stream[i]);
      }
    } else {
      linearForward<true, A>(L, P + L.w, P + L.b, x, xs, rows, h, net.reference);
    }
    x = h;
    xs = L.outStride;
  }
  const TLinear& O = m.output;
  float* out = ws.cache.data() + kTile * m.cacheOutput;
  linearForward<false, A>(O, P + O.w, P + O.b, headInput(m, ws), xs, rows, out, net.reference);
  const int os = O.outStride;
  for (int r = 0; r < rows; ++r) {
    float logDet = 0.0f;
    for (int p = 0; p < dim; ++p) {
      const AffineGrad a = affineGradFromRaw<S>(out[r * os + 2 * p + 1], out[r * os + 2 * p]);
      ws.points[r * dim + m.dimAtPosition[p]] = u[r * ds + p] * a.scale + a.shift;
      logDet += a.logScale;
    }
    ws.logDet[r] += logDet;
  }
}

// Backward through the conditioner MLP from gOut = dL/d(raw outputs) (ws.gOut, rows x
// outStride): adds the parameter gradient to G (when not null) and, when gU is not null, adds
// dL/du (positions, stride dimStride) to gU.
template <Activation A>
void conditionerBackward(const Net& net, const TMade& m, Workspace& ws, int rows, float* G, float* gU) {
  const int ds = net.dimStride;
  const float* P = net.params.data();
  const float* PT = net.transposed.data();
  const float* u = ws.cache.data() + kTile * m.cacheInput;
  const TLinear& O = m.output;
  const float* gOut = ws.gOut.data();
  const size_t depth = m.hidden.size();
  const float* hLast = headInput(m, ws);
  if (G) weightGrad(O, hLast, m.hidden[depth - 1].outStride, gOut, rows, G + O.w, G + O.b, net.reference);
  if (!G && !gU) return;
  if (m.residual) {
    // gS = dL/dh along the stream; per block (layers 2b+1, 2b+2), from the last one down:
    // h_{2b+2} = W act(a) + b + h_{2b}, a = W' act(h_{2b}) + b'.
    const int hs = m.hidden[0].outStride;
    float* gS = ws.gA.data();
    float* gT = ws.gB.data();
    float* gT2 = ws.gC.data();
    inputGrad(O, P + O.w, PT + O.wt, gOut, rows, gS, hs, false, net.reference);
    for (size_t l2 = depth - 1; l2 >= 2; l2 -= 2) {
      const size_t l1 = l2 - 1;
      const TLinear& L2 = m.hidden[l2];
      const TLinear& L1 = m.hidden[l1];
      const float* inner = ws.cache.data() + kTile * m.cacheHidden[l1];     // act(a)
      const float* below = ws.cache.data() + kTile * m.cacheHidden[l1 - 1];  // act(h_{2b})
      if (G) weightGrad(L2, inner, hs, gS, rows, G + L2.w, G + L2.b, net.reference);
      inputGrad(L2, P + L2.w, PT + L2.wt, gS, rows, gT, hs, false, net.reference);
      for (int i = 0; i < rows * hs; ++i) gT[i] *= activationGradFromOutput<A>(inner[i]);
      if (G) weightGrad(L1, below, hs, gT, rows, G + L1.w, G + L1.b, net.reference);
      inputGrad(L1, P + L1.w, PT + L1.wt, gT, rows, gT2, hs, false, net.reference);
      for (int i = 0; i < rows * hs; ++i) gS[i] += gT2[i] * activationGradFromOutput<A>(below[i]);
    }
    const TLinear& L0 = m.hidden[0];
    if (G) weightGrad(L0, u, ds, gS, rows, G + L0.w, G + L0.b, net.reference);
    if (gU) inputGrad(L0, P + L0.w, PT + L0.wt, gS, rows, gU, ds, true, net.reference);
    return;
  }
  float* gCur = ws.gA.data();
  float* gNext = ws.gB.data();
  inputGrad(O, P + O.w, PT + O.wt, gOut, rows, gCur, m.hidden[depth - 1].outStride, false, net.reference);
  for (size_t l = depth; l-- > 0;) {
    const TLinear& L = m.hidden[l];
    const int hs = L.outStride;
    const float* h = ws.cache.data() + kTile * m.cacheHidden[l];
    for (int r = 0; r < rows; ++r)
      for (int j = 0; j < hs; ++j) gCur[r * hs + j] *= activationGradFromOutput<A>(h[r * hs + j]);
    const float* x = l == 0 ? u : ws.cache.data() + kTile * m.cacheHidden[l - 1];
    const int xs = l == 0 ? ds : m.hidden[l - 1].outStride;
    if (G) weightGrad(L, x, xs, gCur, rows, G + L.w, G + L.b, net.reference);
    if (l > 0) {
      inputGrad(L, P + L.w, PT + L.wt, gCur, rows, gNext, m.hidden[l - 1].outStride, false, net.reference);
      std::swap(gCur, gNext);
    } else if (gU) {
      inputGrad(L, P + L.w, PT + L.wt, gCur, rows, gU, ds, true, net.reference);
    }
  }
}

// Given ws.gpoints = dL/dv (original order) and gld = dL/d(log-det) per row,
// adds the parameter gradient to G (when not null) and, when needInput, leaves
// dL/du in ws.gpoints.
template <Activation A, ScaleKind S>
void madeBackward(const Net& net, const TMade& m, Workspace& ws, int rows, float gld, float* G, bool needInput) {
  const int dim = net.dim, ds = net.dimStride;
  const float* u = ws.cache.data() + kTile * m.cacheInput;
  const float* out = ws.cache.data() + kTile * m.cacheOutput;
  const int os = m.output.outStride;
  float* gOut = ws.gOut.data();
  float* gU = ws.gU.data();
  for (int r = 0; r < rows; ++r) {
    for (int p = 0; p < dim; ++p) {
      const AffineGrad a = affineGradFromRaw<S>(out[r * os + 2 * p + 1], out[r * os + 2 * p]);
      const float gv = ws.gpoints[r * dim + m.dimAtPosition[p]];
      const float up = u[r * ds + p];
      gOut[r * os + 2 * p + 1] = gv * (up * a.dScale + a.dShiftDA) + gld * a.dLogScale;
      gOut[r * os + 2 * p] = gv * a.dShiftDM;
      gU[r * ds + p] = gv * a.scale;
    }
    for (int c = 2 * dim; c < os; ++c) gOut[r * os + c] = 0.0f;
  }
  conditionerBackward<A>(net, m, ws, rows, G, needInput ? gU : nullptr);
  if (needInput)
    for (int r = 0; r < rows; ++r)
      for (int p = 0; p < dim; ++p) ws.gpoints[r * dim + m.dimAtPosition[p]] = gU[r * ds + p];
}

// ---------------------------------------------------------------------------
// One MADE layer along its sequential direction, v -> u with v = u * scale(u) + shift(u),
// in one pass: at position p only the hidden units of degree p are new (their inputs just
// became known), so every weight is read once. Row by row; the cache ends exactly as
// madeForward would leave it for the u found, so the conditioner's backward is shared.

inline float dotPrefix(const float* w, const float* x, int n) {
  float sum = 0.0f;
  for (int k = 0; k < n; ++k) sum += w[k] * x[k];
  return sum;
}

inline void axpyPrefix(float a, const float* w, float* y, int n) {
  for (int k = 0; k < n; ++k) y[k] += a * w[k];
}

// Computes the hidden units not yet done up to `degree`, in every layer. Units of one degree
// share their prefix, so a run of them is a sum of weight rows (K-major, contiguous): no
// horizontal reductions, which the compiler would not vectorize.
// h[l]: act(...) of hidden layer l for one row; stream[l]: its residual stream (even l of a
// residual MADE), else unused.
template <Activation A>
inline void hiddenUnitsUpTo(const Net& net, const TMade& m, float* const* h, float* const* stream, const float* u,
                            int* done, int degree) {
  const float* P = net.params.data();
  for (size_t l = 0; l < m.hidden.size(); ++l) {
    const TLinear& L = m.hidden[l];
    const float* in = l == 0 ? u : h[l - 1];
    const bool onStream = m.residual && l % 2 == 0;
    const int end = m.unitsUpToDegree[l][degree];
    for (int first = done[l]; first < end;) {
      const int depth = L.prefix[first];
      int last = first + 1;
      while (last < end && L.prefix[last] == depth) ++last;
      float* y = onStream ? stream[l] : h[l];
      for (int j = first; j < last; ++j) y[j] = P[L.b + j];
      for (int k = 0; k < depth; ++k) {
        const float x = in[k];
        const float* w = P + L.w + static_cast<size_t>(k) * L.outStride;
        for (int j = first; j < last; ++j) y[j] += x * w[j];
      }
      if (onStream && l > 0)
        for (int j = first; j < last; ++j) y[j] += stream[l - 2][j];
      for (int j = first; j < last; ++j) h[l][j] = activate<A>(y[j]);
      first = last;
    }
    done[l] = end;
  }
}

// ws.points holds v (original order); leaves u there and subtracts sum log scale from ws.logDet.
template <Activation A, ScaleKind S>
void madeSequential(const Net& net, const TMade& m, Workspace& ws, int rows) {
  const int dim = net.dim, ds = net.dimStride;
  const float* P = net.params.data();
  const float* PT = net.transposed.data();
  const TLinear& O = m.output;
  const size_t depth = m.hidden.size();
  std::vector<float*> hv(depth), sv(depth, nullptr);
  std::vector<int> doneV(depth);
  float* const* h = hv.data();
  float* const* stream = sv.data();
  int* done = doneV.data();
  for (int r = 0; r < rows; ++r) {
    float* u = ws.cache.data() + kTile * m.cacheInput + static_cast<size_t>(r) * ds;
    for (size_t l = 0; l < depth; ++l) {
      const int hs = m.hidden[l].outStride;
      hv[l] = ws.cache.data() + kTile * m.cacheHidden[l] + static_cast<size_t>(r) * hs;
      std::fill(hv[l] + m.hidden[l].out, hv[l] + hs, 0.0f);
      if (m.residual && l % 2 == 0) {
        sv[l] = ws.cache.data() + kTile * m.cacheStream[l] + static_cast<size_t>(r) * hs;
        std::fill(sv[l] + m.hidden[l].out, sv[l] + hs, 0.0f);
      }
      done[l] = 0;
    }
    const float* heads = m.residual ? sv[depth - 1] : hv[depth - 1];
    std::fill(u + dim, u + ds, 0.0f);
    float* out = ws.cache.data() + kTile * m.cacheOutput + static_cast<size_t>(r) * O.outStride;
    std::fill(out + 2 * dim, out + O.outStride, 0.0f);
    float* v = ws.points.data() + static_cast<size_t>(r) * dim;
    float logDet = 0.0f;
    for (int p = 0; p < dim; ++p) {
      hiddenUnitsUpTo<A>(net, m, h, stream, u, done, p);  // degree <= p: they read positions < p only
      for (int c = 2 * p; c < 2 * p + 2; ++c)
        out[c] = P[O.b + c] + dotPrefix(PT + O.wt + static_cast<size_t>(c) * O.inStride, heads, O.prefix[c]);
      const AffineGrad a = affineGradFromRaw<S>(out[2 * p + 1], out[2 * p]);
      u[p] = (v[m.dimAtPosition[p]] - a.shift) / a.scale;
      logDet += a.logScale;
    }
    hiddenUnitsUpTo<A>(net, m, h, stream, u, done, dim);  // units of degree dim feed no output; kept for a full cache
    for (int p = 0; p < dim; ++p) v[m.dimAtPosition[p]] = u[p];
    ws.logDet[r] -= logDet;
  }
}

// The adjoint of madeSequential, also in one pass (positions descending). With
// F(u) = v and g = dL/du (ws.gpoints on entry), w = dL/dv solves F'(u)^T w = g + d(gld *
// logdet)/du: w_p = (g_p - c_p) / scale_p, where c_p is the conditioner's backward to u_p of
// the head adjoints of positions q > p, which are known by then. The units of degree p + 1
// are finished just before position p needs them. The parameter gradient is minus the
// conditioner's backward of the same head adjoints (implicit function theorem), taken
// batched afterwards. gld multiplies this step's log-det, -sum log scale.
template <Activation A, ScaleKind S>
void madeSequentialBackward(const Net& net, const TMade& m, Workspace& ws, int rows, float gld, float* G) {
  const int dim = net.dim, ds = net.dimStride;
  const float* PT = net.transposed.data();
  const TLinear& O = m.output;
  const int os = O.outStride;
  const size_t depth = m.hidden.size();
  float* gOut = ws.gOut.data();
  // Per row and hidden layer: gh = dL/d act(...) (from the next layer's reads) and, on a residual
  // stream, gs = dL/dh (from the heads and the skip into the next stream layer).
  std::vector<const float*> h(depth);
  std::vector<float*> gh(depth), gs(depth, nullptr);
  for (int r = 0; r < rows; ++r) {
    const float* u = ws.cache.data() + kTile * m.cacheInput + static_cast<size_t>(r) * ds;
    const float* out = ws.cache.data() + kTile * m.cacheOutput + static_cast<size_t>(r) * os;
    float* gu = ws.rowGrad.data() + m.cacheInput;
    std::fill(gu, gu + ds, 0.0f);
    for (size_t l = 0; l < depth; ++l) {
      const int hs = m.hidden[l].outStride;
      h[l] = ws.cache.data() + kTile * m.cacheHidden[l] + static_cast<size_t>(r) * hs;
      gh[l] = ws.rowGrad.data() + m.cacheHidden[l];
      std::fill(gh[l], gh[l] + hs, 0.0f);
      if (m.residual && l % 2 == 0) {
        gs[l] = ws.rowGrad.data() + m.cacheStream[l];
        std::fill(gs[l], gs[l] + hs, 0.0f);
      }
    }
    float* headGrad = m.residual ? gs[depth - 1] : gh[depth - 1];
    float* g = ws.gpoints.data() + static_cast<size_t>(r) * dim;
    float* gRow = gOut + static_cast<size_t>(r) * os;
    std::fill(gRow + 2 * dim, gRow + os, 0.0f);
    for (int p = dim - 1; p >= 0; --p) {
      // Finish the units of degree p + 1 (every reader of them is done), last layer first.
      for (size_t l = depth; l-- > 0;) {
        const TLinear& L = m.hidden[l];
        float* dst = l == 0 ? gu : gh[l - 1];
        for (int j = m.unitsUpToDegree[l][p]; j < m.unitsUpToDegree[l][p + 1]; ++j) {
          float delta = gh[l][j] * activationGradFromOutput<A>(h[l][j]);
          if (gs[l]) {
            delta += gs[l][j];                   // the stream itself has no activation
            if (l >= 2) gs[l - 2][j] += delta;  // the skip: h_l = ... + h_{l-2}
          }
          if (delta != 0.0f) axpyPrefix(delta, PT + L.wt + static_cast<size_t>(j) * L.inStride, dst, L.prefix[j]);
        }
      }
      const AffineGrad a = affineGradFromRaw<S>(out[2 * p + 1], out[2 * p]);
      const int i = m.dimAtPosition[p];
      const float w = (g[i] - gu[p]) / a.scale;
      const float adjScale = w * (u[p] * a.dScale + a.dShiftDA) + gld * a.dLogScale;
      const float adjShift = w * a.dShiftDM;
      gRow[2 * p + 1] = -adjScale;
      gRow[2 * p] = -adjShift;
      axpyPrefix(adjShift, PT + O.wt + static_cast<size_t>(2 * p) * O.inStride, headGrad, O.prefix[2 * p]);
      axpyPrefix(adjScale, PT + O.wt + static_cast<size_t>(2 * p + 1) * O.inStride, headGrad, O.prefix[2 * p + 1]);
      g[i] = w;  // position p's entry of g is not read again
    }
  }
  conditionerBackward<A>(net, m, ws, rows, G, nullptr);
}

// One MADE step along a pass: its parallel direction, or its sequential one.
template <Activation A, ScaleKind S>
void madeStep(const Net& net, const TMade& m, Workspace& ws, int rows, bool sequential) {
  if (sequential) madeSequential<A, S>(net, m, ws, rows);
  else madeForward<A, S>(net, m, ws, rows);
}

// Its backward; the sequential direction always computes the input gradient (the sweep needs it).
template <Activation A, ScaleKind S>
void madeStepBackward(const Net& net, const TMade& m, Workspace& ws, int rows, bool sequential, float gld, float* G,
                      bool needInput) {
  if (sequential) madeSequentialBackward<A, S>(net, m, ws, rows, gld, G);
  else madeBackward<A, S>(net, m, ws, rows, gld, G, needInput);
}

// Calls op.template run<A, S>() for the layer's activation and scale.
template <typename Op>
void withKinds(const TMade& m, const Op& op) {
  switch (m.activation) {
    case Activation::ReLU:
      switch (m.scale) {
        case ScaleKind::Softplus: return op.template run<Activation::ReLU, ScaleKind::Softplus>();
        case ScaleKind::Exp: return op.template run<Activation::ReLU, ScaleKind::Exp>();
        default: return op.template run<Activation::ReLU, ScaleKind::Gated>();
      }
    case Activation::Tanh:
      switch (m.scale) {
        case ScaleKind::Softplus: return op.template run<Activation::Tanh, ScaleKind::Softplus>();
        case ScaleKind::Exp: return op.template run<Activation::Tanh, ScaleKind::Exp>();
        default: return op.template run<Activation::Tanh, ScaleKind::Gated>();
      }
    default:
      switch (m.scale) {
        case ScaleKind::Softplus: return op.template run<Activation::ELU, ScaleKind::Softplus>();
        case ScaleKind::Exp: return op.template run<Activation::ELU, ScaleKind::Exp>();
        default: return op.template run<Activation::ELU, ScaleKind::Gated>();
      }
  }
}

struct StepOp {
  const Net& net;
  const TMade& m;
  Workspace& ws;
  int rows;
  bool sequential;
  template <Activation A, ScaleKind S>
  void run() const { madeStep<A, S>(net, m, ws, rows, sequential); }
};

struct StepBackwardOp {
  const Net& net;
  const TMade& m;
  Workspace& ws;
  int rows;
  bool sequential;
  float gld;
  float* G;
  bool needInput;
  template <Activation A, ScaleKind S>
  void run() const { madeStepBackward<A, S>(net, m, ws, rows, sequential, gld, G, needInput); }
};

// Layer k's index in pass order.
size_t layerAt(const Net& net, Direction pass, size_t step) {
  return pass == Direction::ToData ? step : net.layers.size() - 1 - step;
}

// Whether a MADE layer runs its sequential direction along the pass.
bool sequentialAlong(const TLayer& layer, Direction pass) {
  return (pass == Direction::ToData) != (layer.kind == LayerKind::IAF);
}

// ws.points (rows x dim) through every layer along the pass; ws.logDet gets the
// sum of the layers' log-dets (of d output / d input).
void netForward(const Net& net, Workspace& ws, int rows, Direction pass) {
  const int dim = net.dim;
  std::fill_n(ws.logDet.data(), rows, 0.0f);
  for (size_t step = 0; step < net.layers.size(); ++step) {
    const TLayer& layer = net.layers[layerAt(net, pass, step)];
    if (layer.kind != LayerKind::Permutation) {
      withKinds(layer.made, StepOp{net, layer.made, ws, rows, sequentialAlong(layer, pass)});
      continue;
    }
    std::copy_n(ws.points.data(), static_cast<size_t>(rows) * dim, ws.tmp.data());
    const std::vector<int>& perm = layer.permutation;
    for (int r = 0; r < rows; ++r)
      for (int i = 0; i < dim; ++i) {
        if (pass == Direction::ToData) ws.points[r * dim + i] = ws.tmp[r * dim + perm[i]];
        else ws.points[r * dim + perm[i]] = ws.tmp[r * dim + i];
      }
  }
}

// ws.gpoints = dL/d(output) in; every step's log-det (along the pass) has gradient gld. Adds the
// parameter gradient to G (if not null); with wantInput, ws.gpoints ends as dL/d(input).
void netBackward(const Net& net, Workspace& ws, int rows, float gld, float* G, bool wantInput, Direction pass) {
  const int dim = net.dim;
  size_t firstMade = net.layers.size();
  for (size_t step = 0; step < net.layers.size(); ++step)
    if (net.layers[layerAt(net, pass, step)].kind != LayerKind::Permutation) {
      firstMade = step;
      break;
    }
  for (size_t step = net.layers.size(); step-- > 0;) {
    const TLayer& layer = net.layers[layerAt(net, pass, step)];
    if (layer.kind != LayerKind::Permutation) {
      withKinds(layer.made, StepBackwardOp{net, layer.made, ws, rows, sequentialAlong(layer, pass), gld, G,
                                           wantInput || step != firstMade});
      continue;
    }
    if (!wantInput && step < firstMade) continue;
    std::copy_n(ws.gpoints.data(), static_cast<size_t>(rows) * dim, ws.tmp.data());
    const std::vector<int>& perm = layer.permutation;
    for (int r = 0; r < rows; ++r)
      for (int i = 0; i < dim; ++i) {
        if (pass == Direction::ToData) ws.gpoints[r * dim + perm[i]] = ws.tmp[r * dim + i];
        else ws.gpoints[r * dim + i] = ws.tmp[r * dim + perm[i]];
      }
  }
}

}  // namespace IAF_TRAIN_ISA
}  // namespace
}  // namespace iaflow
