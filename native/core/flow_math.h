// Per-element math of iaflow, shared by the CPU core and the CUDA kernels.
// Everything here is the contract of DESIGN.md: activations, the three scale
// parameterizations, the standard-normal log-density and the Philox stream.
#pragma once

#include <cmath>
#include <cstdint>

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
  if (fabsf(u) <= 3.402823466e38f) {  // false for +-infinity and NaN
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

template <ScaleKind S>
IAF_HD AffineGrad affineGradFromRaw(float rawScale, float rawShift) {
  AffineGrad r;
  if (S == ScaleKind::Softplus) {
    // scale = softplus(a) + floor; d scale / d a = sigmoid(a).
    const float sig = sigmoid(rawScale);
    r.scale = softplus(rawScale) + kSoftplusFloor;
    r.logScale = logf(r.scale);
    r.shift = rawShift;
    r.dScale = sig;
    r.dLogScale = sig / r.scale;
    r.dShiftDA = 0.0f;
    r.dShiftDM = 1.0f;
  } else if (S == ScaleKind::Exp) {
    // a' = a / q, q = 1 + |a| / c: d a' / d a = 1 / q^2 (the soft clip flattens, never cuts).
    const float q = 1.0f + fabsf(rawScale) / kExpSoftClip;
    const float clipped = rawScale / q;
    const float dClipped = 1.0f / (q * q);
    r.scale = expf(clipped);
    r.logScale = clipped;
    r.shift = rawShift;
    r.dScale = r.scale * dClipped;
    r.dLogScale = dClipped;
    r.dShiftDA = 0.0f;
    r.dShiftDM = 1.0f;
  } else {
    // sigma = sigmoid(a + 2), log sigma = -softplus(-(a + 2)), shift = (1 - sigma) m.
    const float gate = rawScale + kGateBias;
    const float sig = sigmoid(gate);
    const float dSig = sig * (1.0f - sig);
    r.scale = sig;
    r.logScale = -softplus(-gate);
    r.shift = (1.0f - sig) * rawShift;
    r.dScale = dSig;
    r.dLogScale = 1.0f - sig;
    r.dShiftDA = -rawShift * dSig;
    r.dShiftDM = 1.0f - sig;
  }
  return r;
}

// ---- Philox 4x32-10 (Salmon et al. 2011), the library's one random stream ----
// A draw is addressed by (seed, row, dimension): results never depend on the
// thread count, the batch split or the device.
struct Philox4 {
  uint32_t v[4];
};

IAF_HD uint32_t mulhi32(uint32_t a, uint32_t b) {
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
}

IAF_HD Philox4 philox4x32_10(Philox4 counter, uint32_t key0, uint32_t key1) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  uint32_t c0 = counter.v[0], c1 = counter.v[1], c2 = counter.v[2], c3 = counter.v[3];
  for (int round = 0; round < 10; ++round) {
    const uint32_t hi0 = mulhi32(kMul0, c0), lo0 = kMul0 * c0;
    const uint32_t hi1 = mulhi32(kMul1, c2), lo1 = kMul1 * c2;
    c0 = hi1 ^ c1 ^ key0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ key1;
    c3 = lo0;
    key0 += kWeyl0;
    key1 += kWeyl1;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// Four standard normals for dimensions 4*block .. 4*block+3 of `row`, by Box-Muller
// in double precision (so CPU and GPU round to the same float32 values).
IAF_HD void standardNormals4(uint64_t seed, uint64_t row, uint32_t block, float out[4]) {
  const Philox4 bits = philox4x32_10(
      Philox4{{block, static_cast<uint32_t>(row), static_cast<uint32_t>(row >> 32), 0x1AF10Bu}},
      static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  const double kTwoPow32Inv = 2.3283064365386963e-10;  // 2^-32
  const double kTwoPi = 6.283185307179586;
  for (int pair = 0; pair < 2; ++pair) {
    // (k + 0.5) / 2^32 lies strictly inside (0, 1), so log never sees 0.
    const double u1 = (static_cast<double>(bits.v[2 * pair]) + 0.5) * kTwoPow32Inv;
    const double u2 = (static_cast<double>(bits.v[2 * pair + 1]) + 0.5) * kTwoPow32Inv;
    const double radius = sqrt(-2.0 * log(u1));
    out[2 * pair] = static_cast<float>(radius * cos(kTwoPi * u2));
    out[2 * pair + 1] = static_cast<float>(radius * sin(kTwoPi * u2));
  }
}

}  // namespace iaflow
