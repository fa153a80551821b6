#include "attach.h"

#include <bpf/bpf.h>
#include <net/if.h>
#include <unistd.h>

#include <cerrno>

#include "args.h"
#include "errors.h"
#include "object.h"

namespace probepilot {
namespace {

// enum bpf_attach_type values that Debian's libbpf 1.1 and uapi headers
// predate; the kernel accepts them through plain BPF_LINK_CREATE.
constexpr int kBpfTcxIngress = 46;
constexpr int kBpfTcxEgress = 47;

bool InterfaceGone(int ifindex) {
  char name[IF_NAMESIZE];
  return if_indextoname(static_cast<unsigned>(ifindex), name) == nullptr;
}

bpf_tc_hook TcHook(int ifindex, bpf_tc_attach_point point) {
  bpf_tc_hook hook{};
  hook.sz = sizeof(hook);
  hook.ifindex = ifindex;
  hook.attach_point = point;
  return hook;
}

// Removes exactly our filter, by the handle and priority the kernel gave
// it; the clsact qdisc stays, as other programs may hang off it.
int DetachClsact(const Attachment& attachment) {
  const bpf_tc_hook hook = TcHook(attachment.ifindex, attachment.hook);
  bpf_tc_opts opts{};
  opts.sz = sizeof(opts);
  opts.handle = attachment.handle;
  opts.priority = attachment.priority;
  const int rc = bpf_tc_detach(&hook, &opts);
  if (rc == 0) return 0;
  const int err = -rc;
  // Someone removed the filter or the qdisc already, or the interface is
  // gone and took its filters with it.
  if (err == ENOENT || err == ENODEV) return 0;
  if (err == EINVAL && InterfaceGone(attachment.ifindex)) return 0;
  return err;
}

// Closing the last fd of an unpinned link detaches it in the kernel.
void CloseLink(Attachment& attachment) {
  if (attachment.link) {
    bpf_link__destroy(attachment.link);
    attachment.link = nullptr;
  }
  if (attachment.linkFd >= 0) {
    close(attachment.linkFd);
    attachment.linkFd = -1;
  }
}

std::string DirectionArg(const Napi::CallbackInfo& info, size_t index) {
  const std::string direction = StringArg(info, index, "attachTc", "direction");
  if (direction != "ingress" && direction != "egress") {
    ThrowTypeError(info.Env(), "attachTc: direction must be 'ingress' or 'egress'");
  }
  return direction;
}

std::string ModeArg(const Napi::CallbackInfo& info, size_t index) {
  const std::string mode = StringArg(info, index, "attachTc", "mode");
  if (mode != "tcx" && mode != "clsact") ThrowTypeError(info.Env(), "attachTc: mode must be 'tcx' or 'clsact'");
  return mode;
}

}  // namespace

int Attachment::LinkFd() const {
  if (link) return bpf_link__fd(link);
  return linkFd;
}

int DetachAttachment(Attachment& attachment) {
  if (attachment.kind == Attachment::Kind::ClsactFilter) return DetachClsact(attachment);
  // A pin holds the link; without it, closing our fd detaches.
  if (!attachment.pinPath.empty()) {
    if (unlink(attachment.pinPath.c_str()) < 0 && errno != ENOENT) return errno;
    attachment.pinPath.clear();
  }
  CloseLink(attachment);
  return 0;
}

int ReleaseAttachment(Attachment& attachment) {
  if (attachment.kind != Attachment::Kind::ClsactFilter && !attachment.pinPath.empty()) {
    CloseLink(attachment);
    return 0;
  }
  return DetachAttachment(attachment);
}

uint32_t BpfObjectWrap::AddAttachment(Attachment attachment) {
  const uint32_t id = nextAttachmentId_++;
  attachments_.emplace(id, std::move(attachment));
  return id;
}

Napi::Value BpfObjectWrap::AddLibbpfLink(Napi::Env env, bpf_link* link, const std::string& what) {
  if (!link) {
    const int err = errno;
    ThrowNative(env, err, what);
  }
  Attachment attachment{Attachment::Kind::LibbpfLink, what};
  attachment.link = link;
  return Napi::Number::New(env, AddAttachment(std::move(attachment)));
}

Napi::Value BpfObjectWrap::AttachTc(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string name = StringArg(info, 0, "attachTc", "program");
  const uint32_t ifindex = Uint32Arg(info, 1, "attachTc", "ifindex");
  const std::string direction = DirectionArg(info, 2);
  const std::string mode = ModeArg(info, 3);
  if (ifindex == 0 || ifindex > INT32_MAX) ThrowRangeError(env, "attachTc: ifindex must be a positive int32");
  const std::string what =
      "attachTc(program " + Quoted(name) + ", ifindex " + std::to_string(ifindex) + ", " + direction + ", " + mode + ")";
  BeginLoaded(env, what);
  const int programFd = bpf_program__fd(FindProgram(env, name, what));
  const bool ingress = direction == "ingress";

  Attachment attachment{Attachment::Kind::TcxLink, what};
  if (mode == "tcx") {
    // No relative_fd/expected_revision: TCX appends after whatever is there.
    const auto type = static_cast<bpf_attach_type>(ingress ? kBpfTcxIngress : kBpfTcxEgress);
    const int fd = bpf_link_create(programFd, static_cast<int>(ifindex), type, nullptr);
    if (fd < 0) {
      const int err = errno;
      ThrowNative(env, err, what);
    }
    attachment.linkFd = fd;
  } else {
    bpf_tc_hook hook = TcHook(static_cast<int>(ifindex), ingress ? BPF_TC_INGRESS : BPF_TC_EGRESS);
    const int created = bpf_tc_hook_create(&hook);
    if (created < 0 && created != -EEXIST) ThrowNative(env, -created, what + ": create clsact qdisc");
    // handle 0 / priority 0 and no BPF_TC_F_REPLACE: the kernel picks a free
    // slot, so no filter already on the hook is ever replaced.
    bpf_tc_opts opts{};
    opts.sz = sizeof(opts);
    opts.prog_fd = programFd;
    const int rc = bpf_tc_attach(&hook, &opts);
    if (rc < 0) ThrowNative(env, -rc, what);
    attachment.kind = Attachment::Kind::ClsactFilter;
    attachment.ifindex = static_cast<int>(ifindex);
    attachment.hook = hook.attach_point;
    attachment.handle = opts.handle;
    attachment.priority = opts.priority;
    attachment.createdQdisc = created == 0;
  }
  const bool createdQdisc = attachment.createdQdisc;

  Napi::Object result = Napi::Object::New(env);
  result.Set("id", static_cast<double>(AddAttachment(std::move(attachment))));
  result.Set("mode", mode);
  result.Set("createdQdisc", createdQdisc);
  return result;
}

Napi::Value BpfObjectWrap::AttachTracepoint(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string name = StringArg(info, 0, "attachTracepoint", "program");
  const std::string category = StringArg(info, 1, "attachTracepoint", "category");
  const std::string tracepoint = StringArg(info, 2, "attachTracepoint", "name");
  const std::string what =
      "attachTracepoint(program " + Quoted(name) + ", tracepoint " + Quoted(category + ":" + tracepoint) + ")";
  BeginLoaded(env, what);
  bpf_program* program = FindProgram(env, name, what);
  return AddLibbpfLink(env, bpf_program__attach_tracepoint(program, category.c_str(), tracepoint.c_str()), what);
}

Napi::Value BpfObjectWrap::AttachRawTracepoint(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string name = StringArg(info, 0, "attachRawTracepoint", "program");
  const std::string tracepoint = StringArg(info, 1, "attachRawTracepoint", "name");
  const std::string what =
      "attachRawTracepoint(program " + Quoted(name) + ", raw tracepoint " + Quoted(tracepoint) + ")";
  BeginLoaded(env, what);
  bpf_program* program = FindProgram(env, name, what);
  return AddLibbpfLink(env, bpf_program__attach_raw_tracepoint(program, tracepoint.c_str()), what);
}

Napi::Value BpfObjectWrap::AttachAuto(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string name = StringArg(info, 0, "attachAuto", "program");
  const std::string what = "attachAuto(program " + Quoted(name) + ")";
  BeginLoaded(env, what);
  bpf_program* program = FindProgram(env, name, what);
  return AddLibbpfLink(env, bpf_program__attach(program),
                       what + " for section " + Quoted(bpf_program__section_name(program)));
}

// Ids handed out earlier but no longer in the table were detached already:
// detaching them again is a no-op.
void BpfObjectWrap::Detach(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const uint32_t id = Uint32Arg(info, 0, "detach", "attachmentId");
  const std::string what = "detach(attachment " + std::to_string(id) + ")";
  BeginNotClosed(env, what);
  if (id == 0 || id >= nextAttachmentId_) ThrowNative(env, ENOENT, what + ": no such attachment");
  auto found = attachments_.find(id);
  if (found == attachments_.end()) return;
  if (const int err = DetachAttachment(found->second)) ThrowNative(env, err, what + " of " + found->second.description);
  attachments_.erase(found);
}

void BpfObjectWrap::PinAttachment(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const uint32_t id = Uint32Arg(info, 0, "pinAttachment", "attachmentId");
  const std::string pinPath = StringArg(info, 1, "pinAttachment", "pinPath");
  const std::string what = "pinAttachment(attachment " + std::to_string(id) + ", " + Quoted(pinPath) + ")";
  BeginNotClosed(env, what);
  auto found = attachments_.find(id);
  if (found == attachments_.end()) ThrowNative(env, ENOENT, what + ": no such attachment");
  Attachment& attachment = found->second;
  if (attachment.kind == Attachment::Kind::ClsactFilter) {
    ThrowNative(env, EOPNOTSUPP,
                what + ": " + attachment.description + " is a clsact filter, not a BPF link, and cannot be pinned");
  }
  if (!attachment.pinPath.empty()) {
    ThrowNative(env, EEXIST, what + ": already pinned at " + Quoted(attachment.pinPath));
  }
  if (bpf_obj_pin(attachment.LinkFd(), pinPath.c_str()) < 0) {
    const int err = errno;
    ThrowNative(env, err, what);
  }
  attachment.pinPath = pinPath;
}

}  // namespace probepilot
