// Box-Muller on the Philox stream, written once for any lane type: one double,
// or a vector of doubles. The scalar code (flow_math.h's standardNormals4) and
// every instruction set's vector code (kernels_impl.h's normals kernel) are
// instances of these templates, so they perform the same IEEE-754 operations
// (+, -, *, /, sqrt, each correctly rounded) in the same order, and the samples
// are bit-identical across instruction sets, thread counts and batch splits.
// libm is not used: its log/sin/cos differ between libraries and versions and
// have no vector form that rounds like the scalar one.
//
// The functions: fdlibm's log (FreeBSD/musl e_log.c: reduction to
// [sqrt(2)/2, sqrt(2)), a degree-14 odd series in s = f / (2 + f)) and its sin
// and cos kernels on [-pi/4, pi/4] (k_sin.c, k_cos.c), after an exact reduction
// of the angle 2 pi t by quarter turns (t is a dyadic fraction, so t - q/4 is
// exact). Each is within about 1 ulp of double; the float results are the
// correctly rounded floats of values accurate to ~2^-50, so they are rounded
// floats of the exact Box-Muller transform but for rare ties.
//
// Requirements on the compiler: no contraction of a * b + c into an FMA (that
// rounds once instead of twice, and only where the target has FMA). GCC gets
// fp-contract=off for this section below; Clang gets the pragma in each body;
// MSVC does not contract under its default /fp:precise. A CUDA port must use
// __dmul_rn / __dadd_rn (nvcc contracts by default) to keep the same stream.
//
// This file has no include guard and no includes: flow_math.h includes it in
// namespace iaflow (uint64_t from <cstdint>), and kernels_impl.h includes it
// inside each instruction set's anonymous namespace, under that set's target.
//
// A lane type L provides:
//   L::D, L::U                     double lanes and uint64 lanes of the same count;
//   L::asBits(D) -> U, L::asDouble(U) -> D    reinterpretation;
//   L::sqrt(D) -> D                correctly rounded square root;
//   L::mulWide(U a, uint64_t k)    a * k for a, k < 2^32 (the full 64-bit product).
// Masks are built with integer arithmetic (0 - bit), which reads the same for
// scalars and vectors, so there are no comparisons.

#ifndef IAF_HD
#define IAF_HD inline
#endif

#if defined(__clang__)
#define IAF_NORMALS_NO_CONTRACT _Pragma("clang fp contract(off)")
#else
#define IAF_NORMALS_NO_CONTRACT
#endif
// GCC contracts after inlining under the caller's flags, so boxMuller (which
// inlines the rest) is never inlined into a caller that may contract.
#if defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#define IAF_NORMALS_NOINLINE __attribute__((noinline))
#else
#define IAF_NORMALS_NOINLINE
#endif

// (nvcc's device code gets --fmad=false from the CUDA build instead.)
#if defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#endif

// Constants of the stream (docs/DESIGN.md): the Philox counter's fourth word and the rounds' multipliers.
constexpr uint32_t kPhiloxStreamTag = 0x1AF10Bu;
constexpr uint64_t kPhiloxMul0 = 0xD2511F53u, kPhiloxMul1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxWeyl0 = 0x9E3779B9u, kPhiloxWeyl1 = 0xBB67AE85u;

// Philox 4x32-10 on lanes: each uint64 lane holds one 32-bit word of its counter.
template <class L>
IAF_HD void philoxLanes(typename L::U& c0, typename L::U& c1, typename L::U& c2, typename L::U& c3, uint32_t key0,
                        uint32_t key1) {
  using U = typename L::U;
  for (int round = 0; round < 10; ++round) {
    const U p0 = L::mulWide(c0, kPhiloxMul0);
    const U p1 = L::mulWide(c2, kPhiloxMul1);
    const U next0 = (p1 >> 32) ^ c1 ^ static_cast<uint64_t>(key0);
    const U next2 = (p0 >> 32) ^ c3 ^ static_cast<uint64_t>(key1);
    c1 = p1 & 0xFFFFFFFFu;
    c3 = p0 & 0xFFFFFFFFu;
    c0 = next0;
    c2 = next2;
    key0 += kPhiloxWeyl0;
    key1 += kPhiloxWeyl1;
  }
}

// Doubles from small integers by the 2^52 trick: exact, and the same bits for scalars and vectors.
constexpr uint64_t kTwo52Bits = 0x4330000000000000u;
constexpr double kTwo52 = 4503599627370496.0;
constexpr double kTwoPow32Inv = 2.3283064365386963e-10;  // 2^-32

// (w + 0.5) / 2^32 for a 32-bit word w: strictly inside (0, 1), exact.
template <class L>
IAF_HD typename L::D unitOpen(typename L::U word) {
  IAF_NORMALS_NO_CONTRACT
  return ((L::asDouble(word | kTwo52Bits) - kTwo52) + 0.5) * kTwoPow32Inv;
}

