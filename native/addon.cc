// The Node binding: converts arguments, maps errors, schedules work. No math
// here and no user-facing validation: src/ validates every input before it
// reaches this file, and the checks below only keep a buggy caller from
// crashing the process.
#include <napi.h>
#include <uv.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <unordered_set>
#include <vector>

#include "core/backend.h"
#include "core/kernels.h"
#include "core/thread_pool.h"
#include "core/train.h"

namespace {

using iaflow::FlowPlan;

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
//          hidden: [{weight, bias}], shift: {weight, bias}, rawScale: {weight, bias}, permutation,
//          loc, scale, trainable (affine) }] }
iaflow::FlowSpec parseSpec(Napi::Env env, const Napi::Value& value) {
  if (!value.IsObject()) internalError(env, "spec must be an object");
  Napi::Object spec = value.As<Napi::Object>();
  iaflow::FlowSpec out;
  out.dim = intField(env, spec, "dim");
  if (!spec.Get("contextDim").IsUndefined()) out.contextDim = intField(env, spec, "contextDim");
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
    } else if (ls.kind == iaflow::LayerKind::Affine) {
      ls.affineLoc = floatVector(env, layer.Get("loc"), "loc");
      ls.affineScale = floatVector(env, layer.Get("scale"), "scale");
      ls.trainable = layer.Get("trainable").ToBoolean().Value();
    } else {
      ls.activation = static_cast<iaflow::Activation>(intField(env, layer, "activation"));
      ls.scale = static_cast<iaflow::ScaleKind>(intField(env, layer, "scale"));
      ls.inputDegrees = intVector(env, layer.Get("inputDegrees"), "inputDegrees");
      ls.residual = layer.Get("residual").ToBoolean().Value();
      const Napi::Value clamp = layer.Get("softClamp");
      if (!clamp.IsUndefined()) {
        if (!clamp.IsNumber()) internalError(env, "softClamp must be a number");
        ls.softClamp = clamp.As<Napi::Number>().FloatValue();
      }
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
      if (out.contextDim > 0 && hidden.Length() > 0) {
        ls.contextForm = static_cast<iaflow::ContextForm>(intField(env, layer, "contextForm"));
        ls.context = denseLinear(env, layer.Get("context"), "context", static_cast<int>(ls.hiddenDegrees[0].size()), out.contextDim);
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

// ---- Per-environment state ----
// Each Node environment (the main thread, every worker_thread) that loads the
// addon gets its own: the cancel flags of its calls in flight, and whether it
// is closing. When a worker_thread ends with a call running, every flag is
// raised (the native work stops within one tile) and the environment is marked
// closing, so the completion never touches a dying environment.
//
// Node runs an environment's cleanup hooks only after the thread-pool work it
// queued has finished, so the cleanup hook alone would let a long call hold a
// worker's teardown (worker.terminate(), process.exit) for as long as the call
// runs. While async calls are in flight, a timer on the environment's loop
// (unreferenced: it keeps nothing alive) therefore asks every
// kTeardownPollMs whether the environment can still run JavaScript; once it
// is stopping (or tearing down, where Node's loop still turns while it waits
// for that work) it cannot, and the timer raises the flags itself.
// (The thread pool and the backends are process-wide: setThreads too.)
constexpr uint64_t kTeardownPollMs = 10;

struct EnvState {
  std::mutex mutex;
  std::unordered_set<std::shared_ptr<iaflow::CancelFlag>> inFlight;
  std::atomic<bool> closing{false};
  Napi::FunctionReference cancelTokenClass;
  napi_env env = nullptr;
  // Async jobs queued and not yet completed, and the teardown timer that runs
  // while there are any (touched only on the environment's own thread).
  size_t asyncJobs = 0;
  uv_timer_t* teardownTimer = nullptr;
};

void closeEnv(void* arg) {
  auto* state = static_cast<EnvState*>(arg);
  state->closing = true;
  std::lock_guard<std::mutex> lock(state->mutex);
  for (const auto& flag : state->inFlight) flag->store(true);
}

// Whether the environment still runs JavaScript: Node-API calls that may enter
// JavaScript fail once it is stopping (worker.terminate(), process.exit) or
// being torn down. A strict comparison of two undefineds is such a call that
// does nothing else; on a live environment, between calls, it cannot fail.
bool envRunsJavaScript(napi_env env) {
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return false;
  napi_value undefined;
  bool equal = false;
  bool alive = napi_get_undefined(env, &undefined) == napi_ok && napi_strict_equals(env, undefined, undefined, &equal) == napi_ok;
  napi_close_handle_scope(env, scope);
  return alive;
}

void onTeardownPoll(uv_timer_t* timer) {
  auto* state = static_cast<EnvState*>(timer->data);
  if (state->closing || !envRunsJavaScript(state->env)) {
    closeEnv(state);
    uv_timer_stop(timer);
  }
}

// On the environment's thread, as an async job is queued or completes.
void asyncJobStarted(EnvState& state) {
  if (state.asyncJobs++ > 0 || state.closing) return;
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(state.env, &loop) != napi_ok || loop == nullptr) return;
  auto* timer = new uv_timer_t;
  if (uv_timer_init(loop, timer) != 0) {
    delete timer;
    return;
  }
  timer->data = &state;
  uv_unref(reinterpret_cast<uv_handle_t*>(timer));
  uv_timer_start(timer, onTeardownPoll, kTeardownPollMs, kTeardownPollMs);
  state.teardownTimer = timer;
}

void closeTeardownTimer(EnvState& state) {
  if (state.teardownTimer == nullptr) return;
  uv_close(reinterpret_cast<uv_handle_t*>(state.teardownTimer), [](uv_handle_t* handle) { delete reinterpret_cast<uv_timer_t*>(handle); });
  state.teardownTimer = nullptr;
}

void asyncJobEnded(EnvState& state) {
  if (state.asyncJobs > 0) state.asyncJobs--;
  // Closed, not kept: its close callback runs in this same turn of the loop,
  // so no handle of ours is left open when a worker's loop is closed.
  if (state.asyncJobs == 0) closeTeardownTimer(state);
}

// The environment's cleanup hook. Node has waited for the thread-pool work,
// so every job has completed and the timer is closed already; the flags and
// the closing mark still matter for anything that completes later.
void cleanupEnv(void* arg) {
  auto* state = static_cast<EnvState*>(arg);
  closeEnv(state);
  closeTeardownTimer(*state);
}

EnvState& envState(Napi::Env env) {
  EnvState* state = env.GetInstanceData<EnvState>();
  if (!state) internalError(env, "the addon's environment state is missing");
  return *state;
}

// External memory V8 does not see (plans, trainers): reported so that a tight
// synchronous loop of createFlow/setParameters triggers garbage collection.
class ExternalMemory {
 public:
  ExternalMemory() = default;
  void set(Napi::Env env, int64_t bytes) {
    try {
      Napi::MemoryManagement::AdjustExternalMemory(env, bytes - bytes_);
    } catch (...) {
      // Only a closing environment refuses; nothing is left to account to.
    }
    bytes_ = bytes;
  }
  void release(Napi::Env env) { set(env, 0); }

 private:
  int64_t bytes_ = 0;
};

int64_t planBytes(const FlowPlan& plan) {
  int64_t total = 0;
  auto linear = [&](const iaflow::StaircaseLinear& L) {
    total += static_cast<int64_t>(L.weightKM.size() + L.bias.size() + L.prefix.size() + L.rowStripes.size() +
                                  L.groupWeights.size()) * 4;
  };
  for (const iaflow::LayerPlan& layer : plan.layers) {
    total += static_cast<int64_t>(layer.permutation.size() + layer.affine.loc.size() + layer.affine.scale.size()) * 4;
    linear(layer.made.context);
    linear(layer.made.contextFirst);
    linear(layer.made.contextOnly);
    for (const auto& h : layer.made.hidden) linear(h);
    linear(layer.made.output);
  }
  return total;
}

// The input of a run, owned by the job: copied on the JavaScript thread (the
// caller may reuse or transfer its buffer as soon as the call returns; a
// Float64Array is narrowed to float32 in the same pass, which writes half the
// bytes a copy of the doubles would), then checked for finiteness in the worker.
// A large buffer for input rows: on Linux, 2 MiB aligned and marked for transparent huge pages.
// Writing fresh 4 KiB pages costs a page fault each, which made the copy of a large input (the
// one part of an async call that runs on the event loop) several times slower than memory
// bandwidth allows; huge pages take 512 times fewer faults.
struct FreeDeleter {
  void operator()(float* p) const { std::free(p); }
};
using RowBuffer = std::unique_ptr<float, FreeDeleter>;

RowBuffer allocateRows(size_t count) {
  const size_t bytes = count * sizeof(float);
  constexpr size_t kHugePage = size_t{2} << 20;
  void* p = nullptr;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (bytes >= 4 * kHugePage) {
    const size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
    if (posix_memalign(&p, kHugePage, rounded) == 0) {
      madvise(p, rounded, MADV_HUGEPAGE);  // advice only: without it the buffer still works
      return RowBuffer(static_cast<float*>(p));
    }
    p = nullptr;
  }
#endif
  p = std::malloc(bytes > 0 ? bytes : 1);
  if (!p) throw std::bad_alloc();
  return RowBuffer(static_cast<float*>(p));
}

struct InputRows {
  RowBuffer owned;  // not zero-filled first: every value is written once
  const float* borrowed = nullptr;  // sync calls read the caller's Float32Array in place
  bool present = false;
};

// A non-finite input value: the job rejects with a RangeError naming it.
struct InputError {
  std::string message;
};

std::string formatNumber(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.9g", v);
  return buffer;
}

// Checks every value; returns the float32 rows.
const float* prepareInput(const InputRows& in, const std::string& name, int dim, size_t n) {
  if (!in.present) return nullptr;
  const float* rows = in.borrowed ? in.borrowed : in.owned.get();
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(rows[i])) {
      // The message src/validation.ts gives for arrays of rows (a float64 beyond float32 shows as Infinity).
      throw InputError{"Expected a finite number for " + name + "[" + std::to_string(i / dim) + "][" +
                       std::to_string(i % dim) + "] but received " + formatNumber(rows[i])};
    }
  }
  return rows;
}

