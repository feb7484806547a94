// The Node binding: converts arguments, maps errors, schedules work. No math
// here and no user-facing validation: src/ validates every input before it
// reaches this file, and the checks below only keep a buggy caller from
// crashing the process.
#include <napi.h>

#include <cstring>
#include <exception>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/kernels.h"
#include "core/thread_pool.h"

namespace {

using iaflow::Backend;
using iaflow::FlowPlan;

Backend& cpuBackend() {
  static std::unique_ptr<Backend> backend = iaflow::makeCpuBackend();
  return *backend;
}

std::string describe(const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const std::bad_alloc&) {
    return "iaflow: out of memory";
  } catch (const std::exception& e) {
    return std::string("iaflow: ") + e.what();
  } catch (...) {
    return "iaflow: unknown native error";
  }
}

[[noreturn]] void internalError(Napi::Env env, const std::string& what) {
  throw Napi::TypeError::New(env, "iaflow internal: " + what);
}

template <typename TypedArray, typename T>
std::vector<T> copyTyped(Napi::Env env, const Napi::Value& value, const std::string& what) {
  if (!value.IsTypedArray()) internalError(env, what + " must be a typed array");
  TypedArray array = value.As<TypedArray>();
  return std::vector<T>(array.Data(), array.Data() + array.ElementLength());
}

std::vector<int> intVector(Napi::Env env, const Napi::Value& v, const std::string& what) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
    internalError(env, what + " must be an Int32Array");
  return copyTyped<Napi::Int32Array, int>(env, v, what);
}

std::vector<float> floatVector(Napi::Env env, const Napi::Value& v, const std::string& what) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    internalError(env, what + " must be a Float32Array");
  return copyTyped<Napi::Float32Array, float>(env, v, what);
}

int intField(Napi::Env env, const Napi::Object& o, const char* key) {
  Napi::Value v = o.Get(key);
  if (!v.IsNumber()) internalError(env, std::string(key) + " must be a number");
  return v.As<Napi::Number>().Int32Value();
}

iaflow::DenseLinear denseLinear(Napi::Env env, const Napi::Value& v, const std::string& what, int out, int in) {
  if (!v.IsObject()) internalError(env, what + " must be an object");
  Napi::Object m = v.As<Napi::Object>();
  iaflow::DenseLinear d;
  d.out = out;
  d.in = in;
  d.weight = floatVector(env, m.Get("weight"), what + ".weight");
  d.bias = floatVector(env, m.Get("bias"), what + ".bias");
  return d;
}

// spec = { dim, layers: [{ kind, activation, scale, inputDegrees, hiddenDegrees: Int32Array[],
//          hidden: [{weight, bias}], shift: {weight, bias}, rawScale: {weight, bias}, permutation }] }
iaflow::FlowSpec parseSpec(Napi::Env env, const Napi::Value& value) {
  if (!value.IsObject()) internalError(env, "spec must be an object");
  Napi::Object spec = value.As<Napi::Object>();
  iaflow::FlowSpec out;
  out.dim = intField(env, spec, "dim");
  Napi::Value layersValue = spec.Get("layers");
  if (!layersValue.IsArray()) internalError(env, "spec.layers must be an array");
  Napi::Array layers = layersValue.As<Napi::Array>();
  for (uint32_t k = 0; k < layers.Length(); ++k) {
    Napi::Value lv = layers.Get(k);
    if (!lv.IsObject()) internalError(env, "each layer must be an object");
    Napi::Object layer = lv.As<Napi::Object>();
    iaflow::LayerSpec ls;
    ls.kind = static_cast<iaflow::LayerKind>(intField(env, layer, "kind"));
    if (ls.kind == iaflow::LayerKind::Permutation) {
      ls.permutation = intVector(env, layer.Get("permutation"), "permutation");
    } else {
      ls.activation = static_cast<iaflow::Activation>(intField(env, layer, "activation"));
      ls.scale = static_cast<iaflow::ScaleKind>(intField(env, layer, "scale"));
      ls.inputDegrees = intVector(env, layer.Get("inputDegrees"), "inputDegrees");
      ls.residual = layer.Get("residual").ToBoolean().Value();
      Napi::Value hd = layer.Get("hiddenDegrees");
      Napi::Value hl = layer.Get("hidden");
      if (!hd.IsArray() || !hl.IsArray()) internalError(env, "hiddenDegrees and hidden must be arrays");
      Napi::Array hiddenDegrees = hd.As<Napi::Array>();
      Napi::Array hidden = hl.As<Napi::Array>();
      if (hidden.Length() != hiddenDegrees.Length()) internalError(env, "hidden and hiddenDegrees differ in length");
      int in = out.dim;
      for (uint32_t l = 0; l < hidden.Length(); ++l) {
        ls.hiddenDegrees.push_back(intVector(env, hiddenDegrees.Get(l), "hiddenDegrees"));
        const int width = static_cast<int>(ls.hiddenDegrees.back().size());
        ls.hidden.push_back(denseLinear(env, hidden.Get(l), "hidden", width, in));
        in = width;
      }
      ls.shift = denseLinear(env, layer.Get("shift"), "shift", out.dim, in);
      ls.rawScale = denseLinear(env, layer.Get("rawScale"), "rawScale", out.dim, in);
    }
    out.layers.push_back(std::move(ls));
  }
  return out;
}

