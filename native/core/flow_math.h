// Per-element math of iaflow, shared by the CPU core and the CUDA kernels.
// Everything here is the contract of docs/DESIGN.md: activations, the three scale
// parameterizations, the standard-normal log-density and the Philox stream.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define IAF_HD __host__ __device__ __forceinline__
#else
#define IAF_HD inline
#endif

namespace iaflow {

enum class Activation : int { ReLU = 0, Tanh = 1, ELU = 2 };
enum class ScaleKind : int { Softplus = 0, Exp = 1, Gated = 2 };

// scale = softplus(a) + kSoftplusFloor keeps the scale away from zero (nflows, FlowJAX).
constexpr float kSoftplusFloor = 1e-3f;
// exp parameterization: a' = a / (1 + |a| / ln(1e3)) keeps exp(a') inside (1e-3, 1e3) (zuko).
constexpr float kExpSoftClip = 6.907755278982137f;
// gated parameterization: sigma = sigmoid(a + kGateBias) (Kingma et al. 2016, Pyro's stable variant).
constexpr float kGateBias = 2.0f;
constexpr float kHalfLog2Pi = 0.91893853320467274178f;
// The largest finite float32: a solution beyond it is taken as +-infinity (solveAffine).
constexpr float kFloatMax = 3.402823466e38f;

IAF_HD float softplus(float x) {
  // Stable for large |x|: log(1 + e^x) = max(x, 0) + log1p(e^-|x|).
  return fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x)));
}

template <Activation A>
IAF_HD float activate(float x) {
  if (A == Activation::ReLU) return x > 0.0f ? x : 0.0f;
  if (A == Activation::Tanh) return tanhf(x);
  return x > 0.0f ? x : expm1f(x);  // ELU with alpha = 1
}

IAF_HD float activate(Activation a, float x) {
  switch (a) {
    case Activation::ReLU: return activate<Activation::ReLU>(x);
    case Activation::Tanh: return activate<Activation::Tanh>(x);
    default: return activate<Activation::ELU>(x);
  }
}

// The MADE conditioner's soft clamp of its inputs (docs/DESIGN.md, MADE option softClamp c):
// the conditioner reads u / sqrt(1 + (u / c)^2), which is u near 0 and never beyond c, so a
// value far outside the data (a tail sample of an earlier layer) cannot make the conditioner
// extrapolate its shift and scale; they stay near those at |u| = c. invC = 1 / c; 0 turns it
// off. Only exactly rounded operations, so every instruction set gets the same bits.
IAF_HD float softClamp(float u, float invC) {
  if (invC == 0.0f) return u;
  const float q = u * invC;
  return u / sqrtf(1.0f + q * q);
}

// d softClamp / du = (1 + (u / c)^2)^(-3/2).
IAF_HD float softClampGrad(float u, float invC) {
  if (invC == 0.0f) return 1.0f;
  const float q = u * invC;
  const float t = 1.0f + q * q;
  return 1.0f / (t * sqrtf(t));
}

// What the conditioner's two raw outputs mean for one dimension.
struct Affine {
  float scale;
  float logScale;
  float shift;
};

template <ScaleKind S>
IAF_HD Affine affineFromRaw(float rawScale, float rawShift) {
  Affine r;
  if (S == ScaleKind::Softplus) {
    r.scale = softplus(rawScale) + kSoftplusFloor;
    r.logScale = logf(r.scale);
    r.shift = rawShift;
  } else if (S == ScaleKind::Exp) {
    const float clipped = rawScale / (1.0f + fabsf(rawScale) / kExpSoftClip);
    r.scale = expf(clipped);
    r.logScale = clipped;
    r.shift = rawShift;
  } else {
    const float gate = rawScale + kGateBias;
    r.scale = 1.0f / (1.0f + expf(-gate));
    r.logScale = -softplus(-gate);  // log sigmoid, stable for both signs
    r.shift = (1.0f - r.scale) * rawShift;
  }
  return r;
}

IAF_HD Affine affineFromRaw(ScaleKind s, float rawScale, float rawShift) {
  switch (s) {
    case ScaleKind::Softplus: return affineFromRaw<ScaleKind::Softplus>(rawScale, rawShift);
    case ScaleKind::Exp: return affineFromRaw<ScaleKind::Exp>(rawScale, rawShift);
    default: return affineFromRaw<ScaleKind::Gated>(rawScale, rawShift);
  }
}

// The sequential direction's solve of v = u * scale + shift for u, one dimension, with its
// log-scale taken off logDet. A solution beyond float32 (a scale that underflows to 0, as the gated
// sigmoid does for a raw scale below about -88, or a quotient past 3.4e38) is +-infinity, and its
// log-scale is left out: the row's later dimensions read that infinity and get NaN from their
// conditioner, which is taken as infinity too (+infinity, the sign being unknown). The latent
// point then lies at infinity, so its log-density is base(z) + logDet = -infinity, not NaN.
IAF_HD float solveAffine(float v, const Affine& a, float& logDet) {
  const float u = (v - a.shift) / a.scale;
  if (fabsf(u) <= kFloatMax) {  // false for +-infinity and NaN
    logDet -= a.logScale;
    return u;
  }
  return u < 0.0f ? -HUGE_VALF : HUGE_VALF;
}

IAF_HD float standardNormalLogDensity(float z) { return -0.5f * z * z - kHalfLog2Pi; }

// ---- Derivatives, for training (shared by the CPU core and the CUDA kernels) ----

IAF_HD float sigmoid(float x) {
  // Stable for both signs: exp never overflows.
  if (x >= 0.0f) return 1.0f / (1.0f + expf(-x));
  const float e = expf(x);
  return e / (1.0f + e);
}

