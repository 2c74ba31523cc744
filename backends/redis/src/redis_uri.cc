// ParseRedisUri and OpenRedisStoreFromUri. Error texts name the part of the URI that is wrong but
// never repeat the URI or any value from it: a mistyped URI may have its password anywhere.
#include <algorithm>
#include <cctype>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "idem/redis_store.h"
#include "internal/status_macros.h"
#include "internal/strings.h"
#include "redis_strings.h"

namespace idem {
namespace {

using internal::redis::Cat;

absl::Status UriError(std::string_view what) {
  return absl::InvalidArgumentError(Cat("malformed Redis URI: ", what));
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

absl::StatusOr<std::string> PercentDecode(std::string_view text, std::string_view part) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '%') {
      out.push_back(text[i]);
      continue;
    }
    if (i + 2 >= text.size()) {
      return UriError(Cat("bad percent-encoding in the ", part));
    }
    const int high = HexValue(text[i + 1]);
    const int low = HexValue(text[i + 2]);
    if (high < 0 || low < 0) return UriError(Cat("bad percent-encoding in the ", part));
    out.push_back(static_cast<char>(high * 16 + low));
    i += 2;
  }
  return out;
}

// A non-negative decimal integer in [min, max].
absl::StatusOr<int64_t> ParseInteger(std::string_view text, int64_t min, int64_t max,
                                     std::string_view what) {
  int64_t value = 0;
  const bool digits_only =
      !text.empty() && text.size() <= 18 &&
      std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
  if (!digits_only || !absl::SimpleAtoi(internal::ToAbsl(text), &value) || value < min ||
      value > max) {
    return UriError(Cat(what, " must be an integer from ", min, " to ", max));
  }
  return value;
}

// Splits "user:password" (either may be empty) into the options.
absl::Status ParseUserInfo(std::string_view userinfo, RedisStoreOptions& options) {
  const size_t colon = userinfo.find(':');
  std::string_view user = userinfo.substr(0, colon);
  std::string_view password =
      colon == std::string_view::npos ? std::string_view() : userinfo.substr(colon + 1);
  if (colon == std::string_view::npos) {
    // "redis://secret@host" is how some clients spell a password alone; a user without a
    // password cannot authenticate, so treat it the same way.
    password = user;
    user = {};
  }
  IDEM_ASSIGN_OR_RETURN(options.user, PercentDecode(user, "user name"));
  IDEM_ASSIGN_OR_RETURN(options.password, PercentDecode(password, "password"));
  return absl::OkStatus();
}

absl::Status ParseQuery(std::string_view query, RedisStoreOptions& options) {
  absl::flat_hash_set<std::string> seen;
  while (!query.empty()) {
    const size_t amp = query.find('&');
    const std::string_view pair = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    if (pair.empty()) continue;
    const size_t eq = pair.find('=');
    if (eq == std::string_view::npos || eq == 0) {
      return UriError("each query option must be name=value");
    }
    const std::string name(pair.substr(0, eq));
    if (!seen.insert(name).second) {
      return UriError(Cat("query option '", name, "' is given twice"));
    }
    std::string value;
    IDEM_ASSIGN_OR_RETURN(value, PercentDecode(pair.substr(eq + 1), "query"));
    constexpr int64_t kMaxMillis = int64_t{1} << 40;
    if (name == "prefix") {
      if (value.empty()) return UriError("prefix must not be empty");
      options.key_prefix = std::move(value);
    } else if (name == "db") {
      IDEM_ASSIGN_OR_RETURN(options.db, ParseInteger(value, 0, INT32_MAX, "db"));
    } else if (name == "timeout_ms") {
      int64_t ms = 0;
      IDEM_ASSIGN_OR_RETURN(ms, ParseInteger(value, 1, kMaxMillis, "timeout_ms"));
      options.connect_timeout = options.io_timeout = std::chrono::milliseconds(ms);
    } else if (name == "connect_timeout_ms") {
      int64_t ms = 0;
      IDEM_ASSIGN_OR_RETURN(ms, ParseInteger(value, 1, kMaxMillis, "connect_timeout_ms"));
      options.connect_timeout = std::chrono::milliseconds(ms);
    } else if (name == "io_timeout_ms") {
      int64_t ms = 0;
      IDEM_ASSIGN_OR_RETURN(ms, ParseInteger(value, 1, kMaxMillis, "io_timeout_ms"));
      options.io_timeout = std::chrono::milliseconds(ms);
    } else if (name == "pool_size") {
      IDEM_ASSIGN_OR_RETURN(options.pool_size, ParseInteger(value, 1, 1024, "pool_size"));
    } else if (name == "retention_ms") {
      int64_t ms = 0;
      IDEM_ASSIGN_OR_RETURN(ms, ParseInteger(value, 1, kMaxMillis, "retention_ms"));
      options.retention = std::chrono::milliseconds(ms);
    } else if (name == "max_id_bytes") {
      IDEM_ASSIGN_OR_RETURN(options.max_id_bytes,
                            ParseInteger(value, 1, 512 * 1024 * 1024, "max_id_bytes"));
    } else if (name == "client_name") {
      options.client_name = std::move(value);
    } else if (name == "user") {
      options.user = std::move(value);
    } else if (name == "password") {
      options.password = std::move(value);
    } else {
      return UriError(
          Cat("unknown query option '", name,
              "' (known: prefix, db, timeout_ms, connect_timeout_ms, io_timeout_ms, pool_size, "
              "retention_ms, max_id_bytes, client_name, user, password)"));
    }
  }
  return absl::OkStatus();
}

