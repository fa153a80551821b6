// NVIDIA DCGM, loaded with dlopen when present, for the GPU fields NVML does
// not have (profiling: SM activity and occupancy, tensor and FP pipes, DRAM
// activity, NVLink throughput). An embedded host engine watches them in the
// background; sample() reads the latest values on a worker thread.
#pragma once

#include <napi.h>

namespace probepilot {

// Adds openDcgm(libraryPath): Promise<DcgmSession> to exports.
void InitDcgm(Napi::Env env, Napi::Object exports);

}  // namespace probepilot
