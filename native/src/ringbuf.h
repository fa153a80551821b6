// A BPF ring buffer drained on a thread of its own: it sleeps in epoll until
// the kernel has records, consumes them in batches and hands each batch to
// JS through a thread-safe function. When JS falls behind, the thread waits
// for it and the kernel side finds the ring full (and counts that): the
// event loop is never flooded and the BPF programs never wait.
#pragma once

#include <bpf/libbpf.h>
#include <napi.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

namespace probepilot {

// What the reader thread hands to the main thread: records, or why it stopped.
struct Delivery {
  std::vector<uint8_t> records;
  std::string error;
  int err = 0;
};

class RingBufferReader : public Napi::ObjectWrap<RingBufferReader> {
 public:
  // Also keeps the constructor for New().
  static void Init(Napi::Env env);

  // A reader over the ring buffer map behind mapFd, which it dup()s so it may
  // outlive the object's fd. Throws a NativeError.
  static Napi::Object New(Napi::Env env, int mapFd, const std::string& what, Napi::Function onRecords);

  explicit RingBufferReader(const Napi::CallbackInfo& info);
  ~RingBufferReader() override;

 private:
  void Close(const Napi::CallbackInfo& info);
  void Start(Napi::Env env, int mapFd, const std::string& what, Napi::Function onRecords);
  void Stop();
  void Run();
  static int OnRecord(void* self, void* data, size_t size);
  // The env going away (process exit, a worker thread ending) with the reader open: stop the thread before it does.
  static void OnEnvTeardown(void* self);
  static void CallJs(Napi::Env env, Napi::Function onRecords, std::nullptr_t* context, Delivery* delivery);
  using Deliverer = Napi::TypedThreadSafeFunction<std::nullptr_t, Delivery, &RingBufferReader::CallJs>;

  std::string what_;
  int mapFd_ = -1;
  ring_buffer* ring_ = nullptr;
  int epollFd_ = -1;
  int wakeFd_ = -1;
  Deliverer deliver_;
  std::thread thread_;
  std::vector<uint8_t> batch_;
  bool running_ = false;
  napi_env env_ = nullptr;
  // Our env cleanup hook is registered (removed on Stop, or consumed when it runs).
  bool hooked_ = false;
};

}  // namespace probepilot
