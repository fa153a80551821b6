#include "netlink.h"

#include <fcntl.h>
#include <linux/if_link.h>
#include <linux/net_namespace.h>
#include <linux/netlink.h>
#include <linux/pkt_cls.h>
#include <linux/pkt_sched.h>
#include <linux/rtnetlink.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "args.h"
#include "errors.h"
#include "fd.h"

namespace probepilot {
namespace {

// A dump restarted this often while interfaces kept changing is reported
// instead of returning a list that may miss some.
constexpr int kDumpAttempts = 5;

class RouteSocket {
 public:
  RouteSocket(Napi::Env env, const std::string& what) {
    fd_ = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (fd_ < 0) {
      const int err = errno;
      ThrowNative(env, err, what + ": open NETLINK_ROUTE socket");
    }
  }
  ~RouteSocket() { close(fd_); }
  RouteSocket(const RouteSocket&) = delete;
  RouteSocket& operator=(const RouteSocket&) = delete;

  // Sends request and passes each answer to onMessage until a dump is done
  // (or, for a plain request, the one answer came). Returns 0 or the
  // positive errno the kernel answered with.
  int Exchange(nlmsghdr* request, const std::function<void(nlmsghdr*)>& onMessage, bool* interrupted) {
    request->nlmsg_seq = ++sequence_;
    sockaddr_nl kernel{};
    kernel.nl_family = AF_NETLINK;
    if (sendto(fd_, request, request->nlmsg_len, 0, reinterpret_cast<sockaddr*>(&kernel), sizeof(kernel)) < 0) {
      return errno;
    }
    const bool dump = (request->nlmsg_flags & NLM_F_DUMP) == NLM_F_DUMP;

    for (;;) {
      const int received = Receive();
      if (received < 0) return -received;
      int remaining = received;
      for (auto* message = reinterpret_cast<nlmsghdr*>(buffer_.data()); NLMSG_OK(message, remaining);
           message = NLMSG_NEXT(message, remaining)) {
        if (message->nlmsg_seq != sequence_) continue;  // late answer to an earlier request
        if (message->nlmsg_flags & NLM_F_DUMP_INTR) *interrupted = true;
        if (message->nlmsg_type == NLMSG_ERROR) return -static_cast<nlmsgerr*>(NLMSG_DATA(message))->error;
        if (message->nlmsg_type == NLMSG_DONE) return DoneError(message);
        onMessage(message);
        if (!dump) return 0;
      }
    }
  }

 private:
  // One datagram, however large: peek at its size first so nothing is cut.
  int Receive() {
    for (;;) {
      const ssize_t size = recv(fd_, nullptr, 0, MSG_PEEK | MSG_TRUNC);
      if (size < 0) {
        if (errno == EINTR) continue;
        return -errno;
      }
      if (static_cast<size_t>(size) > buffer_.size()) buffer_.resize(static_cast<size_t>(size));
      const ssize_t received = recv(fd_, buffer_.data(), buffer_.size(), 0);
      if (received < 0) {
        if (errno == EINTR) continue;
        return -errno;
      }
      return static_cast<int>(received);
    }
  }

  // A dump that failed half-way ends with NLMSG_DONE carrying the error.
  static int DoneError(nlmsghdr* message) {
    if (message->nlmsg_len < NLMSG_LENGTH(sizeof(int))) return 0;
    int error;
    std::memcpy(&error, NLMSG_DATA(message), sizeof(error));
    return error < 0 ? -error : 0;
  }

