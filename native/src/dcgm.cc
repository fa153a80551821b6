#include "dcgm.h"

#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "args.h"
#include "dynlib.h"
#include "promise_worker.h"

namespace probepilot {
namespace {

// The subset of dcgm_agent.h / dcgm_structs.h the collector uses, declared
// from DCGM's documented ABI (stable across DCGM 2–4 for these calls).
using dcgmReturn_t = int;
using dcgmHandle_t = uintptr_t;
using dcgmFieldGrp_t = uintptr_t;
using dcgmGpuGrp_t = uintptr_t;

constexpr dcgmReturn_t kOk = 0;
constexpr int kOperationModeAuto = 1;
constexpr dcgmGpuGrp_t kGroupAllGpus = 0x7fffffff;
constexpr unsigned short kFieldGpuUuid = 54;
constexpr unsigned short kTypeDouble = 'd';
constexpr unsigned short kTypeInt64 = 'i';
constexpr unsigned short kTypeString = 's';
constexpr double kDoubleBlank = 140737488355328.0;
constexpr int64_t kInt64Blank = 0x7ffffffffffffff0LL;
// Watch every second, keep a few seconds: values are never older than a scrape needs.
constexpr long long kUpdateMicroseconds = 1000000;
constexpr double kMaxKeepSeconds = 5.0;
constexpr int kMaxKeepSamples = 2;
// Larger than any DCGM's DCGM_MAX_NUM_DEVICES, which DCGM fills at most.
constexpr int kMaxGpus = 256;

struct dcgmFieldValue_v1 {
  unsigned int version;
  unsigned short fieldId;
  unsigned short fieldType;
  int status;
  int64_t ts;
  union {
    int64_t i64;
    double dbl;
    char str[256];
    char blob[4096];
  } value;
};
constexpr unsigned int kFieldValueVersion1 = static_cast<unsigned int>(sizeof(dcgmFieldValue_v1) | (1u << 24));

// DCGM_FI_PROF_*: what DCGM adds to NVML.
const std::vector<unsigned short> kProfilingFields = {1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008, 1011, 1012};

class Engine {
 public:
  static std::shared_ptr<Engine> Open(const std::string& path, std::string* error) {
    std::string loadError;
    std::unique_ptr<DynamicLibrary> library = DynamicLibrary::Open(path, &loadError);
    if (!library) {
      *error = loadError;
      return nullptr;
    }
    for (const char* required : {"dcgmInit", "dcgmShutdown", "dcgmStartEmbedded", "dcgmStopEmbedded", "errorString",
                                 "dcgmGetAllSupportedDevices", "dcgmFieldGroupCreate", "dcgmFieldGroupDestroy",
                                 "dcgmWatchFields", "dcgmGetLatestValuesForFields"}) {
      if (library->Symbol(required) == nullptr) {
        *error = path + " has no " + required + ": not DCGM, or too old a version";
        return nullptr;
      }
    }
    std::shared_ptr<Engine> engine(new Engine(std::move(library)));
    if (!engine->Start(error)) return nullptr;
    return engine;
  }

  ~Engine() {
    for (dcgmFieldGrp_t group : groups_) Fn<dcgmReturn_t (*)(dcgmHandle_t, dcgmFieldGrp_t)>("dcgmFieldGroupDestroy")(handle_, group);
    if (started_) Fn<dcgmReturn_t (*)(dcgmHandle_t)>("dcgmStopEmbedded")(handle_);
    if (initialized_) Fn<dcgmReturn_t (*)()>("dcgmShutdown")();
  }
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Why the profiling fields are not watched ("" when they are).
  const std::string& profilingError() const { return profilingError_; }

  struct Gpu {
    unsigned id;
    std::string uuid;
    std::map<unsigned, double> values;
  };