// host[:port] or [v6]:port
absl::Status ParseHostPort(std::string_view hostport, RedisStoreOptions& options) {
  std::string_view host = hostport;
  std::string_view port;
  if (!hostport.empty() && hostport.front() == '[') {
    const size_t close = hostport.find(']');
    if (close == std::string_view::npos) return UriError("unterminated [IPv6] host");
    host = hostport.substr(1, close - 1);
    std::string_view rest = hostport.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') return UriError("unexpected text after the [IPv6] host");
      port = rest.substr(1);
      if (port.empty()) return UriError("empty port");
    }
  } else {
    const size_t colon = hostport.find(':');
    if (colon != std::string_view::npos) {
      host = hostport.substr(0, colon);
      port = hostport.substr(colon + 1);
      if (port.empty()) return UriError("empty port");
    }
  }
  if (host.empty()) return UriError("the host is missing");
  for (char c : host) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_' ||
          c == ':' || c == '%')) {
      return UriError("the host has characters a host name cannot have");
    }
  }
  options.host = std::string(host);
  if (!port.empty()) {
    IDEM_ASSIGN_OR_RETURN(options.port, ParseInteger(port, 1, 65535, "the port"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<RedisStoreOptions> ParseRedisUri(std::string_view uri) {
  const size_t sep = uri.find("://");
  if (sep == std::string_view::npos) {
    return UriError("expected redis://host[:port][/db] or unix:///path/to.sock");
  }
  const std::string scheme = absl::AsciiStrToLower(internal::ToAbsl(uri.substr(0, sep)));
  std::string_view rest = uri.substr(sep + 3);
  if (scheme == "rediss") {
    return absl::InvalidArgumentError(
        "rediss:// (Redis over TLS) is not supported: this build's hiredis has no TLS; use "
        "redis:// on a trusted network, or unix://");
  }
  if (scheme != "redis" && scheme != "unix") {
    return UriError("the scheme must be redis:// or unix://");
  }
  if (rest.find('#') != std::string_view::npos) {
    return UriError("a fragment ('#') is not allowed; percent-encode '#' as %23");
  }

  RedisStoreOptions options;
  std::string_view query;
  if (const size_t q = rest.find('?'); q != std::string_view::npos) {
    query = rest.substr(q + 1);
    rest = rest.substr(0, q);
  }

  if (scheme == "redis") {
    const size_t slash = rest.find('/');
    std::string_view authority = rest.substr(0, slash);
    const std::string_view path =
        slash == std::string_view::npos ? std::string_view() : rest.substr(slash);
    if (const size_t at = authority.rfind('@'); at != std::string_view::npos) {
      IDEM_RETURN_IF_ERROR(ParseUserInfo(authority.substr(0, at), options));
      authority = authority.substr(at + 1);
    }
    IDEM_RETURN_IF_ERROR(ParseHostPort(authority, options));
    if (path.size() > 1) {
      IDEM_ASSIGN_OR_RETURN(options.db, ParseInteger(path.substr(1), 0, INT32_MAX, "the db"));
    }
  } else {
    // unix:///path or unix://[user:]password@/path
    if (!rest.empty() && rest.front() != '/') {
      const size_t at = rest.find("@/");
      if (at == std::string_view::npos) {
        return UriError("a unix:// URI needs an absolute socket path: unix:///path/to.sock");
      }
      IDEM_RETURN_IF_ERROR(ParseUserInfo(rest.substr(0, at), options));
      rest = rest.substr(at + 1);
    }
    if (rest.size() < 2) return UriError("the socket path is missing: unix:///path/to.sock");
    IDEM_ASSIGN_OR_RETURN(options.unix_socket, PercentDecode(rest, "socket path"));
  }
  IDEM_RETURN_IF_ERROR(ParseQuery(query, options));
  return options;
}

absl::StatusOr<std::unique_ptr<DedupStore>> OpenRedisStoreFromUri(std::string_view uri) {
  IDEM_ASSIGN_OR_RETURN(RedisStoreOptions options, ParseRedisUri(uri));
  return NewRedisStore(std::move(options));
}

}  // namespace idem
