// The Node binding: converts arguments, maps errors, schedules work. No math
// here and no user-facing validation: src/ validates every input before it
// reaches this file, and the checks below only keep a buggy caller from
// crashing the process.
#include <napi.h>

#include <atomic>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/kernels.h"
#include "core/thread_pool.h"
#include "core/train.h"

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

// ---- Training (core/train.h): argument conversion and one AsyncWorker per chunk of steps ----

// Runs `work` on a libuv thread; the typed arrays it writes stay pinned until the promise settles.
class TrainWorker final : public Napi::AsyncWorker {
 public:
  TrainWorker(Napi::Env env, std::function<void()> work, std::function<Napi::Value(Napi::Env)> result,
              const std::vector<Napi::Value>& pinned, std::shared_ptr<std::atomic<bool>> busy)
      : Napi::AsyncWorker(env, "iaflow.train"),
        deferred_(Napi::Promise::Deferred::New(env)),
        work_(std::move(work)),
        result_(std::move(result)),
        pinned_(Napi::Persistent(Napi::Object::New(env))),
        busy_(std::move(busy)) {
    for (size_t i = 0; i < pinned.size(); ++i) pinned_.Set(static_cast<uint32_t>(i), pinned[i]);
  }

  Napi::Promise promise() { return deferred_.Promise(); }

 protected:
  void Execute() override {
    try {
      work_();
    } catch (...) {
      SetError(describe(std::current_exception()));
    }
  }
  void OnOK() override {
    *busy_ = false;
    deferred_.Resolve(result_ ? result_(Env()) : Env().Undefined());
  }
  void OnError(const Napi::Error& error) override {
    *busy_ = false;
    deferred_.Reject(error.Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  std::function<void()> work_;
  std::function<Napi::Value(Napi::Env)> result_;
  Napi::ObjectReference pinned_;
  std::shared_ptr<std::atomic<bool>> busy_;
};

double* float64Output(Napi::Env env, const Napi::Value& v, size_t expected, const char* what) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float64_array)
    internalError(env, std::string(what) + " must be a Float64Array");
  Napi::Float64Array a = v.As<Napi::Float64Array>();
  if (a.ElementLength() < expected) internalError(env, std::string(what) + " is too short");
  return a.Data();
}

double numberArg(Napi::Env env, const Napi::Value& v, const char* what) {
  if (!v.IsNumber()) internalError(env, std::string(what) + " must be a number");
  return v.As<Napi::Number>().DoubleValue();
}

int64_t countArg(Napi::Env env, const Napi::Value& v, const char* what, int64_t min) {
  const double d = numberArg(env, v, what);
  if (!(d >= static_cast<double>(min) && d <= 9.0e15) || d != static_cast<double>(static_cast<int64_t>(d)))
    internalError(env, std::string(what) + " is out of range");
  return static_cast<int64_t>(d);
}

// [learningRate, beta1, beta2, eps, weightDecay, clipGradNorm, ema?] (ema: 0 when left out)
iaflow::OptimizerOptions optimizerOptions(Napi::Env env, const Napi::Value& v) {
  const double* o = float64Output(env, v, 6, "optimizer options");
  iaflow::OptimizerOptions opt;
  opt.learningRate = o[0];
  opt.beta1 = o[1];
  opt.beta2 = o[2];
  opt.eps = o[3];
  opt.weightDecay = o[4];
  opt.clipGradNorm = o[5];
  if (v.As<Napi::Float64Array>().ElementLength() >= 7) opt.ema = o[6];
  if (!(opt.ema >= 0.0 && opt.ema < 1.0)) internalError(env, "ema must be in [0, 1)");
  return opt;
}

void writeStats(const iaflow::StepStats& s, double* out) {
  out[0] = s.lossSum;
  out[1] = static_cast<double>(s.rows);
  out[2] = static_cast<double>(s.steps);
  out[3] = static_cast<double>(s.skipped);
  out[4] = s.lastGradNorm;
}

