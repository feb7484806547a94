// The training kernels: the three staircase products of a masked linear layer,
// one MADE layer's forward and backward along its parallel direction, and the
// whole flow's. Compiled once per instruction set, as kernels_impl.h is: each
// kernels_<isa>.cc includes train_layout.h (and <immintrin.h> on x86) first, sets
// IAF_TRAIN_VEC (floats per vector: 16 AVX-512, 8 AVX2, 4 portable; with GNU vectors the
// inference kernels' IAF_VEC, whose vector type and multiply-add it uses), selects its
// target, then includes this file inside namespace iaflow::training { namespace { } }
// and lists netForward / netBackward in its TrainKernelTable. Everything here has
// internal linkage; what it calls from elsewhere (train_layout.h, flow_math.h, the
// standard library) was declared before the target was selected, so it is built for
// the baseline instruction set and is safe to share between the builds.
// (No include guard, on purpose.)

// ---------------------------------------------------------------------------
// Vectors of kVec floats: GNU vector extensions (GCC, Clang), plain arrays elsewhere (MSVC).

constexpr int kVec = IAF_TRAIN_VEC;
static_assert(kBlock % kVec == 0, "a column block must be a whole number of vectors");
constexpr int kBlockVectors = kBlock / kVec;  // vectors per column block
// Rows per register tile: twelve independent accumulators (one 16-float vector per block on
// AVX-512, two 8-float ones on AVX2), half again the eight that two FMA pipes of four cycles' latency
// need, so loads and broadcasts never leave a pipe waiting; on AVX2 that uses 15 of 16 registers.
constexpr int kRowBlock = kBlockVectors == 1 ? 12 : 6;

#if defined(__GNUC__) || defined(__clang__)
// The inference kernels' vector and operations (kernels_impl.h, included before this file in the
// same build): one vector type, one broadcast and one multiply-add per instruction set.
static_assert(IAF_TRAIN_VEC == IAF_VEC, "training and inference share the vector width");
typedef vf Vec;
inline Vec vload(const float* p) { return load(p); }  // unaligned: vf is aligned(4)
inline void vstore(float* p, Vec v) { store(p, v); }
inline Vec vsplat(float s) { return splat(s); }
inline Vec vadd(Vec a, Vec b) { return a + b; }
inline Vec madd(Vec acc, Vec x, Vec w) { return IAF_FMADD(x, w, acc); }
#else
struct Vec {
  float v[kVec];
};
inline Vec vload(const float* p) {
  Vec r;
  for (int i = 0; i < kVec; ++i) r.v[i] = p[i];
  return r;
}
inline void vstore(float* p, Vec a) {
  for (int i = 0; i < kVec; ++i) p[i] = a.v[i];
}
inline Vec vsplat(float s) {
  Vec r;
  for (int i = 0; i < kVec; ++i) r.v[i] = s;
  return r;
}
inline Vec vadd(Vec a, Vec b) {
  for (int i = 0; i < kVec; ++i) a.v[i] += b.v[i];
  return a;
}
inline Vec madd(Vec acc, Vec x, Vec w) {
  for (int i = 0; i < kVec; ++i) acc.v[i] += x.v[i] * w.v[i];
  return acc;
}
#endif

// act(x) over a span of floats. Tanh and ELU run on whole vectors through the inference kernels'
// activate (kernels_impl.h, included before this file in the same build), so training computes the
// hidden units with the same operations as sampling and scoring do, at vector speed (libm's tanhf
// one element at a time cost tanh training steps 3-4x relu's). The last partial vector is padded.
// Without GNU vector extensions (MSVC) flow_math.h's scalar activate runs.
template <Activation A>
inline void activateSpan(const float* in, float* out, int n) {
  int i = 0;
#if defined(__GNUC__) || defined(__clang__)
  constexpr int kAct = A == Activation::ReLU ? iaflow::kActReLU : A == Activation::Tanh ? iaflow::kActTanh : iaflow::kActELU;
  for (; i + kVec <= n; i += kVec) vstore(out + i, ::activate<kAct>(vload(in + i)));
  if (i < n) {
    float pad[kVec] = {};
    for (int k = 0; i + k < n; ++k) pad[k] = in[i + k];
    vstore(pad, ::activate<kAct>(vload(pad)));
    for (int k = 0; i + k < n; ++k) out[i + k] = pad[k];
  }
#else
  for (; i < n; ++i) out[i] = activate<A>(in[i]);
#endif
}

// The affine cores (flow_math.h's AffineCore) of n values whose raw scales lie `stride` floats
// apart (one position's rows: stride outStride, n <= kTile), field by field in
// ws.core*: on whole vectors through the inference kernels' exp and log (kernels_impl.h's scaleOf,
// the functions sampling and scoring use; libm one value at a time was a fifth of a small flow's
// training step), or flow_math.h's scalar ones on the reference path (the simple one the others
// are checked against) and where GNU vectors are missing. NaN stays NaN.
#if defined(__GNUC__) || defined(__clang__)
template <ScaleKind S>
inline void affineCoreVectors(const float* raw, int stride, int n, Workspace& ws) {
  static_assert(static_cast<int>(ScaleKind::Softplus) == 0 && static_cast<int>(ScaleKind::Exp) == 1 &&
                    static_cast<int>(ScaleKind::Gated) == 2, "scaleOf's scale codes");
  constexpr int w = sizeof(vf) / sizeof(float);
  float* a = ws.coreRaw.data();
  for (int i = 0; i < n; ++i) a[i] = raw[static_cast<size_t>(i) * stride];
  const int padded = (n + w - 1) / w * w;
  for (int i = n; i < padded; ++i) a[i] = 0.0f;
  for (int i = 0; i < padded; i += w) {
    const vf x = load(a + i);
    const vi number = x == x;
    vf scale, logScale;
    scaleOf<static_cast<int>(S)>(x, scale, logScale);
    store(ws.coreScale.data() + i, select(number, scale, x));
    store(ws.coreLogScale.data() + i, select(number, logScale, x));
    if (S == ScaleKind::Softplus) store(ws.coreSigmoid.data() + i, select(number, 1.0f / (1.0f + vexp(-x)), x));
    if (S == ScaleKind::Gated) store(ws.coreSigmoid.data() + i, select(number, scale, x));
  }
}
#endif