  bool Sample(std::vector<Gpu>& out, std::string* error) {
    std::lock_guard<std::mutex> lock(mutex_);
    unsigned int ids[kMaxGpus] = {0};
    int count = 0;
    const dcgmReturn_t listed = Fn<dcgmReturn_t (*)(dcgmHandle_t, unsigned int*, int*)>("dcgmGetAllSupportedDevices")(handle_, ids, &count);
    if (listed != kOk) {
      *error = Describe(listed, "dcgmGetAllSupportedDevices");
      return false;
    }
    std::vector<unsigned short> fields = {kFieldGpuUuid};
    if (profilingError_.empty()) fields.insert(fields.end(), kProfilingFields.begin(), kProfilingFields.end());
    auto latest = Fn<dcgmReturn_t (*)(dcgmHandle_t, int, unsigned short*, unsigned int, dcgmFieldValue_v1*)>("dcgmGetLatestValuesForFields");
    for (int i = 0; i < count && i < kMaxGpus; i++) {
      std::vector<dcgmFieldValue_v1> values(fields.size());
      for (auto& v : values) v.version = kFieldValueVersion1;
      if (latest(handle_, static_cast<int>(ids[i]), fields.data(), static_cast<unsigned>(fields.size()), values.data()) != kOk) continue;
      Gpu gpu{ids[i], "", {}};
      for (const auto& v : values) {
        if (v.status != kOk) continue;
        if (v.fieldType == kTypeString && v.fieldId == kFieldGpuUuid) {
          gpu.uuid.assign(v.value.str, strnlen(v.value.str, sizeof(v.value.str)));
        } else if (v.fieldType == kTypeDouble && v.value.dbl < kDoubleBlank) {
          gpu.values[v.fieldId] = v.value.dbl;
        } else if (v.fieldType == kTypeInt64 && v.value.i64 < kInt64Blank) {
          gpu.values[v.fieldId] = static_cast<double>(v.value.i64);
        }
      }
      if (!gpu.uuid.empty()) out.push_back(std::move(gpu));
    }
    return true;
  }

 private:
  explicit Engine(std::unique_ptr<DynamicLibrary> library) : library_(std::move(library)) {}

  template <typename F>
  F Fn(const char* name) {
    return library_->Function<F>(name);
  }

  std::string Describe(dcgmReturn_t code, const char* call) {
    const char* text = Fn<const char* (*)(dcgmReturn_t)>("errorString")(code);
    return std::string(call) + ": " + (text != nullptr ? text : "error") + " (DCGM " + std::to_string(code) + ")";
  }

  // Watches fields on every GPU; "" or why not.
  std::string Watch(std::vector<unsigned short> fields, const char* name) {
    dcgmFieldGrp_t group = 0;
    const dcgmReturn_t created = Fn<dcgmReturn_t (*)(dcgmHandle_t, int, unsigned short*, const char*, dcgmFieldGrp_t*)>("dcgmFieldGroupCreate")(
        handle_, static_cast<int>(fields.size()), fields.data(), name, &group);
    if (created != kOk) return Describe(created, "dcgmFieldGroupCreate");
    groups_.push_back(group);
    const dcgmReturn_t watched = Fn<dcgmReturn_t (*)(dcgmHandle_t, dcgmGpuGrp_t, dcgmFieldGrp_t, long long, double, int)>("dcgmWatchFields")(
        handle_, kGroupAllGpus, group, kUpdateMicroseconds, kMaxKeepSeconds, kMaxKeepSamples);
    return watched == kOk ? "" : Describe(watched, "dcgmWatchFields");
  }

  bool Start(std::string* error) {
    const dcgmReturn_t init = Fn<dcgmReturn_t (*)()>("dcgmInit")();
    if (init != kOk) {
      *error = Describe(init, "dcgmInit");
      return false;
    }
    initialized_ = true;
    const dcgmReturn_t started = Fn<dcgmReturn_t (*)(int, dcgmHandle_t*)>("dcgmStartEmbedded")(kOperationModeAuto, &handle_);
    if (started != kOk) {
      *error = Describe(started, "dcgmStartEmbedded");
      return false;
    }
    started_ = true;
    const std::string identity = Watch({kFieldGpuUuid}, "probepilot-identity");
    if (!identity.empty()) {
      *error = identity;
      return false;
    }
    // Profiling needs a datacenter GPU and DCGM's profiling module; without them DCGM only names GPUs.
    profilingError_ = Watch(kProfilingFields, "probepilot-profiling");
    return true;
  }