// new NativeTrainer(spec, pass, teacherSpec | null, options: Float64Array(6 or 7), reference)
class NativeTrainer final : public Napi::ObjectWrap<NativeTrainer> {
 public:
  static Napi::Function define(Napi::Env env) {
    return DefineClass(env, "NativeTrainer",
                       {InstanceMethod<&NativeTrainer::setOptions>("setOptions"),
                        InstanceMethod<&NativeTrainer::setStickingTheLanding>("setStickingTheLanding"),
                        InstanceMethod<&NativeTrainer::setData>("setData"),
                        InstanceMethod<&NativeTrainer::fitBatches>("fitBatches"),
                        InstanceMethod<&NativeTrainer::validationLoss>("validationLoss"),
                        InstanceMethod<&NativeTrainer::reverseForward>("reverseForward"),
                        InstanceMethod<&NativeTrainer::reverseBackward>("reverseBackward"),
                        InstanceMethod<&NativeTrainer::distillSteps>("distillSteps"),
                        InstanceMethod<&NativeTrainer::likelihoodGradient>("likelihoodGradient"),
                        InstanceMethod<&NativeTrainer::logProbGradient>("logProbGradient"),
                        InstanceMethod<&NativeTrainer::parametersTo>("parametersTo"),
                        InstanceMethod<&NativeTrainer::gradientTo>("gradientTo"),
                        InstanceMethod<&NativeTrainer::saveBest>("saveBest"),
                        InstanceMethod<&NativeTrainer::restoreBest>("restoreBest")});
  }

