#include "kernels.h"

#include <atomic>
#include <cstring>
#include <string>

namespace iaflow {
namespace {

bool cpuRuns(const char* isa) {
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (std::strcmp(isa, "avx512") == 0)
    return avx512Kernels() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("fma");
  if (std::strcmp(isa, "avx2") == 0)
    return avx2Kernels() && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  return std::strcmp(isa, "portable") == 0;
}

const KernelTable* tableNamed(const char* isa) {
  if (std::strcmp(isa, "avx512") == 0) return avx512Kernels();
  if (std::strcmp(isa, "avx2") == 0) return avx2Kernels();
  if (std::strcmp(isa, "portable") == 0) return portableKernels();
  return nullptr;
}

const KernelTable* bestTable() {
  for (const char* isa : {"avx512", "avx2"})
    if (cpuRuns(isa)) return tableNamed(isa);
  return portableKernels();
}

std::atomic<const KernelTable*> active{nullptr};

}  // namespace

const KernelTable& activeKernels() {
  const KernelTable* table = active.load(std::memory_order_acquire);
  if (!table) {
    table = bestTable();
    active.store(table, std::memory_order_release);
  }
  return *table;
}

bool selectKernels(const char* isa) {
  const KernelTable* table = tableNamed(isa);
  if (!table || !cpuRuns(isa)) return false;
  active.store(table, std::memory_order_release);
  return true;
}

const TrainKernelTable& activeTrainKernels() {
  const KernelTable* table = &activeKernels();
  if (table == avx512Kernels()) return *avx512TrainKernels();
  if (table == avx2Kernels()) return *avx2TrainKernels();
  return *portableTrainKernels();
}

const char* availableKernels() {
  static const std::string names = [] {
    std::string list;
    for (const char* isa : {"avx512", "avx2", "portable"})
      if (cpuRuns(isa)) list += (list.empty() ? "" : ",") + std::string(isa);
    return list;
  }();
  return names.c_str();
}

}  // namespace iaflow
