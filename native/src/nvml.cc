#include "nvml.h"

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "args.h"
#include "dynlib.h"
#include "promise_worker.h"
#include "errors.h"

namespace probepilot {
namespace {

// The subset of nvml.h the collector uses, declared from NVML's documented
// ABI (the driver's library keeps these signatures and layouts stable).
using nvmlReturn_t = int;
using nvmlDevice_t = struct nvmlDeviceOpaque*;
using nvmlEventSet_t = struct nvmlEventSetOpaque*;

constexpr nvmlReturn_t kSuccess = 0;
constexpr nvmlReturn_t kNotSupported = 3;
constexpr nvmlReturn_t kNoPermission = 4;
constexpr nvmlReturn_t kNotFound = 6;
constexpr nvmlReturn_t kInsufficientSize = 7;
constexpr nvmlReturn_t kTimeout = 10;
constexpr nvmlReturn_t kFunctionNotFound = 13;

constexpr unsigned kTemperatureGpu = 0;
constexpr unsigned kClockSm = 1;
constexpr unsigned kClockMem = 2;
constexpr unsigned kPcieTx = 0;
constexpr unsigned kPcieRx = 1;
constexpr unsigned kEccCorrected = 0;
constexpr unsigned kEccUncorrected = 1;
constexpr unsigned kEccVolatile = 0;
constexpr unsigned long long kEventXidCriticalError = 0x8;

struct nvmlUtilization_t {
  unsigned int gpu;
  unsigned int memory;
};
struct nvmlMemory_t {
  unsigned long long total;
  unsigned long long free;
  unsigned long long used;
};
struct nvmlProcessInfo_t {
  unsigned int pid;
  unsigned long long usedGpuMemory;
  unsigned int gpuInstanceId;
  unsigned int computeInstanceId;
};
struct nvmlProcessUtilizationSample_t {
  unsigned int pid;
  unsigned long long timeStamp;
  unsigned int smUtil;
  unsigned int memUtil;
  unsigned int encUtil;
  unsigned int decUtil;
};
struct nvmlEventData_t {
  nvmlDevice_t device;
  unsigned long long eventType;
  unsigned long long eventData;
  unsigned int gpuInstanceId;
  unsigned int computeInstanceId;
};

// NVML's own names for its return codes, for messages and error codes.
std::string ReturnName(nvmlReturn_t code) {
  static const std::map<int, const char*> names = {
      {1, "UNINITIALIZED"}, {2, "INVALID_ARGUMENT"}, {3, "NOT_SUPPORTED"}, {4, "NO_PERMISSION"},
      {5, "ALREADY_INITIALIZED"}, {6, "NOT_FOUND"}, {7, "INSUFFICIENT_SIZE"}, {8, "INSUFFICIENT_POWER"},
      {9, "DRIVER_NOT_LOADED"}, {10, "TIMEOUT"}, {11, "IRQ_ISSUE"}, {12, "LIBRARY_NOT_FOUND"},
      {13, "FUNCTION_NOT_FOUND"}, {14, "CORRUPTED_INFOROM"}, {15, "GPU_IS_LOST"}, {16, "RESET_REQUIRED"},
      {17, "OPERATING_SYSTEM"}, {18, "LIB_RM_VERSION_MISMATCH"}, {19, "IN_USE"}, {20, "MEMORY"},
      {21, "NO_DATA"}, {22, "VGPU_ECC_NOT_SUPPORTED"}, {23, "INSUFFICIENT_RESOURCES"}, {999, "UNKNOWN"}};
  auto found = names.find(code);
  return found == names.end() ? "ERROR_" + std::to_string(code) : std::string("NVML_ERROR_") + found->second;
}

// A field NVML cannot give for this device (an older GPU, a missing
// permission, no processes yet) is absent, not an error of the GPU.
bool Unavailable(nvmlReturn_t code) {
  return code == kNotSupported || code == kNoPermission || code == kNotFound || code == kFunctionNotFound;
}

struct NvmlError {
  nvmlReturn_t code;
  std::string call;
  std::string message;
};

class Library {
 public:
  static std::shared_ptr<Library> Open(const std::string& path, NvmlError* error) {
    std::string loadError;
    std::unique_ptr<DynamicLibrary> dynamic = DynamicLibrary::Open(path, &loadError);
    if (!dynamic) {
      *error = {12, "dlopen", loadError};
      return nullptr;
    }
    std::shared_ptr<Library> library(new Library(std::move(dynamic)));
    for (const char* required : {"nvmlInit_v2", "nvmlShutdown", "nvmlErrorString", "nvmlDeviceGetCount_v2",
                                 "nvmlDeviceGetHandleByIndex_v2", "nvmlDeviceGetUUID", "nvmlDeviceGetName"}) {
      if (library->Symbol(required) == nullptr) {
        *error = {kFunctionNotFound, "dlsym", path + " has no " + required + ": not NVML, or too old a driver"};
        return nullptr;
      }
    }
    const nvmlReturn_t init = library->Call<nvmlReturn_t (*)()>("nvmlInit_v2")();
    if (init != kSuccess) {
      *error = library->Error(init, "nvmlInit_v2");
      return nullptr;
    }
    library->initialized_ = true;
    library->CreateEventSet();
    return library;
  }

