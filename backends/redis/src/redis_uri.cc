// ParseRedisUri and OpenRedisStoreFromUri, over the store URI grammar (internal/uri.h). Error texts
// name the part of the URI that is wrong but never repeat the URI or any value from it: a mistyped
// URI may have its password anywhere.
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "idem/redis_store.h"
#include "internal/status_macros.h"
#include "internal/uri.h"

namespace idem {
namespace {

constexpr std::string_view kScheme = "redis";

absl::Status UriError(std::string_view what) { return internal::UriError(kScheme, what); }

absl::Status ParseQuery(const internal::Uri& uri, RedisStoreOptions& options) {
  constexpr int64_t kMaxMillis = int64_t{1} << 40;
  for (const internal::UriOption& option : uri.query) {
    const std::string& name = option.name;
    const std::string& value = option.value;
    auto integer = [&](int64_t min, int64_t max) {
      return internal::ParseUriInteger(kScheme, name, value, min, max);
    };
    if (name == "prefix") {
      if (value.empty()) return UriError("prefix must not be empty");
      options.key_prefix = value;
    } else if (name == "db") {
      IDEM_ASSIGN_OR_RETURN(options.db, integer(0, INT32_MAX));
    } else if (name == "timeout_ms") {
      IDEM_ASSIGN_OR_RETURN(const int64_t ms, integer(1, kMaxMillis));
      options.connect_timeout = options.io_timeout = std::chrono::milliseconds(ms);
    } else if (name == "connect_timeout_ms") {
      IDEM_ASSIGN_OR_RETURN(const int64_t ms, integer(1, kMaxMillis));
      options.connect_timeout = std::chrono::milliseconds(ms);
    } else if (name == "io_timeout_ms") {
      IDEM_ASSIGN_OR_RETURN(const int64_t ms, integer(1, kMaxMillis));
      options.io_timeout = std::chrono::milliseconds(ms);
    } else if (name == "pool_size") {
      IDEM_ASSIGN_OR_RETURN(options.pool_size, integer(1, 1024));
    } else if (name == "group_limit") {
      IDEM_ASSIGN_OR_RETURN(options.group_limit, integer(1, 1024));
    } else if (name == "retention_ms") {
      IDEM_ASSIGN_OR_RETURN(const int64_t ms, integer(1, kMaxMillis));
      options.retention = std::chrono::milliseconds(ms);
    } else if (name == "max_id_bytes") {
      IDEM_ASSIGN_OR_RETURN(options.max_id_bytes, integer(1, 512 * 1024 * 1024));
    } else if (name == "client_name") {
      options.client_name = value;
    } else if (name == "user") {
      options.user = value;
    } else if (name == "password") {
      options.password = value;
    } else {
      return internal::UnknownUriOption(
          kScheme, name,
          {"prefix", "db", "timeout_ms", "connect_timeout_ms", "io_timeout_ms", "pool_size",
           "group_limit", "retention_ms", "max_id_bytes", "client_name", "user", "password"});
    }
  }
  return absl::OkStatus();
}

// "redis://secret@host" is how some clients spell a password alone; a user without a password
// cannot authenticate, so a userinfo without ':' is the password.
void TakeUserInfo(const internal::Uri& uri, RedisStoreOptions& options) {
  if (uri.password) {
    options.user = uri.user.value_or("");
    options.password = *uri.password;
  } else if (uri.user) {
    options.password = *uri.user;
  }
}

}  // namespace

absl::StatusOr<RedisStoreOptions> ParseRedisUri(std::string_view text) {
  IDEM_ASSIGN_OR_RETURN(const internal::Uri uri, internal::ParseUri(text));
  if (uri.scheme == "rediss") {
    return absl::InvalidArgumentError(
        "rediss:// (Redis over TLS) is not supported: this build's hiredis has no TLS; use "
        "redis:// on a trusted network, or unix://");
  }
  if (uri.scheme != "redis" && uri.scheme != "unix") {
    return UriError("the scheme must be redis:// or unix://");
  }
  if (!uri.has_authority) {
    return UriError("expected redis://host[:port][/db] or unix:///path/to.sock");
  }
  RedisStoreOptions options;
  TakeUserInfo(uri, options);
  if (uri.scheme == "redis") {
    if (uri.host.empty()) return UriError("the host is missing");
    if (uri.host.size() > 255) return UriError("the host is longer than a DNS name (255 bytes)");
    for (char c : uri.host) {
      if (!(absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' ||
            c == '_' || c == ':' || c == '%')) {
        return UriError("the host has characters a host name cannot have");
      }
    }
    options.host = uri.host;
    if (uri.port) options.port = static_cast<int>(*uri.port);
    if (uri.path.size() > 1) {
      IDEM_ASSIGN_OR_RETURN(options.db, internal::ParseUriInteger(
                                            kScheme, "the db", uri.path.substr(1), 0, INT32_MAX));
    }
  } else {
    if (!uri.host.empty() || uri.port) {
      return UriError("a unix:// URI takes no host: unix:///path/to.sock");
    }
    if (uri.path.size() < 2) return UriError("the socket path is missing: unix:///path/to.sock");
    if (uri.path.size() > 107) return UriError("the socket path is longer than 107 bytes");
    options.unix_socket = uri.path;
  }
  IDEM_RETURN_IF_ERROR(ParseQuery(uri, options));
  return options;
}

absl::StatusOr<std::unique_ptr<DedupStore>> OpenRedisStoreFromUri(std::string_view uri,
                                                                  const OpenOptions& options) {
  IDEM_ASSIGN_OR_RETURN(RedisStoreOptions store_options, ParseRedisUri(uri));
  if (options.warning) store_options.warning = options.warning;
  if (options.token_source) store_options.token_source = options.token_source;
  return NewRedisStore(std::move(store_options));
}

}  // namespace idem