  std::unique_ptr<DynamicLibrary> library_;
  dcgmHandle_t handle_ = 0;
  bool initialized_ = false;
  bool started_ = false;
  std::vector<dcgmFieldGrp_t> groups_;
  std::string profilingError_;
  std::mutex mutex_;
};

class DcgmSessionWrap : public Napi::ObjectWrap<DcgmSessionWrap> {
 public:
  static Napi::Function DefineClass(Napi::Env env) {
    return Napi::ObjectWrap<DcgmSessionWrap>::DefineClass(
        env, "DcgmSession",
        {InstanceMethod<&DcgmSessionWrap::Sample>("sample"), InstanceMethod<&DcgmSessionWrap::Close>("close"),
         InstanceAccessor<&DcgmSessionWrap::ProfilingError>("profilingError")});
  }

  explicit DcgmSessionWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<DcgmSessionWrap>(info) {}

  void Adopt(std::shared_ptr<Engine> engine) { engine_ = std::move(engine); }

 private:
  Napi::Value Sample(const Napi::CallbackInfo& info);
  // The engine stops once no running sample holds it.
  void Close(const Napi::CallbackInfo&) { engine_.reset(); }
  Napi::Value ProfilingError(const Napi::CallbackInfo& info) {
    return Napi::String::New(info.Env(), engine_ ? engine_->profilingError() : "closed");
  }

  std::shared_ptr<Engine> engine_;
};

Napi::Value DcgmSessionWrap::Sample(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!engine_) {
    Napi::Promise::Deferred deferred = Napi::Promise::Deferred::New(env);
    deferred.Reject(Napi::Error::New(env, "sample(): the DCGM session is closed").Value());
    return deferred.Promise();
  }
  std::shared_ptr<Engine> engine = engine_;
  return PromiseWorker<std::vector<Engine::Gpu>, std::string>::Start(
      env, "probepilot.dcgmSample", [engine](std::vector<Engine::Gpu>& gpus, std::string& error) { return engine->Sample(gpus, &error); },
      [](Napi::Env env, std::vector<Engine::Gpu>& gpus) -> Napi::Value {
        Napi::Array result = Napi::Array::New(env, gpus.size());
        for (size_t i = 0; i < gpus.size(); i++) {
          Napi::Object gpu = Napi::Object::New(env);
          gpu.Set("gpuId", gpus[i].id);
          gpu.Set("uuid", gpus[i].uuid);
          Napi::Object values = Napi::Object::New(env);
          for (const auto& [field, value] : gpus[i].values) values.Set(std::to_string(field), value);
          gpu.Set("values", values);
          result.Set(static_cast<uint32_t>(i), gpu);
        }
        return result;
      },
      [](Napi::Env env, const std::string& error) { return Napi::Error::New(env, error).Value(); });
}

Napi::Value OpenDcgm(const Napi::CallbackInfo& info) {
  const std::string path = StringArg(info, 0, "openDcgm", "libraryPath");
  auto* sessionClass = static_cast<Napi::FunctionReference*>(info.Data());
  return PromiseWorker<std::shared_ptr<Engine>, std::string>::Start(
      info.Env(), "probepilot.openDcgm",
      [path](std::shared_ptr<Engine>& engine, std::string& error) { return (engine = Engine::Open(path, &error)) != nullptr; },
      [sessionClass](Napi::Env, std::shared_ptr<Engine>& engine) -> Napi::Value {
        Napi::Object session = sessionClass->New({});
        DcgmSessionWrap::Unwrap(session)->Adopt(std::move(engine));
        return session;
      },
      [](Napi::Env env, const std::string& error) { return Napi::Error::New(env, error).Value(); });
}

}  // namespace

void InitDcgm(Napi::Env env, Napi::Object exports) {
  auto* sessionClass = new Napi::FunctionReference(Napi::Persistent(DcgmSessionWrap::DefineClass(env)));
  env.AddCleanupHook([sessionClass]() { delete sessionClass; });
  exports.Set("openDcgm", Napi::Function::New(env, OpenDcgm, "openDcgm", sessionClass));
}

}  // namespace probepilot
