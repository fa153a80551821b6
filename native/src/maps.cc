#include "maps.h"

#include <bpf/bpf.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <new>
#include <vector>

#include "args.h"
#include "errors.h"
#include "object.h"
#include "ringbuf.h"

namespace probepilot {
namespace {

constexpr uint32_t kDefaultBatchSize = 4096;
// ENOSPC means one hash bucket holds more entries than a batch; buckets are
// short, so doubling up to this bound always gets through a sane map.
constexpr uint32_t kMaxBatchSize = 1u << 24;
constexpr int kKernelENOTSUPP = 524;

bool IsPerCpuType(bpf_map_type type) {
  switch (type) {
    case BPF_MAP_TYPE_PERCPU_HASH:
    case BPF_MAP_TYPE_PERCPU_ARRAY:
    case BPF_MAP_TYPE_LRU_PERCPU_HASH:
    case BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE:
      return true;
    default:
      return false;
  }
}

// What kernels without batch operations for a map type answer.
bool BatchUnsupported(int err) { return err == EINVAL || err == EOPNOTSUPP || err == kKernelENOTSUPP; }

// Everything a worker thread needs, copied on the main thread. The fd is a
// dup() of the map's, so the map stays valid even if the object is closed
// or collected while the read runs.
struct ReadRequest {
  int fd;
  MapLayout layout;
  uint32_t maxEntries;
  uint32_t batchSize;
  std::string what;
};

struct Dump {
  uint32_t count = 0;
  std::vector<uint8_t> keys;
  std::vector<uint8_t> values;
};

// Returns false, reading nothing, when the kernel has no batch lookup for the map.
bool ReadInBatches(const ReadRequest& request, Dump& dump) {
  const size_t keySize = request.layout.keySize;
  const size_t valueSize = request.layout.entryValueSize;
  // The kernel's resume token is a u32 bucket for hash maps and a key for
  // arrays.
  std::vector<uint8_t> inToken(std::max<size_t>(keySize, 8));
  std::vector<uint8_t> outToken(inToken.size());
  uint32_t batchSize = request.batchSize;
  bool first = true;

  for (;;) {
    dump.keys.resize((dump.count + size_t{batchSize}) * keySize);
    dump.values.resize((dump.count + size_t{batchSize}) * valueSize);
    uint32_t count = batchSize;
    const int rc = bpf_map_lookup_batch(request.fd, first ? nullptr : inToken.data(), outToken.data(),
                                        dump.keys.data() + dump.count * keySize,
                                        dump.values.data() + dump.count * valueSize, &count, nullptr);
    const int err = rc < 0 ? errno : 0;
    if (err != 0 && err != ENOENT) {
      if (err == ENOSPC && batchSize < kMaxBatchSize) {
        batchSize *= 2;
        continue;
      }
      if (first && BatchUnsupported(err)) return false;
      throw SysError{err, request.what, {}};
    }
    dump.count += count;
    if (err == ENOENT) break;
    first = false;
    std::swap(inToken, outToken);
  }
  dump.keys.resize(dump.count * keySize);
  dump.values.resize(dump.count * valueSize);
  return true;
}

void ReadKeyByKey(const ReadRequest& request, Dump& dump) {
  const size_t keySize = request.layout.keySize;
  const size_t valueSize = request.layout.entryValueSize;
  std::vector<uint8_t> key(keySize);
  std::vector<uint8_t> next(keySize);
  std::vector<uint8_t> value(valueSize);
  bool first = true;

  // A hash map changing under the walk can send it back to the start; the
  // map's capacity bounds the work.
  while (dump.count < request.maxEntries) {
    if (bpf_map_get_next_key(request.fd, first ? nullptr : key.data(), next.data()) < 0) {
      if (errno == ENOENT) break;
      throw SysError{errno, request.what, {}};
    }
    first = false;
    key.swap(next);
    if (bpf_map_lookup_elem(request.fd, key.data(), value.data()) < 0) {
      if (errno == ENOENT) continue;  // deleted since get_next_key
      throw SysError{errno, request.what, {}};
    }
    dump.keys.insert(dump.keys.end(), key.begin(), key.end());
    dump.values.insert(dump.values.end(), value.begin(), value.end());
    dump.count++;
  }
}

Napi::Buffer<uint8_t> TakeBuffer(Napi::Env env, std::vector<uint8_t>&& bytes) {
  if (bytes.empty()) return Napi::Buffer<uint8_t>::New(env, 0);
  auto* owned = new std::vector<uint8_t>(std::move(bytes));
  return Napi::Buffer<uint8_t>::NewOrCopy(
      env, owned->data(), owned->size(), [](Napi::Env, uint8_t*, std::vector<uint8_t>* data) { delete data; }, owned);
}

class ReadMapWorker : public Napi::AsyncWorker {
 public:
  ReadMapWorker(Napi::Env env, ReadRequest request)
      : Napi::AsyncWorker(env, "probepilot.readMap"),
        request_(std::move(request)),
        deferred_(Napi::Promise::Deferred::New(env)) {}