template <ScaleKind S>
inline void affineCores(const float* raw, int stride, int n, Workspace& ws, bool reference) {
#if defined(__GNUC__) || defined(__clang__)
  if (!reference) return affineCoreVectors<S>(raw, stride, n, ws);
#endif
  for (int i = 0; i < n; ++i) {
    const AffineCore c = affineCoreFromRaw<S>(raw[static_cast<size_t>(i) * stride]);
    ws.coreScale[i] = c.scale;
    ws.coreLogScale[i] = c.logScale;
    ws.coreSigmoid[i] = c.sigmoid;
  }
}

inline AffineCore coreAt(const Workspace& ws, int i) { return {ws.coreScale[i], ws.coreLogScale[i], ws.coreSigmoid[i]}; }

// ---------------------------------------------------------------------------
// Products. Fast path: register tiles of rows x one column block (kBlockVectors vectors)
// along the staircase. Each output element sums its terms in index order whatever the
// tile, so the row blocking never changes a result.

template <int R, bool kAct, Activation A>
inline void forwardRows(const TLinear& L, const float* W, const float* B, const float* X, int xs, float* Y) {
  const int os = L.outStride();
  for (int jb = 0, blk = 0; jb < L.out(); jb += kBlock, ++blk) {
    const int depth = L.blockDepth[blk];
    Vec acc[R][kBlockVectors];
    for (int v = 0; v < kBlockVectors; ++v) {
      const Vec bias = vload(B + jb + v * kVec);
      for (int r = 0; r < R; ++r) acc[r][v] = bias;
    }
    const float* w = W + jb;
    for (int k = 0; k < depth; ++k) {
      const float* wk = w + static_cast<size_t>(k) * os;
      Vec wv[kBlockVectors];
      for (int v = 0; v < kBlockVectors; ++v) wv[v] = vload(wk + v * kVec);
      for (int r = 0; r < R; ++r) {
        const Vec x = vsplat(X[r * xs + k]);
        for (int v = 0; v < kBlockVectors; ++v) acc[r][v] = madd(acc[r][v], x, wv[v]);
      }
    }
    for (int r = 0; r < R; ++r) {
      float* y = Y + r * os + jb;
      for (int v = 0; v < kBlockVectors; ++v) vstore(y + v * kVec, acc[r][v]);
      if (kAct) activateSpan<A>(y, y, kBlock);
    }
  }
}

