// ParseSqliteUri and OpenSqliteStoreFromUri, over the store URI grammar (internal/uri.h).
#include <string>
#include <string_view>
#include <utility>

#include "idem/sqlite_store.h"
#include "internal/status_macros.h"
#include "internal/strings.h"
#include "internal/uri.h"

namespace idem {
namespace {

constexpr std::string_view kScheme = "sqlite";

}  // namespace

absl::StatusOr<SqliteStoreOptions> ParseSqliteUri(std::string_view text) {
  IDEM_ASSIGN_OR_RETURN(const internal::Uri uri, internal::ParseUri(text));
  if (uri.scheme != kScheme) return internal::UriError(kScheme, "the scheme must be sqlite:");
  if (uri.has_authority &&
      (!uri.host.empty() || uri.port || uri.user || uri.password || uri.path.empty())) {
    return internal::UriError(
        kScheme, "sqlite: URIs take no host: use sqlite:///absolute/path.db or sqlite:relative.db");
  }
  if (uri.path.empty()) return internal::UriError(kScheme, "the database path is missing");
  SqliteStoreOptions options;
  options.path = uri.path;
  constexpr int64_t kMaxMillis = int64_t{1} << 40;
  for (const internal::UriOption& option : uri.query) {
    const std::string& name = option.name;
    if (name == "synchronous") {
      absl::StatusOr<SqliteSynchronous> synchronous = ParseSqliteSynchronous(option.value);
      if (!synchronous.ok()) {
        return internal::UriError(kScheme, "synchronous must be off, normal, full or extra");
      }
      options.synchronous = *synchronous;
    } else if (name == "busy_timeout_ms") {
      IDEM_ASSIGN_OR_RETURN(const int64_t ms,
                            internal::ParseUriInteger(kScheme, name, option.value, 1, kMaxMillis));
      options.busy_timeout = std::chrono::milliseconds(ms);
    } else if (name == "retention_ms") {
      IDEM_ASSIGN_OR_RETURN(const int64_t ms,
                            internal::ParseUriInteger(kScheme, name, option.value, 1, kMaxMillis));
      options.retention = std::chrono::milliseconds(ms);
    } else if (name == "max_id_bytes") {
      IDEM_ASSIGN_OR_RETURN(const int64_t n, internal::ParseUriInteger(kScheme, name, option.value,
                                                                       1, 512 * 1024 * 1024));
      options.max_id_bytes = static_cast<std::size_t>(n);
    } else if (name == "group_limit") {
      IDEM_ASSIGN_OR_RETURN(const int64_t n, internal::ParseUriInteger(kScheme, name, option.value,
                                                                       1, 1024));
      options.group_limit = static_cast<std::size_t>(n);
    } else {
      return internal::UnknownUriOption(kScheme, name,
                                        {"synchronous", "busy_timeout_ms", "retention_ms",
                                         "max_id_bytes", "group_limit"});
    }
  }
  return options;
}

absl::StatusOr<std::unique_ptr<DedupStore>> OpenSqliteStoreFromUri(std::string_view uri,
                                                                   const OpenOptions& options) {
  IDEM_ASSIGN_OR_RETURN(SqliteStoreOptions store_options, ParseSqliteUri(uri));
  store_options.clock = options.clock;
  if (options.token_source) store_options.token_source = options.token_source;
  return NewSqliteStore(std::move(store_options));
}

}  // namespace idem
