// OpenOptions: what a program can hand to a store opened by URI (OpenStore, idem-admin, idem-sim)
// that a URI cannot carry: a place for configuration warnings, and for tests a clock and a token
// source. Every backend's URI opener takes it; a backend ignores what does not apply to it.
//
// Thread-safety: a plain value; the callbacks it holds are called from the threads that use the
// store (warnings: from the opening thread).
#ifndef IDEM_OPEN_OPTIONS_H_
#define IDEM_OPEN_OPTIONS_H_

#include <cstdint>
#include <functional>
#include <string_view>

#include "idem/types.h"

namespace idem {

struct OpenOptions {
  // Receives each warning about an unsafe store configuration (for example a Redis server that may
  // evict or lose records). Empty: warnings go to stderr. Never receives a password.
  std::function<void(std::string_view)> warning;
  // Time source of the stores that lease by the consumer's clock (memory, SQLite); stores that use
  // their server's clock (Redis, PostgreSQL) ignore it. nullptr: that store's default. Not owned.
  Clock* clock = nullptr;
  // Fencing token source; empty: the store's own random source. Tokens must be non-zero and
  // unique per claim.
  std::function<uint64_t()> token_source;
};

}  // namespace idem

#endif  // IDEM_OPEN_OPTIONS_H_