// What a job's failure becomes in JavaScript.
Napi::Value errorValue(Napi::Env env, const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const iaflow::Cancelled&) {
    Napi::Error e = Napi::Error::New(env, "The operation was aborted");
    e.Set("name", Napi::String::New(env, "AbortError"));
    e.Set("code", Napi::String::New(env, "ABORT_ERR"));
    return e.Value();
  } catch (const InputError& e) {
    return Napi::RangeError::New(env, e.message).Value();
  } catch (...) {
    return Napi::Error::New(env, describe(error)).Value();
  }
}

// The one async worker: runs `work` off the event loop, then settles a promise
// with `result` (or the error). Keeps the values in `pinned` (output arrays,
// the owning object) alive until then. Safe against an environment that goes
// away meanwhile (worker_thread terminate, process.exit): its cleanup hook
// cancels the work and the completion then settles nothing.
class Job final : public Napi::AsyncWorker {
 public:
  using Work = std::function<void(const iaflow::CancelFlag&)>;
  using Result = std::function<Napi::Value(Napi::Env)>;

  // Runs now on the calling thread (sync) or queues a Job (async: returns its promise).
  static Napi::Value launch(Napi::Env env, bool async, Work work, Result result, const std::vector<Napi::Value>& pinned,
                            std::shared_ptr<iaflow::CancelFlag> cancel = nullptr,
                            std::shared_ptr<std::atomic<bool>> busy = nullptr) {
    if (!cancel) cancel = std::make_shared<iaflow::CancelFlag>(false);
    if (!async) {
      try {
        work(*cancel);
      } catch (...) {
        if (busy) *busy = false;
        Napi::Value error = errorValue(env, std::current_exception());
        throw Napi::Error(env, error);
      }
      if (busy) *busy = false;
      return result ? result(env) : env.Undefined();
    }
    auto* job = new Job(env, std::move(work), std::move(result), pinned, std::move(cancel), std::move(busy));
    Napi::Promise promise = job->deferred_.Promise();
    asyncJobStarted(*job->state_);
    job->Queue();
    return promise;
  }