  ~Library() {
    if (events_ != nullptr) Call<nvmlReturn_t (*)(nvmlEventSet_t)>("nvmlEventSetFree")(events_);
    if (initialized_) Call<nvmlReturn_t (*)()>("nvmlShutdown")();
  }
  Library(const Library&) = delete;
  Library& operator=(const Library&) = delete;

  void* Symbol(const char* name) { return library_->Symbol(name); }

  // Resolved per call: optional functions (newer drivers) may be absent.
  template <typename Fn>
  Fn Call(const char* name) {
    return library_->Function<Fn>(name);
  }

  template <typename Fn>
  bool Has(const char* name) {
    return Symbol(name) != nullptr;
  }

  NvmlError Error(nvmlReturn_t code, const std::string& call) {
    auto describe = Call<const char* (*)(nvmlReturn_t)>("nvmlErrorString");
    const char* text = describe != nullptr ? describe(code) : nullptr;
    return {code, call, call + ": " + (text != nullptr ? text : "error") + " (" + ReturnName(code) + ")"};
  }

  std::mutex& Mutex() { return mutex_; }
  nvmlEventSet_t Events() const { return events_; }
  // Devices registered for XID events, by handle.
  std::map<nvmlDevice_t, bool>& Registered() { return registered_; }
  // XID events counted so far per device index and XID.
  std::map<unsigned, std::map<unsigned long long, double>>& Xids() { return xids_; }

 private:
  explicit Library(std::unique_ptr<DynamicLibrary> library) : library_(std::move(library)) {}

  void CreateEventSet() {
    auto create = Call<nvmlReturn_t (*)(nvmlEventSet_t*)>("nvmlEventSetCreate");
    if (create == nullptr || !Has<void*>("nvmlDeviceRegisterEvents") || !Has<void*>("nvmlEventSetWait_v2") ||
        !Has<void*>("nvmlEventSetFree")) {
      return;
    }
    if (create(&events_) != kSuccess) events_ = nullptr;
  }

  std::unique_ptr<DynamicLibrary> library_;
  bool initialized_ = false;
  nvmlEventSet_t events_ = nullptr;
  std::map<nvmlDevice_t, bool> registered_;
  std::map<unsigned, std::map<unsigned long long, double>> xids_;
  std::mutex mutex_;
};

struct ProcessMemory {
  unsigned pid;
  double bytes;
};
struct ProcessUtilization {
  unsigned pid;
  double sm;
  double memory;
};

struct DeviceSample {
  unsigned index = 0;
  std::string uuid;
  std::string name;
  std::optional<NvmlError> error;
  std::map<std::string, double> values;
  std::vector<ProcessMemory> processes;
  std::vector<ProcessUtilization> utilization;
  bool xidsSupported = false;
};

struct Snapshot {
  std::string driverVersion;
  std::vector<DeviceSample> devices;
  std::map<unsigned, std::map<unsigned long long, double>> xids;
};

// Reads one device. Fields the device does not support stay absent; any
// other failure ends the device's sample with that error (its GPU is marked
// down, the others are not affected).
class DeviceReader {
 public:
  DeviceReader(Library& nvml, nvmlDevice_t device, DeviceSample& out) : nvml_(nvml), device_(device), out_(out) {}

