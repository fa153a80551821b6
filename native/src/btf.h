// Reading the running kernel's own type information (vmlinux BTF), for
// values userspace must agree on with the kernel rather than hard-code.
#pragma once

#include <napi.h>

namespace probepilot {

// btfEnum(typeName): the enumerators of the kernel enum named typeName as
// { NAME: value }, or null when the kernel's BTF has no such enum.
Napi::Value BtfEnum(const Napi::CallbackInfo& info);

}  // namespace probepilot