// d act(x) / dx written in terms of the activation's output y = act(x), so the
// backward pass needs only the stored outputs. ReLU at 0 takes derivative 0.
template <Activation A>
IAF_HD float activationGradFromOutput(float y) {
  if (A == Activation::ReLU) return y > 0.0f ? 1.0f : 0.0f;
  if (A == Activation::Tanh) return 1.0f - y * y;
  return y > 0.0f ? 1.0f : y + 1.0f;  // ELU: d/dx expm1(x) = expm1(x) + 1
}

// The affine values of one dimension and their partial derivatives with respect
// to the conditioner's two raw outputs (rawScale a, rawShift m).
struct AffineGrad {
  float scale;
  float logScale;
  float shift;
  float dScale;     // d scale / d a
  float dLogScale;  // d logScale / d a
  float dShiftDA;   // d shift / d a (nonzero for gated only)
  float dShiftDM;   // d shift / d m
};

// The transcendental part of one dimension's affine values: scale, log scale and, for the softplus
// and gated forms, the sigmoid their derivatives need (training's vector kernels compute these on
// whole vectors and finish with affineGradFromCore).
struct AffineCore {
  float scale;
  float logScale;
  float sigmoid;  // softplus: sigmoid(a); gated: sigmoid(a + 2), the scale itself; exp: unused
};

template <ScaleKind S>
IAF_HD AffineCore affineCoreFromRaw(float rawScale) {
  AffineCore c;
  if (S == ScaleKind::Softplus) {
    c.sigmoid = sigmoid(rawScale);
    c.scale = softplus(rawScale) + kSoftplusFloor;
    c.logScale = logf(c.scale);
  } else if (S == ScaleKind::Exp) {
    c.logScale = rawScale / (1.0f + fabsf(rawScale) / kExpSoftClip);
    c.scale = expf(c.logScale);
    c.sigmoid = 0.0f;
  } else {
    const float gate = rawScale + kGateBias;
    c.sigmoid = sigmoid(gate);
    c.scale = c.sigmoid;
    c.logScale = -softplus(-gate);  // log sigmoid, stable for both signs
  }
  return c;
}

// The affine values and their derivatives from the core and the raw outputs.
template <ScaleKind S>
IAF_HD AffineGrad affineGradFromCore(const AffineCore& c, float rawScale, float rawShift) {
  AffineGrad r;
  r.scale = c.scale;
  r.logScale = c.logScale;
  if (S == ScaleKind::Softplus) {
    // scale = softplus(a) + floor; d scale / d a = sigmoid(a).
    r.shift = rawShift;
    r.dScale = c.sigmoid;
    r.dLogScale = c.sigmoid / c.scale;
    r.dShiftDA = 0.0f;
    r.dShiftDM = 1.0f;
  } else if (S == ScaleKind::Exp) {
    // a' = a / q, q = 1 + |a| / c: d a' / d a = 1 / q^2 (the soft clip flattens, never cuts).
    const float q = 1.0f + fabsf(rawScale) / kExpSoftClip;
    const float dClipped = 1.0f / (q * q);
    r.shift = rawShift;
    r.dScale = c.scale * dClipped;
    r.dLogScale = dClipped;
    r.dShiftDA = 0.0f;
    r.dShiftDM = 1.0f;
  } else {
    // sigma = sigmoid(a + 2), log sigma = -softplus(-(a + 2)), shift = (1 - sigma) m.
    const float sig = c.sigmoid;
    const float dSig = sig * (1.0f - sig);
    r.shift = (1.0f - sig) * rawShift;
    r.dScale = dSig;
    r.dLogScale = 1.0f - sig;
    r.dShiftDA = -rawShift * dSig;
    r.dShiftDM = 1.0f - sig;
  }
  return r;
}

template <ScaleKind S>
IAF_HD AffineGrad affineGradFromRaw(float rawScale, float rawShift) {
  return affineGradFromCore<S>(affineCoreFromRaw<S>(rawScale), rawScale, rawShift);
}

// ---- Philox 4x32-10 (Salmon et al. 2011), the library's one random stream ----
// A draw is addressed by (seed, row, dimension): results never depend on the
// thread count, the batch split, the instruction set or the device.
// Dimensions 4b .. 4b+3 of a row come from one Philox block: counter (b, row low
// word, row high word, kPhiloxStreamTag), key (seed low word, seed high word);
// words (0, 1) and (2, 3) each give two normals by Box-Muller (normals.h),
// radius from the first word, angle from the second: z = r cos, then r sin.
#include "normals.h"

// The scalar lane type of normals.h.
struct ScalarLanes {
  using D = double;
  using U = uint64_t;
  static IAF_HD U asBits(D d) {
    U u;
    memcpy(&u, &d, sizeof u);
    return u;
  }
  static IAF_HD D asDouble(U u) {
    D d;
    memcpy(&d, &u, sizeof d);
    return d;
  }
  static IAF_HD D sqrt(D d) { return std::sqrt(d); }
  static IAF_HD U mulWide(U a, uint64_t k) { return a * k; }
};

// Four standard normals for dimensions 4*block .. 4*block+3 of `row` (the vector
// kernels compute the same values for many blocks at once).
IAF_HD void standardNormals4(uint64_t seed, uint64_t row, uint32_t block, float out[4]) {
  uint64_t c0 = block, c1 = static_cast<uint32_t>(row), c2 = static_cast<uint32_t>(row >> 32), c3 = kPhiloxStreamTag;
  philoxLanes<ScalarLanes>(c0, c1, c2, c3, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  double z[4];
  boxMuller<ScalarLanes>(c0, c1, z[0], z[1]);
  boxMuller<ScalarLanes>(c2, c3, z[2], z[3]);
  for (int i = 0; i < 4; ++i) out[i] = static_cast<float>(z[i]);
}

}  // namespace iaflow