  void Read(unsigned long long lastUtilizationSeen) {
    if (!Value<nvmlUtilization_t>("nvmlDeviceGetUtilizationRates", [&](nvmlUtilization_t& u) {
          out_.values["utilization_gpu"] = u.gpu;
          out_.values["utilization_memory"] = u.memory;
        })) {
      return;
    }
    if (!Value<nvmlMemory_t>("nvmlDeviceGetMemoryInfo", [&](nvmlMemory_t& m) {
          out_.values["memory_total"] = static_cast<double>(m.total);
          out_.values["memory_free"] = static_cast<double>(m.free);
          out_.values["memory_used"] = static_cast<double>(m.used);
        })) {
      return;
    }
    if (!Scalar<unsigned>("nvmlDeviceGetPowerUsage", "power_milliwatts")) return;
    if (!Scalar<unsigned long long>("nvmlDeviceGetTotalEnergyConsumption", "energy_millijoules")) return;
    if (!Scalar<unsigned>("nvmlDeviceGetTemperature", "temperature_celsius", kTemperatureGpu)) return;
    if (!Scalar<unsigned>("nvmlDeviceGetClockInfo", "sm_clock_mhz", kClockSm)) return;
    if (!Scalar<unsigned>("nvmlDeviceGetClockInfo", "memory_clock_mhz", kClockMem)) return;
    if (!Scalar<unsigned>("nvmlDeviceGetPcieThroughput", "pcie_tx_kilobytes_per_second", kPcieTx)) return;
    if (!Scalar<unsigned>("nvmlDeviceGetPcieThroughput", "pcie_rx_kilobytes_per_second", kPcieRx)) return;
    if (!Ecc("ecc_corrected", kEccCorrected) || !Ecc("ecc_uncorrected", kEccUncorrected)) return;
    if (!Processes()) return;
    ProcessUtilizations(lastUtilizationSeen);
  }

  unsigned long long latestUtilizationSample = 0;

 private:
  bool Check(nvmlReturn_t code, const char* call) {
    if (code == kSuccess || Unavailable(code)) return true;
    out_.error = nvml_.Error(code, call);
    return false;
  }

  template <typename T, typename Fn>
  bool Value(const char* call, Fn onValue) {
    auto fn = nvml_.Call<nvmlReturn_t (*)(nvmlDevice_t, T*)>(call);
    if (fn == nullptr) return true;
    T value{};
    const nvmlReturn_t code = fn(device_, &value);
    if (code == kSuccess) onValue(value);
    return Check(code, call);
  }

  template <typename T>
  bool Scalar(const char* call, const char* key) {
    return Value<T>(call, [&](T& v) { out_.values[key] = static_cast<double>(v); });
  }

  template <typename T>
  bool Scalar(const char* call, const char* key, unsigned selector) {
    auto fn = nvml_.Call<nvmlReturn_t (*)(nvmlDevice_t, unsigned, T*)>(call);
    if (fn == nullptr) return true;
    T value{};
    const nvmlReturn_t code = fn(device_, selector, &value);
    if (code == kSuccess) out_.values[key] = static_cast<double>(value);
    return Check(code, call);
  }

  bool Ecc(const char* key, unsigned errorType) {
    const char* call = "nvmlDeviceGetTotalEccErrors";
    auto fn = nvml_.Call<nvmlReturn_t (*)(nvmlDevice_t, unsigned, unsigned, unsigned long long*)>(call);
    if (fn == nullptr) return true;
    unsigned long long count = 0;
    const nvmlReturn_t code = fn(device_, errorType, kEccVolatile, &count);
    if (code == kSuccess) out_.values[key] = static_cast<double>(count);
    return Check(code, call);
  }