  explicit NativeTrainer(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeTrainer>(info) {
    Napi::Env env = info.Env();
    try {
      iaflow::FlowSpec spec = parseSpec(env, info[0]);
      const int pass = static_cast<int>(numberArg(env, info[1], "pass"));
      if (pass != 0 && pass != 1) internalError(env, "pass must be 0 or 1");
      std::unique_ptr<iaflow::FlowSpec> teacher;
      if (!info[2].IsNull() && !info[2].IsUndefined()) teacher = std::make_unique<iaflow::FlowSpec>(parseSpec(env, info[2]));
      dim_ = spec.dim;
      for (const iaflow::LayerSpec& layer : spec.layers) {
        std::vector<int> widths;
        if (layer.kind != iaflow::LayerKind::Permutation)
          for (const iaflow::DenseLinear& h : layer.hidden) widths.push_back(h.out);
        widths_.push_back(std::move(widths));
      }
      trainer_ = std::make_shared<iaflow::Trainer>(spec, static_cast<iaflow::Direction>(pass), teacher.get(),
                                                   optimizerOptions(env, info[3]), info[4].ToBoolean().Value());
    } catch (const Napi::Error&) {
      throw;
    } catch (...) {
      throw Napi::Error::New(env, describe(std::current_exception()));
    }
  }

 private:
  void claim(Napi::Env env) {
    if (*busy_) throw Napi::Error::New(env, "iaflow internal: the trainer is busy with another call");
  }

  // Runs now (sync) or on a worker (async: returns a promise).
  Napi::Value launch(Napi::Env env, bool async, std::function<void()> work,
                     std::function<Napi::Value(Napi::Env)> result, const std::vector<Napi::Value>& pinned) {
    claim(env);
    if (!async) {
      try {
        work();
      } catch (...) {
        throw Napi::Error::New(env, describe(std::current_exception()));
      }
      return result ? result(env) : env.Undefined();
    }
    *busy_ = true;
    std::vector<Napi::Value> pins = pinned;
    pins.push_back(Value());
    auto* worker = new TrainWorker(env, std::move(work), std::move(result), pins, busy_);
    Napi::Promise promise = worker->promise();
    worker->Queue();
    return promise;
  }

  std::vector<iaflow::DenseMadeView> views(Napi::Env env, const Napi::Value& v) {
    if (!v.IsArray() || v.As<Napi::Array>().Length() != widths_.size()) internalError(env, "views must be one entry per layer");
    Napi::Array layers = v.As<Napi::Array>();
    std::vector<iaflow::DenseMadeView> out(widths_.size());
    auto tensor = [&](const Napi::Value& holder, const char* key, size_t length) -> float* {
      if (!holder.IsObject()) internalError(env, "a view entry must be an object");
      float* p = optionalFloatOutput(env, holder.As<Napi::Object>().Get(key), length, key);
      if (!p) internalError(env, std::string(key) + " is required");
      return p;
    };
    for (uint32_t k = 0; k < widths_.size(); ++k) {
      if (widths_[k].empty()) continue;
      Napi::Value lv = layers.Get(k);
      if (!lv.IsObject()) internalError(env, "a MADE layer's view must be an object");
      Napi::Object layer = lv.As<Napi::Object>();
      Napi::Value hv = layer.Get("hidden");
      if (!hv.IsArray() || hv.As<Napi::Array>().Length() != widths_[k].size()) internalError(env, "view.hidden has the wrong length");
      Napi::Array hidden = hv.As<Napi::Array>();
      size_t in = static_cast<size_t>(dim_);
      for (uint32_t l = 0; l < widths_[k].size(); ++l) {
        const size_t width = static_cast<size_t>(widths_[k][l]);
        out[k].hiddenWeight.push_back(tensor(hidden.Get(l), "weight", width * in));
        out[k].hiddenBias.push_back(tensor(hidden.Get(l), "bias", width));
        in = width;
      }
      const size_t d = static_cast<size_t>(dim_);
      out[k].shiftWeight = tensor(layer.Get("shift"), "weight", d * in);
      out[k].shiftBias = tensor(layer.Get("shift"), "bias", d);
      out[k].scaleWeight = tensor(layer.Get("rawScale"), "weight", d * in);
      out[k].scaleBias = tensor(layer.Get("rawScale"), "bias", d);
    }
    return out;
  }

  Napi::Value setOptions(const Napi::CallbackInfo& info) {
    claim(info.Env());
    trainer_->setOptions(optimizerOptions(info.Env(), info[0]));
    return info.Env().Undefined();
  }

  Napi::Value setStickingTheLanding(const Napi::CallbackInfo& info) {
    claim(info.Env());
    trainer_->setStickingTheLanding(info[0].ToBoolean().Value());
    return info.Env().Undefined();
  }

  // setData(train, trainRows, valid | null, validRows)
  Napi::Value setData(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    claim(env);
    const int64_t trainRows = countArg(env, info[1], "trainRows", 1);
    const int64_t validRows = countArg(env, info[3], "validRows", 0);
    const float* train = optionalFloatOutput(env, info[0], static_cast<size_t>(trainRows) * dim_, "train");
    const float* valid = optionalFloatOutput(env, info[2], static_cast<size_t>(validRows) * dim_, "valid");
    if (!train) internalError(env, "train is required");
    try {
      trainer_->setData(train, trainRows, valid, valid ? validRows : 0);
    } catch (...) {
      throw Napi::Error::New(env, describe(std::current_exception()));
    }
    return env.Undefined();
  }

  // fitBatches(seedLo, seedHi, epoch, firstBatch, batches, batchSize, stats: Float64Array(5), async)
  Napi::Value fitBatches(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const uint64_t seed = seedFrom(env, info[0], info[1]);
    const int64_t epoch = countArg(env, info[2], "epoch", 0);
    const int64_t firstBatch = countArg(env, info[3], "firstBatch", 0);
    const int64_t batches = countArg(env, info[4], "batches", 1);
    const int64_t batchSize = countArg(env, info[5], "batchSize", 1);
    double* stats = float64Output(env, info[6], 5, "stats");
    auto trainer = trainer_;
    return launch(env, info[7].ToBoolean().Value(), [=] {
      iaflow::StepStats s;
      trainer->fitBatches(seed, epoch, firstBatch, batches, batchSize, s);
      writeStats(s, stats);
    }, nullptr, {info[6]});
  }

  // validationLoss(async) -> number | Promise<number>
  Napi::Value validationLoss(const Napi::CallbackInfo& info) {
    auto trainer = trainer_;
    auto value = std::make_shared<double>(0.0);
    return launch(info.Env(), info[0].ToBoolean().Value(), [=] { *value = trainer->validationLoss(); },
                  [value](Napi::Env env) { return Napi::Number::New(env, *value); }, {});
  }

  // reverseForward(seedLo, seedHi, step, batch, z | null, xOut, logqOut, async)
  Napi::Value reverseForward(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const uint64_t seed = seedFrom(env, info[0], info[1]);
    const int64_t step = countArg(env, info[2], "step", 0);
    const int64_t batch = countArg(env, info[3], "batch", 1);
    const size_t cells = static_cast<size_t>(batch) * dim_;
    const float* zIn = optionalFloatOutput(env, info[4], cells, "z");
    float* x = optionalFloatOutput(env, info[5], cells, "x");
    float* logq = optionalFloatOutput(env, info[6], static_cast<size_t>(batch), "logq");
    if (!x || !logq) internalError(env, "x and logq are required");
    auto z = std::make_shared<std::vector<float>>();
    if (zIn) z->assign(zIn, zIn + cells);
    auto trainer = trainer_;
    return launch(env, info[7].ToBoolean().Value(), [=] {
      trainer->reverseForward(seed, step, batch, z->empty() ? nullptr : z->data(), x, logq);
    }, nullptr, {info[5], info[6]});
  }

  // reverseBackward(targetValue: Float32Array(batch), targetGrad: Float32Array(batch*dim), update, stats, stepLoss: Float64Array(1), async)
  Napi::Value reverseBackward(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!info[0].IsTypedArray()) internalError(env, "targetValue must be a Float32Array");
    const size_t batch = info[0].As<Napi::TypedArray>().ElementLength();
    const float* valueIn = optionalFloatOutput(env, info[0], batch, "targetValue");
    const float* gradIn = optionalFloatOutput(env, info[1], batch * dim_, "targetGrad");
    if (!valueIn || !gradIn) internalError(env, "targetValue and targetGrad are required");
    const bool update = info[2].ToBoolean().Value();
    double* stats = float64Output(env, info[3], 5, "stats");
    double* stepLoss = float64Output(env, info[4], 1, "stepLoss");
    auto value = std::make_shared<std::vector<float>>(valueIn, valueIn + batch);
    auto grad = std::make_shared<std::vector<float>>(gradIn, gradIn + batch * dim_);
    auto trainer = trainer_;
    return launch(env, info[5].ToBoolean().Value(), [=] {
      iaflow::StepStats s;
      trainer->reverseBackward(value->data(), grad->data(), update, s, stepLoss);
      writeStats(s, stats);
    }, nullptr, {info[3], info[4]});
  }