  ~ReadMapWorker() override { close(request_.fd); }

  Napi::Promise Promise() const { return deferred_.Promise(); }

 protected:
  void Execute() override {
    try {
      if (!ReadInBatches(request_, dump_)) {
        dump_ = Dump{};
        ReadKeyByKey(request_, dump_);
      }
    } catch (const SysError& error) {
      Fail(error);
    } catch (const std::bad_alloc&) {
      Fail(SysError{ENOMEM, request_.what, {}});
    }
  }

  void OnOK() override {
    Napi::Env env = Env();
    Napi::Object result = Napi::Object::New(env);
    result.Set("count", static_cast<double>(dump_.count));
    result.Set("keySize", static_cast<double>(request_.layout.keySize));
    result.Set("valueSize", static_cast<double>(request_.layout.entryValueSize));
    result.Set("keys", TakeBuffer(env, std::move(dump_.keys)));
    result.Set("values", TakeBuffer(env, std::move(dump_.values)));
    deferred_.Resolve(result);
  }

  void OnError(const Napi::Error&) override { deferred_.Reject(MakeNativeError(Env(), error_).Value()); }

 private:
  void Fail(SysError error) {
    error_ = std::move(error);
    SetError(error_.what);
  }

  ReadRequest request_;
  Napi::Promise::Deferred deferred_;
  Dump dump_;
  SysError error_{};
};

void CheckLength(Napi::Env env, size_t actual, size_t expected, const std::string& what, const char* part) {
  if (actual != expected) {
    ThrowNative(env, EINVAL,
                what + ": " + part + " is " + std::to_string(actual) + " bytes, the map wants " +
                    std::to_string(expected));
  }
}

}  // namespace

MapLayout LayoutOf(Napi::Env env, const bpf_map* map) {
  static const int possibleCpus = libbpf_num_possible_cpus();
  if (possibleCpus <= 0) ThrowNative(env, -possibleCpus, "count possible CPUs");

  MapLayout layout{};
  layout.keySize = bpf_map__key_size(map);
  layout.valueSize = bpf_map__value_size(map);
  layout.perCpu = IsPerCpuType(bpf_map__type(map));
  layout.valueStride = (layout.valueSize + 7) & ~7u;
  layout.entryValueSize = layout.perCpu ? layout.valueStride * static_cast<uint32_t>(possibleCpus) : layout.valueSize;
  return layout;
}

// Operational failures reject the promise; only misuse (wrong argument
// types) throws synchronously.
Napi::Value BpfObjectWrap::ReadMap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string name = StringArg(info, 0, "readMap", "map");
  const uint32_t batchSize = OptionalUint32Arg(info, 1, "readMap", "batchSize", kDefaultBatchSize);
  if (batchSize == 0) ThrowRangeError(env, "readMap: batchSize must be at least 1");
  const std::string what = "readMap(map " + Quoted(name) + ")";

  try {
    BeginLoaded(env, what);
    const bpf_map* map = FindMap(env, name, what);
    const MapLayout layout = LayoutOf(env, map);
    const int fd = fcntl(bpf_map__fd(map), F_DUPFD_CLOEXEC, 0);
    if (fd < 0) {
      const int err = errno;
      ThrowNative(env, err, what);
    }
    auto* worker = new ReadMapWorker(env, ReadRequest{fd, layout, bpf_map__max_entries(map), batchSize, what});
    worker->Queue();
    return worker->Promise();
  } catch (const Napi::Error& error) {
    Napi::Promise::Deferred deferred = Napi::Promise::Deferred::New(env);
    deferred.Reject(error.Value());
    return deferred.Promise();
  }
}

