#include "stats.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <unistd.h>

#include <cerrno>
#include <set>

#include "args.h"
#include "errors.h"

namespace probepilot {
namespace {

// Only fds handed out by enableStats() may be closed by disableStats(): a
// stale number must not close some unrelated descriptor. Whatever is still
// open when the environment goes away is closed then, so stats never
// outlive the agent.
struct StatsHandles {
  std::set<int> fds;
  ~StatsHandles() {
    for (const int fd : fds) close(fd);
  }
};

StatsHandles& Handles(Napi::Env env) { return *env.GetInstanceData<StatsHandles>(); }

}  // namespace

void InitStats(Napi::Env env) { env.SetInstanceData(new StatsHandles()); }

Napi::Value PossibleCpus(const Napi::CallbackInfo& info) {
  const int cpus = libbpf_num_possible_cpus();
  if (cpus <= 0) ThrowNative(info.Env(), -cpus, "possibleCpus()");
  return Napi::Number::New(info.Env(), cpus);
}

Napi::Value EnableStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = bpf_enable_stats(BPF_STATS_RUN_TIME);
  if (fd < 0) {
    const int err = errno;
    ThrowNative(env, err, "enableStats(): BPF_ENABLE_STATS(BPF_STATS_RUN_TIME)");
  }
  Handles(env).fds.insert(fd);
  return Napi::Number::New(env, fd);
}

void DisableStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const uint32_t handle = Uint32Arg(info, 0, "disableStats", "handle");
  const std::string what = "disableStats(" + std::to_string(handle) + ")";
  std::set<int>& fds = Handles(env).fds;
  auto found = fds.find(static_cast<int>(handle));
  if (found == fds.end()) ThrowNative(env, EBADF, what + ": not an open handle from enableStats()");
  close(*found);
  fds.erase(found);
}

}  // namespace probepilot
