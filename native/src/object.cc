#include "object.h"

#include <bpf/bpf.h>
#include <bpf/btf.h>

#include <cerrno>
#include <cstring>

#include "args.h"
#include "libbpf_log.h"
#include "maps.h"

namespace probepilot {

Napi::Function BpfObjectWrap::DefineClass(Napi::Env env) {
  return ObjectWrap::DefineClass(
      env, "BpfObject",
      {
          InstanceMethod<&BpfObjectWrap::SetConst>("setConst"),
          InstanceMethod<&BpfObjectWrap::SetMapMaxEntries>("setMapMaxEntries"),
          InstanceMethod<&BpfObjectWrap::SetMapPinPath>("setMapPinPath"),
          InstanceMethod<&BpfObjectWrap::Load>("load"),
          InstanceMethod<&BpfObjectWrap::Maps>("maps"),
          InstanceMethod<&BpfObjectWrap::Programs>("programs"),
          InstanceMethod<&BpfObjectWrap::AttachTc>("attachTc"),
          InstanceMethod<&BpfObjectWrap::AttachTracepoint>("attachTracepoint"),
          InstanceMethod<&BpfObjectWrap::AttachRawTracepoint>("attachRawTracepoint"),
          InstanceMethod<&BpfObjectWrap::AttachAuto>("attachAuto"),
          InstanceMethod<&BpfObjectWrap::Detach>("detach"),
          InstanceMethod<&BpfObjectWrap::PinAttachment>("pinAttachment"),
          InstanceMethod<&BpfObjectWrap::AdoptLink>("adoptLink"),
          InstanceMethod<&BpfObjectWrap::AdoptTcFilter>("adoptTcFilter"),
          InstanceMethod<&BpfObjectWrap::Release>("release"),
          InstanceMethod<&BpfObjectWrap::ReadMap>("readMap"),
          InstanceMethod<&BpfObjectWrap::Lookup>("lookup"),
          InstanceMethod<&BpfObjectWrap::Update>("update"),
          InstanceMethod<&BpfObjectWrap::DeleteKeys>("deleteKeys"),
          InstanceMethod<&BpfObjectWrap::OpenRingBuffer>("openRingBuffer"),
          InstanceMethod<&BpfObjectWrap::Close>("close"),
      });
}

BpfObjectWrap::BpfObjectWrap(const Napi::CallbackInfo& info) : ObjectWrap(info) {
  path_ = StringArg(info, 0, "new BpfObject", "objectPath");
  libbpf_log::Reset();
  object_ = bpf_object__open_file(path_.c_str(), nullptr);
  if (!object_) {
    const int err = errno;
    ThrowNative(info.Env(), err, "open BPF object " + Quoted(path_));
  }
}

// An object dropped without close() is cleaned up like close(), minus the
// error report: nobody is left to receive it.
BpfObjectWrap::~BpfObjectWrap() {
  if (state_ != State::Closed) ReleaseAll();
}

void BpfObjectWrap::BeginNotClosed(Napi::Env env, const std::string& what) const {
  libbpf_log::Reset();
  if (state_ == State::Closed) ThrowNative(env, EBADF, what + ": BpfObject " + Quoted(path_) + " is closed");
}

void BpfObjectWrap::BeginOpen(Napi::Env env, const std::string& what) const {
  BeginNotClosed(env, what);
  if (state_ == State::LoadFailed) ThrowNative(env, EINVAL, what + ": load() of " + Quoted(path_) + " failed earlier");
  if (state_ != State::Opened) ThrowNative(env, EBUSY, what + ": only possible before load()");
}

void BpfObjectWrap::BeginLoaded(Napi::Env env, const std::string& what) const {
  BeginNotClosed(env, what);
  if (state_ == State::Opened) ThrowNative(env, EINVAL, what + ": BpfObject " + Quoted(path_) + " is not loaded yet");
  if (state_ == State::LoadFailed) ThrowNative(env, EINVAL, what + ": load() of " + Quoted(path_) + " failed");
}

bpf_map* BpfObjectWrap::FindMap(Napi::Env env, const std::string& name, const std::string& what) const {
  bpf_map* map = bpf_object__find_map_by_name(object_, name.c_str());
  if (!map) ThrowNative(env, ENOENT, what + ": no such map in " + Quoted(path_));
  return map;
}

bpf_program* BpfObjectWrap::FindProgram(Napi::Env env, const std::string& name, const std::string& what) const {
  bpf_program* program = bpf_object__find_program_by_name(object_, name.c_str());
  if (!program) ThrowNative(env, ENOENT, what + ": no such program in " + Quoted(path_));
  return program;
}

// Writes straight into the .rodata image libbpf will load: the variable's
// place and size come from the object's BTF, so any `const volatile`
// global of any collector can be configured without C++ changes.
void BpfObjectWrap::SetConst(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string name = StringArg(info, 0, "setConst", "name");
  Napi::Buffer<uint8_t> value = BufferArg(info, 1, "setConst", "value");
  const std::string what = "setConst(" + Quoted(name) + ")";
  BeginOpen(env, what);

  bpf_map* rodata = bpf_object__find_map_by_name(object_, ".rodata");
  const btf* types = bpf_object__btf(object_);
  const int datasecId = types ? btf__find_by_name_kind(types, ".rodata", BTF_KIND_DATASEC) : -ENOENT;
  if (!rodata || datasecId < 0) {
    ThrowNative(env, ENOENT, what + ": " + Quoted(path_) + " has no .rodata section with BTF");
  }

  const btf_type* datasec = btf__type_by_id(types, datasecId);
  const btf_var_secinfo* vars = btf_var_secinfos(datasec);
  for (int i = 0; i < btf_vlen(datasec); i++) {
    const btf_type* var = btf__type_by_id(types, vars[i].type);
    if (name != btf__name_by_offset(types, var->name_off)) continue;

    if (vars[i].size != value.Length()) {
      ThrowNative(env, EINVAL,
                  what + ": the variable is " + std::to_string(vars[i].size) + " bytes, the value " +
                      std::to_string(value.Length()));
    }
    size_t imageSize = 0;
    // libbpf 1.1 hands out the writable mmap of internal maps until load().
    auto* image = static_cast<uint8_t*>(const_cast<void*>(bpf_map__initial_value(rodata, &imageSize)));
    if (!image || vars[i].offset + vars[i].size > imageSize) {
      ThrowNative(env, EINVAL, what + ": the .rodata image does not hold the variable");
    }
    std::memcpy(image + vars[i].offset, value.Data(), value.Length());
    return;
  }
  ThrowNative(env, ENOENT, what + ": no such variable in the .rodata of " + Quoted(path_));
}

void BpfObjectWrap::SetMapMaxEntries(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string name = StringArg(info, 0, "setMapMaxEntries", "map");
  const uint32_t maxEntries = Uint32Arg(info, 1, "setMapMaxEntries", "maxEntries");
  const std::string what = "setMapMaxEntries(map " + Quoted(name) + ", " + std::to_string(maxEntries) + ")";
  BeginOpen(env, what);
  const int rc = bpf_map__set_max_entries(FindMap(env, name, what), maxEntries);
  if (rc < 0) ThrowNative(env, -rc, what);
}

void BpfObjectWrap::SetMapPinPath(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string name = StringArg(info, 0, "setMapPinPath", "map");
  const std::string pinPath = StringArg(info, 1, "setMapPinPath", "pinPath");
  const std::string what = "setMapPinPath(map " + Quoted(name) + ", " + Quoted(pinPath) + ")";
  BeginOpen(env, what);
  const int rc = bpf_map__set_pin_path(FindMap(env, name, what), pinPath.c_str());
  if (rc < 0) ThrowNative(env, -rc, what);
}

void BpfObjectWrap::Load(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string what = "load BPF object " + Quoted(path_);
  BeginOpen(env, what);
  const int rc = bpf_object__load(object_);
  if (rc < 0) {
    // libbpf unloads what it managed to load and will not try again.
    state_ = State::LoadFailed;
    ThrowNative(env, -rc, what);
  }
  state_ = State::Loaded;
}

Napi::Value BpfObjectWrap::Maps(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  BeginNotClosed(env, "maps()");
  Napi::Array result = Napi::Array::New(env);
  bpf_map* map;
  bpf_object__for_each_map(map, object_) {
    const MapLayout layout = LayoutOf(env, map);
    Napi::Object entry = Napi::Object::New(env);
    entry.Set("name", bpf_map__name(map));
    entry.Set("type", static_cast<double>(bpf_map__type(map)));
    entry.Set("keySize", static_cast<double>(layout.keySize));
    entry.Set("valueSize", static_cast<double>(layout.valueSize));
    entry.Set("maxEntries", static_cast<double>(bpf_map__max_entries(map)));
    entry.Set("flags", static_cast<double>(bpf_map__map_flags(map)));
    entry.Set("internal", bpf_map__is_internal(map));
    bpf_map_info kernel{};
    uint32_t kernelLength = sizeof(kernel);
    const int mapFd = bpf_map__fd(map);
    entry.Set("id", static_cast<double>(mapFd >= 0 && bpf_obj_get_info_by_fd(mapFd, &kernel, &kernelLength) == 0 ? kernel.id : 0));
    entry.Set("perCpu", layout.perCpu);
    entry.Set("valueStride", static_cast<double>(layout.valueStride));
    result.Set(result.Length(), entry);
  }
  return result;
}

Napi::Value BpfObjectWrap::Programs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  BeginNotClosed(env, "programs()");
  Napi::Array result = Napi::Array::New(env);
  bpf_program* program;
  bpf_object__for_each_program(program, object_) {
    bpf_prog_info stats{};
    const int fd = bpf_program__fd(program);
    if (fd >= 0) {
      uint32_t length = sizeof(stats);
      if (bpf_obj_get_info_by_fd(fd, &stats, &length) < 0) {
        const int err = errno;
        ThrowNative(env, err, std::string("programs(): info of program ") + Quoted(bpf_program__name(program)));
      }
    }
    Napi::Object entry = Napi::Object::New(env);
    entry.Set("name", bpf_program__name(program));
    entry.Set("section", bpf_program__section_name(program));
    entry.Set("id", static_cast<double>(stats.id));
    entry.Set("runCount", static_cast<double>(stats.run_cnt));
    entry.Set("runTimeNs", static_cast<double>(stats.run_time_ns));
    result.Set(result.Length(), entry);
  }
  return result;
}

// Idempotent, so cleanup paths can call it without tracking state.
void BpfObjectWrap::Close(const Napi::CallbackInfo& info) {
  if (state_ == State::Closed) return;
  libbpf_log::Reset();
  const std::vector<SysError> failures = ReleaseAll();
  if (failures.empty()) return;

  std::string what = "close BPF object " + Quoted(path_) + ": could not detach";
  for (const SysError& failure : failures) what += " [" + failure.what + ": " + ErrnoCode(failure.err) + "]";
  throw MakeNativeError(info.Env(), SysError{failures.front().err, what, failures.front().libbpfLog});
}

std::vector<SysError> BpfObjectWrap::ReleaseAll() {
  std::vector<SysError> failures;
  for (auto& [id, attachment] : attachments_) {
    if (const int err = ReleaseAttachment(attachment)) {
      failures.push_back(SysError::Capture(err, "detach " + attachment.description));
    }
  }
  attachments_.clear();
  // Also closes the map fds; reads still in flight hold their own dup()s.
  bpf_object__close(object_);
  object_ = nullptr;
  state_ = State::Closed;
  return failures;
}

}  // namespace probepilot
