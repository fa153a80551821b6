// bpffs state that outlives the process: what a pin holds, whether the
// program behind a pinned link or a clsact filter is the one this object
// loaded, and adopting it (keep it, or swap our program in atomically).
// Generic: nothing here knows a collector.
#include "pins.h"

#include <bpf/bpf.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <cstring>
#include <map>
#include <vector>

#include "args.h"
#include "errors.h"
#include "fd.h"
#include "object.h"

namespace probepilot {
namespace {

// BPF_LINK_TYPE_TCX, newer than Debian's libbpf 1.1 uapi headers.
constexpr uint32_t kBpfLinkTypeTcx = 11;


struct ProgramIdentity {
  bpf_prog_info info{};
  std::vector<uint32_t> mapIds;
};

// 0 or a positive errno.
int ReadProgram(int fd, ProgramIdentity& program) {
  uint32_t length = sizeof(program.info);
  if (bpf_obj_get_info_by_fd(fd, &program.info, &length) < 0) return errno;
  const uint32_t mapCount = program.info.nr_map_ids;
  program.mapIds.assign(mapCount, 0);
  program.info = bpf_prog_info{};
  program.info.nr_map_ids = mapCount;
  program.info.map_ids = reinterpret_cast<uint64_t>(program.mapIds.data());
  length = sizeof(program.info);
  if (bpf_obj_get_info_by_fd(fd, &program.info, &length) < 0) return errno;
  program.mapIds.resize(std::min(mapCount, program.info.nr_map_ids));
  return 0;
}

int ReadMapInfo(int fd, bpf_map_info& info) {
  info = bpf_map_info{};
  uint32_t length = sizeof(info);
  return bpf_obj_get_info_by_fd(fd, &info, &length) < 0 ? errno : 0;
}

bool EndsWith(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The value of a one-entry array map (.rodata); empty when unreadable.
std::vector<uint8_t> SingleValue(int fd, uint32_t valueSize) {
  std::vector<uint8_t> value(valueSize);
  const uint32_t key = 0;
  if (bpf_map_lookup_elem(fd, &key, value.data()) < 0) return {};
  return value;
}

Napi::Object MapInfoObject(Napi::Env env, const bpf_map_info& info) {
  Napi::Object result = Napi::Object::New(env);
  result.Set("id", static_cast<double>(info.id));
  result.Set("name", std::string(info.name, strnlen(info.name, sizeof(info.name))));
  result.Set("type", static_cast<double>(info.type));
  result.Set("keySize", static_cast<double>(info.key_size));
  result.Set("valueSize", static_cast<double>(info.value_size));
  result.Set("maxEntries", static_cast<double>(info.max_entries));
  result.Set("flags", static_cast<double>(info.map_flags));
  return result;
}

// The clsact hook named by JS arguments (ifindex, direction) at index, index + 1.
bpf_tc_hook HookArgs(const Napi::CallbackInfo& info, size_t index, const char* method) {
  const uint32_t ifindex = Uint32Arg(info, index, method, "ifindex");
  const std::string direction = StringArg(info, index + 1, method, "direction");
  if (direction != "ingress" && direction != "egress") {
    ThrowTypeError(info.Env(), std::string(method) + ": direction must be 'ingress' or 'egress'");
  }
  bpf_tc_hook hook{};
  hook.sz = sizeof(hook);
  hook.ifindex = static_cast<int>(ifindex);
  hook.attach_point = direction == "ingress" ? BPF_TC_INGRESS : BPF_TC_EGRESS;
  return hook;
}

// A filter's place on its hook (handle, priority) from JS arguments at index, index + 1.
bpf_tc_opts SlotArgs(const Napi::CallbackInfo& info, size_t index, const char* method) {
  bpf_tc_opts opts{};
  opts.sz = sizeof(opts);
  opts.handle = Uint32Arg(info, index, method, "handle");
  opts.priority = Uint32Arg(info, index + 1, method, "priority");
  return opts;
}

std::string HookName(const bpf_tc_hook& hook, const bpf_tc_opts& slot) {
  return "ifindex " + std::to_string(hook.ifindex) + ", " + (hook.attach_point == BPF_TC_INGRESS ? "ingress" : "egress") +
         ", handle " + std::to_string(slot.handle) + ", priority " + std::to_string(slot.priority);
}

}  // namespace

std::string HexTag(const bpf_prog_info& info) {
  static const char digits[] = "0123456789abcdef";
  std::string tag;
  for (uint8_t byte : info.tag) {
    tag += digits[byte >> 4];
    tag += digits[byte & 0xf];
  }
  return tag;
}

std::string ProgramDifference(int ourFd, uint32_t theirId) {
  ProgramIdentity ours;
  if (const int err = ReadProgram(ourFd, ours)) return "cannot read our program: " + ErrnoCode(err);
  const FileDescriptor theirFd(bpf_prog_get_fd_by_id(theirId));
  if (theirFd.get() < 0) return "program " + std::to_string(theirId) + " is gone: " + ErrnoCode(errno);
  ProgramIdentity theirs;
  if (const int err = ReadProgram(theirFd.get(), theirs)) return "cannot read program " + std::to_string(theirId) + ": " + ErrnoCode(err);
  if (std::memcmp(ours.info.tag, theirs.info.tag, sizeof(ours.info.tag)) != 0) {
    return "program tag " + HexTag(theirs.info) + " differs from ours (" + HexTag(ours.info) + ")";
  }
  // The tag leaves map references out: the old program must also use our
  // maps (pins reused), and read-only data (.rodata: configuration) equal to ours.
  std::map<std::string, int> ourMaps;  // kernel name -> fd, for maps not shared
  std::vector<FileDescriptor> ourFds;
  ourFds.reserve(ours.mapIds.size());  // the map above holds their fds: no reallocation
  for (uint32_t id : ours.mapIds) {
    ourFds.emplace_back(bpf_map_get_fd_by_id(id));
    bpf_map_info info;
    if (ourFds.back().get() >= 0 && ReadMapInfo(ourFds.back().get(), info) == 0) {
      ourMaps[std::string(info.name, strnlen(info.name, sizeof(info.name)))] = ourFds.back().get();
    }
  }
  for (uint32_t id : theirs.mapIds) {
    if (std::find(ours.mapIds.begin(), ours.mapIds.end(), id) != ours.mapIds.end()) continue;
    const FileDescriptor mapFd(bpf_map_get_fd_by_id(id));
    bpf_map_info info;
    if (mapFd.get() < 0 || ReadMapInfo(mapFd.get(), info) != 0) return "cannot read its map " + std::to_string(id);
    const std::string name(info.name, strnlen(info.name, sizeof(info.name)));
    const auto same = ourMaps.find(name);
    if (!EndsWith(name, ".rodata") || same == ourMaps.end()) {
      return "it uses map " + Quoted(name) + " (id " + std::to_string(id) + "), not ours";
    }
    bpf_map_info ourInfo;
    if (ReadMapInfo(same->second, ourInfo) != 0 || ourInfo.value_size != info.value_size ||
        SingleValue(same->second, ourInfo.value_size) != SingleValue(mapFd.get(), info.value_size)) {
      return "its read-only data " + Quoted(name) + " differs from ours";
    }
  }
  return "";
}

Napi::Value PinnedMapInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string pinPath = StringArg(info, 0, "pinnedMapInfo", "pinPath");
  const std::string what = "pinnedMapInfo(" + Quoted(pinPath) + ")";
  FileDescriptor fd(bpf_obj_get(pinPath.c_str()));
  if (fd.get() < 0) {
    const int err = errno;
    if (err == ENOENT) return env.Null();
    ThrowNative(env, err, what);
  }
  bpf_map_info mapInfo;
  if (const int err = ReadMapInfo(fd.get(), mapInfo)) ThrowNative(env, err, what + ": not a map");
  return MapInfoObject(env, mapInfo);
}

Napi::Value ProgramById(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const uint32_t id = Uint32Arg(info, 0, "programById", "id");
  const std::string what = "programById(" + std::to_string(id) + ")";
  FileDescriptor fd(bpf_prog_get_fd_by_id(id));
  if (fd.get() < 0) {
    const int err = errno;
    if (err == ENOENT) return env.Null();
    ThrowNative(env, err, what);
  }
  ProgramIdentity program;
  if (const int err = ReadProgram(fd.get(), program)) ThrowNative(env, err, what);
  Napi::Object result = Napi::Object::New(env);
  result.Set("id", static_cast<double>(program.info.id));
  result.Set("name", std::string(program.info.name, strnlen(program.info.name, sizeof(program.info.name))));
  result.Set("tag", HexTag(program.info));
  Napi::Array mapIds = Napi::Array::New(env, program.mapIds.size());
  for (size_t i = 0; i < program.mapIds.size(); i++) mapIds.Set(i, static_cast<double>(program.mapIds[i]));
  result.Set("mapIds", mapIds);
  return result;
}

void RemoveClsact(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const uint32_t ifindex = Uint32Arg(info, 0, "removeClsact", "ifindex");
  bpf_tc_hook hook{};
  hook.sz = sizeof(hook);
  hook.ifindex = static_cast<int>(ifindex);
  hook.attach_point = static_cast<bpf_tc_attach_point>(BPF_TC_INGRESS | BPF_TC_EGRESS);
  const int rc = bpf_tc_hook_destroy(&hook);
  if (rc < 0 && rc != -ENOENT && rc != -EINVAL && rc != -ENODEV) {
    ThrowNative(env, -rc, "removeClsact(ifindex " + std::to_string(ifindex) + ")");
  }
}

void DetachTcFilter(const Napi::CallbackInfo& info) {
  const bpf_tc_hook hook = HookArgs(info, 0, "detachTcFilter");
  bpf_tc_opts slot = SlotArgs(info, 2, "detachTcFilter");
  const int rc = bpf_tc_detach(&hook, &slot);
  if (rc < 0 && rc != -ENOENT && rc != -ENODEV) ThrowNative(info.Env(), -rc, "detachTcFilter(" + HookName(hook, slot) + ")");
}

// adoptLink(program, pinPath): the link pinned at pinPath, taken over for
// `program` — kept when it runs an identical program, else updated to ours
// in place (BPF_LINK_UPDATE, atomic, where the link type allows it). When
// neither is possible the pin is removed, which detaches the old link, and
// the caller attaches afresh.
Napi::Value BpfObjectWrap::AdoptLink(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string name = StringArg(info, 0, "adoptLink", "program");
  const std::string pinPath = StringArg(info, 1, "adoptLink", "pinPath");
  const std::string what = "adoptLink(program " + Quoted(name) + ", " + Quoted(pinPath) + ")";
  BeginLoaded(env, what);
  const int programFd = bpf_program__fd(FindProgram(env, name, what));
  Napi::Object result = Napi::Object::New(env);

  FileDescriptor linkFd(bpf_obj_get(pinPath.c_str()));
  if (linkFd.get() < 0) {
    const int err = errno;
    if (err != ENOENT) ThrowNative(env, err, what);
    result.Set("outcome", "absent");
    return result;
  }
  bpf_link_info link{};
  uint32_t length = sizeof(link);
  if (bpf_obj_get_info_by_fd(linkFd.get(), &link, &length) < 0) {
    const int err = errno;
    ThrowNative(env, err, what + ": not a link");
  }
  // A TCX link whose interface went away stays pinned but detached (ifindex 0).
  // The uapi headers here predate the union's tcx member {ifindex, attach_type},
  // laid out as its netns member {netns_ino, attach_type}.
  uint32_t tcxIfindex = 0;
  std::memcpy(&tcxIfindex, &link.netns.netns_ino, sizeof(tcxIfindex));
  std::string reason;
  if (link.type == kBpfLinkTypeTcx && tcxIfindex == 0) {
    reason = "its interface is gone";
  } else {
    reason = ProgramDifference(programFd, link.prog_id);
    if (reason.empty()) {
      Attachment attachment{Attachment::Kind::AdoptedLink, what};
      attachment.linkFd = linkFd.release();
      attachment.pinPath = pinPath;
      result.Set("outcome", "kept");
      result.Set("id", static_cast<double>(AddAttachment(std::move(attachment))));
      return result;
    }
    if (bpf_link_update(linkFd.get(), programFd, nullptr) == 0) {
      Attachment attachment{Attachment::Kind::AdoptedLink, what};
      attachment.linkFd = linkFd.release();
      attachment.pinPath = pinPath;
      result.Set("outcome", "updated");
      result.Set("reason", reason);
      result.Set("id", static_cast<double>(AddAttachment(std::move(attachment))));
      return result;
    }
    reason += "; the link cannot be updated in place (" + ErrnoCode(errno) + ")";
  }
  if (unlink(pinPath.c_str()) < 0 && errno != ENOENT) {
    const int err = errno;
    ThrowNative(env, err, what + ": remove stale pin");
  }
  result.Set("outcome", "stale");
  result.Set("reason", reason);
  return result;
}

// adoptTcFilter(program, ifindex, direction, handle, priority): a clsact
// filter left by an earlier run, kept when identical, else its program
// replaced by ours in place (BPF_TC_F_REPLACE on its own handle and priority).
Napi::Value BpfObjectWrap::AdoptTcFilter(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string name = StringArg(info, 0, "adoptTcFilter", "program");
  bpf_tc_hook hook = HookArgs(info, 1, "adoptTcFilter");
  bpf_tc_opts opts = SlotArgs(info, 3, "adoptTcFilter");
  const std::string what = "adoptTcFilter(program " + Quoted(name) + ", " + HookName(hook, opts) + ")";
  BeginLoaded(env, what);
  const int programFd = bpf_program__fd(FindProgram(env, name, what));
  int rc = bpf_tc_query(&hook, &opts);
  if (rc < 0) ThrowNative(env, -rc, what);
  const std::string reason = ProgramDifference(programFd, opts.prog_id);
  if (!reason.empty()) {
    bpf_tc_opts replace = SlotArgs(info, 3, "adoptTcFilter");
    replace.prog_fd = programFd;
    replace.flags = BPF_TC_F_REPLACE;
    rc = bpf_tc_attach(&hook, &replace);
    if (rc < 0) ThrowNative(env, -rc, what + ": replace");
  }
  Attachment attachment{Attachment::Kind::ClsactFilter, what};
  attachment.ifindex = hook.ifindex;
  attachment.hook = hook.attach_point;
  attachment.handle = opts.handle;
  attachment.priority = opts.priority;
  Napi::Object result = Napi::Object::New(env);
  result.Set("outcome", reason.empty() ? "kept" : "updated");
  if (!reason.empty()) result.Set("reason", reason);
  result.Set("id", static_cast<double>(AddAttachment(std::move(attachment))));
  return result;
}

// release(attachmentId): forgets an attachment, leaving it in the kernel
// when something outside this process holds it — a pin, or, for a clsact
// filter, the qdisc itself — so it keeps running after we exit.
void BpfObjectWrap::Release(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const uint32_t id = Uint32Arg(info, 0, "release", "attachmentId");
  const std::string what = "release(attachment " + std::to_string(id) + ")";
  BeginNotClosed(env, what);
  auto found = attachments_.find(id);
  if (found == attachments_.end()) return;
  if (found->second.kind != Attachment::Kind::ClsactFilter) {
    if (const int err = ReleaseAttachment(found->second)) ThrowNative(env, err, what + " of " + found->second.description);
  }
  attachments_.erase(found);
}

}  // namespace probepilot