 protected:
  void Execute() override {
    try {
      work_(*cancel_);
    } catch (...) {
      error_ = std::current_exception();
    }
  }

  void OnWorkComplete(Napi::Env env, napi_status status) override {
    {
      std::lock_guard<std::mutex> lock(state_->mutex);
      state_->inFlight.erase(cancel_);
    }
    if (busy_) *busy_ = false;
    asyncJobEnded(*state_);
    if (!state_->closing && status != napi_cancelled) {
      // Nothing may escape into the event loop: a failure to settle (the
      // environment shutting down between the check and here) is dropped.
      try {
        Napi::HandleScope scope(env);
        if (error_) deferred_.Reject(errorValue(env, error_));
        else deferred_.Resolve(result_ ? result_(env) : env.Undefined());
      } catch (...) {
      }
    }
    Destroy();
  }

 private:
  Job(Napi::Env env, Work work, Result result, const std::vector<Napi::Value>& pinned,
      std::shared_ptr<iaflow::CancelFlag> cancel, std::shared_ptr<std::atomic<bool>> busy)
      : Napi::AsyncWorker(env, "iaflow.job"),
        deferred_(Napi::Promise::Deferred::New(env)),
        work_(std::move(work)),
        result_(std::move(result)),
        pinned_(Napi::Persistent(Napi::Object::New(env))),
        cancel_(std::move(cancel)),
        busy_(std::move(busy)),
        state_(&envState(env)) {
    for (size_t i = 0; i < pinned.size(); ++i) pinned_.Set(static_cast<uint32_t>(i), pinned[i]);
    std::lock_guard<std::mutex> lock(state_->mutex);
    state_->inFlight.insert(cancel_);
  }

  void OnOK() override {}
  void OnError(const Napi::Error&) override {}

  Napi::Promise::Deferred deferred_;
  Work work_;
  Result result_;
  Napi::ObjectReference pinned_;
  std::shared_ptr<iaflow::CancelFlag> cancel_;
  std::shared_ptr<std::atomic<bool>> busy_;
  EnvState* state_;
  std::exception_ptr error_;
};

// A cancel token JavaScript raises when its AbortSignal fires: new CancelToken(); token.cancel().
class CancelToken final : public Napi::ObjectWrap<CancelToken> {
 public:
  static Napi::Function define(Napi::Env env) {
    return DefineClass(env, "CancelToken", {InstanceMethod<&CancelToken::cancel>("cancel")});
  }
  explicit CancelToken(const Napi::CallbackInfo& info) : Napi::ObjectWrap<CancelToken>(info) {}
  std::shared_ptr<iaflow::CancelFlag> flag() const { return flag_; }

 private:
  Napi::Value cancel(const Napi::CallbackInfo& info) {
    flag_->store(true);
    return info.Env().Undefined();
  }
  std::shared_ptr<iaflow::CancelFlag> flag_ = std::make_shared<iaflow::CancelFlag>(false);
};

// The cancel flag of an options object's `cancel` (a CancelToken), or a fresh one.
std::shared_ptr<iaflow::CancelFlag> cancelFrom(Napi::Env env, const Napi::Object& options) {
  Napi::Value v = options.Get("cancel");
  if (v.IsUndefined() || v.IsNull()) return std::make_shared<iaflow::CancelFlag>(false);
  if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(envState(env).cancelTokenClass.Value()))
    internalError(env, "cancel must be a CancelToken");
  return CancelToken::Unwrap(v.As<Napi::Object>())->flag();
}

Napi::Object optionsArg(const Napi::CallbackInfo& info, size_t index, const char* what) {
  if (info.Length() <= index || !info[index].IsObject()) internalError(info.Env(), std::string(what) + " takes an options object");
  return info[index].As<Napi::Object>();
}

double numberField(Napi::Env env, const Napi::Object& o, const char* key, double fallback, bool required) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined()) {
    if (required) internalError(env, std::string(key) + " is required");
    return fallback;
  }
  if (!v.IsNumber()) internalError(env, std::string(key) + " must be a number");
  return v.As<Napi::Number>().DoubleValue();
}

int64_t countField(Napi::Env env, const Napi::Object& o, const char* key, int64_t min, int64_t fallback, bool required) {
  const double d = numberField(env, o, key, static_cast<double>(fallback), required);
  if (!(d >= static_cast<double>(min) && d <= 9.0e15) || d != std::floor(d)) internalError(env, std::string(key) + " is out of range");
  return static_cast<int64_t>(d);
}

// seed: [lo, hi] 32-bit words (JavaScript numbers carry 53 bits; the stream is keyed by 64).
uint64_t seedField(Napi::Env env, const Napi::Object& o) {
  Napi::Value v = o.Get("seed");
  if (v.IsUndefined()) return 0;
  if (!v.IsArray() || v.As<Napi::Array>().Length() != 2) internalError(env, "seed must be [lo, hi]");
  Napi::Array words = v.As<Napi::Array>();
  return seedFrom(env, words.Get(0u), words.Get(1u));
}

