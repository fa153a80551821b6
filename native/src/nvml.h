// NVIDIA's management library (NVML), loaded with dlopen when the agent asks
// for it: never a build-time or load-time dependency, so the addon runs on
// nodes without a GPU driver. Every NVML call runs on a worker thread.
#pragma once

#include <napi.h>

namespace probepilot {

// Adds openNvml(libraryPath): Promise<NvmlSession> to exports; the session's
// sample() reads every device, close() shuts NVML down once no sample runs.
void InitNvml(Napi::Env env, Napi::Object exports);

}  // namespace probepilot
