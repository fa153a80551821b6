// rtnetlink queries the agent needs to tell pods' interfaces apart.
#pragma once

#include <napi.h>

namespace probepilot {

// listLinks(): every interface of our network namespace (RTM_GETLINK dump).
Napi::Value ListLinks(const Napi::CallbackInfo& info);

// listTcFilters(ifindex, direction): the BPF classifiers on a clsact hook (RTM_GETTFILTER dump).
Napi::Value ListTcFilters(const Napi::CallbackInfo& info);

// netnsId(nsPath): the id our namespace gave the namespace at nsPath, -1 when none.
Napi::Value NetnsId(const Napi::CallbackInfo& info);

}  // namespace probepilot
