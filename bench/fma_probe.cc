// The machine's fp32 FMA peak and its clock, measured (bench/ceiling.ts compiles this at bench
// time with the system c++ -O2 -march=native and runs it with 1 and 2 threads).
//
//   fma_probe THREADS SECONDS   ->   one line of JSON on stdout
//
// Clock: every thread runs a chain of dependent 64-bit integer adds (one cycle of latency each on
// every x86 core since the P6), so adds per second is the core's clock while it is busy, whatever
// /proc/cpuinfo says (a VM often reports the base clock, not the boost).
// Peak: every thread runs FMAs on kAccumulators independent vector accumulators, enough to cover
// the FMA latency times the number of FMA pipes (Zen 5: 4 cycles x 2 pipes = 8 in flight), so the
// pipes, not the dependency chains, set the rate. flops/cycle = peak / clock tells how many FMA
// lanes a core retires per cycle (Zen 5 with 2 x 512-bit FMA: 64; Zen 4, which splits a 512-bit
// FMA into two 256-bit halves: 32).
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#define PROBE_ISA "avx512"
typedef __m512 vec;
static const int kLanes = 16;
static inline vec vset(float v) { return _mm512_set1_ps(v); }
static inline vec vfma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
static inline float vfirst(vec a) { return _mm512_cvtss_f32(a); }
#elif defined(__FMA__) && defined(__AVX__)
#include <immintrin.h>
#define PROBE_ISA "avx2+fma"
typedef __m256 vec;
static const int kLanes = 8;
static inline vec vset(float v) { return _mm256_set1_ps(v); }
static inline vec vfma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
static inline float vfirst(vec a) { return _mm256_cvtss_f32(a); }
#else
#define PROBE_ISA "scalar"
typedef float vec;
static const int kLanes = 1;
static inline vec vset(float v) { return v; }
static inline vec vfma(vec a, vec b, vec c) { return a * b + c; }
static inline float vfirst(vec a) { return a; }
#endif

using Clock = std::chrono::steady_clock;
// Independent chains: enough to cover latency x pipes, and few enough to stay in registers with
// the two constants (AVX2 has 16 vector registers: 16 chains spilled 3 of them to the stack every
// iteration and halved the measured peak on Zen 3; AVX-512 has 32).
#if defined(__AVX512F__)
static const int kAccumulators = 16;
#elif defined(__FMA__) && defined(__AVX__)
static const int kAccumulators = 12;
#else
static const int kAccumulators = 8;
#endif
static const long kFmaBatch = 1 << 17;  // 2M FMAs: about 0.3 ms on one Zen 5 core
static const long kAddBatch = 1 << 20;  // about 0.3 ms at 3.5 GHz

struct Result {
  double fmaFlops = 0, fmaSeconds = 0, bestFmaRate = 0;  // flops, seconds, best flops/s of a batch
  double adds = 0, addSeconds = 0, bestAddRate = 0;
  float sink = 0;
};

static double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// One batch of kAccumulators independent chains acc = acc * a + b (|a| < 1 keeps them bounded).
static void fmaBatch(vec* acc, Result* r) {
  vec x[kAccumulators];
  for (int k = 0; k < kAccumulators; k++) x[k] = acc[k];
  const vec a = vset(0.999999f), b = vset(1e-6f);
  const auto t = Clock::now();
  for (long i = 0; i < kFmaBatch; i++) {
#pragma GCC unroll 16
    for (int k = 0; k < kAccumulators; k++) x[k] = vfma(x[k], a, b);
  }
  const double s = since(t);
  for (int k = 0; k < kAccumulators; k++) acc[k] = x[k];
  const double flops = 2.0 * kLanes * kAccumulators * static_cast<double>(kFmaBatch);
  r->fmaFlops += flops;
  r->fmaSeconds += s;
  if (flops / s > r->bestFmaRate) r->bestFmaRate = flops / s;
}

// One batch of a dependent chain of adds: one add per cycle, whatever the loop's own instructions cost beside it.
static void addBatch(unsigned long long* x, Result* r) {
  const unsigned long long y = 3;
  unsigned long long v = *x;
  const auto t = Clock::now();
  for (long i = 0; i < kAddBatch; i += 16) {
#if defined(__x86_64__)
    __asm__ volatile(
        "add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\t"
        "add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\t"
        "add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\t"
        "add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\t"
        : "+r"(v)
        : "r"(y));
#else
    for (int k = 0; k < 16; k++) __asm__ volatile("" : "+r"(v)), v += y;
#endif
  }
  const double s = since(t);
  *x = v;
  r->adds += static_cast<double>(kAddBatch);
  r->addSeconds += s;
  if (kAddBatch / s > r->bestAddRate) r->bestAddRate = kAddBatch / s;
}

// Short batches of adds and FMAs in turn: on a shared machine both see the same interruptions, and
// the best batch of each is a stretch the thread ran undisturbed (the core's clock and FMA peak).
static void probe(double seconds, Result* r) {
  vec acc[kAccumulators];
  for (int k = 0; k < kAccumulators; k++) acc[k] = vset(1.0f + 0.001f * k);
  unsigned long long x = 1;
  const auto start = Clock::now();
  do {
    addBatch(&x, r);
    fmaBatch(acc, r);
  } while (since(start) < seconds);
  float s = 0;
  for (int k = 0; k < kAccumulators; k++) s += vfirst(acc[k]);
  r->sink = s + static_cast<float>(x & 1);
}

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 1;
  const double seconds = argc > 2 ? std::atof(argv[2]) : 0.3;
  if (threads < 1 || threads > 256 || !(seconds > 0 && seconds < 60)) {
    std::fprintf(stderr, "usage: fma_probe THREADS(1..256) SECONDS(0..60)\n");
    return 2;
  }
  std::vector<Result> results(threads);
  std::atomic<int> ready{0};
  auto work = [&](int t) {
    ready.fetch_add(1);
    while (ready.load() < threads) {
    }
    probe(seconds, &results[t]);
  };
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; t++) pool.emplace_back(work, t);
  for (auto& th : pool) th.join();
  // peak: the sum over threads of each one's best batch; sustained: all batches, all threads.
  double peak = 0, sustained = 0, ghzSum = 0, ghzMin = 1e9, sink = 0;
  for (const Result& r : results) {
    peak += r.bestFmaRate;
    sustained += r.fmaFlops / r.fmaSeconds;
    const double ghz = r.bestAddRate / 1e9;
    ghzSum += ghz;
    if (ghz < ghzMin) ghzMin = ghz;
    sink += r.sink;
  }
  const double ghz = ghzSum / threads;
  std::printf(
      "{\"isa\":\"%s\",\"lanes\":%d,\"accumulators\":%d,\"threads\":%d,\"gflops\":%.3f,\"sustainedGflops\":%.3f,"
      "\"ghz\":%.4f,\"ghzMin\":%.4f,\"flopsPerCyclePerCore\":%.2f,\"sink\":%d}\n",
      PROBE_ISA, kLanes, kAccumulators, threads, peak / 1e9, sustained / 1e9, ghz, ghzMin, peak / 1e9 / (ghz * threads), sink == 12345.0 ? 1 : 0);
  return 0;
}