const iaflow::Backend& backendNamed(Napi::Env env, const std::string& name, const FlowPlan* plan) {
  if (name == "auto" && plan) return iaflow::preferredBackend(*plan);
  const iaflow::Backend* backend = iaflow::findBackend(name);
  if (!backend) internalError(env, "no backend named " + name);
  iaflow::BackendInfo info = backend->info();
  if (!info.usable) throw Napi::Error::New(env, "iaflow: the " + name + " backend is not usable here: " + info.whyNot);
  std::string why;
  if (plan && !backend->supports(*plan, &why))
    throw Napi::Error::New(env, "iaflow: the " + name + " backend cannot run this flow: " + why);
  return *backend;
}

std::string stringField(Napi::Env env, const Napi::Object& o, const char* key, const std::string& fallback) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined()) return fallback;
  if (!v.IsString()) internalError(env, std::string(key) + " must be a string");
  return v.As<Napi::String>().Utf8Value();
}

// new NativeFlow(spec, { backend: 'auto' | name }): the plan, prepared once for its backend.
class NativeFlow final : public Napi::ObjectWrap<NativeFlow> {
 public:
  static Napi::Function define(Napi::Env env) {
    return DefineClass(env, "NativeFlow",
                       {InstanceMethod<&NativeFlow::run>("run"), InstanceMethod<&NativeFlow::release>("release"),
                        InstanceAccessor<&NativeFlow::backendName>("backend")});
  }

  explicit NativeFlow(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeFlow>(info) {
    Napi::Env env = info.Env();
    try {
      std::shared_ptr<const FlowPlan> plan = iaflow::buildPlan(parseSpec(env, info[0]));
      const Napi::Object options = optionsArg(info, 1, "NativeFlow");
      const iaflow::Backend& backend = backendNamed(env, stringField(env, options, "backend", "auto"), plan.get());
      backendName_ = backend.info().name;
      memory_.set(env, planBytes(*plan));
      runner_ = backend.prepare(std::move(plan));
    } catch (const Napi::Error&) {
      throw;
    } catch (...) {
      throw Napi::Error::New(env, describe(std::current_exception()));
    }
  }

  void Finalize(Napi::Env env) override { memory_.release(env); }

 private:
  // run({ direction, rows, input?: Float32Array | Float64Array, inputName?, seed?: [lo, hi], firstRow?,
  //       outPoints?, outLogDet?, outLogProb?, async, cancel?: CancelToken })
  Napi::Value run(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!runner_) internalError(env, "the flow was released");
    const Napi::Object o = optionsArg(info, 0, "run");
    const int dim = runner_->plan().dim;
    iaflow::RunRequest req;
    const int64_t direction = countField(env, o, "direction", 0, 0, true);
    if (direction > 1) internalError(env, "direction must be 0 or 1");
    req.direction = static_cast<iaflow::Direction>(direction);
    req.rows = countField(env, o, "rows", 1, 0, true);
    req.seed = seedField(env, o);
    req.firstRow = static_cast<uint64_t>(countField(env, o, "firstRow", 0, 0, false));
    const size_t cells = static_cast<size_t>(req.rows) * dim;
    // Each field is read once (a lookup is a round trip into V8: a batch-1 call's overhead is mostly these).
    const Napi::Value outPoints = o.Get("outPoints"), outLogDet = o.Get("outLogDet"), outLogProb = o.Get("outLogProb");
    req.outPoints = optionalFloatOutput(env, outPoints, cells, "outPoints");
    req.outLogDet = optionalFloatOutput(env, outLogDet, static_cast<size_t>(req.rows), "outLogDet");
    req.outLogProb = optionalFloatOutput(env, outLogProb, static_cast<size_t>(req.rows), "outLogProb");
    const bool async = o.Get("async").ToBoolean().Value();
    auto input = std::make_shared<InputRows>();
    Napi::Value inputValue = o.Get("input");
    if (!inputValue.IsUndefined() && !inputValue.IsNull()) {
      if (!inputValue.IsTypedArray()) internalError(env, "input must be a Float32Array or a Float64Array");
      Napi::TypedArray typed = inputValue.As<Napi::TypedArray>();
      if (typed.ElementLength() != cells) internalError(env, "input has the wrong length");
      input->present = true;
      if (typed.TypedArrayType() == napi_float32_array) {
        const float* p = inputValue.As<Napi::Float32Array>().Data();
        if (async) {
          input->owned = allocateRows(cells);
          std::memcpy(input->owned.get(), p, cells * sizeof(float));
        } else {
          input->borrowed = p;
        }
      } else if (typed.TypedArrayType() == napi_float64_array) {
        const double* p = inputValue.As<Napi::Float64Array>().Data();
        input->owned = allocateRows(cells);
        float* narrowed = input->owned.get();
        for (size_t i = 0; i < cells; ++i) narrowed[i] = static_cast<float>(p[i]);
      } else {
        internalError(env, "input must be a Float32Array or a Float64Array");
      }
    }
    const std::string inputName = input->present ? stringField(env, o, "inputName", "input") : std::string("input");
    // The context rows (TypeScript checked them: Float32Array, finite, 1 or rows rows): copied,
    // as an async run outlives this call.
    auto context = std::make_shared<std::vector<float>>();
    const int contextDim = runner_->plan().contextDim;
    Napi::Value contextValue = o.Get("context");
    if (!contextValue.IsUndefined() && !contextValue.IsNull()) {
      if (!contextValue.IsTypedArray() || contextValue.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
        internalError(env, "context must be a Float32Array");
      Napi::Float32Array c = contextValue.As<Napi::Float32Array>();
      req.contextRows = countField(env, o, "contextRows", 1, 0, true);
      if (contextDim == 0 || c.ElementLength() != static_cast<size_t>(req.contextRows) * contextDim ||
          (req.contextRows != 1 && req.contextRows != req.rows))
        internalError(env, "context has the wrong length");
      context->assign(c.Data(), c.Data() + c.ElementLength());
    }
    std::shared_ptr<iaflow::CancelFlag> cancel = cancelFrom(env, o);
    std::shared_ptr<const iaflow::Runner> runner = runner_;
    auto work = [runner, req, input, inputName, dim, cells, context](const iaflow::CancelFlag& flag) mutable {
      if (!context->empty()) req.context = context->data();
      req.input = prepareInput(*input, inputName, dim, cells);
      req.cancel = &flag;
      runner->run(req);
    };
    return Job::launch(env, async, std::move(work), nullptr, {outPoints, outLogDet, outLogProb, info.This()}, std::move(cancel));
  }

  // Frees the plan now rather than at garbage collection (calls in flight keep their own reference).
  Napi::Value release(const Napi::CallbackInfo& info) {
    runner_.reset();
    memory_.release(info.Env());
    return info.Env().Undefined();
  }

  Napi::Value backendName(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), backendName_); }

  std::shared_ptr<const iaflow::Runner> runner_;
  std::string backendName_;
  ExternalMemory memory_;
};