  // distillSteps(seedLo, seedHi, firstStep, steps, batch, betaStart, betaSlope, forwardWeight, stats,
  //              stepLoss: Float64Array(steps), async)
  Napi::Value distillSteps(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const uint64_t seed = seedFrom(env, info[0], info[1]);
    const int64_t firstStep = countArg(env, info[2], "firstStep", 0);
    const int64_t steps = countArg(env, info[3], "steps", 1);
    const int64_t batch = countArg(env, info[4], "batch", 1);
    const double betaStart = numberArg(env, info[5], "betaStart");
    const double betaSlope = numberArg(env, info[6], "betaSlope");
    const double forwardWeight = numberArg(env, info[7], "forwardWeight");
    double* stats = float64Output(env, info[8], 5, "stats");
    double* stepLoss = float64Output(env, info[9], static_cast<size_t>(steps), "stepLoss");
    auto trainer = trainer_;
    return launch(env, info[10].ToBoolean().Value(), [=] {
      iaflow::StepStats s;
      trainer->distillSteps(seed, firstStep, steps, batch, betaStart, betaSlope, forwardWeight, s, stepLoss);
      writeStats(s, stats);
    }, nullptr, {info[8], info[9]});
  }

  // likelihoodGradient(x, rows) -> mean NLL; the gradient stays for gradientTo
  Napi::Value likelihoodGradient(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const int64_t rows = countArg(env, info[1], "rows", 1);
    const float* x = optionalFloatOutput(env, info[0], static_cast<size_t>(rows) * dim_, "x");
    if (!x) internalError(env, "x is required");
    auto trainer = trainer_;
    auto value = std::make_shared<double>(0.0);
    return launch(env, false, [=] { *value = trainer->likelihoodGradient(x, rows); },
                  [value](Napi::Env e) { return Napi::Number::New(e, *value); }, {});
  }

