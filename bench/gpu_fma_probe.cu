// The GPU's fp32 FMA peak, measured (bench/gpu.ts compiles this at bench time with nvcc into a
// temporary folder and runs it once; bench/fma_probe.cc is the CPU's counterpart).
//
//   gpu_fma_probe [SECONDS]   ->   one line of JSON on stdout (exit 2 and {"error": ...} when
//                                  there is no usable device)
//
// Peak: every thread runs kChains independent chains x = x * a + b (fmaf), enough to cover the
// FMA latency (about 4 cycles on Volta to Hopper) at full occupancy many times over, so the FP32
// pipes, not the dependency chains, set the rate. The grid fills every SM to its resident-thread
// limit. Launches are timed with CUDA events in batches; the best batch is the peak, all batches
// together what the device sustained. a and b come in as arguments, so nothing folds at compile
// time, and every chain's result is stored, so nothing is dead.
// Clock: thread 0 of every block reads clock64() around its loop; SM cycles over the kernel's
// time is the clock the SMs ran at, so flops / cycle / SM tells the FP32 lanes per SM (Hopper
// and Ada: 128 FMA lanes = 256 flops/cycle; A100: 64 = 128).
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

constexpr int kThreads = 256;
constexpr int kChains = 8;
constexpr int kIterations = 2048;  // per launch, each thread: kChains x kIterations FMAs

__global__ void __launch_bounds__(kThreads) fmaKernel(float a, float b, float* out, long long* cycles) {
  float x[kChains];
#pragma unroll
  for (int k = 0; k < kChains; k++) x[k] = static_cast<float>(threadIdx.x + k) * 1e-3f;
  const long long start = clock64();
#pragma unroll 16
  for (int i = 0; i < kIterations; i++) {
#pragma unroll
    for (int k = 0; k < kChains; k++) x[k] = fmaf(x[k], a, b);
  }
  const long long stop = clock64();
  float sum = 0.0f;
#pragma unroll
  for (int k = 0; k < kChains; k++) sum += x[k];
  out[blockIdx.x * blockDim.x + threadIdx.x] = sum;
  if (threadIdx.x == 0) cycles[blockIdx.x] = stop - start;
}

std::string jsonEscape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) < 0x20) continue;
    out += c;
  }
  return out;
}

int fail(const char* what, cudaError_t error) {
  std::printf("{\"error\": \"%s: %s\"}\n", what, jsonEscape(cudaGetErrorString(error)).c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  const double seconds = argc > 1 ? std::atof(argv[1]) : 1.0;
  if (!(seconds > 0 && seconds <= 60)) {
    std::fprintf(stderr, "usage: gpu_fma_probe [SECONDS in (0, 60]]\n");
    return 1;
  }
  int count = 0;
  cudaError_t error = cudaGetDeviceCount(&count);
  if (error != cudaSuccess) return fail("cudaGetDeviceCount", error);
  if (count == 0) {
    std::printf("{\"error\": \"no CUDA device\"}\n");
    return 2;
  }
  cudaDeviceProp prop;
  if ((error = cudaGetDeviceProperties(&prop, 0)) != cudaSuccess) return fail("cudaGetDeviceProperties", error);
  int clockKHz = 0;
  cudaDeviceGetAttribute(&clockKHz, cudaDevAttrClockRate, 0);  // the rated boost clock
  int blocksPerSm = 0;
  if ((error = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocksPerSm, fmaKernel, kThreads, 0)) != cudaSuccess)
    return fail("cudaOccupancyMaxActiveBlocksPerMultiprocessor", error);
  const int blocks = prop.multiProcessorCount * std::max(1, blocksPerSm);
  float* out = nullptr;
  long long* cycles = nullptr;
  if ((error = cudaMalloc(&out, sizeof(float) * blocks * kThreads)) != cudaSuccess) return fail("cudaMalloc", error);
  if ((error = cudaMalloc(&cycles, sizeof(long long) * blocks)) != cudaSuccess) return fail("cudaMalloc", error);
  cudaEvent_t begin, end;
  cudaEventCreate(&begin);
  cudaEventCreate(&end);
  const double flopsPerLaunch = 2.0 * kChains * kIterations * static_cast<double>(blocks) * kThreads;

  // Warm-up (module load, clocks ramping up), then batches of launches sized to about 20 ms.
  fmaKernel<<<blocks, kThreads>>>(0.999999f, 1e-6f, out, cycles);
  if ((error = cudaDeviceSynchronize()) != cudaSuccess) return fail("warm-up launch", error);
  int perBatch = 1;
  for (;;) {
    cudaEventRecord(begin);
    for (int i = 0; i < perBatch; i++) fmaKernel<<<blocks, kThreads>>>(0.999999f, 1e-6f, out, cycles);
    cudaEventRecord(end);
    if ((error = cudaEventSynchronize(end)) != cudaSuccess) return fail("launch", error);
    float ms = 0;
    cudaEventElapsedTime(&ms, begin, end);
    if (ms > 20.0f || perBatch >= 1 << 14) break;
    perBatch *= 2;
  }

  double best = 0, flops = 0, elapsed = 0;
  double bestClockMHz = 0;
  int batches = 0;
  std::vector<long long> hostCycles(blocks);
  const auto wall = std::chrono::steady_clock::now();
  while (std::chrono::duration<double>(std::chrono::steady_clock::now() - wall).count() < seconds || batches < 3) {
    cudaEventRecord(begin);
    for (int i = 0; i < perBatch; i++) fmaKernel<<<blocks, kThreads>>>(0.999999f, 1e-6f, out, cycles);
    cudaEventRecord(end);
    if ((error = cudaEventSynchronize(end)) != cudaSuccess) return fail("launch", error);
    if ((error = cudaGetLastError()) != cudaSuccess) return fail("launch", error);
    float ms = 0;
    cudaEventElapsedTime(&ms, begin, end);
    const double s = ms / 1e3;
    const double rate = flopsPerLaunch * perBatch / s;
    best = std::max(best, rate);
    flops += flopsPerLaunch * perBatch;
    elapsed += s;
    batches++;
    // The last launch's cycles: the slowest block spans the launch, so its cycles over the
    // launch's share of the batch time is the SM clock.
    cudaMemcpy(hostCycles.data(), cycles, sizeof(long long) * blocks, cudaMemcpyDeviceToHost);
    const long long longest = *std::max_element(hostCycles.begin(), hostCycles.end());
    bestClockMHz = std::max(bestClockMHz, longest / (s / perBatch) / 1e6);
  }
  float check = 0;
  cudaMemcpy(&check, out, sizeof(float), cudaMemcpyDeviceToHost);
  cudaFree(out);
  cudaFree(cycles);
  const double smClockMHz = bestClockMHz;
  std::printf(
      "{\"device\": \"%s\", \"computeCapability\": \"%d.%d\", \"sms\": %d, \"blocksPerSm\": %d, \"threadsPerBlock\": %d, "
      "\"chains\": %d, \"ratedClockMHz\": %.0f, \"measuredClockMHz\": %.0f, \"gflops\": %.1f, \"sustainedGflops\": %.1f, "
      "\"flopsPerCyclePerSm\": %.1f, \"batches\": %d, \"check\": %g}\n",
      jsonEscape(prop.name).c_str(), prop.major, prop.minor, prop.multiProcessorCount, blocksPerSm, kThreads, kChains,
      clockKHz / 1e3, smClockMHz, best / 1e9, flops / elapsed / 1e9,
      smClockMHz > 0 ? best / (smClockMHz * 1e6) / prop.multiProcessorCount : 0.0, batches, check);
  return 0;
}