Napi::Value setThreads(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsNumber()) internalError(info.Env(), "setThreads takes a number");
  iaflow::setThreadCount(info[0].As<Napi::Number>().Int32Value());
  return info.Env().Undefined();
}

Napi::Value getThreads(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), iaflow::currentPool()->size());
}

// standardNormal({ seed: [lo, hi], firstRow, rows, dim, out })
Napi::Value standardNormal(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const Napi::Object o = optionsArg(info, 0, "standardNormal");
  const uint64_t seed = seedField(env, o);
  const int64_t firstRow = countField(env, o, "firstRow", 0, 0, false);
  const int64_t rows = countField(env, o, "rows", 1, 0, true);
  const int64_t dim = countField(env, o, "dim", 1, 0, true);
  float* out = optionalFloatOutput(env, o.Get("out"), static_cast<size_t>(rows * dim), "out");
  if (!out) internalError(env, "out is required");
  iaflow::fillStandardNormal(seed, static_cast<uint64_t>(firstRow), rows, static_cast<int>(dim), out);
  return env.Undefined();
}

// measureMatmulGflops(size, minSeconds): iaflow's own dense rate, beside the bench's external ceilings.
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

// backends(): [{ name, usable, whyNot, detail }], in order of preference.
Napi::Value listBackends(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::vector<const iaflow::Backend*> all = iaflow::backends();
  Napi::Array out = Napi::Array::New(env, all.size());
  for (size_t i = 0; i < all.size(); ++i) {
    const iaflow::BackendInfo b = all[i]->info();
    Napi::Object o = Napi::Object::New(env);
    o.Set("name", b.name);
    o.Set("usable", b.usable);
    o.Set("whyNot", b.whyNot);
    o.Set("detail", b.detail);
    out.Set(static_cast<uint32_t>(i), o);
  }
  return out;
}

// loadBackendLibrary(path): loads and registers a backend library (the CUDA one); "" when it is
// registered (or already was), else why not. The search for the library is src/native.ts's.
Napi::Value loadBackendLibrary(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) internalError(env, "loadBackendLibrary(path)");
  return Napi::String::New(env, iaflow::loadBackendLibrary(info[0].As<Napi::String>().Utf8Value()));
}

// __registerCudaEmulator(): test hook; registers "cuda-emulator" and "cuda-emulator-wide"
// (idempotent), as IAFLOW_CUDA_EMULATOR=1 does at the registry's first use.
Napi::Value registerCudaEmulator(const Napi::CallbackInfo& info) {
  iaflow::registerCudaEmulatorBackends();
  return info.Env().Undefined();
}

// layout(spec?): the native enum codes the spec uses and, given a spec, the [out, in] shape of
// every tensor as parseSpec read it: for the test that pins src/native.ts and src/layers.ts to them.
Napi::Value layout(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto codes = [&](std::initializer_list<std::pair<const char*, int>> entries) {
    Napi::Object o = Napi::Object::New(env);
    for (const auto& e : entries) o.Set(e.first, e.second);
    return o;
  };
  using iaflow::Activation;
  using iaflow::LayerKind;
  using iaflow::ScaleKind;
  Napi::Object out = Napi::Object::New(env);
  out.Set("kind", codes({{"iaf", static_cast<int>(LayerKind::IAF)}, {"maf", static_cast<int>(LayerKind::MAF)},
                         {"permutation", static_cast<int>(LayerKind::Permutation)},
                         {"affine", static_cast<int>(LayerKind::Affine)}}));
  out.Set("activation", codes({{"relu", static_cast<int>(Activation::ReLU)}, {"tanh", static_cast<int>(Activation::Tanh)},
                               {"elu", static_cast<int>(Activation::ELU)}}));
  out.Set("scale", codes({{"softplus", static_cast<int>(ScaleKind::Softplus)}, {"exp", static_cast<int>(ScaleKind::Exp)},
                          {"gated", static_cast<int>(ScaleKind::Gated)}}));
  out.Set("contextForm", codes({{"linear", static_cast<int>(iaflow::ContextForm::Linear)},
                                {"activated", static_cast<int>(iaflow::ContextForm::Activated)}}));
  out.Set("direction", codes({{"toData", static_cast<int>(iaflow::Direction::ToData)},
                              {"toLatent", static_cast<int>(iaflow::Direction::ToLatent)}}));
  if (info.Length() > 0 && !info[0].IsUndefined()) {
    const iaflow::FlowSpec spec = parseSpec(env, info[0]);
    auto shape = [&](const iaflow::DenseLinear& d) {
      Napi::Array a = Napi::Array::New(env, 2);
      a.Set(0u, d.out);
      a.Set(1u, d.in);
      return a;
    };
    Napi::Array layers = Napi::Array::New(env, spec.layers.size());
    for (size_t k = 0; k < spec.layers.size(); ++k) {
      const iaflow::LayerSpec& l = spec.layers[k];
      if (l.kind == LayerKind::Permutation) {
        layers.Set(static_cast<uint32_t>(k), env.Null());
        continue;
      }
      if (l.kind == LayerKind::Affine) {
        Napi::Object o = Napi::Object::New(env);
        o.Set("loc", static_cast<double>(l.affineLoc.size()));
        o.Set("scale", static_cast<double>(l.affineScale.size()));
        layers.Set(static_cast<uint32_t>(k), o);
        continue;
      }
      Napi::Object o = Napi::Object::New(env);
      Napi::Array hidden = Napi::Array::New(env, l.hidden.size());
      for (size_t h = 0; h < l.hidden.size(); ++h) hidden.Set(static_cast<uint32_t>(h), shape(l.hidden[h]));
      o.Set("hidden", hidden);
      o.Set("shift", shape(l.shift));
      o.Set("rawScale", shape(l.rawScale));
      if (spec.contextDim > 0) o.Set("context", shape(l.context));
      layers.Set(static_cast<uint32_t>(k), o);
    }
    out.Set("layers", layers);
  }
  return out;
}

