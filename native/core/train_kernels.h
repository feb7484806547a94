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
    linearForward<true, A>(L, P + L.w, P + L.b, x, xs, rows, h, net.reference);
    x = h;
    xs = L.outStride;
  }
  const TLinear& O = m.output;
  float* out = ws.cache.data() + kTile * m.cacheOutput;
  linearForward<false, A>(O, P + O.w, P + O.b, x, xs, rows, out, net.reference);
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

// Given ws.gpoints = dL/dv (original order) and gld = dL/d(log-det) per row,
// adds the parameter gradient to G (when not null) and, when needInput, leaves
// dL/du in ws.gpoints.
template <Activation A, ScaleKind S>
void madeBackward(const Net& net, const TMade& m, Workspace& ws, int rows, float gld, float* G, bool needInput) {
  const int dim = net.dim, ds = net.dimStride;
  const float* P = net.params.data();
  const float* PT = net.transposed.data();
  const float* u = ws.cache.data() + kTile * m.cacheInput;
  const float* out = ws.cache.data() + kTile * m.cacheOutput;
  const TLinear& O = m.output;
  const int os = O.outStride;
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
  const size_t depth = m.hidden.size();
  const float* hLast = ws.cache.data() + kTile * m.cacheHidden[depth - 1];
  if (G) weightGrad(O, hLast, m.hidden[depth - 1].outStride, gOut, rows, G + O.w, G + O.b, net.reference);
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
    } else if (needInput) {
      inputGrad(L, P + L.w, PT + L.wt, gCur, rows, gU, ds, true, net.reference);
    }
  }
  if (needInput)
    for (int r = 0; r < rows; ++r)
      for (int p = 0; p < dim; ++p) ws.gpoints[r * dim + m.dimAtPosition[p]] = gU[r * ds + p];
}

template <Activation A>
void madeForwardScale(const Net& net, const TMade& m, Workspace& ws, int rows) {
  switch (m.scale) {
    case ScaleKind::Softplus: return madeForward<A, ScaleKind::Softplus>(net, m, ws, rows);
    case ScaleKind::Exp: return madeForward<A, ScaleKind::Exp>(net, m, ws, rows);
    default: return madeForward<A, ScaleKind::Gated>(net, m, ws, rows);
  }
}

void madeForwardAny(const Net& net, const TMade& m, Workspace& ws, int rows) {
  switch (m.activation) {
    case Activation::ReLU: return madeForwardScale<Activation::ReLU>(net, m, ws, rows);
    case Activation::Tanh: return madeForwardScale<Activation::Tanh>(net, m, ws, rows);
    default: return madeForwardScale<Activation::ELU>(net, m, ws, rows);
  }
}

template <Activation A>
void madeBackwardScale(const Net& net, const TMade& m, Workspace& ws, int rows, float gld, float* G, bool needInput) {
  switch (m.scale) {
    case ScaleKind::Softplus: return madeBackward<A, ScaleKind::Softplus>(net, m, ws, rows, gld, G, needInput);
    case ScaleKind::Exp: return madeBackward<A, ScaleKind::Exp>(net, m, ws, rows, gld, G, needInput);
    default: return madeBackward<A, ScaleKind::Gated>(net, m, ws, rows, gld, G, needInput);
  }
}

void madeBackwardAny(const Net& net, const TMade& m, Workspace& ws, int rows, float gld, float* G, bool needInput) {
  switch (m.activation) {
    case Activation::ReLU: return madeBackwardScale<Activation::ReLU>(net, m, ws, rows, gld, G, needInput);
    case Activation::Tanh: return madeBackwardScale<Activation::Tanh>(net, m, ws, rows, gld, G, needInput);
    default: return madeBackwardScale<Activation::ELU>(net, m, ws, rows, gld, G, needInput);
  }
}

// Layer k's index in pass order.
size_t layerAt(const Net& net, size_t step) {
  return net.pass == Direction::ToData ? step : net.layers.size() - 1 - step;
}

// ws.points (rows x dim) through every layer along the pass; ws.logDet gets the
// sum of the layers' log-dets (of d output / d input).
void netForward(const Net& net, Workspace& ws, int rows) {
  const int dim = net.dim;
  std::fill_n(ws.logDet.data(), rows, 0.0f);
  for (size_t step = 0; step < net.layers.size(); ++step) {
    const TLayer& layer = net.layers[layerAt(net, step)];
    if (layer.kind != LayerKind::Permutation) {
      madeForwardAny(net, layer.made, ws, rows);
      continue;
    }
    std::copy_n(ws.points.data(), static_cast<size_t>(rows) * dim, ws.tmp.data());
    const std::vector<int>& perm = layer.permutation;
    for (int r = 0; r < rows; ++r)
      for (int i = 0; i < dim; ++i) {
        if (net.pass == Direction::ToData) ws.points[r * dim + i] = ws.tmp[r * dim + perm[i]];
        else ws.points[r * dim + perm[i]] = ws.tmp[r * dim + i];
      }
  }
}

// ws.gpoints = dL/d(output) in; every layer's log-det has gradient gld. Adds the
// parameter gradient to G (if not null); with wantInput, ws.gpoints ends as dL/d(input).
void netBackward(const Net& net, Workspace& ws, int rows, float gld, float* G, bool wantInput) {
  const int dim = net.dim;
  size_t firstMade = net.layers.size();
  for (size_t step = 0; step < net.layers.size(); ++step)
    if (net.layers[layerAt(net, step)].kind != LayerKind::Permutation) {
      firstMade = step;
      break;
    }
  for (size_t step = net.layers.size(); step-- > 0;) {
    const TLayer& layer = net.layers[layerAt(net, step)];
    if (layer.kind != LayerKind::Permutation) {
      madeBackwardAny(net, layer.made, ws, rows, gld, G, wantInput || step != firstMade);
      continue;
    }
    if (!wantInput && step < firstMade) continue;
    std::copy_n(ws.gpoints.data(), static_cast<size_t>(rows) * dim, ws.tmp.data());
    const std::vector<int>& perm = layer.permutation;
    for (int r = 0; r < rows; ++r)
      for (int i = 0; i < dim; ++i) {
        if (net.pass == Direction::ToData) ws.gpoints[r * dim + perm[i]] = ws.tmp[r * dim + i];
        else ws.gpoints[r * dim + i] = ws.tmp[r * dim + perm[i]];
      }
  }
}

}  // namespace IAF_TRAIN_ISA
}  // namespace
}  // namespace iaflow
