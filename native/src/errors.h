// Errors thrown to JS: always an Error with errno, code and a message naming
// the operation and its object, plus libbpf's log when libbpf said something.
#pragma once

#include <napi.h>

#include <string>

namespace probepilot {

// A failed system or libbpf call, free of any JS handle so that a worker
// thread can produce it and the main thread can turn it into a JS error.
struct SysError {
  int err;                 // positive errno
  std::string what;        // operation and object, e.g. "readMap(map 'calls')"
  std::string libbpfLog;   // libbpf's messages on the failing thread

  // Records err with what libbpf logged on this thread since the operation began.
  static SysError Capture(int err, std::string what);
};

// "ENOENT" for 2; kernel-internal codes that leak to userspace get their
// kernel names; "E<number>" for anything unknown.
std::string ErrnoCode(int err);

Napi::Error MakeNativeError(Napi::Env env, const SysError& error);

[[noreturn]] void ThrowNative(Napi::Env env, int err, const std::string& what);

// Misuse from JS (wrong types, out-of-range numbers); still carries
// errno EINVAL so every addon error has the same shape.
[[noreturn]] void ThrowTypeError(Napi::Env env, const std::string& message);
[[noreturn]] void ThrowRangeError(Napi::Env env, const std::string& message);

// Quotes a name for messages: 'name'.
std::string Quoted(const std::string& name);

}  // namespace probepilot
