// The backend registry (backend.h): the CPU backends from the start, others
// (CUDA) added when they load. Backends live as long as the process.
#include <cstdlib>
#include <exception>
#include <mutex>
#include <set>

#include "backend.h"

#ifndef _WIN32
#include <dlfcn.h>

#include "../cuda/cuda_entry.h"  // the entry points and ABI number of a backend library (GCC/Clang syntax)
#endif

namespace iaflow {
namespace {

struct Registry {
  std::mutex mutex;
  std::vector<std::unique_ptr<Backend>> owned;
  Registry() {
    owned.push_back(makeCpuBackend(false));
    owned.push_back(makeCpuBackend(true));
    const char* emulator = std::getenv("IAFLOW_CUDA_EMULATOR");
    if (emulator && std::string(emulator) == "1") addEmulators();
  }
  // The two emulator backends, last (never preferred), once. Called with the mutex held or from
  // the constructor.
  void addEmulators() {
    for (const auto& b : owned)
      if (b->info().name == "cuda-emulator") return;
    owned.push_back(makeCudaEmulatorBackend(false));
    owned.push_back(makeCudaEmulatorBackend(true));
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

void registerCudaEmulatorBackends() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  r.addEmulators();
}

#ifdef _WIN32
std::string loadBackendLibrary(const std::string&) {
  return "loading a backend library is not supported on Windows";
}
#else
std::string loadBackendLibrary(const std::string& path) {
  if (path.empty()) return "no library path given";
  static std::mutex loadMutex;
  static std::set<void*>* registeredFrom = new std::set<void*>();  // handles whose backend is registered
  std::lock_guard<std::mutex> lock(loadMutex);
  dlerror();
  // A handle is never closed, even after a failed check: the library's static constructors (the
  // CUDA runtime's registrations) have run, and unloading it under them is not safe.
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle) {
    const char* error = dlerror();
    return error ? std::string(error) : "dlopen failed for " + path;
  }
  if (registeredFrom->count(handle)) return "";  // the same library again (dlopen gave the same handle)
  using AbiVersionFn = decltype(&iaflow_cuda_abi_version);
  using MakeBackendFn = decltype(&iaflow_cuda_make_backend);
  auto abiVersion = reinterpret_cast<AbiVersionFn>(dlsym(handle, "iaflow_cuda_abi_version"));
  auto makeBackend = reinterpret_cast<MakeBackendFn>(dlsym(handle, "iaflow_cuda_make_backend"));
  if (!abiVersion || !makeBackend)
    return path + " is not an iaflow backend library (it lacks iaflow_cuda_abi_version or iaflow_cuda_make_backend)";
  const int version = abiVersion();
  if (version != cudaAbiFingerprint())
    return path + " was built for backend ABI " + std::to_string(version) + " but this addon needs ABI " +
           std::to_string(cudaAbiFingerprint()) + ": rebuild it from the same sources (npm run build:cuda)";
  try {
    std::unique_ptr<Backend> backend(makeBackend());
    if (!backend) return path + " created no backend";
    const std::string name = backend->info().name;
    if (name.empty()) return path + " created a backend without a name";
    if (findBackend(name)) return "a backend named " + name + " is already registered (" + path + " not used)";
    registerBackend(std::move(backend));
  } catch (const std::exception& e) {
    return path + ": creating its backend failed: " + e.what();
  } catch (...) {
    return path + ": creating its backend failed";
  }
  registeredFrom->insert(handle);
  return "";
}
#endif

}  // namespace iaflow
