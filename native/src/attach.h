// Programs attached by one BpfObject, and how each kind is taken down again.
#pragma once

#include <bpf/libbpf.h>

#include <cstdint>
#include <string>
#include <utility>

namespace probepilot {

struct Attachment {
  enum class Kind { LibbpfLink, TcxLink, AdoptedLink, ClsactFilter };

  Attachment(Kind kind, std::string description) : kind(kind), description(std::move(description)) {}

  Kind kind;
  std::string description;  // the attach call, for messages: "attachTc(program 'x', ifindex 3, ingress, tcx)"

  bpf_link* link = nullptr;  // LibbpfLink
  // TcxLink: libbpf 1.1 cannot wrap a TCX link fd in a bpf_link;
  // AdoptedLink: a link of any type opened from its pin.
  int linkFd = -1;

  // ClsactFilter: the filter is identified by where it sits and the
  // handle/priority the kernel chose for it.
  int ifindex = 0;
  bpf_tc_attach_point hook = BPF_TC_INGRESS;
  uint32_t handle = 0;
  uint32_t priority = 0;
  bool createdQdisc = false;  // the clsact qdisc did not exist before this attach

  std::string pinPath;  // non-empty once pinned

  // The BPF link fd, or -1 for a clsact filter (not a link).
  int LinkFd() const;
};

// Takes the attachment out of the kernel, unpinning a pinned link first.
// Returns 0 when done or when there was nothing left to remove (the
// interface vanished), a positive errno otherwise.
int DetachAttachment(Attachment& attachment);

// For close(): pinned links keep running from bpffs (only our fd goes);
// everything else is detached. Same return as DetachAttachment.
int ReleaseAttachment(Attachment& attachment);

}  // namespace probepilot
