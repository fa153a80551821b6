// An AsyncWorker that settles a promise: `work` runs on a libuv thread and
// fills a result or an error (it must not touch JS); on the main thread the
// result or the error becomes the promise's value.
#pragma once

#include <napi.h>

#include <functional>
#include <utility>

namespace probepilot {

template <typename Result, typename Error>
class PromiseWorker : public Napi::AsyncWorker {
 public:
  using Work = std::function<bool(Result&, Error&)>;
  using ToValue = std::function<Napi::Value(Napi::Env, Result&)>;
  using ToError = std::function<Napi::Value(Napi::Env, const Error&)>;

  static Napi::Promise Start(Napi::Env env, const char* name, Work work, ToValue toValue, ToError toError) {
    auto* worker = new PromiseWorker(env, name, std::move(work), std::move(toValue), std::move(toError));
    worker->Queue();
    return worker->deferred_.Promise();
  }

 protected:
  void Execute() override {
    if (!work_(result_, error_)) SetError("failed");
  }
  void OnOK() override { deferred_.Resolve(toValue_(Env(), result_)); }
  void OnError(const Napi::Error&) override { deferred_.Reject(toError_(Env(), error_)); }

 private:
  PromiseWorker(Napi::Env env, const char* name, Work work, ToValue toValue, ToError toError)
      : Napi::AsyncWorker(env, name),
        work_(std::move(work)),
        toValue_(std::move(toValue)),
        toError_(std::move(toError)),
        deferred_(Napi::Promise::Deferred::New(env)) {}

  Work work_;
  ToValue toValue_;
  ToError toError_;
  Napi::Promise::Deferred deferred_;
  Result result_{};
  Error error_{};
};

}  // namespace probepilot
