// OpenStore: a plain switch on the URI scheme over the backends this build has.
#include "idem/open_store.h"

#include <algorithm>
#include <charconv>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "idem/memory_store.h"
#include "internal/status_macros.h"
#include "internal/strings.h"

#if IDEM_HAVE_SQLITE
#include "idem/sqlite_store.h"
#endif
#if IDEM_HAVE_REDIS
#include "idem/redis_store.h"
#endif

namespace idem {
namespace {

using Query = std::vector<std::pair<std::string, std::string>>;

absl::StatusOr<std::string> PercentDecode(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  for (std::size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      out.push_back(in[i]);
      continue;
    }
    if (i + 2 >= in.size() || !absl::ascii_isxdigit(static_cast<unsigned char>(in[i + 1])) ||
        !absl::ascii_isxdigit(static_cast<unsigned char>(in[i + 2]))) {
      return absl::InvalidArgumentError("malformed percent-escape in URI");
    }
    int value = 0;
    std::from_chars(in.data() + i + 1, in.data() + i + 3, value, 16);
    out.push_back(static_cast<char>(value));
    i += 2;
  }
  return out;
}

absl::StatusOr<Query> ParseQuery(std::string_view query) {
  Query out;
  if (query.empty()) return out;
  for (absl::string_view part : absl::StrSplit(internal::ToAbsl(query), '&')) {
    std::pair<absl::string_view, absl::string_view> kv =
        absl::StrSplit(part, absl::MaxSplits('=', 1));
    if (kv.first.empty()) return absl::InvalidArgumentError("URI query has an empty option name");
    IDEM_ASSIGN_OR_RETURN(std::string value, PercentDecode(internal::ToStd(kv.second)));
    out.emplace_back(std::string(kv.first), std::move(value));
  }
  return out;
}

absl::StatusOr<int64_t> ParsePositive(std::string_view name, std::string_view value) {
  int64_t n = 0;
  auto [ptr, ec] = std::from_chars(value.data(), value.data() + value.size(), n);
  if (ec != std::errc() || ptr != value.data() + value.size() || n <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("URI option ", std::string(name),
                                                   " must be a positive integer, got '",
                                                   std::string(value), "'"));
  }
  return n;
}

absl::Status UnknownOption(std::string_view scheme, std::string_view name) {
  return absl::InvalidArgumentError(
      absl::StrCat("unknown option '", std::string(name), "' for ", std::string(scheme), ": URIs"));
}

absl::StatusOr<MemoryStoreOptions> MemoryOptions(std::string_view rest, const Query& query) {
  if (!rest.empty()) {
    return absl::InvalidArgumentError(
        "memory: URIs take no path (use 'memory:' or 'memory:?capacity=N')");
  }
  MemoryStoreOptions options;
  for (const auto& [name, value] : query) {
    if (name == "capacity") {
      IDEM_ASSIGN_OR_RETURN(int64_t n, ParsePositive(name, value));
      options.capacity = static_cast<std::size_t>(n);
    } else if (name == "evict") {
      if (value != "0" && value != "1") {
        return absl::InvalidArgumentError("URI option evict must be 0 or 1");
      }
      options.evict_oldest = value == "1";
    } else if (name == "retention_ms") {
      IDEM_ASSIGN_OR_RETURN(int64_t n, ParsePositive(name, value));
      options.retention = std::chrono::milliseconds(n);
    } else {
      return UnknownOption("memory", name);
    }
  }
  return options;
}

#if IDEM_HAVE_SQLITE
absl::StatusOr<SqliteStoreOptions> SqliteOptions(std::string_view rest, const Query& query) {
  std::string_view path = rest;
  if (path.substr(0, 2) == "//") {
    // sqlite:///abs/path: an empty authority, then an absolute path.
    path.remove_prefix(2);
    if (path.empty() || path[0] != '/') {
      return absl::InvalidArgumentError(
          "sqlite:// URIs take no host: use sqlite:///absolute/path.db or sqlite:relative.db");
    }
  }
  if (path.empty()) return absl::InvalidArgumentError("sqlite: URI has no database path");
  SqliteStoreOptions options;
  IDEM_ASSIGN_OR_RETURN(options.path, PercentDecode(path));
  for (const auto& [name, value] : query) {
    if (name == "synchronous") {
      const std::string v = absl::AsciiStrToLower(value);
      if (v == "off")
        options.synchronous = SqliteSynchronous::kOff;
      else if (v == "normal")
        options.synchronous = SqliteSynchronous::kNormal;
      else if (v == "full")
        options.synchronous = SqliteSynchronous::kFull;
      else if (v == "extra")
        options.synchronous = SqliteSynchronous::kExtra;
      else
        return absl::InvalidArgumentError(
            "URI option synchronous must be off, normal, full or extra");
    } else if (name == "busy_timeout_ms") {
      IDEM_ASSIGN_OR_RETURN(int64_t n, ParsePositive(name, value));
      options.busy_timeout = std::chrono::milliseconds(n);
    } else if (name == "retention_ms") {
      IDEM_ASSIGN_OR_RETURN(int64_t n, ParsePositive(name, value));
      options.retention = std::chrono::milliseconds(n);
    } else {
      return UnknownOption("sqlite", name);
    }
  }
  return options;
}
#endif

