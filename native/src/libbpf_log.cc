#include "libbpf_log.h"

#include <bpf/libbpf.h>

#include <cstdarg>
#include <cstdio>

namespace probepilot::libbpf_log {
namespace {

// Verifier logs can be megabytes; their end (the rejected instruction and
// the reason) is what explains a failure.
constexpr size_t kTailBytes = 4096;

// libbpf prints from whichever thread calls it; per-thread buffers keep a
// worker's messages out of the main thread's errors.
thread_local std::string captured;

int Capture(enum libbpf_print_level level, const char* format, va_list args) {
  // Debug output is a trace of everything libbpf does and would push the
  // warnings that matter out of the tail.
  if (level == LIBBPF_DEBUG) return 0;

  va_list measure;
  va_copy(measure, args);
  const int length = std::vsnprintf(nullptr, 0, format, measure);
  va_end(measure);
  if (length <= 0) return 0;

  const size_t start = captured.size();
  captured.resize(start + static_cast<size_t>(length) + 1);
  std::vsnprintf(&captured[start], static_cast<size_t>(length) + 1, format, args);
  captured.resize(start + static_cast<size_t>(length));

  if (captured.size() > 2 * kTailBytes) captured.erase(0, captured.size() - kTailBytes);
  return length;
}

}  // namespace

void Install() { libbpf_set_print(Capture); }

void Reset() { captured.clear(); }

std::string Tail() {
  if (captured.size() <= kTailBytes) return captured;
  size_t start = captured.size() - kTailBytes;
  const size_t newline = captured.find('\n', start);
  if (newline != std::string::npos && newline + 1 < captured.size()) start = newline + 1;
  return captured.substr(start);
}

}  // namespace probepilot::libbpf_log