  // Compute processes with their memory; the list can grow between the size
  // query and the read, so a few attempts.
  bool Processes() {
    const char* call = nvml_.Has<void*>("nvmlDeviceGetComputeRunningProcesses_v3") ? "nvmlDeviceGetComputeRunningProcesses_v3"
                                                                                    : "nvmlDeviceGetComputeRunningProcesses_v2";
    auto fn = nvml_.Call<nvmlReturn_t (*)(nvmlDevice_t, unsigned*, nvmlProcessInfo_t*)>(call);
    if (fn == nullptr) return true;
    std::vector<nvmlProcessInfo_t> infos(16);
    for (int attempt = 0; attempt < 4; attempt++) {
      unsigned count = static_cast<unsigned>(infos.size());
      const nvmlReturn_t code = fn(device_, &count, infos.data());
      if (code == kInsufficientSize) {
        infos.resize(count + 8);
        continue;
      }
      if (code != kSuccess) return Check(code, call);
      for (unsigned i = 0; i < count && i < infos.size(); i++) {
        out_.processes.push_back({infos[i].pid, static_cast<double>(infos[i].usedGpuMemory)});
      }
      return true;
    }
    return true;
  }

  // Per-process SM and memory utilization samples newer than the last ones seen.
  void ProcessUtilizations(unsigned long long lastSeen) {
    const char* call = "nvmlDeviceGetProcessUtilization";
    auto fn = nvml_.Call<nvmlReturn_t (*)(nvmlDevice_t, nvmlProcessUtilizationSample_t*, unsigned*, unsigned long long)>(call);
    if (fn == nullptr) return;
    unsigned count = 0;
    nvmlReturn_t code = fn(device_, nullptr, &count, lastSeen);
    if (code != kInsufficientSize || count == 0) return;
    std::vector<nvmlProcessUtilizationSample_t> samples(count);
    code = fn(device_, samples.data(), &count, lastSeen);
    if (code != kSuccess) return;
    std::map<unsigned, std::pair<double, double>> sums;
    std::map<unsigned, int> counts;
    for (unsigned i = 0; i < count && i < samples.size(); i++) {
      const auto& s = samples[i];
      sums[s.pid].first += s.smUtil;
      sums[s.pid].second += s.memUtil;
      counts[s.pid]++;
      if (s.timeStamp > latestUtilizationSample) latestUtilizationSample = s.timeStamp;
    }
    for (const auto& [pid, sum] : sums) {
      out_.utilization.push_back({pid, sum.first / counts[pid], sum.second / counts[pid]});
    }
  }