float* optionalFloatOutput(Napi::Env env, const Napi::Value& v, size_t expected, const char* what) {
  if (v.IsNull() || v.IsUndefined()) return nullptr;
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    internalError(env, std::string(what) + " must be a Float32Array or null");
  Napi::Float32Array a = v.As<Napi::Float32Array>();
  if (a.ElementLength() != expected) internalError(env, std::string(what) + " has the wrong length");
  return a.Data();
}

uint64_t seedFrom(Napi::Env env, const Napi::Value& lo, const Napi::Value& hi) {
  if (!lo.IsNumber() || !hi.IsNumber()) internalError(env, "seed words must be numbers");
  return (static_cast<uint64_t>(hi.As<Napi::Number>().Uint32Value()) << 32) | lo.As<Napi::Number>().Uint32Value();
}

// Runs a request on the core's pool without blocking the event loop. Keeps
// the plan and its own copy of the input alive; pins the output arrays.
class RunWorker final : public Napi::AsyncWorker {
 public:
  RunWorker(Napi::Env env, std::shared_ptr<const FlowPlan> plan, iaflow::RunRequest request,
            std::vector<float> input, std::vector<Napi::Value> pinned)
      : Napi::AsyncWorker(env, "iaflow.run"),
        deferred_(Napi::Promise::Deferred::New(env)),
        plan_(std::move(plan)),
        request_(request),
        input_(std::move(input)),
        pinned_(Napi::Persistent(Napi::Object::New(env))) {
    for (size_t i = 0; i < pinned.size(); ++i) pinned_.Set(static_cast<uint32_t>(i), pinned[i]);
    if (!input_.empty()) request_.input = input_.data();
  }

  Napi::Promise promise() { return deferred_.Promise(); }

 protected:
  void Execute() override {
    try {
      cpuBackend().run(*plan_, request_);
    } catch (...) {
      SetError(describe(std::current_exception()));
    }
  }
  void OnOK() override { deferred_.Resolve(Env().Undefined()); }
  void OnError(const Napi::Error& error) override { deferred_.Reject(error.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  std::shared_ptr<const FlowPlan> plan_;
  iaflow::RunRequest request_;
  std::vector<float> input_;
  Napi::ObjectReference pinned_;  // outputs and the flow object stay alive until the promise settles
};

class NativeFlow final : public Napi::ObjectWrap<NativeFlow> {
 public:
  static Napi::Function define(Napi::Env env) {
    return DefineClass(env, "NativeFlow", {InstanceMethod<&NativeFlow::run>("run")});
  }

  explicit NativeFlow(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeFlow>(info) {
    try {
      plan_ = iaflow::buildPlan(parseSpec(info.Env(), info[0]));
    } catch (const Napi::Error&) {
      throw;
    } catch (...) {
      throw Napi::Error::New(info.Env(), describe(std::current_exception()));
    }
  }

 private:
  // run(direction, input | null, rows, seedLo, seedHi, outPoints, outLogDet, outLogProb, async, reference)
  Napi::Value run(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 9) internalError(env, "run takes 9 arguments");
    const int dim = plan_->dim;
    iaflow::RunRequest req;
    if (!info[0].IsNumber() || !info[2].IsNumber()) internalError(env, "direction and rows must be numbers");
    const int direction = info[0].As<Napi::Number>().Int32Value();
    if (direction != 0 && direction != 1) internalError(env, "direction must be 0 or 1");
    req.direction = static_cast<iaflow::Direction>(direction);
    const double rows = info[2].As<Napi::Number>().DoubleValue();
    if (!(rows >= 1 && rows <= 9.0e15)) internalError(env, "rows must be positive");
    req.rows = static_cast<int64_t>(rows);
    const size_t cells = static_cast<size_t>(req.rows) * dim;
    req.seed = seedFrom(env, info[3], info[4]);
    req.outPoints = optionalFloatOutput(env, info[5], cells, "outPoints");
    req.outLogDet = optionalFloatOutput(env, info[6], static_cast<size_t>(req.rows), "outLogDet");
    req.outLogProb = optionalFloatOutput(env, info[7], static_cast<size_t>(req.rows), "outLogProb");
    const float* input = optionalFloatOutput(env, info[1], cells, "input");
    const bool async = info[8].ToBoolean().Value();
    req.reference = info.Length() > 9 && info[9].ToBoolean().Value();
    try {
      if (!async) {
        req.input = input;
        cpuBackend().run(*plan_, req);
        return env.Undefined();
      }
      // The async copy of the input means a caller that transfers or reuses
      // its buffer meanwhile cannot pull memory out from under the workers.
      std::vector<float> inputCopy;
      if (input) inputCopy.assign(input, input + cells);
      std::vector<Napi::Value> pinned = {info[5], info[6], info[7], info.This()};
      auto* worker = new RunWorker(env, plan_, req, std::move(inputCopy), pinned);
      Napi::Promise promise = worker->promise();
      worker->Queue();
      return promise;
    } catch (const Napi::Error&) {
      throw;
    } catch (...) {
      throw Napi::Error::New(env, describe(std::current_exception()));
    }
  }

  std::shared_ptr<const FlowPlan> plan_;
};

Napi::Value setThreads(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsNumber()) internalError(info.Env(), "setThreads takes a number");
  iaflow::setThreadCount(info[0].As<Napi::Number>().Int32Value());
  return info.Env().Undefined();
}

Napi::Value getThreads(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), iaflow::currentPool()->size());
}

