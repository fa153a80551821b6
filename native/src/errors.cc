#include "errors.h"

#include <cerrno>
#include <cstring>

#include "libbpf_log.h"

namespace probepilot {
namespace {

// Kernel-internal errno values (include/linux/errno.h) that bpf(2) returns
// to userspace; glibc has no names or messages for them.
struct KernelErrno {
  int err;
  const char* code;
  const char* text;
};
constexpr KernelErrno kKernelErrnos[] = {
    {512, "ERESTARTSYS", "Interrupted, restart system call"},
    {524, "ENOTSUPP", "Operation not supported"},
};

const KernelErrno* FindKernelErrno(int err) {
  for (const auto& known : kKernelErrnos) {
    if (known.err == err) return &known;
  }
  return nullptr;
}

std::string ErrnoText(int err) {
  if (const KernelErrno* known = FindKernelErrno(err)) return known->text;
  return std::strerror(err);
}

void SetErrnoProperties(Napi::Error& error, int err) {
  Napi::Object object = error.Value();
  object.Set("errno", Napi::Number::New(error.Env(), err));
  object.Set("code", Napi::String::New(error.Env(), ErrnoCode(err)));
}

}  // namespace

SysError SysError::Capture(int err, std::string what) {
  return SysError{err, std::move(what), libbpf_log::Tail()};
}

std::string ErrnoCode(int err) {
  if (const KernelErrno* known = FindKernelErrno(err)) return known->code;
  if (const char* name = strerrorname_np(err)) return name;
  return "E" + std::to_string(err);
}

Napi::Error MakeNativeError(Napi::Env env, const SysError& error) {
  // libbpf reports some failures as negative values; keep errno positive.
  const int err = error.err < 0 ? -error.err : error.err;
  Napi::Error result = Napi::Error::New(env, error.what + ": " + ErrnoText(err));
  SetErrnoProperties(result, err);
  if (!error.libbpfLog.empty()) {
    result.Value().Set("libbpfMessage", Napi::String::New(env, error.libbpfLog));
  }
  return result;
}

void ThrowNative(Napi::Env env, int err, const std::string& what) {
  throw MakeNativeError(env, SysError::Capture(err, what));
}

void ThrowTypeError(Napi::Env env, const std::string& message) {
  Napi::Error error = Napi::TypeError::New(env, message);
  SetErrnoProperties(error, EINVAL);
  throw error;
}

void ThrowRangeError(Napi::Env env, const std::string& message) {
  Napi::Error error = Napi::RangeError::New(env, message);
  SetErrnoProperties(error, EINVAL);
  throw error;
}

std::string Quoted(const std::string& name) { return "'" + name + "'"; }

}  // namespace probepilot
