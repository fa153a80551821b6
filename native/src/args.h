// Argument checks for methods called from JS: a wrong type is a TypeError
// naming the method and parameter, never a crash.
#pragma once

#include <napi.h>

#include <cstdint>
#include <string>

namespace probepilot {

std::string StringArg(const Napi::CallbackInfo& info, size_t index, const char* method, const char* param);

Napi::Buffer<uint8_t> BufferArg(const Napi::CallbackInfo& info, size_t index, const char* method, const char* param);

// A non-negative integer that fits in 32 bits.
uint32_t Uint32Arg(const Napi::CallbackInfo& info, size_t index, const char* method, const char* param);

// As Uint32Arg, or fallback when the argument is undefined.
uint32_t OptionalUint32Arg(const Napi::CallbackInfo& info, size_t index, const char* method, const char* param,
                           uint32_t fallback);

}  // namespace probepilot