// standardNormal(seedLo, seedHi, firstRow, rows, dim, out)
Napi::Value standardNormal(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 6 || !info[2].IsNumber() || !info[3].IsNumber() || !info[4].IsNumber())
    internalError(env, "standardNormal(seedLo, seedHi, firstRow, rows, dim, out)");
  const uint64_t seed = seedFrom(env, info[0], info[1]);
  const int64_t firstRow = info[2].As<Napi::Number>().Int64Value();
  const int64_t rows = info[3].As<Napi::Number>().Int64Value();
  const int dim = info[4].As<Napi::Number>().Int32Value();
  if (rows < 1 || dim < 1 || firstRow < 0) internalError(env, "rows and dim must be positive");
  float* out = optionalFloatOutput(env, info[5], static_cast<size_t>(rows) * dim, "out");
  if (!out) internalError(env, "out is required");
  iaflow::fillStandardNormal(seed, static_cast<uint64_t>(firstRow), rows, dim, out);
  return env.Undefined();
}

// measureMatmulGflops(size, minSeconds): the fp32 ceiling the benchmark reports.
Napi::Value measureMatmulGflops(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsNumber()) internalError(env, "measureMatmulGflops(size, seconds)");
  const int size = info[0].As<Napi::Number>().Int32Value();
  if (size < 1 || size > 8192) internalError(env, "size must be in 1..8192");
  return Napi::Number::New(env, iaflow::measureMatmulGflops(size, info[1].As<Napi::Number>().DoubleValue()));
}

// kernelInfo(): the instruction set in use, its vector width and tile, and what else this CPU runs.
Napi::Value kernelInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const iaflow::KernelTable& k = iaflow::activeKernels();
  Napi::Object out = Napi::Object::New(env);
  out.Set("isa", k.isa);
  out.Set("vectorFloats", k.vectorFloats);
  out.Set("tileRows", k.tileRows);
  out.Set("available", iaflow::availableKernels());
  return out;
}

// selectKernels(isa): for tests and benchmarks, run every instruction set this CPU has.
Napi::Value selectKernels(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) internalError(env, "selectKernels(isa)");
  return Napi::Boolean::New(env, iaflow::selectKernels(info[0].As<Napi::String>().Utf8Value().c_str()));
}

Napi::Object init(Napi::Env env, Napi::Object exports) {
  exports.Set("measureMatmulGflops", Napi::Function::New(env, measureMatmulGflops));
  exports.Set("kernelInfo", Napi::Function::New(env, kernelInfo));
  exports.Set("selectKernels", Napi::Function::New(env, selectKernels));
  exports.Set("NativeFlow", NativeFlow::define(env));
  exports.Set("setThreads", Napi::Function::New(env, setThreads));
  exports.Set("getThreads", Napi::Function::New(env, getThreads));
  exports.Set("standardNormal", Napi::Function::New(env, standardNormal));
  exports.Set("backend", Napi::String::New(env, cpuBackend().name()));
  return exports;
}

}  // namespace

NODE_API_MODULE(iaflow, init)