template <int R>
inline void inputGradRows(const TLinear& L, const float* WT, const float* GY, float* GX, int gxs, bool accumulate) {
  const int os = L.outStride(), is = L.inStride;
  for (int kb = 0, blk = 0; kb < L.in(); kb += kBlock, ++blk) {
    Vec acc[R][kBlockVectors];
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < kBlockVectors; ++v) acc[r][v] = accumulate ? vload(GX + r * gxs + kb + v * kVec) : vsplat(0.0f);
    for (int j = L.firstReader[blk]; j < L.out(); ++j) {
      const float* wj = WT + static_cast<size_t>(j) * is + kb;
      Vec wv[kBlockVectors];
      for (int v = 0; v < kBlockVectors; ++v) wv[v] = vload(wj + v * kVec);
      for (int r = 0; r < R; ++r) {
        const Vec g = vsplat(GY[r * os + j]);
        for (int v = 0; v < kBlockVectors; ++v) acc[r][v] = madd(acc[r][v], g, wv[v]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < kBlockVectors; ++v) vstore(GX + r * gxs + kb + v * kVec, acc[r][v]);
  }
}

// GW[t][c] += sum_r X[r][t] GY[r][c] for K rows t of a column block.
template <int K>
inline void weightGradRows(const float* X, int xs, const float* GY, int os, int rows, float* GW) {
  Vec acc[K][kBlockVectors];
  for (int t = 0; t < K; ++t)
    for (int v = 0; v < kBlockVectors; ++v) acc[t][v] = vsplat(0.0f);
  for (int r = 0; r < rows; ++r) {
    Vec g[kBlockVectors];
    for (int v = 0; v < kBlockVectors; ++v) g[v] = vload(GY + r * os + v * kVec);
    const float* x = X + r * xs;
    for (int t = 0; t < K; ++t) {
      const Vec xv = vsplat(x[t]);
      for (int v = 0; v < kBlockVectors; ++v) acc[t][v] = madd(acc[t][v], xv, g[v]);
    }
  }
  for (int t = 0; t < K; ++t) {
    float* gw = GW + static_cast<size_t>(t) * os;
    for (int v = 0; v < kBlockVectors; ++v) vstore(gw + v * kVec, vadd(vload(gw + v * kVec), acc[t][v]));
  }
}

template <bool kAct, Activation A>
void linearForward(const TLinear& L, const float* W, const float* B, const float* X, int xs, int rows, float* Y,
                   bool reference) {
  const int os = L.outStride();
  if (reference) {
    // The simple dense path: every weight, zeros included, row by row.
    for (int r = 0; r < rows; ++r) {
      float* y = Y + r * os;
      for (int j = 0; j < os; ++j) y[j] = B[j];
      for (int k = 0; k < L.in(); ++k) {
        const float x = X[r * xs + k];
        const float* wk = W + static_cast<size_t>(k) * os;
        for (int j = 0; j < L.out(); ++j) y[j] += x * wk[j];
      }
      if (kAct)
        for (int j = 0; j < os; ++j) y[j] = activate<A>(y[j]);
    }
    return;
  }
  int r = 0;
  for (; r + kRowBlock <= rows; r += kRowBlock) forwardRows<kRowBlock, kAct, A>(L, W, B, X + r * xs, xs, Y + r * os);
  for (; r + 2 <= rows; r += 2) forwardRows<2, kAct, A>(L, W, B, X + r * xs, xs, Y + r * os);
  for (; r < rows; ++r) forwardRows<1, kAct, A>(L, W, B, X + r * xs, xs, Y + r * os);
}

// GX (= or +=) GY W^T. GX rows have stride gxs >= inStride; its padding columns get zeros.
void inputGrad(const TLinear& L, const float* W, const float* WT, const float* GY, int rows, float* GX, int gxs,
               bool accumulate, bool reference) {
  const int os = L.outStride();
  if (reference) {
    for (int r = 0; r < rows; ++r) {
      for (int k = 0; k < L.in(); ++k) {
        const float* wk = W + static_cast<size_t>(k) * os;
        float sum = 0.0f;
        for (int j = 0; j < L.out(); ++j) sum += wk[j] * GY[r * os + j];
        if (accumulate) GX[r * gxs + k] += sum;
        else GX[r * gxs + k] = sum;
      }
      if (!accumulate)
        for (int k = L.in(); k < L.inStride; ++k) GX[r * gxs + k] = 0.0f;
    }
    return;
  }
  int r = 0;
  for (; r + kRowBlock <= rows; r += kRowBlock) inputGradRows<kRowBlock>(L, WT, GY + r * os, GX + r * gxs, gxs, accumulate);
  for (; r + 2 <= rows; r += 2) inputGradRows<2>(L, WT, GY + r * os, GX + r * gxs, gxs, accumulate);
  for (; r < rows; ++r) inputGradRows<1>(L, WT, GY + r * os, GX + r * gxs, gxs, accumulate);
}

// GW += X^T GY over the staircase, GB += column sums of GY.
void weightGrad(const TLinear& L, const float* X, int xs, const float* GY, int rows, float* GW, float* GB,
                bool reference) {
  const int os = L.outStride();
  if (reference) {
    for (int r = 0; r < rows; ++r) {
      for (int k = 0; k < L.in(); ++k) {
        const float x = X[r * xs + k];
        float* gw = GW + static_cast<size_t>(k) * os;
        for (int j = 0; j < L.out(); ++j) gw[j] += x * GY[r * os + j];
      }
    }
  } else {
    for (int jb = 0, blk = 0; jb < L.out(); jb += kBlock, ++blk) {
      const int depth = L.blockDepth[blk];
      int k = 0;
      for (; k + kRowBlock <= depth; k += kRowBlock)
        weightGradRows<kRowBlock>(X + k, xs, GY + jb, os, rows, GW + static_cast<size_t>(k) * os + jb);
      for (; k + 2 <= depth; k += 2) weightGradRows<2>(X + k, xs, GY + jb, os, rows, GW + static_cast<size_t>(k) * os + jb);
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
  return ws.cache.data() + kTile * (m.plan->residual ? m.cacheStream[last] : m.cacheHidden[last]);
}

// A conditional MADE's context term t = g(Wc c + bc) for the tile's rows (ws.context), into the
// cache (stride hidden 0's outStride); null for an unconditional MADE.
template <Activation A>
const float* made_context_term(const Net& net, const TMade& m, Workspace& ws, int rows) {
  if (m.plan->contextForm == ContextForm::None) return nullptr;
  const float* P = net.params.data();
  const TLinear& Cx = m.context;
  float* t = ws.cache.data() + kTile * m.cacheContext;
  if (m.plan->contextForm == ContextForm::Activated)
    linearForward<true, A>(Cx, P + Cx.w, P + Cx.b, ws.context.data(), net.contextStride, rows, t, net.reference);
  else
    linearForward<false, A>(Cx, P + Cx.w, P + Cx.b, ws.context.data(), net.contextStride, rows, t, net.reference);
  return t;
}

// The context term's parameter gradient from delta = dL/d(hidden 0's pre-activation) (rows x
// hidden 0's outStride): through g' (the 'activated' form) into ws.gC, then the weight product.
template <Activation A>
void contextBackward(const Net& net, const TMade& m, Workspace& ws, int rows, const float* delta, float* G) {
  if (m.plan->contextForm == ContextForm::None || !G) return;
  const TLinear& Cx = m.context;
  const int hs = Cx.outStride();
  const float* gy = delta;
  if (m.plan->contextForm == ContextForm::Activated) {
    const float* t = ws.cache.data() + kTile * m.cacheContext;
    float* g = ws.gC.data();
    for (int i = 0; i < rows * hs; ++i) g[i] = delta[i] * activationGradFromOutput<A>(t[i]);
    gy = g;
  }
  weightGrad(Cx, ws.context.data(), net.contextStride, gy, rows, G + Cx.w, G + Cx.b, net.reference);
}

template <Activation A, ScaleKind S>
void madeForward(const Net& net, const TMade& m, Workspace& ws, int rows) {
  const int dim = net.dim, ds = net.dimStride;
  const float* P = net.params.data();
  float* u = ws.cache.data() + kTile * m.cacheInput;
  for (int r = 0; r < rows; ++r)
    for (int p = 0; p < dim; ++p) u[r * ds + p] = ws.points[r * dim + m.plan->dimAtPosition[p]];
  float* c = ws.cache.data() + kTile * m.cacheCond;
  if (m.plan->softClampInv != 0.0f)
    for (int r = 0; r < rows; ++r)
      for (int p = 0; p < dim; ++p) c[r * ds + p] = softClamp(u[r * ds + p], m.plan->softClampInv);
  const float* x = c;
  int xs = ds;
  const float* contextTerm = made_context_term<A>(net, m, ws, rows);
  for (size_t l = 0; l < m.hidden.size(); ++l) {
    const TLinear& L = m.hidden[l];
    float* h = ws.cache.data() + kTile * m.cacheHidden[l];
    if (m.plan->residual && l % 2 == 0) {
      // The stream: h_l = W_l x + b_l (+ h_{l-2}, or the context term at l = 0); this layer's output is act(h_l).
      float* stream = ws.cache.data() + kTile * m.cacheStream[l];
      linearForward<false, A>(L, P + L.w, P + L.b, x, xs, rows, stream, net.reference);
      const int hs = L.outStride();
      const float* before = l > 0 ? ws.cache.data() + kTile * m.cacheStream[l - 2] : contextTerm;
      if (before)
        for (int i = 0; i < rows * hs; ++i) stream[i] += before[i];
      activateSpan<A>(stream, h, rows * hs);
    } else if (l == 0 && contextTerm) {
      linearForward<false, A>(L, P + L.w, P + L.b, x, xs, rows, h, net.reference);
      for (int i = 0; i < rows * L.outStride(); ++i) h[i] += contextTerm[i];
      activateSpan<A>(h, h, rows * L.outStride());
    } else {
      linearForward<true, A>(L, P + L.w, P + L.b, x, xs, rows, h, net.reference);
    }
    x = h;
    xs = L.outStride();
  }
  const TLinear& O = m.output;
  float* out = ws.cache.data() + kTile * m.cacheOutput;
  linearForward<false, A>(O, P + O.w, P + O.b, headInput(m, ws), xs, rows, out, net.reference);
  const int os = O.outStride();
  // Position by position, the tile's rows together (whole vectors of rows for the cores, however
  // small dim is); each row's log-scales are still summed in position order.
  float logDet[kTile] = {};
  for (int p = 0; p < dim; ++p) {
    affineCores<S>(out + 2 * p + 1, os, rows, ws, net.reference);
    const int i = m.plan->dimAtPosition[p];
    for (int r = 0; r < rows; ++r) {
      const AffineGrad a = affineGradFromCore<S>(coreAt(ws, r), out[r * os + 2 * p + 1], out[r * os + 2 * p]);
      ws.points[r * dim + i] = u[r * ds + p] * a.scale + a.shift;
      logDet[r] += a.logScale;
    }
  }
  for (int r = 0; r < rows; ++r) ws.logDet[r] += logDet[r];
}

// Backward through the conditioner MLP from gOut = dL/d(raw outputs) (ws.gOut, rows x
// outStride): adds the parameter gradient to G (when not null) and, when gU is not null, adds
// dL/du (positions, stride dimStride) to gU.
template <Activation A>
void conditionerBackward(const Net& net, const TMade& m, Workspace& ws, int rows, float* G, float* gU) {
  const int ds = net.dimStride;
  const float* P = net.params.data();
  const float* PT = net.transposed.data();
  const float* u = ws.cache.data() + kTile * m.cacheCond;  // what hidden layer 0 read
  const float* uIn = ws.cache.data() + kTile * m.cacheInput;
  const TLinear& O = m.output;
  const float* gOut = ws.gOut.data();
  // dL/du through the conditioner: into gU directly, or through the soft clamp's derivative.
  const bool clamp = m.plan->softClampInv != 0.0f;
  auto inputGradToU = [&](const TLinear& L0, const float* gHidden) {
    if (!clamp) return inputGrad(L0, P + L0.w, PT + L0.wt, gHidden, rows, gU, ds, true, net.reference);
    float* gc = ws.gCond.data();
    inputGrad(L0, P + L0.w, PT + L0.wt, gHidden, rows, gc, ds, false, net.reference);
    for (int r = 0; r < rows; ++r)
      for (int p = 0; p < net.dim; ++p) gU[r * ds + p] += gc[r * ds + p] * softClampGrad(uIn[r * ds + p], m.plan->softClampInv);
  };
  const size_t depth = m.hidden.size();
  const float* hLast = headInput(m, ws);
  if (G) weightGrad(O, hLast, m.hidden[depth - 1].outStride(), gOut, rows, G + O.w, G + O.b, net.reference);
  if (!G && !gU) return;
  if (m.plan->residual) {
    // gS = dL/dh along the stream; per block (layers 2b+1, 2b+2), from the last one down:
    // h_{2b+2} = W act(a) + b + h_{2b}, a = W' act(h_{2b}) + b'.
    const int hs = m.hidden[0].outStride();
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
    contextBackward<A>(net, m, ws, rows, gS, G);
    if (gU) inputGradToU(L0, gS);
    return;
  }
  float* gCur = ws.gA.data();
  float* gNext = ws.gB.data();
  inputGrad(O, P + O.w, PT + O.wt, gOut, rows, gCur, m.hidden[depth - 1].outStride(), false, net.reference);
  for (size_t l = depth; l-- > 0;) {
    const TLinear& L = m.hidden[l];
    const int hs = L.outStride();
    const float* h = ws.cache.data() + kTile * m.cacheHidden[l];
    for (int r = 0; r < rows; ++r)
      for (int j = 0; j < hs; ++j) gCur[r * hs + j] *= activationGradFromOutput<A>(h[r * hs + j]);
    const float* x = l == 0 ? u : ws.cache.data() + kTile * m.cacheHidden[l - 1];
    const int xs = l == 0 ? ds : m.hidden[l - 1].outStride();
    if (G) weightGrad(L, x, xs, gCur, rows, G + L.w, G + L.b, net.reference);
    if (l == 0) contextBackward<A>(net, m, ws, rows, gCur, G);
    if (l > 0) {
      inputGrad(L, P + L.w, PT + L.wt, gCur, rows, gNext, m.hidden[l - 1].outStride(), false, net.reference);
      std::swap(gCur, gNext);
    } else if (gU) {
      inputGradToU(L, gCur);
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
  const int os = m.output.outStride();
  float* gOut = ws.gOut.data();
  float* gU = ws.gU.data();
  for (int p = 0; p < dim; ++p) {
    affineCores<S>(out + 2 * p + 1, os, rows, ws, net.reference);
    const int i = m.plan->dimAtPosition[p];
    for (int r = 0; r < rows; ++r) {
      const AffineGrad a = affineGradFromCore<S>(coreAt(ws, r), out[r * os + 2 * p + 1], out[r * os + 2 * p]);
      const float gv = ws.gpoints[r * dim + i];
      const float up = u[r * ds + p];
      gOut[r * os + 2 * p + 1] = gv * (up * a.dScale + a.dShiftDA) + gld * a.dLogScale;
      gOut[r * os + 2 * p] = gv * a.dShiftDM;
      gU[r * ds + p] = gv * a.scale;
    }
  }
  for (int r = 0; r < rows; ++r)
    for (int c = 2 * dim; c < os; ++c) gOut[r * os + c] = 0.0f;
  conditionerBackward<A>(net, m, ws, rows, G, needInput ? gU : nullptr);
  if (needInput)
    for (int r = 0; r < rows; ++r)
      for (int p = 0; p < dim; ++p) ws.gpoints[r * dim + m.plan->dimAtPosition[p]] = gU[r * ds + p];
}

// ---------------------------------------------------------------------------
// One MADE layer along its sequential direction, v -> u with v = u * scale(u) + shift(u),
// in one pass: at position p only the hidden units of degree p are new (their inputs just
// became known), so every weight is read once. The whole tile of rows goes through each
// degree together, a register block of rows per weight load. The cache ends exactly as
// madeForward would leave it for the u found, so the conditioner's backward is shared.

// Y[r][a, b) = B[a, b) + sum_{k < depth} X[r][k] W[k][a, b) for R rows: aligned chunks of one
// vector's columns (inside outStride, a whole number of vectors), computed whole and stored
// only inside [a, b).
template <int R>
inline void groupRows(const float* W, int os, const float* B, const float* X, int xs, int a, int b, int depth,
                      float* Y, int ys) {
  for (int c = a - a % kVec; c < b; c += kVec) {
    Vec acc[R];
    const Vec bias = vload(B + c);
    for (int r = 0; r < R; ++r) acc[r] = bias;
    for (int k = 0; k < depth; ++k) {
      const Vec w = vload(W + static_cast<size_t>(k) * os + c);
      for (int r = 0; r < R; ++r) acc[r] = madd(acc[r], vsplat(X[r * xs + k]), w);
    }
    const int lo = std::max(a, c) - c, hi = std::min(b, c + kVec) - c;
    float tmp[kVec];
    for (int r = 0; r < R; ++r) {
      vstore(tmp, acc[r]);
      for (int t = lo; t < hi; ++t) Y[r * ys + c + t] = tmp[t];
    }
  }
}

inline void groupForward(const TLinear& L, const float* P, const float* X, int xs, int rows, int a, int b, float* Y,
                         int ys) {
  const int depth = L.prefix()[a];
  int r = 0;
  for (; r + 8 <= rows; r += 8) groupRows<8>(P + L.w, L.outStride(), P + L.b, X + r * xs, xs, a, b, depth, Y + r * ys, ys);
  for (; r + 4 <= rows; r += 4) groupRows<4>(P + L.w, L.outStride(), P + L.b, X + r * xs, xs, a, b, depth, Y + r * ys, ys);
  for (; r < rows; ++r) groupRows<1>(P + L.w, L.outStride(), P + L.b, X + r * xs, xs, a, b, depth, Y + r * ys, ys);
}

// dst[r][0, depth) += sum_{j in [a, b)} D[r][j - a] WT[j][0, depth) for R rows: each transposed
// weight row is loaded once per R rows. Whole vectors run into WT's zero padding (inStride, like
// dst's row stride, is a whole number of column blocks), which adds nothing.
template <int R>
inline void pushRows(const float* WT, int is, int a, int b, int depth, const float* D, int dstride, float* dst,
                     int ystride) {
  for (int j = a; j < b; ++j) {
    Vec d[R];
    bool any = false;
    for (int r = 0; r < R; ++r) {
      const float v = D[r * dstride + (j - a)];
      any = any || v != 0.0f;
      d[r] = vsplat(v);
    }
    if (!any) continue;
    const float* w = WT + static_cast<size_t>(j) * is;
    for (int k = 0; k < depth; k += kVec) {
      const Vec wk = vload(w + k);
      for (int r = 0; r < R; ++r) vstore(dst + r * ystride + k, madd(vload(dst + r * ystride + k), d[r], wk));
    }
  }
}

inline void pushGroup(const TLinear& L, const float* PT, int a, int b, const float* D, int dstride, float* dst,
                      int ystride, int rows) {
  const int depth = L.prefix()[a];
  if (depth == 0) return;
  int r = 0;
  for (; r + 4 <= rows; r += 4)
    pushRows<4>(PT + L.wt, L.inStride, a, b, depth, D + r * dstride, dstride, dst + r * ystride, ystride);
  for (; r < rows; ++r) pushRows<1>(PT + L.wt, L.inStride, a, b, depth, D + r * dstride, dstride, dst + r * ystride, ystride);
}

// Calls f(a, b) for each run of units in [first, end) that share their prefix (one degree each).
template <typename F>
inline void forRuns(const TLinear& L, int first, int end, const F& f) {
  while (first < end) {
    int last = first + 1;
    while (last < end && L.prefix()[last] == L.prefix()[first]) ++last;
    f(first, last);
    first = last;
  }
}

// Where one MADE's sequential step keeps its tile: rows of the cache (and of ws.rowGrad, laid
// out alike, for the gradients).
struct SeqTile {
  float* u;
  float* c;  // what the conditioner reads: u, or its soft clamp
  std::vector<float*> h, stream;  // stream: residual MADE, even layers; else null
  float* out;
  int ds, os;
  SeqTile(const TMade& m, float* base, int dimStride) : ds(dimStride), os(m.output.outStride()) {
    u = base + kTile * m.cacheInput;
    c = base + kTile * m.cacheCond;
    out = base + kTile * m.cacheOutput;
    for (size_t l = 0; l < m.hidden.size(); ++l) {
      h.push_back(base + kTile * m.cacheHidden[l]);
      stream.push_back(m.plan->residual && l % 2 == 0 ? base + kTile * m.cacheStream[l] : nullptr);
    }
  }
  int hs(const TMade& m, size_t l) const { return m.hidden[l].outStride(); }
  float* heads(const TMade& m) const { return m.plan->residual ? stream.back() : h.back(); }
};

// Computes, for every row, the hidden units not yet done up to `degree`, in every layer.
template <Activation A>
inline void hiddenUnitsUpTo(const Net& net, const TMade& m, const SeqTile& t, int rows, int* done, int degree,
                            const float* contextTerm) {
  const float* P = net.params.data();
  for (size_t l = 0; l < m.hidden.size(); ++l) {
    const TLinear& L = m.hidden[l];
    const int hs = L.outStride();
    const float* in = l == 0 ? t.c : t.h[l - 1];
    const int xs = l == 0 ? t.ds : m.hidden[l - 1].outStride();
    float* y = t.stream[l] ? t.stream[l] : t.h[l];
    forRuns(L, done[l], m.plan->unitsUpToDegree[l][degree], [&](int a, int b) {
      groupForward(L, P, in, xs, rows, a, b, y, hs);
      for (int r = 0; r < rows; ++r) {
        for (int j = a; j < b; ++j) {
          if (t.stream[l] && l > 0) y[r * hs + j] += t.stream[l - 2][r * hs + j];
          if (l == 0 && contextTerm) y[r * hs + j] += contextTerm[r * hs + j];
        }
        activateSpan<A>(y + r * hs + a, t.h[l] + r * hs + a, b - a);
      }
    });
    done[l] = m.plan->unitsUpToDegree[l][degree];
  }
}

// ws.points holds v (original order); leaves u there and subtracts sum log scale from ws.logDet.
template <Activation A, ScaleKind S>
void madeSequential(const Net& net, const TMade& m, Workspace& ws, int rows) {
  const int dim = net.dim, ds = net.dimStride;
  const float* P = net.params.data();
  const TLinear& O = m.output;
  const int os = O.outStride();
  const size_t depth = m.hidden.size();
  const SeqTile t(m, ws.cache.data(), ds);
  std::vector<int> done(depth, 0);
  for (int r = 0; r < rows; ++r) {
    std::fill(t.u + r * ds + dim, t.u + (r + 1) * ds, 0.0f);
    std::fill(t.c + r * ds + dim, t.c + (r + 1) * ds, 0.0f);
    std::fill(t.out + r * os + 2 * dim, t.out + (r + 1) * os, 0.0f);
    for (size_t l = 0; l < depth; ++l) {
      const int hs = t.hs(m, l), n = m.hidden[l].out();
      std::fill(t.h[l] + r * hs + n, t.h[l] + (r + 1) * hs, 0.0f);
      if (t.stream[l]) std::fill(t.stream[l] + r * hs + n, t.stream[l] + (r + 1) * hs, 0.0f);
    }
  }
  const float* heads = t.heads(m);
  const int headStride = m.hidden[depth - 1].outStride();
  const float* contextTerm = made_context_term<A>(net, m, ws, rows);  // once per row, before the degrees
  for (int p = 0; p < dim; ++p) {
    hiddenUnitsUpTo<A>(net, m, t, rows, done.data(), p, contextTerm);  // degree <= p: they read positions < p only
    groupForward(O, P, heads, headStride, rows, 2 * p, 2 * p + 2, t.out, os);
    const int i = m.plan->dimAtPosition[p];
    affineCores<S>(t.out + 2 * p + 1, os, rows, ws, net.reference);
    for (int r = 0; r < rows; ++r) {
      const AffineGrad a = affineGradFromCore<S>(coreAt(ws, r), t.out[r * os + 2 * p + 1], t.out[r * os + 2 * p]);
      t.u[r * ds + p] = (ws.points[r * dim + i] - a.shift) / a.scale;
      if (m.plan->softClampInv != 0.0f) t.c[r * ds + p] = softClamp(t.u[r * ds + p], m.plan->softClampInv);
      ws.logDet[r] -= a.logScale;
    }
  }
  hiddenUnitsUpTo<A>(net, m, t, rows, done.data(), dim, contextTerm);  // units of degree dim feed no output; kept for a full cache
  for (int r = 0; r < rows; ++r)
    for (int p = 0; p < dim; ++p) ws.points[r * dim + m.plan->dimAtPosition[p]] = t.u[r * ds + p];
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
  const int os = O.outStride();
  const size_t depth = m.hidden.size();
  const SeqTile t(m, ws.cache.data(), ds);
  // Gradients in the same layout: gu = dL/du so far, gh = dL/d act(...) (from the next layer's
  // reads), gs = dL/dh on a residual stream (from the heads and the skip into the next stream layer).
  const SeqTile gt(m, ws.rowGrad.data(), ds);
  float* gOut = ws.gOut.data();
  for (int r = 0; r < rows; ++r) {
    std::fill(gt.u + r * ds, gt.u + (r + 1) * ds, 0.0f);
    std::fill(gOut + r * os + 2 * dim, gOut + (r + 1) * os, 0.0f);
    for (size_t l = 0; l < depth; ++l) {
      const int hs = t.hs(m, l);
      std::fill(gt.h[l] + r * hs, gt.h[l] + (r + 1) * hs, 0.0f);
      if (gt.stream[l]) std::fill(gt.stream[l] + r * hs, gt.stream[l] + (r + 1) * hs, 0.0f);
    }
  }
  float* headGrad = gt.heads(m);
  const int headStride = m.hidden[depth - 1].outStride();
  float adj[2 * kTile];  // this position's head adjoints, [row][shift, scale]
  for (int p = dim - 1; p >= 0; --p) {
    // Finish the units of degree p + 1 (every reader of them is done), last layer first; each
    // unit's gradient becomes its delta (wrt its pre-activation) in place, then goes down.
    for (size_t l = depth; l-- > 0;) {
      const TLinear& L = m.hidden[l];
      const int hs = L.outStride();
      forRuns(L, m.plan->unitsUpToDegree[l][p], m.plan->unitsUpToDegree[l][p + 1], [&](int a, int b) {
        for (int r = 0; r < rows; ++r)
          for (int j = a; j < b; ++j) {
            float delta = gt.h[l][r * hs + j] * activationGradFromOutput<A>(t.h[l][r * hs + j]);
            if (gt.stream[l]) {
              delta += gt.stream[l][r * hs + j];                          // the stream itself has no activation
              if (l >= 2) gt.stream[l - 2][r * hs + j] += delta;  // the skip: h_l = ... + h_{l-2}
            }
            gt.h[l][r * hs + j] = delta;
          }
        if (l == 0) pushGroup(L, PT, a, b, gt.h[0] + a, hs, gt.u, ds, rows);
        else pushGroup(L, PT, a, b, gt.h[l] + a, hs, gt.h[l - 1], m.hidden[l - 1].outStride(), rows);
      });
    }
    const int i = m.plan->dimAtPosition[p];
    affineCores<S>(t.out + 2 * p + 1, os, rows, ws, net.reference);
    for (int r = 0; r < rows; ++r) {
      const AffineGrad a = affineGradFromCore<S>(coreAt(ws, r), t.out[r * os + 2 * p + 1], t.out[r * os + 2 * p]);
      float* g = ws.gpoints.data() + static_cast<size_t>(r) * dim;
      // gt.u holds dL/d(what the conditioner read) at position p; through the soft clamp to u.
      const float condGrad = gt.u[r * ds + p] * softClampGrad(t.u[r * ds + p], m.plan->softClampInv);
      const float w = (g[i] - condGrad) / a.scale;
      adj[2 * r] = w * a.dShiftDM;
      adj[2 * r + 1] = w * (t.u[r * ds + p] * a.dScale + a.dShiftDA) + gld * a.dLogScale;
      gOut[r * os + 2 * p] = -adj[2 * r];
      gOut[r * os + 2 * p + 1] = -adj[2 * r + 1];
      g[i] = w;  // position p's entry of g is not read again
    }
    pushGroup(O, PT, 2 * p, 2 * p + 2, adj, 2, headGrad, headStride, rows);
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
  switch (m.plan->activation) {
    case Activation::ReLU:
      switch (m.plan->scale) {
        case ScaleKind::Softplus: return op.template run<Activation::ReLU, ScaleKind::Softplus>();
        case ScaleKind::Exp: return op.template run<Activation::ReLU, ScaleKind::Exp>();
        default: return op.template run<Activation::ReLU, ScaleKind::Gated>();
      }
    case Activation::Tanh:
      switch (m.plan->scale) {
        case ScaleKind::Softplus: return op.template run<Activation::Tanh, ScaleKind::Softplus>();
        case ScaleKind::Exp: return op.template run<Activation::Tanh, ScaleKind::Exp>();
        default: return op.template run<Activation::Tanh, ScaleKind::Gated>();
      }
    default:
      switch (m.plan->scale) {
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

// An affine layer along the pass: b = loc + s * a toward the data (s = sign * exp(logScale)),
// a = (b - loc) / s toward the latent. Its input goes to the cache for the backward pass.
void affineForward(const Net& net, const TAffine& a, Workspace& ws, int rows, Direction pass) {
  const int dim = net.dim, ds = net.dimStride;
  const float* P = net.params.data();
  const float* loc = a.locOf(P);
  const float* logScale = a.logScaleOf(P);
  float* in = ws.cache.data() + kTile * a.cacheInput;
  float logDet = 0.0f;
  for (int i = 0; i < dim; ++i) logDet += logScale[i];
  const bool toData = pass == Direction::ToData;
  for (int r = 0; r < rows; ++r) {
    float* v = ws.points.data() + static_cast<size_t>(r) * dim;
    for (int i = 0; i < dim; ++i) {
      in[r * ds + i] = v[i];
      const float s = a.sign[i] * std::exp(logScale[i]);
      v[i] = toData ? loc[i] + s * v[i] : (v[i] - loc[i]) / s;
    }
    ws.logDet[r] += toData ? logDet : -logDet;
  }
}

// Its backward: ws.gpoints = dL/d(output) in, dL/d(input) out; adds dL/dloc and dL/dlogScale to
// G for a trainable layer (each row's log-det, +-sum logScale, has gradient gld).
void affineBackward(const Net& net, const TAffine& a, Workspace& ws, int rows, float gld, float* G, Direction pass) {
  const int dim = net.dim, ds = net.dimStride;
  const float* P = net.params.data();
  const float* loc = a.locOf(P);
  const float* logScale = a.logScaleOf(P);
  const float* in = ws.cache.data() + kTile * a.cacheInput;
  const bool toData = pass == Direction::ToData;
  const bool grad = G && a.trainable;
  for (int i = 0; i < dim; ++i) {
    const float s = a.sign[i] * std::exp(logScale[i]);
    float gLoc = 0.0f, gLogScale = 0.0f;
    for (int r = 0; r < rows; ++r) {
      const float g = ws.gpoints[static_cast<size_t>(r) * dim + i];
      const float x = in[r * ds + i];
      if (toData) {
        // b = loc + s a: db/dloc = 1, db/dlogScale = s a, log-det + logScale
        gLoc += g;
        gLogScale += g * s * x + gld;
        ws.gpoints[static_cast<size_t>(r) * dim + i] = g * s;
      } else {
        // a = (b - loc) / s: da/dloc = -1/s, da/dlogScale = -a, log-det - logScale
        const float out = (x - loc[i]) / s;
        gLoc -= g / s;
        gLogScale -= g * out + gld;
        ws.gpoints[static_cast<size_t>(r) * dim + i] = g / s;
      }
    }
    if (grad) {
      G[a.loc + i] += gLoc;
      G[a.logScale + i] += gLogScale;
    }
  }
}

// ws.points (rows x dim) through every layer along the pass; ws.logDet gets the
// sum of the layers' log-dets (of d output / d input).
void netForward(const Net& net, Workspace& ws, int rows, Direction pass) {
  const int dim = net.dim;
  std::fill_n(ws.logDet.data(), rows, 0.0f);
  for (size_t step = 0; step < net.layers.size(); ++step) {
    const TLayer& layer = net.layers[layerAt(net, pass, step)];
    if (layer.kind == LayerKind::Affine) {
      affineForward(net, layer.affine, ws, rows, pass);
      continue;
    }
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
  // The first layer with parameters to train along the pass: below it only wantInput needs the
  // input gradient.
  size_t firstMade = net.layers.size();
  for (size_t step = 0; step < net.layers.size(); ++step) {
    const TLayer& layer = net.layers[layerAt(net, pass, step)];
    if (layer.kind == LayerKind::IAF || layer.kind == LayerKind::MAF || (layer.kind == LayerKind::Affine && layer.affine.trainable)) {
      firstMade = step;
      break;
    }
  }
  for (size_t step = net.layers.size(); step-- > 0;) {
    const TLayer& layer = net.layers[layerAt(net, pass, step)];
    if (layer.kind == LayerKind::Affine) {
      if (wantInput || step >= firstMade) affineBackward(net, layer.affine, ws, rows, gld, G, pass);
      continue;
    }
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