  Library& nvml_;
  nvmlDevice_t device_;
  DeviceSample& out_;
};

std::string ReadString(Library& nvml, const char* call, nvmlDevice_t device, NvmlError* error) {
  char buffer[256] = {0};
  const nvmlReturn_t code = nvml.Call<nvmlReturn_t (*)(nvmlDevice_t, char*, unsigned)>(call)(device, buffer, sizeof(buffer));
  if (code != kSuccess) *error = nvml.Error(code, call);
  return buffer;
}

struct SampleState {
  std::shared_ptr<Library> library;
  // Per device index: the newest process-utilization timestamp seen.
  std::map<unsigned, unsigned long long> utilizationSeen;
};

// Reads every device; errors of NVML itself (the device count) fail the sample.
bool TakeSample(SampleState& state, Snapshot& out, NvmlError* error) {
  Library& nvml = *state.library;
  std::lock_guard<std::mutex> lock(nvml.Mutex());
  char version[96] = {0};
  auto driverVersion = nvml.Call<nvmlReturn_t (*)(char*, unsigned)>("nvmlSystemGetDriverVersion");
  if (driverVersion != nullptr && driverVersion(version, sizeof(version)) == kSuccess) out.driverVersion = version;

  unsigned count = 0;
  const nvmlReturn_t code = nvml.Call<nvmlReturn_t (*)(unsigned*)>("nvmlDeviceGetCount_v2")(&count);
  if (code != kSuccess) {
    *error = nvml.Error(code, "nvmlDeviceGetCount_v2");
    return false;
  }
  std::map<nvmlDevice_t, unsigned> indexOf;
  for (unsigned index = 0; index < count; index++) {
    DeviceSample device;
    device.index = index;
    nvmlDevice_t handle = nullptr;
    const nvmlReturn_t got = nvml.Call<nvmlReturn_t (*)(unsigned, nvmlDevice_t*)>("nvmlDeviceGetHandleByIndex_v2")(index, &handle);
    if (got != kSuccess) {
      device.error = nvml.Error(got, "nvmlDeviceGetHandleByIndex_v2");
      out.devices.push_back(std::move(device));
      continue;
    }
    indexOf[handle] = index;
    NvmlError labelError{kSuccess, "", ""};
    device.uuid = ReadString(nvml, "nvmlDeviceGetUUID", handle, &labelError);
    if (labelError.code == kSuccess) device.name = ReadString(nvml, "nvmlDeviceGetName", handle, &labelError);
    if (labelError.code != kSuccess) {
      device.error = labelError;
    } else {
      DeviceReader reader(nvml, handle, device);
      reader.Read(state.utilizationSeen[index]);
      if (reader.latestUtilizationSample > state.utilizationSeen[index]) state.utilizationSeen[index] = reader.latestUtilizationSample;
    }
    if (nvml.Events() != nullptr) {
      auto& registered = nvml.Registered();
      if (registered.find(handle) == registered.end()) {
        auto registerEvents = nvml.Call<nvmlReturn_t (*)(nvmlDevice_t, unsigned long long, nvmlEventSet_t)>("nvmlDeviceRegisterEvents");
        registered[handle] = registerEvents(handle, kEventXidCriticalError, nvml.Events()) == kSuccess;
      }
      device.xidsSupported = registered[handle];
    }
    out.devices.push_back(std::move(device));
  }

  // XID events queue in the driver between samples: drain them without waiting.
  if (nvml.Events() != nullptr) {
    auto wait = nvml.Call<nvmlReturn_t (*)(nvmlEventSet_t, nvmlEventData_t*, unsigned)>("nvmlEventSetWait_v2");
    for (int drained = 0; drained < 10000; drained++) {
      nvmlEventData_t event{};
      const nvmlReturn_t waited = wait(nvml.Events(), &event, 0);
      if (waited != kSuccess) break;  // kTimeout: none left
      if ((event.eventType & kEventXidCriticalError) == 0) continue;
      auto found = indexOf.find(event.device);
      if (found != indexOf.end()) nvml.Xids()[found->second][event.eventData]++;
    }
  }
  out.xids = nvml.Xids();
  return true;
}

Napi::Error MakeNvmlError(Napi::Env env, const NvmlError& error) {
  Napi::Error result = Napi::Error::New(env, error.message);
  result.Set("code", Napi::String::New(env, ReturnName(error.code)));
  result.Set("nvmlReturn", Napi::Number::New(env, error.code));
  result.Set("call", Napi::String::New(env, error.call));
  return result;
}

Napi::Object SnapshotToJs(Napi::Env env, const Snapshot& snapshot) {
  Napi::Object result = Napi::Object::New(env);
  result.Set("driverVersion", snapshot.driverVersion);
  Napi::Array devices = Napi::Array::New(env, snapshot.devices.size());
  for (size_t i = 0; i < snapshot.devices.size(); i++) {
    const DeviceSample& d = snapshot.devices[i];
    Napi::Object device = Napi::Object::New(env);
    device.Set("index", d.index);
    device.Set("uuid", d.uuid);
    device.Set("name", d.name);
    if (d.error) device.Set("error", MakeNvmlError(env, *d.error).Value());
    Napi::Object values = Napi::Object::New(env);
    for (const auto& [key, value] : d.values) values.Set(key, value);
    device.Set("values", values);
    Napi::Array processes = Napi::Array::New(env, d.processes.size());
    for (size_t p = 0; p < d.processes.size(); p++) {
      Napi::Object process = Napi::Object::New(env);
      process.Set("pid", d.processes[p].pid);
      process.Set("memoryBytes", d.processes[p].bytes);
      processes.Set(static_cast<uint32_t>(p), process);
    }
    device.Set("processes", processes);
    Napi::Array utilization = Napi::Array::New(env, d.utilization.size());
    for (size_t p = 0; p < d.utilization.size(); p++) {
      Napi::Object sample = Napi::Object::New(env);
      sample.Set("pid", d.utilization[p].pid);
      sample.Set("smPercent", d.utilization[p].sm);
      sample.Set("memoryPercent", d.utilization[p].memory);
      utilization.Set(static_cast<uint32_t>(p), sample);
    }
    device.Set("processUtilization", utilization);
    Napi::Object xids = Napi::Object::New(env);
    auto found = snapshot.xids.find(d.index);
    if (found != snapshot.xids.end()) {
      for (const auto& [xid, count] : found->second) xids.Set(std::to_string(xid), count);
    }
    device.Set("xidEventsSupported", d.xidsSupported);
    device.Set("xids", xids);
    devices.Set(static_cast<uint32_t>(i), device);
  }
  result.Set("devices", devices);
  return result;
}

class NvmlSessionWrap : public Napi::ObjectWrap<NvmlSessionWrap> {
 public:
  static Napi::Function DefineClass(Napi::Env env) {
    return Napi::ObjectWrap<NvmlSessionWrap>::DefineClass(
        env, "NvmlSession",
        {InstanceMethod<&NvmlSessionWrap::Sample>("sample"), InstanceMethod<&NvmlSessionWrap::Close>("close")});
  }

