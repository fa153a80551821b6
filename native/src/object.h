// The JS BpfObject: one libbpf object from open to close, with its
// attachments. Methods are split by concern over object.cc (lifecycle,
// configuration, introspection), maps.cc and attach.cc.
#pragma once

#include <bpf/libbpf.h>
#include <napi.h>

#include <map>
#include <string>
#include <vector>

#include "attach.h"
#include "errors.h"

namespace probepilot {

class BpfObjectWrap : public Napi::ObjectWrap<BpfObjectWrap> {
 public:
  static Napi::Function DefineClass(Napi::Env env);

  explicit BpfObjectWrap(const Napi::CallbackInfo& info);
  ~BpfObjectWrap() override;

 private:
  enum class State { Opened, Loaded, LoadFailed, Closed };

  // object.cc
  void SetConst(const Napi::CallbackInfo& info);
  void SetMapMaxEntries(const Napi::CallbackInfo& info);
  void SetMapPinPath(const Napi::CallbackInfo& info);
  void Load(const Napi::CallbackInfo& info);
  Napi::Value Maps(const Napi::CallbackInfo& info);
  Napi::Value Programs(const Napi::CallbackInfo& info);
  void Close(const Napi::CallbackInfo& info);

  // maps.cc
  Napi::Value ReadMap(const Napi::CallbackInfo& info);
  Napi::Value Lookup(const Napi::CallbackInfo& info);
  void Update(const Napi::CallbackInfo& info);
  Napi::Value DeleteKeys(const Napi::CallbackInfo& info);
  Napi::Value OpenRingBuffer(const Napi::CallbackInfo& info);

  // attach.cc
  Napi::Value AttachTc(const Napi::CallbackInfo& info);
  Napi::Value AttachTracepoint(const Napi::CallbackInfo& info);
  Napi::Value AttachRawTracepoint(const Napi::CallbackInfo& info);
  Napi::Value AttachAuto(const Napi::CallbackInfo& info);
  void Detach(const Napi::CallbackInfo& info);
  void PinAttachment(const Napi::CallbackInfo& info);

  // pins.cc
  Napi::Value AdoptLink(const Napi::CallbackInfo& info);
  Napi::Value AdoptTcFilter(const Napi::CallbackInfo& info);
  void Release(const Napi::CallbackInfo& info);

  // Every method starts with one of these: they check the object is in a
  // state where `what` makes sense, and clear libbpf's captured log so an
  // error carries only this operation's messages.
  void BeginOpen(Napi::Env env, const std::string& what) const;      // opened, not yet loaded
  void BeginLoaded(Napi::Env env, const std::string& what) const;    // loaded successfully
  void BeginNotClosed(Napi::Env env, const std::string& what) const;

  bpf_map* FindMap(Napi::Env env, const std::string& name, const std::string& what) const;
  bpf_program* FindProgram(Napi::Env env, const std::string& name, const std::string& what) const;

  Napi::Value AddLibbpfLink(Napi::Env env, bpf_link* link, const std::string& what);
  uint32_t AddAttachment(Attachment attachment);

  // Detaches or releases every attachment and closes the libbpf object;
  // returns what could not be detached.
  std::vector<SysError> ReleaseAll();

  std::string path_;
  bpf_object* object_ = nullptr;
  State state_ = State::Opened;
  std::map<uint32_t, Attachment> attachments_;
  uint32_t nextAttachmentId_ = 1;
};

}  // namespace probepilot
