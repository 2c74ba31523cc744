// OpenStore: opens a DedupStore from a URI, for configuration files and command lines.
//
//   memory:                          in-memory store (options as query: ?capacity=N&evict=1)
//   sqlite:///abs/path/to.db         SQLite file (absolute path)
//   sqlite:relative/path.db          SQLite file (relative to the working directory)
//   redis://[user:pass@]host:port/db?prefix=P&timeout_ms=N      (when built with Redis)
//   unix:///path/to/redis.sock                                  (when built with Redis)
//
// Errors: InvalidArgument for a malformed URI or an unknown option; Unimplemented for a scheme
// whose backend was not built; otherwise the backend's own status. Passwords never appear in
// error messages.
//
// Thread-safety: OpenStore may be called from any thread.
#ifndef IDEM_OPEN_STORE_H_
#define IDEM_OPEN_STORE_H_

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "idem/open_options.h"
#include "idem/store.h"

namespace idem {

[[nodiscard]] absl::StatusOr<std::unique_ptr<DedupStore>> OpenStore(
    std::string_view uri, const OpenOptions& options = {});

// The URI with any password replaced by "***", for logs.
std::string RedactUri(std::string_view uri);

}  // namespace idem

#endif  // IDEM_OPEN_STORE_H_