  int fd_;
  uint32_t sequence_ = 0;
  std::vector<char> buffer_ = std::vector<char>(64 * 1024);
};

int32_t AttrInt(rtattr* attr) {
  int32_t value = 0;
  if (RTA_PAYLOAD(attr) >= sizeof(value)) std::memcpy(&value, RTA_DATA(attr), sizeof(value));
  return value;
}

std::string AttrString(rtattr* attr) {
  const char* data = static_cast<const char*>(RTA_DATA(attr));
  return std::string(data, strnlen(data, RTA_PAYLOAD(attr)));
}

std::string LinkKind(rtattr* linkInfo) {
  int remaining = static_cast<int>(RTA_PAYLOAD(linkInfo));
  for (auto* attr = static_cast<rtattr*>(RTA_DATA(linkInfo)); RTA_OK(attr, remaining);
       attr = RTA_NEXT(attr, remaining)) {
    if ((attr->rta_type & NLA_TYPE_MASK) == IFLA_INFO_KIND) return AttrString(attr);
  }
  return "";
}

Napi::Object ParseLink(Napi::Env env, nlmsghdr* message) {
  auto* header = static_cast<ifinfomsg*>(NLMSG_DATA(message));
  std::string name;
  std::string kind;
  int32_t iflink = header->ifi_index;  // the kernel leaves IFLA_LINK out when it is the device itself
  int32_t linkNetnsId = -1;
  int32_t master = 0;

  int remaining = static_cast<int>(message->nlmsg_len) - static_cast<int>(NLMSG_LENGTH(sizeof(*header)));
  for (rtattr* attr = IFLA_RTA(header); RTA_OK(attr, remaining); attr = RTA_NEXT(attr, remaining)) {
    switch (attr->rta_type & NLA_TYPE_MASK) {
      case IFLA_IFNAME:
        name = AttrString(attr);
        break;
      case IFLA_LINK:
        iflink = AttrInt(attr);
        break;
      case IFLA_LINK_NETNSID:
        linkNetnsId = AttrInt(attr);
        break;
      case IFLA_MASTER:
        master = AttrInt(attr);
        break;
      case IFLA_LINKINFO:
        kind = LinkKind(attr);
        break;
    }
  }

  Napi::Object link = Napi::Object::New(env);
  link.Set("ifindex", header->ifi_index);
  link.Set("name", name);
  link.Set("iflink", iflink);
  link.Set("linkNetnsId", linkNetnsId);
  link.Set("kind", kind);
  link.Set("hwType", static_cast<double>(header->ifi_type));
  link.Set("flags", static_cast<double>(header->ifi_flags));
  link.Set("master", master);
  return link;
}


// Runs a dump request to the end and collects what parse makes of each
// message of messageType (undefined: left out). A dump the kernel marks as
// interrupted (the table changed meanwhile) is run again. Returns the
// kernel's error in *err (0 when done) instead of throwing, so callers can
// treat some errors as "nothing there".
Napi::Array DumpAll(Napi::Env env, RouteSocket& socket, nlmsghdr* request, uint16_t messageType,
                    const std::function<Napi::Value(nlmsghdr*)>& parse, const std::string& what, int* err) {
  for (int attempt = 0; attempt < kDumpAttempts; attempt++) {
    Napi::Array items = Napi::Array::New(env);
    bool interrupted = false;
    *err = socket.Exchange(
        request,
        [&](nlmsghdr* message) {
          if (message->nlmsg_type != messageType) return;
          Napi::Value item = parse(message);
          if (!item.IsUndefined()) items.Set(items.Length(), item);
        },
        &interrupted);
    if (*err || !interrupted) return items;
  }
  ThrowNative(env, EAGAIN, what + ": the table kept changing during " + std::to_string(kDumpAttempts) + " dumps");
}

}  // namespace

Napi::Value ListLinks(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string what = "listLinks()";
  RouteSocket socket(env, what);

  struct {
    nlmsghdr header;
    ifinfomsg link;
  } request{};
  request.header.nlmsg_len = sizeof(request);
  request.header.nlmsg_type = RTM_GETLINK;
  request.header.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  request.link.ifi_family = AF_UNSPEC;

  int err = 0;
  Napi::Array links = DumpAll(
      env, socket, &request.header, RTM_NEWLINK, [&](nlmsghdr* message) { return ParseLink(env, message); }, what, &err);
  if (err) ThrowNative(env, err, what + ": RTM_GETLINK dump");
  return links;
}

namespace {

// One BPF classifier of a clsact hook: where it sits (handle, priority)
// and which program it runs. Other classifier kinds are left out.
Napi::Value ParseBpfFilter(Napi::Env env, nlmsghdr* message) {
  auto* header = static_cast<tcmsg*>(NLMSG_DATA(message));
  std::string kind;
  uint32_t programId = 0;
  std::string programName;
  int remaining = static_cast<int>(message->nlmsg_len) - static_cast<int>(NLMSG_LENGTH(sizeof(*header)));
  for (auto* attr = reinterpret_cast<rtattr*>(reinterpret_cast<char*>(header) + NLMSG_ALIGN(sizeof(*header)));
       RTA_OK(attr, remaining); attr = RTA_NEXT(attr, remaining)) {
    const int type = attr->rta_type & NLA_TYPE_MASK;
    if (type == TCA_KIND) kind = AttrString(attr);
    if (type != TCA_OPTIONS) continue;
    int optionsRemaining = static_cast<int>(RTA_PAYLOAD(attr));
    for (auto* option = static_cast<rtattr*>(RTA_DATA(attr)); RTA_OK(option, optionsRemaining);
         option = RTA_NEXT(option, optionsRemaining)) {
      const int optionType = option->rta_type & NLA_TYPE_MASK;
      if (optionType == TCA_BPF_ID) programId = static_cast<uint32_t>(AttrInt(option));
      if (optionType == TCA_BPF_NAME) programName = AttrString(option);
    }
  }
  // The kernel also reports each priority's (empty) chain head: no handle, no program.
  if (kind != "bpf" || header->tcm_handle == 0) return env.Undefined();
  Napi::Object filter = Napi::Object::New(env);
  filter.Set("handle", static_cast<double>(header->tcm_handle));
  filter.Set("priority", static_cast<double>(TC_H_MAJ(header->tcm_info) >> 16));
  filter.Set("programId", static_cast<double>(programId));
  filter.Set("programName", programName);
  return filter;
}

}  // namespace

Napi::Value ListTcFilters(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const uint32_t ifindex = Uint32Arg(info, 0, "listTcFilters", "ifindex");
  const std::string direction = StringArg(info, 1, "listTcFilters", "direction");
  if (direction != "ingress" && direction != "egress") {
    ThrowTypeError(env, "listTcFilters: direction must be 'ingress' or 'egress'");
  }
  const std::string what = "listTcFilters(ifindex " + std::to_string(ifindex) + ", " + direction + ")";
  RouteSocket socket(env, what);

  struct {
    nlmsghdr header;
    tcmsg filter;
  } request{};
  request.header.nlmsg_len = sizeof(request);
  request.header.nlmsg_type = RTM_GETTFILTER;
  request.header.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  request.filter.tcm_family = AF_UNSPEC;
  request.filter.tcm_ifindex = static_cast<int>(ifindex);
  request.filter.tcm_parent = TC_H_MAKE(TC_H_CLSACT, direction == "ingress" ? TC_H_MIN_INGRESS : TC_H_MIN_EGRESS);

  int err = 0;
  Napi::Array filters = DumpAll(
      env, socket, &request.header, RTM_NEWTFILTER, [&](nlmsghdr* message) { return ParseBpfFilter(env, message); }, what, &err);
  // No clsact qdisc (or no such interface): no filters.
  if (err == EINVAL || err == ENOENT || err == ENODEV) return Napi::Array::New(env);
  if (err) ThrowNative(env, err, what + ": RTM_GETTFILTER dump");
  return filters;
}

Napi::Value NetnsId(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string nsPath = StringArg(info, 0, "netnsId", "nsPath");
  const std::string what = "netnsId(" + Quoted(nsPath) + ")";

  const FileDescriptor ns(open(nsPath.c_str(), O_RDONLY | O_CLOEXEC));
  if (ns.get() < 0) {
    const int err = errno;
    ThrowNative(env, err, what);
  }
  RouteSocket socket(env, what);

  alignas(nlmsghdr) char request[NLMSG_SPACE(sizeof(rtgenmsg)) + RTA_SPACE(sizeof(uint32_t))] = {};
  auto* header = reinterpret_cast<nlmsghdr*>(request);
  header->nlmsg_len = NLMSG_LENGTH(sizeof(rtgenmsg));
  header->nlmsg_type = RTM_GETNSID;
  header->nlmsg_flags = NLM_F_REQUEST;
  static_cast<rtgenmsg*>(NLMSG_DATA(header))->rtgen_family = AF_UNSPEC;
  auto* attr = reinterpret_cast<rtattr*>(request + NLMSG_ALIGN(header->nlmsg_len));
  attr->rta_type = NETNSA_FD;
  attr->rta_len = RTA_LENGTH(sizeof(uint32_t));
  const uint32_t fd = static_cast<uint32_t>(ns.get());
  std::memcpy(RTA_DATA(attr), &fd, sizeof(fd));
  header->nlmsg_len = NLMSG_ALIGN(header->nlmsg_len) + RTA_ALIGN(attr->rta_len);

  int32_t nsid = NETNSA_NSID_NOT_ASSIGNED;
  bool interrupted = false;
  const int err = socket.Exchange(
      header,
      [&](nlmsghdr* message) {
        if (message->nlmsg_type != RTM_NEWNSID) return;
        int remaining = static_cast<int>(message->nlmsg_len) - static_cast<int>(NLMSG_SPACE(sizeof(rtgenmsg)));
        auto* reply = reinterpret_cast<rtattr*>(static_cast<char*>(NLMSG_DATA(message)) + NLMSG_ALIGN(sizeof(rtgenmsg)));
        for (; RTA_OK(reply, remaining); reply = RTA_NEXT(reply, remaining)) {
          if (reply->rta_type == NETNSA_NSID) nsid = AttrInt(reply);
        }
      },
      &interrupted);
  if (err) ThrowNative(env, err, what + ": RTM_GETNSID");
  return Napi::Number::New(env, nsid < 0 ? -1 : nsid);
}

}  // namespace probepilot
