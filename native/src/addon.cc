// Entry point of probepilot.node; the typed JS face is src/bpf/addon.ts.
#include <napi.h>

#include "btf.h"
#include "dcgm.h"
#include "libbpf_log.h"
#include "netlink.h"
#include "nvml.h"
#include "object.h"
#include "pins.h"
#include "ringbuf.h"
#include "stats.h"

namespace probepilot {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  libbpf_log::Install();
  InitStats(env);
  RingBufferReader::Init(env);
  exports.Set("BpfObject", BpfObjectWrap::DefineClass(env));
  exports.Set("possibleCpus", Napi::Function::New<PossibleCpus>(env, "possibleCpus"));
  exports.Set("enableStats", Napi::Function::New<EnableStats>(env, "enableStats"));
  exports.Set("disableStats", Napi::Function::New<DisableStats>(env, "disableStats"));
  exports.Set("listLinks", Napi::Function::New<ListLinks>(env, "listLinks"));
  exports.Set("netnsId", Napi::Function::New<NetnsId>(env, "netnsId"));
  exports.Set("listTcFilters", Napi::Function::New<ListTcFilters>(env, "listTcFilters"));
  exports.Set("pinnedMapInfo", Napi::Function::New<PinnedMapInfo>(env, "pinnedMapInfo"));
  exports.Set("programById", Napi::Function::New<ProgramById>(env, "programById"));
  exports.Set("detachTcFilter", Napi::Function::New<DetachTcFilter>(env, "detachTcFilter"));
  exports.Set("removeClsact", Napi::Function::New<RemoveClsact>(env, "removeClsact"));
  exports.Set("btfEnum", Napi::Function::New<BtfEnum>(env, "btfEnum"));
  InitNvml(env, exports);
  InitDcgm(env, exports);
  return exports;
}

}  // namespace probepilot

// The macro pastes its argument into an identifier: it needs an unqualified name.
static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return probepilot::Init(env, exports); }

NODE_API_MODULE(probepilot, InitModule)