Napi::Value BpfObjectWrap::Lookup(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string name = StringArg(info, 0, "lookup", "map");
  Napi::Buffer<uint8_t> key = BufferArg(info, 1, "lookup", "key");
  const std::string what = "lookup(map " + Quoted(name) + ")";
  BeginLoaded(env, what);
  const bpf_map* map = FindMap(env, name, what);
  const MapLayout layout = LayoutOf(env, map);
  CheckLength(env, key.Length(), layout.keySize, what, "key");

  Napi::Buffer<uint8_t> value = Napi::Buffer<uint8_t>::New(env, layout.entryValueSize);
  if (bpf_map_lookup_elem(bpf_map__fd(map), key.Data(), value.Data()) < 0) {
    const int err = errno;
    if (err == ENOENT) return env.Null();
    ThrowNative(env, err, what);
  }
  return value;
}

void BpfObjectWrap::Update(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string name = StringArg(info, 0, "update", "map");
  Napi::Buffer<uint8_t> key = BufferArg(info, 1, "update", "key");
  Napi::Buffer<uint8_t> value = BufferArg(info, 2, "update", "value");
  const std::string what = "update(map " + Quoted(name) + ")";
  BeginLoaded(env, what);
  const bpf_map* map = FindMap(env, name, what);
  const MapLayout layout = LayoutOf(env, map);
  CheckLength(env, key.Length(), layout.keySize, what, "key");
  CheckLength(env, value.Length(), layout.entryValueSize, what, "value");

  if (bpf_map_update_elem(bpf_map__fd(map), key.Data(), value.Data(), BPF_ANY) < 0) {
    const int err = errno;
    ThrowNative(env, err, what);
  }
}

Napi::Value BpfObjectWrap::DeleteKeys(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string name = StringArg(info, 0, "deleteKeys", "map");
  Napi::Buffer<uint8_t> keys = BufferArg(info, 1, "deleteKeys", "keys");
  const std::string what = "deleteKeys(map " + Quoted(name) + ")";
  BeginLoaded(env, what);
  const bpf_map* map = FindMap(env, name, what);
  const size_t keySize = LayoutOf(env, map).keySize;
  if (keySize == 0 || keys.Length() % keySize != 0) {
    ThrowNative(env, EINVAL,
                what + ": keys are " + std::to_string(keys.Length()) + " bytes, not a multiple of the key size " +
                    std::to_string(keySize));
  }

  const int fd = bpf_map__fd(map);
  const uint8_t* data = keys.Data();
  const uint32_t total = static_cast<uint32_t>(keys.Length() / keySize);
  uint32_t done = 0;
  uint32_t deleted = 0;
  bool batched = true;
  while (done < total) {
    if (batched) {
      uint32_t count = total - done;
      const int err = bpf_map_delete_batch(fd, data + done * keySize, &count, nullptr) < 0 ? errno : 0;
      if (err == 0 || err == ENOENT) {
        // The batch stops at the first absent key: skip it and go on.
        deleted += count;
        done += count + (err == ENOENT ? 1 : 0);
        continue;
      }
      if (done == 0 && count == 0 && BatchUnsupported(err)) {
        batched = false;
        continue;
      }
      ThrowNative(env, err, what);
    }
    if (bpf_map_delete_elem(fd, data + done * keySize) == 0) {
      deleted++;
    } else if (errno != ENOENT) {
      const int err = errno;
      ThrowNative(env, err, what);
    }
    done++;
  }
  return Napi::Number::New(env, deleted);
}

Napi::Value BpfObjectWrap::OpenRingBuffer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string name = StringArg(info, 0, "openRingBuffer", "map");
  if (!info[1].IsFunction()) ThrowTypeError(env, "openRingBuffer: onRecords must be a function");
  const std::string what = "openRingBuffer(map " + Quoted(name) + ")";
  BeginLoaded(env, what);
  const bpf_map* map = FindMap(env, name, what);
  if (bpf_map__type(map) != BPF_MAP_TYPE_RINGBUF) ThrowNative(env, EINVAL, what + ": not a ring buffer map");
  return RingBufferReader::New(env, bpf_map__fd(map), what, info[1].As<Napi::Function>());
}

}  // namespace probepilot
