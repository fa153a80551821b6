#include "ringbuf.h"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>

#include "errors.h"

namespace probepilot {
namespace {

// A batch handed to JS at once: big enough to amortize the hop to the main
// thread, small enough that one callback never stalls the event loop long.
constexpr size_t kMaxBatchBytes = 1u << 20;
// The record callback's way of telling ring_buffer__consume "deliver now".
constexpr int kBatchFull = -ENOBUFS;
// Batches queued for the main thread before the reader waits for JS.
constexpr size_t kMaxQueuedBatches = 4;

Napi::FunctionReference* constructor = nullptr;


}  // namespace

// Typed: called for every queued batch, also (env null) for those left when
// close() aborts, so each one is freed.
void RingBufferReader::CallJs(Napi::Env env, Napi::Function onRecords, std::nullptr_t*, Delivery* delivery) {
  std::unique_ptr<Delivery> owned(delivery);
  if (env == nullptr || onRecords.IsEmpty()) return;
  if (owned->err != 0) {
    onRecords.Call({MakeNativeError(env, SysError{owned->err, owned->error, {}}).Value(), env.Null()});
    return;
  }
  onRecords.Call({env.Null(), Napi::Buffer<uint8_t>::Copy(env, owned->records.data(), owned->records.size())});
}

void RingBufferReader::Init(Napi::Env env) {
  Napi::Function fn = DefineClass(env, "RingBufferReader", {InstanceMethod<&RingBufferReader::Close>("close")});
  constructor = new Napi::FunctionReference(Napi::Persistent(fn));
  env.AddCleanupHook([]() {
    delete constructor;
    constructor = nullptr;
  });
}

Napi::Object RingBufferReader::New(Napi::Env env, int mapFd, const std::string& what, Napi::Function onRecords) {
  Napi::Object object = constructor->New({});
  Unwrap(object)->Start(env, mapFd, what, onRecords);
  return object;
}

RingBufferReader::RingBufferReader(const Napi::CallbackInfo& info) : ObjectWrap(info) {}

RingBufferReader::~RingBufferReader() { Stop(); }

void RingBufferReader::Start(Napi::Env env, int mapFd, const std::string& what, Napi::Function onRecords) {
  what_ = what;
  mapFd_ = fcntl(mapFd, F_DUPFD_CLOEXEC, 0);
  if (mapFd_ < 0) {
    const int err = errno;
    ThrowNative(env, err, what_);
  }
  ring_ = ring_buffer__new(mapFd_, &RingBufferReader::OnRecord, this, nullptr);
  if (!ring_) {
    const int err = errno;
    Stop();
    ThrowNative(env, err, what_);
  }
  wakeFd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  epollFd_ = epoll_create1(EPOLL_CLOEXEC);
  epoll_event ringEvent{};
  ringEvent.events = EPOLLIN;
  ringEvent.data.fd = ring_buffer__epoll_fd(ring_);
  epoll_event wakeEvent{};
  wakeEvent.events = EPOLLIN;
  wakeEvent.data.fd = wakeFd_;
  if (wakeFd_ < 0 || epollFd_ < 0 || epoll_ctl(epollFd_, EPOLL_CTL_ADD, ringEvent.data.fd, &ringEvent) < 0 ||
      epoll_ctl(epollFd_, EPOLL_CTL_ADD, wakeFd_, &wakeEvent) < 0) {
    const int err = errno;
    Stop();
    ThrowNative(env, err, what_ + ": epoll");
  }
  deliver_ = Deliverer::New(env, onRecords, "probepilot ring buffer", kMaxQueuedBatches, 1);
  // An open trace must not keep a process alive that has nothing else to do.
  deliver_.Unref(env);
  running_ = true;
  thread_ = std::thread(&RingBufferReader::Run, this);
  // Without it a reader still open at env teardown keeps a thread that calls into a freed env.
  env_ = env;
  hooked_ = napi_add_env_cleanup_hook(env, &RingBufferReader::OnEnvTeardown, this) == napi_ok;
}

void RingBufferReader::OnEnvTeardown(void* self) {
  auto* reader = static_cast<RingBufferReader*>(self);
  reader->hooked_ = false;
  reader->Stop();
}

int RingBufferReader::OnRecord(void* self, void* data, size_t size) {
  auto* reader = static_cast<RingBufferReader*>(self);
  const auto length = static_cast<uint32_t>(size);
  const auto* prefix = reinterpret_cast<const uint8_t*>(&length);
  reader->batch_.insert(reader->batch_.end(), prefix, prefix + sizeof(length));
  reader->batch_.insert(reader->batch_.end(), static_cast<uint8_t*>(data), static_cast<uint8_t*>(data) + size);
  return reader->batch_.size() >= kMaxBatchBytes ? kBatchFull : 0;
}

void RingBufferReader::Run() {
  auto fail = [this](int err, const std::string& call) {
    auto* delivery = new Delivery{{}, what_ + ": " + call, err};
    if (deliver_.BlockingCall(delivery) != napi_ok) delete delivery;
  };
  for (;;) {
    epoll_event ready[2];
    const int count = epoll_wait(epollFd_, ready, 2, -1);
    if (count < 0) {
      if (errno == EINTR) continue;
      return fail(errno, "epoll_wait");
    }
    for (int i = 0; i < count; i++) {
      if (ready[i].data.fd == wakeFd_) return;
    }
    for (;;) {
      const int consumed = ring_buffer__consume(ring_);
      if (consumed < 0 && consumed != kBatchFull) return fail(-consumed, "ring_buffer__consume");
      if (batch_.empty()) break;
      auto* delivery = new Delivery{std::move(batch_), {}, 0};
      batch_ = {};
      // Waits while JS is behind; returns napi_closing once close() aborts.
      if (deliver_.BlockingCall(delivery) != napi_ok) {
        delete delivery;
        return;
      }
      if (consumed != kBatchFull) break;
    }
  }
}

void RingBufferReader::Close(const Napi::CallbackInfo&) { Stop(); }

// Idempotent. Wakes the thread out of epoll, or out of a wait for JS (the
// abort), and joins it: it never blocks for longer than one consume.
void RingBufferReader::Stop() {
  if (hooked_) {
    hooked_ = false;
    napi_remove_env_cleanup_hook(env_, &RingBufferReader::OnEnvTeardown, this);
  }
  if (running_) {
    running_ = false;
    const uint64_t one = 1;
    if (write(wakeFd_, &one, sizeof(one)) < 0) {
      // The counter cannot overflow on one write; abort() below still ends a wait for JS.
    }
    deliver_.Abort();
    thread_.join();
  }
  if (ring_) ring_buffer__free(ring_);
  ring_ = nullptr;
  if (mapFd_ >= 0) close(mapFd_);
  mapFd_ = -1;
  if (epollFd_ >= 0) close(epollFd_);
  if (wakeFd_ >= 0) close(wakeFd_);
  epollFd_ = wakeFd_ = -1;
}

}  // namespace probepilot
