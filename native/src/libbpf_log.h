// Captures libbpf's own messages (warnings, verifier logs) so they reach JS
// inside the error they explain instead of going to stderr.
#pragma once

#include <string>

namespace probepilot::libbpf_log {

// Routes libbpf's print callback into a per-thread buffer; call once.
void Install();

// Forgets what was captured on this thread; called when an operation starts,
// so an error only carries messages from the call that failed.
void Reset();

// The last few KB captured on this thread since Reset(), starting at a line
// boundary; empty when libbpf said nothing.
std::string Tail();

}  // namespace probepilot::libbpf_log
