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

IAF_HD float standardNormalLogDensity(float z) { return -0.5f * z * z - kHalfLog2Pi; }

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
