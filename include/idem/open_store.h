// OpenStore: opens a DedupStore from a URI, for configuration files and command lines.
//
//   memory:                          in-memory store (options as query: ?capacity=N&evict=1)
//   sqlite:///abs/path/to.db         SQLite file (absolute path)
//   sqlite:relative/path.db          SQLite file (relative to the working directory)
//   redis://[user:pass@]host:port/db?prefix=P&timeout_ms=N      (when built with Redis)
//   unix:///path/to/redis.sock                                  (when built with Redis)
//
// Every scheme shares one grammar: scheme ":" ["//" [userinfo "@"] host [":" port]] path
// ["?" name=value&...]; the authority ends at the first '/' or '?', the userinfo at the last '@'
// before it; '#' is refused; values are percent-decoded. Each backend's header lists its options
// (memory_store.h, sqlite_store.h, redis_store.h, ...).
//
// Errors: InvalidArgument for a malformed URI or an unknown option; Unimplemented for a scheme
// whose backend was not built; otherwise the backend's own status. Passwords never appear in
// error messages, and option values appear only as a short quoted prefix.
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

// Opens the store `uri` names. `options` carries what a URI cannot: where configuration warnings
// go, and (for tests) a clock and a token source.
[[nodiscard]] absl::StatusOr<std::unique_ptr<DedupStore>> OpenStore(
    std::string_view uri, const OpenOptions& options = {});

// The URI for logs: the whole userinfo ("user:password@") and the value of any query option whose name holds "pass" or "secret" replaced by "***", by the same parse that
// OpenStore uses. A URI that does not parse is shown as its scheme only.
std::string RedactUri(std::string_view uri);

}  // namespace idem

#endif  // IDEM_OPEN_STORE_H_