// Splits "scheme:rest?query" for the memory: and sqlite: schemes.
absl::Status Split(std::string_view uri, std::string_view scheme, std::string_view* rest,
                   Query* query) {
  const std::size_t colon = uri.find(':');
  if (colon == std::string_view::npos ||
      absl::AsciiStrToLower(internal::ToAbsl(uri.substr(0, colon))) != scheme) {
    return absl::InvalidArgumentError(
        absl::StrCat("not a ", std::string(scheme), ": URI"));
  }
  *rest = uri.substr(colon + 1);
  std::string_view query_text;
  if (const std::size_t q = rest->find('?'); q != std::string_view::npos) {
    query_text = rest->substr(q + 1);
    *rest = rest->substr(0, q);
  }
  IDEM_ASSIGN_OR_RETURN(*query, ParseQuery(query_text));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<MemoryStoreOptions> ParseMemoryUri(std::string_view uri) {
  std::string_view rest;
  Query query;
  if (absl::Status s = Split(uri, "memory", &rest, &query); !s.ok()) return s;
  return MemoryOptions(rest, query);
}

#if IDEM_HAVE_SQLITE
absl::StatusOr<SqliteStoreOptions> ParseSqliteUri(std::string_view uri) {
  std::string_view rest;
  Query query;
  if (absl::Status s = Split(uri, "sqlite", &rest, &query); !s.ok()) return s;
  return SqliteOptions(rest, query);
}
#endif

// Masks the password of a userinfo ("user:secret@host") and of a "password=" query option.
std::string RedactUri(std::string_view uri) {
  std::string out(uri);
  const std::size_t scheme_end = out.find("://");
  if (scheme_end != std::string::npos) {
    const std::size_t authority = scheme_end + 3;
    const std::size_t at = out.find('@', authority);
    const std::size_t slash = out.find('/', authority);
    const std::size_t colon = out.find(':', authority);
    if (at != std::string::npos && (slash == std::string::npos || at < slash) &&
        colon != std::string::npos && colon < at) {
      out.replace(colon + 1, at - colon - 1, "***");
    }
  }
  const std::size_t query = out.find('?');
  for (std::size_t pos = query; pos != std::string::npos && pos < out.size();
       pos = out.find('&', pos + 1)) {
    constexpr std::string_view kKey = "password=";
    if (out.compare(pos + 1, kKey.size(), kKey) != 0) continue;
    const std::size_t begin = pos + 1 + kKey.size();
    const std::size_t end = std::min(out.find('&', begin), out.size());
    out.replace(begin, end - begin, "***");
  }
  return out;
}

absl::StatusOr<std::unique_ptr<DedupStore>> OpenStore(std::string_view uri,
                                                      const OpenOptions& open_options) {
  const std::size_t colon = uri.find(':');
  if (uri.empty() || colon == std::string_view::npos || colon == 0) {
    return absl::InvalidArgumentError(
        "store URI has no scheme: expected memory:, sqlite:///path.db, sqlite:path.db or "
        "redis://…");
  }
  const std::string scheme = absl::AsciiStrToLower(internal::ToAbsl(uri.substr(0, colon)));
  std::string_view rest = uri.substr(colon + 1);

  if (scheme == "redis" || scheme == "rediss" || scheme == "unix") {
#if IDEM_HAVE_REDIS
    return OpenRedisStoreFromUri(uri);
#else
    return absl::UnimplementedError(absl::StrCat(
        scheme, ": URIs need the Redis backend, which this build of idem does not have"));
#endif
  }

  std::string_view query_text;
  if (const std::size_t q = rest.find('?'); q != std::string_view::npos) {
    query_text = rest.substr(q + 1);
    rest = rest.substr(0, q);
  }
  IDEM_ASSIGN_OR_RETURN(const Query query, ParseQuery(query_text));

  if (scheme == "memory") {
    IDEM_ASSIGN_OR_RETURN(MemoryStoreOptions options, MemoryOptions(rest, query));
    options.clock = open_options.clock;
    options.token_source = open_options.token_source;
    return NewMemoryStore(std::move(options));
  }
  if (scheme == "sqlite") {
#if IDEM_HAVE_SQLITE
    IDEM_ASSIGN_OR_RETURN(SqliteStoreOptions options, SqliteOptions(rest, query));
    options.clock = open_options.clock;
    options.token_source = open_options.token_source;
    return NewSqliteStore(std::move(options));
#else
    return absl::UnimplementedError(
        "sqlite: URIs need the SQLite backend, which this build of idem does not have");
#endif
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown store URI scheme '", scheme,
                                                 "': expected memory, sqlite, redis or unix"));
}

}  // namespace idem
