// Module-level functions about the BPF subsystem as a whole.
#pragma once

#include <napi.h>

namespace probepilot {

// Sets up the per-environment state the functions below keep.
void InitStats(Napi::Env env);

Napi::Value PossibleCpus(const Napi::CallbackInfo& info);

// BPF_ENABLE_STATS(BPF_STATS_RUN_TIME): run statistics stay on while the
// returned fd is open, and for no one else's program longer than that.
Napi::Value EnableStats(const Napi::CallbackInfo& info);
void DisableStats(const Napi::CallbackInfo& info);

}  // namespace probepilot
