// postgresql:// and postgres:// URIs: idem's grammar (internal/uri.h) checks the shape and takes
// idem's own query options out; what remains goes to libpq unchanged, so that what libpq accepts
// (multi-host lists, unix socket directories as hosts, every connection keyword) is what idem
// accepts. libpq's own parse errors are not passed on: they may quote the URI, password included.
#include <libpq-fe.h>

#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "idem/postgres_store.h"
#include "pg_internal.h"
#include "internal/status_macros.h"
#include "internal/strings.h"
#include "internal/uri.h"

namespace idem {
namespace {

constexpr std::string_view kIdemOptions[] = {
    "table_prefix", "schema",       "pool_size",   "group_limit",
    "unnamed_statements", "retention_ms", "max_id_bytes"};

bool IsIdemOption(std::string_view name) {
  for (std::string_view o : kIdemOptions) {
    if (o == name) return true;
  }
  return false;
}

// libpq's connection keywords (host, port, sslmode, connect_timeout, …), as this libpq knows them.
const absl::flat_hash_set<std::string>& LibpqKeywords() {
  static const absl::flat_hash_set<std::string>* keywords = [] {
    auto* set = new absl::flat_hash_set<std::string>();
    if (PQconninfoOption* defaults = PQconndefaults()) {
      for (PQconninfoOption* o = defaults; o->keyword != nullptr; ++o) set->insert(o->keyword);
      PQconninfoFree(defaults);
    }
    set->insert("ssl");  // libpq's URI alias: ssl=true means sslmode=require
    return set;
  }();
  return *keywords;
}

absl::Status CheckLibpqValue(std::string_view scheme, std::string_view name,
                             std::string_view value) {
  // libpq checks these only when connecting; a typo should fail when the URI is read.
  if (name == "connect_timeout" || name == "keepalives_idle" || name == "keepalives_interval" ||
      name == "keepalives_count" || name == "tcp_user_timeout" || name == "port") {
    // A port may be a comma-separated list (multi-host); check each entry.
    for (absl::string_view part : absl::StrSplit(internal::ToAbsl(value), ',')) {
      IDEM_RETURN_IF_ERROR(internal::ParseUriInteger(scheme, name, internal::ToStd(part), 0,
                                                     name == "port" ? 65535 : INT32_MAX)
                               .status());
    }
  } else if (name == "sslmode") {
    static constexpr std::string_view kModes[] = {"disable", "allow",     "prefer",
                                                  "require", "verify-ca", "verify-full"};
    bool known = false;
    for (std::string_view m : kModes) known = known || m == value;
    if (!known) {
      return internal::UriError(
          scheme, "sslmode must be disable, allow, prefer, require, verify-ca or verify-full");
    }
  } else if (name == "target_session_attrs") {
    static constexpr std::string_view kAttrs[] = {"any",     "read-write",  "read-only",
                                                  "primary", "standby", "prefer-standby"};
    bool known = false;
    for (std::string_view m : kAttrs) known = known || m == value;
    if (!known) return internal::UriError(scheme, "unknown target_session_attrs");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<PostgresStoreOptions> ParsePostgresUri(std::string_view uri) {
  IDEM_ASSIGN_OR_RETURN(internal::Uri parsed, internal::ParseUri(uri));
  const std::string& scheme = parsed.scheme;
  if (scheme != "postgresql" && scheme != "postgres") {
    return absl::InvalidArgumentError(absl::StrCat(
        "not a PostgreSQL URI (expected postgresql:// or postgres://, got scheme ",
        internal::QuoteForError(scheme), ")"));
  }
  if (!parsed.has_authority) {
    return internal::UriError(scheme,
                              "expected postgresql://[user[:password]@][host][:port][/dbname]");
  }
  PostgresStoreOptions options;
  for (const internal::UriOption& option : parsed.query) {
    const std::string& name = option.name;
    const std::string& value = option.value;
    if (name == "table_prefix") {
      options.table_prefix = value;
    } else if (name == "schema") {
      options.schema = value;
    } else if (name == "pool_size") {
      IDEM_ASSIGN_OR_RETURN(int64_t n, internal::ParseUriInteger(scheme, name, value, 1, 1024));
      options.pool_size = static_cast<std::size_t>(n);
    } else if (name == "group_limit") {
      IDEM_ASSIGN_OR_RETURN(int64_t n, internal::ParseUriInteger(scheme, name, value, 1, 1024));
      options.group_limit = static_cast<std::size_t>(n);
    } else if (name == "unnamed_statements") {
      IDEM_ASSIGN_OR_RETURN(options.unnamed_statements,
                            internal::ParseUriBool(scheme, name, value));
    } else if (name == "retention_ms") {
      IDEM_ASSIGN_OR_RETURN(int64_t n,
                            internal::ParseUriInteger(scheme, name, value, 1, int64_t{1} << 40));
      options.retention = std::chrono::milliseconds(n);
    } else if (name == "max_id_bytes") {
      IDEM_ASSIGN_OR_RETURN(int64_t n,
                            internal::ParseUriInteger(scheme, name, value, 1, 1 << 24));
      options.max_id_bytes = static_cast<std::size_t>(n);
    } else if (LibpqKeywords().contains(name)) {
      if (!internal::IsSecretOptionName(name)) {
        IDEM_RETURN_IF_ERROR(CheckLibpqValue(scheme, name, value));
      }
    } else {
      return internal::UnknownUriOption(
          scheme, name,
          {"table_prefix", "schema", "pool_size", "group_limit", "unnamed_statements",
           "retention_ms", "max_id_bytes", "and libpq's connection keywords (sslmode, connect_timeout, host, …)"});
    }
  }
  // Schema and prefix are checked here by the rule the store applies, so that a bad one fails
  // before connecting.
  if (!internal::pg::MakeTables(options.schema, options.table_prefix).ok()) {
    return internal::UriError(
        scheme, "schema and table_prefix must be letters, digits and '_', not starting with a "
                "digit (table_prefix at most 40 bytes, schema at most 48)");
  }

  // The text libpq reads: the URI without idem's options, its scheme in lower case (libpq only
  // knows "postgresql://" and "postgres://" spelled so).
  const std::size_t scheme_end = uri.find(':');
  std::string conninfo = absl::StrCat(scheme, internal::ToAbsl(uri.substr(scheme_end)));
  if (const std::size_t q = conninfo.find('?'); q != std::string::npos) {
    std::vector<std::string> kept;
    for (absl::string_view pair : absl::StrSplit(absl::string_view(conninfo).substr(q + 1), '&')) {
      if (pair.empty()) continue;
      const absl::string_view name = pair.substr(0, pair.find('='));
      if (!IsIdemOption(internal::ToStd(name))) kept.emplace_back(pair);
    }
    conninfo.resize(q);
    if (!kept.empty()) absl::StrAppend(&conninfo, "?", absl::StrJoin(kept, "&"));
  }
  char* error = nullptr;
  PQconninfoOption* libpq = PQconninfoParse(conninfo.c_str(), &error);
  if (error != nullptr) PQfreemem(error);  // may quote the password: never shown
  if (libpq == nullptr) {
    return internal::UriError(scheme, "libpq cannot parse it (check the host list and escapes)");
  }
  PQconninfoFree(libpq);
  options.conninfo = std::move(conninfo);
  return options;
}

absl::StatusOr<std::unique_ptr<DedupStore>> OpenPostgresStoreFromUri(std::string_view uri,
                                                                     const OpenOptions& options) {
  IDEM_ASSIGN_OR_RETURN(PostgresStoreOptions store_options, ParsePostgresUri(uri));
  store_options.warning = options.warning;
  store_options.token_source = options.token_source;
  return NewPostgresStore(std::move(store_options));
}

}  // namespace idem
