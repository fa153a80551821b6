// A shared library opened with dlopen at run time, its symbols looked up
// once and cached; closed with the object. For vendor libraries (NVML, DCGM)
// that must never be build- or load-time dependencies of the addon.
#pragma once

#include <dlfcn.h>

#include <map>
#include <memory>
#include <string>

namespace probepilot {

class DynamicLibrary {
 public:
  // nullptr with *error set to dlerror()'s message when it cannot be loaded.
  static std::unique_ptr<DynamicLibrary> Open(const std::string& path, std::string* error) {
    void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      const char* reason = dlerror();
      *error = reason != nullptr ? reason : path + ": cannot be loaded";
      return nullptr;
    }
    return std::unique_ptr<DynamicLibrary>(new DynamicLibrary(handle));
  }

  ~DynamicLibrary() { dlclose(handle_); }
  DynamicLibrary(const DynamicLibrary&) = delete;
  DynamicLibrary& operator=(const DynamicLibrary&) = delete;

  // nullptr when the library has no such symbol (an older version).
  void* Symbol(const char* name) {
    auto found = symbols_.find(name);
    if (found != symbols_.end()) return found->second;
    void* symbol = dlsym(handle_, name);
    symbols_.emplace(name, symbol);
    return symbol;
  }

  template <typename Fn>
  Fn Function(const char* name) {
    return reinterpret_cast<Fn>(Symbol(name));
  }

 private:
  explicit DynamicLibrary(void* handle) : handle_(handle) {}

  void* handle_;
  std::map<std::string, void*> symbols_;
};

}  // namespace probepilot
