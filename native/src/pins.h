// bpffs pins and adopting what an earlier run of the agent left attached.
#pragma once

#include <bpf/bpf.h>
#include <napi.h>

#include <cstdint>
#include <string>

namespace probepilot {

// "" when the program with id theirId is interchangeable with the loaded
// program ourFd (same tag, same maps, same read-only data); else why not.
std::string ProgramDifference(int ourFd, uint32_t theirId);

// The program's tag (a hash of its instructions, map references left out) in hex.
std::string HexTag(const bpf_prog_info& info);

// pinnedMapInfo(pinPath): the pinned map's id, name, type, sizes and flags; null when nothing is pinned there.
Napi::Value PinnedMapInfo(const Napi::CallbackInfo& info);

// programById(id): a loaded program's id, name, tag and map ids; null when there is none.
Napi::Value ProgramById(const Napi::CallbackInfo& info);

// detachTcFilter(ifindex, direction, handle, priority): removes one clsact filter; gone already is not an error.
void DetachTcFilter(const Napi::CallbackInfo& info);

// removeClsact(ifindex): deletes the interface's clsact qdisc (and whatever filters it still holds).
void RemoveClsact(const Napi::CallbackInfo& info);

}  // namespace probepilot