// ---- Training (core/train.h): argument conversion; the work runs as Jobs ----

double* float64Output(Napi::Env env, const Napi::Value& v, size_t expected, const char* what) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float64_array)
    internalError(env, std::string(what) + " must be a Float64Array");
  Napi::Float64Array a = v.As<Napi::Float64Array>();
  if (a.ElementLength() < expected) internalError(env, std::string(what) + " is too short");
  return a.Data();
}

// { learningRate, beta1, beta2, eps, weightDecay, clipGradNorm, ema? } (ema: 0 when left out)
iaflow::OptimizerOptions optimizerOptions(Napi::Env env, const Napi::Value& v) {
  if (!v.IsObject()) internalError(env, "optimizer must be an object");
  const Napi::Object o = v.As<Napi::Object>();
  iaflow::OptimizerOptions opt;
  opt.learningRate = numberField(env, o, "learningRate", 0, true);
  opt.beta1 = numberField(env, o, "beta1", 0, true);
  opt.beta2 = numberField(env, o, "beta2", 0, true);
  opt.eps = numberField(env, o, "eps", 0, true);
  opt.weightDecay = numberField(env, o, "weightDecay", 0, true);
  opt.clipGradNorm = numberField(env, o, "clipGradNorm", 0, true);
  opt.ema = numberField(env, o, "ema", 0, false);
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

// new NativeTrainer({ spec, pass: 0 | 1, teacher?: spec, optimizer: { learningRate, ... }, backend: name })
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
      const Napi::Object o = optionsArg(info, 0, "NativeTrainer");
      iaflow::FlowSpec spec = parseSpec(env, o.Get("spec"));
      const int64_t pass = countField(env, o, "pass", 0, 0, true);
      if (pass > 1) internalError(env, "pass must be 0 or 1");
      std::unique_ptr<iaflow::FlowSpec> teacher;
      Napi::Value teacherValue = o.Get("teacher");
      if (!teacherValue.IsNull() && !teacherValue.IsUndefined()) teacher = std::make_unique<iaflow::FlowSpec>(parseSpec(env, teacherValue));
      const iaflow::Backend& backend = backendNamed(env, stringField(env, o, "backend", "cpu"), nullptr);
      dim_ = spec.dim;
      contextDim_ = spec.contextDim;
      for (const iaflow::LayerSpec& layer : spec.layers) {
        std::vector<int> widths;
        if (layer.kind == iaflow::LayerKind::IAF || layer.kind == iaflow::LayerKind::MAF)
          for (const iaflow::DenseLinear& h : layer.hidden) widths.push_back(h.out);
        widths_.push_back(std::move(widths));
        kinds_.push_back(layer.kind);
      }
      const iaflow::OptimizerOptions optimizer = optimizerOptions(env, o.Get("optimizer"));
      trainer_ = backend.makeTrainer(spec, static_cast<iaflow::Direction>(pass), teacher.get(), optimizer);
      // A backend without a trainer (CUDA, for now) trains on the CPU backend; the flow gets the
      // trained weights back as from any trainer, and prepares them for its own backend again.
      if (!trainer_)
        trainer_ = backendNamed(env, "cpu", nullptr).makeTrainer(spec, static_cast<iaflow::Direction>(pass), teacher.get(), optimizer);
      memory_.set(env, static_cast<int64_t>(trainer_->numParameters()) * 4 * 6);  // params, grads, Adam, EMA, best
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

  // Runs now (sync) or as a Job (async: returns a promise); one call at a time per trainer. The
  // job's cancel flag (an AbortSignal's, or the environment closing) reaches the trainer's
  // multi-step calls, which stop before their next step.
  Napi::Value launch(Napi::Env env, bool async, std::function<void()> work,
                     std::function<Napi::Value(Napi::Env)> result, const std::vector<Napi::Value>& pinned,
                     std::shared_ptr<iaflow::CancelFlag> cancel = nullptr) {
    claim(env);
    if (async) *busy_ = true;
    std::vector<Napi::Value> pins = pinned;
    pins.push_back(Value());
    auto trainer = trainer_;
    auto run = [trainer, work = std::move(work)](const iaflow::CancelFlag& flag) {
      trainer->setCancel(&flag);
      try {
        work();
      } catch (...) {
        trainer->setCancel(nullptr);
        throw;
      }
      trainer->setCancel(nullptr);
    };
    return Job::launch(env, async, std::move(run), std::move(result), pins, std::move(cancel), async ? busy_ : nullptr);
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
    const size_t d = static_cast<size_t>(dim_);
    for (uint32_t k = 0; k < widths_.size(); ++k) {
      if (kinds_[k] == iaflow::LayerKind::Affine) {
        out[k].loc = tensor(layers.Get(k), "loc", d);
        out[k].scale = tensor(layers.Get(k), "scale", d);
        continue;
      }
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
      if (contextDim_ > 0) {
        const size_t h0 = static_cast<size_t>(widths_[k][0]);
        out[k].contextWeight = tensor(layer.Get("context"), "weight", h0 * static_cast<size_t>(contextDim_));
        out[k].contextBias = tensor(layer.Get("context"), "bias", h0);
      }
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

  // setData({ train, trainRows, valid?, validRows?, trainContext?, validContext? }) (contexts: conditional flows)
  Napi::Value setData(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    claim(env);
    const Napi::Object o = optionsArg(info, 0, "setData");
    const int64_t trainRows = countField(env, o, "trainRows", 1, 0, true);
    const int64_t validRows = countField(env, o, "validRows", 0, 0, false);
    const float* train = optionalFloatOutput(env, o.Get("train"), static_cast<size_t>(trainRows) * dim_, "train");
    const float* valid = optionalFloatOutput(env, o.Get("valid"), static_cast<size_t>(validRows) * dim_, "valid");
    const float* trainContext = optionalFloatOutput(env, o.Get("trainContext"), static_cast<size_t>(trainRows) * contextDim_, "trainContext");
    const float* validContext = optionalFloatOutput(env, o.Get("validContext"), static_cast<size_t>(validRows) * contextDim_, "validContext");
    if (!train) internalError(env, "train is required");
    try {
      trainer_->setData(train, trainRows, valid, valid ? validRows : 0, trainContext, validContext);
    } catch (...) {
      throw Napi::Error::New(env, describe(std::current_exception()));
    }
    return env.Undefined();
  }

  // fitBatches({ seed, epoch, firstBatch, batches, batchSize, stats: Float64Array(5), async, cancel? })
  Napi::Value fitBatches(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const Napi::Object o = optionsArg(info, 0, "fitBatches");
    const uint64_t seed = seedField(env, o);
    const int64_t epoch = countField(env, o, "epoch", 0, 0, true);
    const int64_t firstBatch = countField(env, o, "firstBatch", 0, 0, true);
    const int64_t batches = countField(env, o, "batches", 1, 0, true);
    const int64_t batchSize = countField(env, o, "batchSize", 1, 0, true);
    double* stats = float64Output(env, o.Get("stats"), 5, "stats");
    auto trainer = trainer_;
    return launch(env, o.Get("async").ToBoolean().Value(), [=] {
      iaflow::StepStats s;
      trainer->fitBatches(seed, epoch, firstBatch, batches, batchSize, s);
      writeStats(s, stats);
    }, nullptr, {o.Get("stats")}, cancelFrom(env, o));
  }

  // validationLoss({ async }) -> number | Promise<number>
  Napi::Value validationLoss(const Napi::CallbackInfo& info) {
    const Napi::Object o = optionsArg(info, 0, "validationLoss");
    auto trainer = trainer_;
    auto value = std::make_shared<double>(0.0);
    return launch(info.Env(), o.Get("async").ToBoolean().Value(), [=] { *value = trainer->validationLoss(); },
                  [value](Napi::Env env) { return Napi::Number::New(env, *value); }, {});
  }

  // reverseForward({ seed, step, batch, z?, x, logq, async })
  Napi::Value reverseForward(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const Napi::Object o = optionsArg(info, 0, "reverseForward");
    const uint64_t seed = seedField(env, o);
    const int64_t step = countField(env, o, "step", 0, 0, true);
    const int64_t batch = countField(env, o, "batch", 1, 0, true);
    const size_t cells = static_cast<size_t>(batch) * dim_;
    const float* zIn = optionalFloatOutput(env, o.Get("z"), cells, "z");
    float* x = optionalFloatOutput(env, o.Get("x"), cells, "x");
    float* logq = optionalFloatOutput(env, o.Get("logq"), static_cast<size_t>(batch), "logq");
    if (!x || !logq) internalError(env, "x and logq are required");
    auto z = std::make_shared<std::vector<float>>();
    if (zIn) z->assign(zIn, zIn + cells);
    // Conditional flows: the step's contexts, 1 or batch rows (copied: the call may be async).
    auto context = std::make_shared<std::vector<float>>();
    int64_t contextRows = 0;
    if (contextDim_ > 0) {
      contextRows = countField(env, o, "contextRows", 1, 0, true);
      const float* c = optionalFloatOutput(env, o.Get("context"), static_cast<size_t>(contextRows) * contextDim_, "context");
      if (!c) internalError(env, "context is required for a conditional flow");
      context->assign(c, c + contextRows * contextDim_);
    }
    auto trainer = trainer_;
    return launch(env, o.Get("async").ToBoolean().Value(), [=] {
      trainer->reverseForward(seed, step, batch, z->empty() ? nullptr : z->data(), x, logq,
                              context->empty() ? nullptr : context->data(), contextRows);
    }, nullptr, {o.Get("x"), o.Get("logq")});
  }

  // reverseBackward({ targetValue: Float32Array(batch), targetGrad: Float32Array(batch*dim), update, stats,
  //                   stepLoss: Float64Array(1), async })
  Napi::Value reverseBackward(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const Napi::Object o = optionsArg(info, 0, "reverseBackward");
    Napi::Value valueArray = o.Get("targetValue");
    if (!valueArray.IsTypedArray()) internalError(env, "targetValue must be a Float32Array");
    const size_t batch = valueArray.As<Napi::TypedArray>().ElementLength();
    const float* valueIn = optionalFloatOutput(env, valueArray, batch, "targetValue");
    const float* gradIn = optionalFloatOutput(env, o.Get("targetGrad"), batch * dim_, "targetGrad");
    if (!valueIn || !gradIn) internalError(env, "targetValue and targetGrad are required");
    const bool update = o.Get("update").ToBoolean().Value();
    double* stats = float64Output(env, o.Get("stats"), 5, "stats");
    double* stepLoss = float64Output(env, o.Get("stepLoss"), 1, "stepLoss");
    auto value = std::make_shared<std::vector<float>>(valueIn, valueIn + batch);
    auto grad = std::make_shared<std::vector<float>>(gradIn, gradIn + batch * dim_);
    auto trainer = trainer_;
    return launch(env, o.Get("async").ToBoolean().Value(), [=] {
      iaflow::StepStats s;
      trainer->reverseBackward(value->data(), grad->data(), update, s, stepLoss);
      writeStats(s, stats);
    }, nullptr, {o.Get("stats"), o.Get("stepLoss")});
  }

  // distillSteps({ seed, firstStep, steps, batch, betaStart, betaSlope, forwardWeight, stats,
  //                stepLoss: Float64Array(steps), async, cancel? })
  Napi::Value distillSteps(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const Napi::Object o = optionsArg(info, 0, "distillSteps");
    const uint64_t seed = seedField(env, o);
    const int64_t firstStep = countField(env, o, "firstStep", 0, 0, true);
    const int64_t steps = countField(env, o, "steps", 1, 0, true);
    const int64_t batch = countField(env, o, "batch", 1, 0, true);
    const double betaStart = numberField(env, o, "betaStart", 0, true);
    const double betaSlope = numberField(env, o, "betaSlope", 0, true);
    const double forwardWeight = numberField(env, o, "forwardWeight", 0, true);
    double* stats = float64Output(env, o.Get("stats"), 5, "stats");
    double* stepLoss = float64Output(env, o.Get("stepLoss"), static_cast<size_t>(steps), "stepLoss");
    // Conditional flows: every step's contexts, contextRows (1 or batch) per step, copied.
    auto contexts = std::make_shared<std::vector<float>>();
    int64_t contextRows = 0;
    if (contextDim_ > 0) {
      contextRows = countField(env, o, "contextRows", 1, 0, true);
      const float* c = optionalFloatOutput(env, o.Get("context"), static_cast<size_t>(steps * contextRows) * contextDim_, "context");
      if (!c) internalError(env, "context is required for a conditional flow");
      contexts->assign(c, c + steps * contextRows * contextDim_);
    }
    auto trainer = trainer_;
    return launch(env, o.Get("async").ToBoolean().Value(), [=] {
      iaflow::StepStats s;
      trainer->distillSteps(seed, firstStep, steps, batch, betaStart, betaSlope, forwardWeight, s, stepLoss,
                            contexts->empty() ? nullptr : contexts->data(), contextRows);
      writeStats(s, stats);
    }, nullptr, {o.Get("stats"), o.Get("stepLoss")}, cancelFrom(env, o));
  }

  // likelihoodGradient({ x, rows }) -> mean NLL; the gradient stays for gradientTo
  Napi::Value likelihoodGradient(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const Napi::Object o = optionsArg(info, 0, "likelihoodGradient");
    const int64_t rows = countField(env, o, "rows", 1, 0, true);
    const float* x = optionalFloatOutput(env, o.Get("x"), static_cast<size_t>(rows) * dim_, "x");
    if (!x) internalError(env, "x is required");
    const float* context = optionalFloatOutput(env, o.Get("context"), static_cast<size_t>(rows) * contextDim_, "context");
    auto trainer = trainer_;
    auto value = std::make_shared<double>(0.0);
    return launch(env, false, [=] { *value = trainer->likelihoodGradient(x, rows, context); },
                  [value](Napi::Env e) { return Napi::Number::New(e, *value); }, {});
  }

  // logProbGradient({ x, rows, logProb, grad })
  Napi::Value logProbGradient(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const Napi::Object o = optionsArg(info, 0, "logProbGradient");
    const int64_t rows = countField(env, o, "rows", 1, 0, true);
    const size_t cells = static_cast<size_t>(rows) * dim_;
    const float* x = optionalFloatOutput(env, o.Get("x"), cells, "x");
    float* logProb = optionalFloatOutput(env, o.Get("logProb"), static_cast<size_t>(rows), "logProb");
    float* grad = optionalFloatOutput(env, o.Get("grad"), cells, "grad");
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
  int contextDim_ = 0;
  std::vector<std::vector<int>> widths_;  // per layer: hidden widths (empty but for MADE layers)
  std::vector<iaflow::LayerKind> kinds_;
  void Finalize(Napi::Env env) override { memory_.release(env); }

  std::shared_ptr<iaflow::Trainer> trainer_;
  ExternalMemory memory_;
  std::shared_ptr<std::atomic<bool>> busy_ = std::make_shared<std::atomic<bool>>(false);
};

Napi::Object init(Napi::Env env, Napi::Object exports) {
  auto* state = new EnvState();
  state->env = env;
  env.SetInstanceData<EnvState>(state);  // deleted with the environment, after its cleanup hooks
  napi_add_env_cleanup_hook(env, cleanupEnv, state);
  Napi::Function cancelToken = CancelToken::define(env);
  state->cancelTokenClass = Napi::Persistent(cancelToken);
  exports.Set("CancelToken", cancelToken);
  exports.Set("backends", Napi::Function::New(env, listBackends));
  exports.Set("loadBackendLibrary", Napi::Function::New(env, loadBackendLibrary));
  exports.Set("__registerCudaEmulator", Napi::Function::New(env, registerCudaEmulator));
  exports.Set("layout", Napi::Function::New(env, layout));
  exports.Set("measureMatmulGflops", Napi::Function::New(env, measureMatmulGflops));
  exports.Set("kernelInfo", Napi::Function::New(env, kernelInfo));
  exports.Set("selectKernels", Napi::Function::New(env, selectKernels));
  exports.Set("NativeFlow", NativeFlow::define(env));
  exports.Set("setThreads", Napi::Function::New(env, setThreads));
  exports.Set("getThreads", Napi::Function::New(env, getThreads));
  exports.Set("standardNormal", Napi::Function::New(env, standardNormal));
  exports.Set("NativeTrainer", NativeTrainer::define(env));
  return exports;
}

}  // namespace

NODE_API_MODULE(iaflow, init)
