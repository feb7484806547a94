// The backend registry (backend.h): the CPU backends from the start, others
// (CUDA) added when they load. Backends live as long as the process.
#include <cstdlib>
#include <mutex>

#include "backend.h"

namespace iaflow {
namespace {

struct Registry {
  std::mutex mutex;
  std::vector<std::unique_ptr<Backend>> owned;
  Registry() {
    owned.push_back(makeCpuBackend(false));
    owned.push_back(makeCpuBackend(true));
    const char* emulator = std::getenv("IAFLOW_CUDA_EMULATOR");
    if (emulator && std::string(emulator) == "1") {
      owned.push_back(makeCudaEmulatorBackend(false));
      owned.push_back(makeCudaEmulatorBackend(true));
    }
  }
};

Registry& registry() {
  static Registry* r = new Registry();  // never destroyed: runners in flight at exit may still use it
  return *r;
}

}  // namespace

std::vector<const Backend*> backends() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  std::vector<const Backend*> out;
  for (const auto& b : r.owned) out.push_back(b.get());
  return out;
}

const Backend* findBackend(const std::string& name) {
  for (const Backend* b : backends())
    if (b->info().name == name) return b;
  return nullptr;
}

const Backend& preferredBackend(const FlowPlan& plan) {
  for (const Backend* b : backends())
    if (b->info().usable && b->supports(plan, nullptr)) return *b;
  return *findBackend("cpu");  // always usable
}

void registerBackend(std::unique_ptr<Backend> backend) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  // Preferred before the CPU ones: a backend is registered because it is faster.
  r.owned.insert(r.owned.begin(), std::move(backend));
}

}  // namespace iaflow