  explicit NvmlSessionWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NvmlSessionWrap>(info) {}

  void Adopt(std::shared_ptr<Library> library) { state_ = std::make_shared<SampleState>(SampleState{std::move(library), {}}); }

 private:
  Napi::Value Sample(const Napi::CallbackInfo& info);
  // The library is shut down when the last running sample lets go of it.
  void Close(const Napi::CallbackInfo&) { state_.reset(); }

  std::shared_ptr<SampleState> state_;
};

Napi::Value NvmlSessionWrap::Sample(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!state_) {
    Napi::Promise::Deferred deferred = Napi::Promise::Deferred::New(env);
    deferred.Reject(Napi::Error::New(env, "sample(): the NVML session is closed").Value());
    return deferred.Promise();
  }
  std::shared_ptr<SampleState> state = state_;
  return PromiseWorker<Snapshot, NvmlError>::Start(
      env, "probepilot.nvmlSample", [state](Snapshot& out, NvmlError& error) { return TakeSample(*state, out, &error); },
      [](Napi::Env env, Snapshot& snapshot) -> Napi::Value { return SnapshotToJs(env, snapshot); },
      [](Napi::Env env, const NvmlError& error) { return MakeNvmlError(env, error).Value(); });
}

Napi::Value OpenNvml(const Napi::CallbackInfo& info) {
  const std::string path = StringArg(info, 0, "openNvml", "libraryPath");
  auto* sessionClass = static_cast<Napi::FunctionReference*>(info.Data());
  return PromiseWorker<std::shared_ptr<Library>, NvmlError>::Start(
      info.Env(), "probepilot.openNvml",
      [path](std::shared_ptr<Library>& library, NvmlError& error) { return (library = Library::Open(path, &error)) != nullptr; },
      [sessionClass](Napi::Env, std::shared_ptr<Library>& library) -> Napi::Value {
        Napi::Object session = sessionClass->New({});
        NvmlSessionWrap::Unwrap(session)->Adopt(std::move(library));
        return session;
      },
      [](Napi::Env env, const NvmlError& error) { return MakeNvmlError(env, error).Value(); });
}

}  // namespace

void InitNvml(Napi::Env env, Napi::Object exports) {
  // The session class travels as openNvml's data (the environment's one instance-data slot is the stats handles').
  auto* sessionClass = new Napi::FunctionReference(Napi::Persistent(NvmlSessionWrap::DefineClass(env)));
  env.AddCleanupHook([sessionClass]() { delete sessionClass; });
  exports.Set("openNvml", Napi::Function::New(env, OpenNvml, "openNvml", sessionClass));
}

}  // namespace probepilot
