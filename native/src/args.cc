#include "args.h"

#include <cmath>

#include "errors.h"

namespace probepilot {
namespace {

std::string Describe(const char* method, const char* param) { return std::string(method) + ": " + param; }

}  // namespace

std::string StringArg(const Napi::CallbackInfo& info, size_t index, const char* method, const char* param) {
  if (!info[index].IsString()) ThrowTypeError(info.Env(), Describe(method, param) + " must be a string");
  return info[index].As<Napi::String>().Utf8Value();
}

Napi::Buffer<uint8_t> BufferArg(const Napi::CallbackInfo& info, size_t index, const char* method, const char* param) {
  if (!info[index].IsBuffer()) ThrowTypeError(info.Env(), Describe(method, param) + " must be a Buffer");
  return info[index].As<Napi::Buffer<uint8_t>>();
}

uint32_t Uint32Arg(const Napi::CallbackInfo& info, size_t index, const char* method, const char* param) {
  if (!info[index].IsNumber()) ThrowTypeError(info.Env(), Describe(method, param) + " must be a number");
  const double value = info[index].As<Napi::Number>().DoubleValue();
  if (!(value >= 0 && value <= UINT32_MAX) || std::trunc(value) != value) {
    ThrowRangeError(info.Env(), Describe(method, param) + " must be an integer from 0 to 4294967295");
  }
  return static_cast<uint32_t>(value);
}

uint32_t OptionalUint32Arg(const Napi::CallbackInfo& info, size_t index, const char* method, const char* param,
                           uint32_t fallback) {
  if (info[index].IsUndefined()) return fallback;
  return Uint32Arg(info, index, method, param);
}

}  // namespace probepilot