  // logProbGradient(x, rows, logProbOut, gradOut)
  Napi::Value logProbGradient(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const int64_t rows = countArg(env, info[1], "rows", 1);
    const size_t cells = static_cast<size_t>(rows) * dim_;
    const float* x = optionalFloatOutput(env, info[0], cells, "x");
    float* logProb = optionalFloatOutput(env, info[2], static_cast<size_t>(rows), "logProb");
    float* grad = optionalFloatOutput(env, info[3], cells, "grad");
    if (!x || !logProb || !grad) internalError(env, "x, logProb and grad are required");
    auto trainer = trainer_;
    return launch(env, false, [=] { trainer->logProbGradient(x, rows, logProb, grad); }, nullptr, {});
  }

  Napi::Value parametersTo(const Napi::CallbackInfo& info) {
    std::vector<iaflow::DenseMadeView> v = views(info.Env(), info[0]);
    auto trainer = trainer_;
    return launch(info.Env(), false, [&] { trainer->parametersTo(v); }, nullptr, {});
  }

  Napi::Value gradientTo(const Napi::CallbackInfo& info) {
    std::vector<iaflow::DenseMadeView> v = views(info.Env(), info[0]);
    auto trainer = trainer_;
    return launch(info.Env(), false, [&] { trainer->gradientTo(v); }, nullptr, {});
  }

  Napi::Value saveBest(const Napi::CallbackInfo& info) {
    auto trainer = trainer_;
    return launch(info.Env(), false, [=] { trainer->saveBest(); }, nullptr, {});
  }

  Napi::Value restoreBest(const Napi::CallbackInfo& info) {
    auto trainer = trainer_;
    return launch(info.Env(), false, [=] { trainer->restoreBest(); }, nullptr, {});
  }

  int dim_ = 0;
  std::vector<std::vector<int>> widths_;  // per layer: hidden widths (empty for permutations)
  std::shared_ptr<iaflow::Trainer> trainer_;
  std::shared_ptr<std::atomic<bool>> busy_ = std::make_shared<std::atomic<bool>>(false);
};

Napi::Object init(Napi::Env env, Napi::Object exports) {
  exports.Set("measureMatmulGflops", Napi::Function::New(env, measureMatmulGflops));
  exports.Set("kernelInfo", Napi::Function::New(env, kernelInfo));
  exports.Set("selectKernels", Napi::Function::New(env, selectKernels));
  exports.Set("NativeFlow", NativeFlow::define(env));
  exports.Set("setThreads", Napi::Function::New(env, setThreads));
  exports.Set("getThreads", Napi::Function::New(env, getThreads));
  exports.Set("standardNormal", Napi::Function::New(env, standardNormal));
  exports.Set("backend", Napi::String::New(env, cpuBackend().name()));
  exports.Set("NativeTrainer", NativeTrainer::define(env));
  return exports;
}

}  // namespace

NODE_API_MODULE(iaflow, init)