// Natural log of u for u in [2^-33, 1): fdlibm's e_log.c without its special cases.
template <class L>
IAF_HD typename L::D logOfUnit(typename L::D u) {
  IAF_NORMALS_NO_CONTRACT
  using D = typename L::D;
  using U = typename L::U;
  constexpr double kLn2Hi = 6.93147180369123816490e-01, kLn2Lo = 1.90821492927058770002e-10;
  constexpr double kLg1 = 6.666666666666735130e-01, kLg2 = 3.999999999940941908e-01;
  constexpr double kLg3 = 2.857142874366239149e-01, kLg4 = 2.222219843214978396e-01;
  constexpr double kLg5 = 1.818357216161805012e-01, kLg6 = 1.531383769920937332e-01;
  constexpr double kLg7 = 1.479819860511658591e-01;
  const U bits = L::asBits(u);
  const U mantissa = bits & 0x000FFFFFFFFFFFFFu;
  // Mantissas past sqrt(2) - 1 halve m and take one from the exponent's count: m in [sqrt(2)/2, sqrt(2)).
  const U carry = (mantissa + 0x00095F6400000000u) & 0x0010000000000000u;
  const D m = L::asDouble(mantissa | (carry ^ 0x3FF0000000000000u));
  const U biasedExponent = (bits >> 52) + (carry >> 52);
  const D k = L::asDouble(biasedExponent | kTwo52Bits) - (kTwo52 + 1023.0);
  const D f = m - 1.0;
  const D halfFSquared = 0.5 * f * f;
  const D s = f / (2.0 + f);
  const D z = s * s;
  const D w = z * z;
  const D t1 = w * (kLg2 + w * (kLg4 + w * kLg6));
  const D t2 = z * (kLg1 + w * (kLg3 + w * (kLg5 + w * kLg7)));
  const D r = t2 + t1;
  return s * (halfFSquared + r) + k * kLn2Lo - halfFSquared + f + k * kLn2Hi;
}

// sin(2 pi t) and cos(2 pi t) for t = (word + 0.5) / 2^32, a 32-bit word.
template <class L>
IAF_HD void sinCosOfTurn(typename L::U word, typename L::D& sine, typename L::D& cosine) {
  IAF_NORMALS_NO_CONTRACT
  using D = typename L::D;
  using U = typename L::U;
  constexpr double kTwoPi = 6.28318530717958647693;
  constexpr double kS1 = -1.66666666666666324348e-01, kS2 = 8.33333333332248946124e-03;
  constexpr double kS3 = -1.98412698298579493134e-04, kS4 = 2.75573137070700676789e-06;
  constexpr double kS5 = -2.50507602534068634195e-08, kS6 = 1.58969099521155010221e-10;
  constexpr double kC1 = 4.16666666666666019037e-02, kC2 = -1.38888888888741095749e-03;
  constexpr double kC3 = 2.48015872894767294178e-05, kC4 = -2.75573143513906633035e-07;
  constexpr double kC5 = 2.08757232129817482790e-09, kC6 = -1.13596475577881948265e-11;
  // q: the nearest quarter turn (0..4); r = t - q / 4 in [-1/8, 1/8), exactly.
  const U quarter = (word + 0x20000000u) >> 30;
  const U offsetWord = word + 0x80000000u - (quarter << 30);  // word - q 2^30 + 2^31, in [2^31 - 2^29, 2^31 + 2^29)
  const D r = ((L::asDouble(offsetWord | kTwo52Bits) - (kTwo52 + 2147483648.0)) + 0.5) * kTwoPow32Inv;
  const D x = r * kTwoPi;  // |x| <= pi / 4
  const D z = x * x;
  const D w = z * z;
  const D sinPoly = kS2 + z * (kS3 + z * kS4) + z * w * (kS5 + z * kS6);
  const D sinX = x + z * x * (kS1 + z * sinPoly);
  const D cosPoly = z * (kC1 + z * (kC2 + z * kC3)) + w * w * (kC4 + z * (kC5 + z * kC6));
  const D halfZ = 0.5 * z;
  const D oneMinusHalfZ = 1.0 - halfZ;
  const D cosX = oneMinusHalfZ + (((1.0 - oneMinusHalfZ) - halfZ) + z * cosPoly);
  // Rotate by q quarter turns: odd q swaps sine and cosine; q in {2, 3} negates the sine,
  // q in {1, 2} the cosine (sign flips are exact).
  const U swap = U{} - (quarter & 1u);
  const U sinBits = (L::asBits(cosX) & swap) | (L::asBits(sinX) & ~swap);
  const U cosBits = (L::asBits(sinX) & swap) | (L::asBits(cosX) & ~swap);
  sine = L::asDouble(sinBits ^ ((quarter & 2u) << 62));
  cosine = L::asDouble(cosBits ^ (((quarter + 1u) & 2u) << 62));
}

// Two standard normals from two 32-bit words: radius from the first, angle from the second.
template <class L>
IAF_NORMALS_NOINLINE IAF_HD void boxMuller(typename L::U radiusWord, typename L::U angleWord, typename L::D& first,
                      typename L::D& second) {
  IAF_NORMALS_NO_CONTRACT
  using D = typename L::D;
  const D radius = L::sqrt(-2.0 * logOfUnit<L>(unitOpen<L>(radiusWord)));
  D sine, cosine;
  sinCosOfTurn<L>(angleWord, sine, cosine);
  first = radius * cosine;
  second = radius * sine;
}

#if defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#pragma GCC pop_options
#endif
#undef IAF_NORMALS_NO_CONTRACT
#undef IAF_NORMALS_NOINLINE
