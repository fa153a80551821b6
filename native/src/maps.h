// Sizes of a map as seen from userspace.
#pragma once

#include <bpf/libbpf.h>
#include <napi.h>

#include <cstdint>

namespace probepilot {

struct MapLayout {
  uint32_t keySize;
  uint32_t valueSize;  // as declared
  bool perCpu;
  uint32_t valueStride;     // per-CPU values are laid out 8-byte aligned
  uint32_t entryValueSize;  // bytes per key in a lookup or dump
};

// Throws a NativeError if the number of possible CPUs cannot be read: a
// guessed per-CPU size would let the kernel write past our buffers.
MapLayout LayoutOf(Napi::Env env, const bpf_map* map);

}  // namespace probepilot
