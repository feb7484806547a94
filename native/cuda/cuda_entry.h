// The C entry points of the CUDA backend library (libiaflow_cuda.so), which the CPU addon
// loads at run time with dlopen only when a caller asks for CUDA (backend 'cuda', 'auto', or
// backends()). The library is a separate binary so that the addon loads and works on
// machines without a GPU, a driver or the library itself.
//
// The Backend object crosses the boundary as a C++ object: both sides must be built by the
// same compiler and standard library from the same headers (plan.h, backend.h). The ABI
// number below changes whenever those headers change in a way that breaks that, and the
// loader refuses a library whose number differs.
#pragma once

#include "../core/backend.h"

// Bump when FlowPlan, RunRequest, Runner or Backend change layout or virtual functions.
#define IAFLOW_CUDA_ABI 1

namespace iaflow {
// The number both sides compare: IAFLOW_CUDA_ABI and the sizes of the structs that cross the
// boundary, so a library built before one of them changed is refused even if nobody bumped the
// number. (A change that keeps every size still needs the bump.)
constexpr int cudaAbiFingerprint() {
  return IAFLOW_CUDA_ABI * 1000003 + static_cast<int>(sizeof(FlowPlan) * 7 + sizeof(LayerPlan) * 11 +
                                                      sizeof(MadePlan) * 13 + sizeof(StaircaseLinear) * 17 +
                                                      sizeof(AffinePlan) * 19 + sizeof(RunRequest) * 23 +
                                                      sizeof(BackendInfo) * 29);
}
}  // namespace iaflow

extern "C" {
// iaflow::cudaAbiFingerprint() as the library was built.
__attribute__((visibility("default"))) int iaflow_cuda_abi_version();
// A new CUDA backend (the caller owns it). Never throws; info() says whether it is usable
// (no driver, no device) and why not. makeTrainer returns null: training of a flow on CUDA
// runs on the CPU backend for now (the caller falls back).
__attribute__((visibility("default"))) iaflow::Backend* iaflow_cuda_make_backend();
}
