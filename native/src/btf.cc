#include "btf.h"

#include <bpf/btf.h>

#include <cerrno>
#include <cstdint>
#include <memory>
#include <string>

#include "args.h"
#include "errors.h"

namespace probepilot {
namespace {

struct BtfDeleter {
  void operator()(btf* loaded) const { btf__free(loaded); }
};

// Exact in JS: a Number while it is a safe integer, a BigInt beyond.
Napi::Value EnumValue(Napi::Env env, int64_t value, bool isSigned) {
  constexpr int64_t kMaxSafe = (int64_t{1} << 53) - 1;
  if (isSigned) {
    if (value >= -kMaxSafe && value <= kMaxSafe) return Napi::Number::New(env, static_cast<double>(value));
    return Napi::BigInt::New(env, value);
  }
  const auto unsignedValue = static_cast<uint64_t>(value);
  if (unsignedValue <= static_cast<uint64_t>(kMaxSafe)) return Napi::Number::New(env, static_cast<double>(unsignedValue));
  return Napi::BigInt::New(env, unsignedValue);
}

}  // namespace

Napi::Value BtfEnum(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string typeName = StringArg(info, 0, "btfEnum", "typeName");
  const std::string what = "btfEnum(" + Quoted(typeName) + ")";

  std::unique_ptr<btf, BtfDeleter> vmlinux(btf__load_vmlinux_btf());
  if (!vmlinux) {
    const int err = errno;
    ThrowNative(env, err ? err : ENOENT, what + ": loading the kernel's BTF");
  }
  // Enums with a value beyond 32 bits are BTF_KIND_ENUM64 (kernels >= 6.0 built with pahole >= 1.24).
  __s32 id = btf__find_by_name_kind(vmlinux.get(), typeName.c_str(), BTF_KIND_ENUM);
  if (id < 0) id = btf__find_by_name_kind(vmlinux.get(), typeName.c_str(), BTF_KIND_ENUM64);
  if (id < 0) return env.Null();

  const btf_type* type = btf__type_by_id(vmlinux.get(), id);
  // kflag marks a signed enum; without it the values are unsigned (as in C for non-negative enumerators).
  const bool isSigned = btf_kflag(type);
  Napi::Object result = Napi::Object::New(env);
  const int count = btf_vlen(type);
  for (int i = 0; i < count; i++) {
    int64_t value;
    uint32_t nameOffset;
    if (btf_is_enum(type)) {
      const struct btf_enum& member = btf_enum(type)[i];
      nameOffset = member.name_off;
      value = isSigned ? int64_t{member.val} : int64_t{static_cast<uint32_t>(member.val)};
    } else {
      const struct btf_enum64& member = btf_enum64(type)[i];
      nameOffset = member.name_off;
      value = static_cast<int64_t>(btf_enum64_value(&member));
    }
    result.Set(btf__name_by_offset(vmlinux.get(), nameOffset), EnumValue(env, value, isSigned));
  }
  return result;
}

}  // namespace probepilot
