// Private helpers of the PostgreSQL backend, shared by the lease-mode store and transactional
// mode: owned libpq handles, the one mapping from SQLSTATEs to absl::Status, binary parameters and
// columns, a pipeline runner (several statements, one round trip), the schema and its migrations.
//
// Thread-safety: none of these types lock; a connection is used by one thread at a time (the
// store's pool hands each call its own).
#ifndef IDEM_BACKENDS_POSTGRES_SRC_PG_INTERNAL_H_
#define IDEM_BACKENDS_POSTGRES_SRC_PG_INTERNAL_H_

#include <libpq-fe.h>

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "idem/store.h"

namespace idem::internal::pg {

struct ConnCloser {
  void operator()(PGconn* conn) const noexcept { PQfinish(conn); }
};
struct ResultClearer {
  void operator()(PGresult* result) const noexcept { PQclear(result); }
};
using PgConnPtr = std::unique_ptr<PGconn, ConnCloser>;
using PgResultPtr = std::unique_ptr<PGresult, ResultClearer>;

// Type OIDs of the parameters idem binds (pg_type.h is not part of libpq's public headers).
inline constexpr Oid kInt4Oid = 23;
inline constexpr Oid kInt8Oid = 20;
inline constexpr Oid kTextOid = 25;
inline constexpr Oid kByteaOid = 17;
inline constexpr Oid kInt4ArrayOid = 1007;
inline constexpr Oid kInt8ArrayOid = 1016;
inline constexpr Oid kTextArrayOid = 1009;
inline constexpr Oid kByteaArrayOid = 1001;

// The one place where a server error becomes a status (see postgres_store.h for the table).
// `result` may be null (then the connection's state decides: a broken connection is Unavailable).
// The message holds `operation`, the server's primary message and the SQLSTATE; `secret` (the
// password), if non-empty, is masked wherever it would appear.
[[nodiscard]] absl::Status PgStatus(const PGresult* result, const PGconn* conn,
                                    std::string_view operation, std::string_view secret = {});
// The SQLSTATE of an error result, "" otherwise.
std::string_view SqlState(const PGresult* result);
// `text` with every occurrence of `secret` (when non-empty) replaced by "***".
std::string MaskSecret(std::string text, std::string_view secret);

// Opens a connection (blocking, bounded by the conninfo's connect_timeout, 10 s unless it sets one;
// tcp_user_timeout 30 s unless it sets one). Errors as PgStatus:
// Unavailable when the server cannot be reached, PermissionDenied for authentication.
[[nodiscard]] absl::StatusOr<PgConnPtr> Connect(const std::string& conninfo,
                                                std::string_view secret);
// The password in `conninfo` ("" if none), for masking.
std::string PasswordOf(const std::string& conninfo);

// Parameters of one statement, in binary format. Values are views: what they point to must
// outlive the run. Integers are encoded here, in network byte order.
class Params {
 public:
  static constexpr int kMax = 12;
  Params& Text(std::string_view value) { return Add(value, kTextOid); }
  Params& Bytea(std::string_view value) { return Add(value, kByteaOid); }
  Params& OptionalBytea(const std::optional<std::string_view>& value);
  Params& Int8(int64_t value);
  Params& Int4(int32_t value);
  Params& Null(Oid type);
  // An array already in binary form (ArrayBuilder::Encoded); `array_type` is its array type OID.
  Params& Array(std::string_view encoded, Oid array_type) { return Add(encoded, array_type); }

  int size() const { return n_; }
  const Oid* types() const { return types_.data(); }
  const char* const* values() const { return values_.data(); }
  const int* lengths() const { return lengths_.data(); }
  const int* formats() const { return formats_.data(); }

 private:
  Params& Add(std::string_view value, Oid type);
  int n_ = 0;
  std::array<Oid, kMax> types_{};
  std::array<const char*, kMax> values_{};
  std::array<int, kMax> lengths_{};
  std::array<int, kMax> formats_{};
  std::array<std::array<char, 8>, kMax> ints_{};
};

// A one-dimensional array in PostgreSQL's binary array format (what array_recv reads), built
// element by element: a batch binds one array per column and runs one statement for all its
// entries, instead of one statement per entry. NULL elements are allowed.
class ArrayBuilder {
 public:
  // `element_type`: the element's type OID (the server checks it against the declared array).
  explicit ArrayBuilder(Oid element_type) : element_type_(element_type) {}
  ArrayBuilder& Bytes(std::string_view value);  // text (valid UTF-8) or bytea
  ArrayBuilder& OptionalBytes(const std::optional<std::string_view>& value);
  ArrayBuilder& Int8(int64_t value);
  ArrayBuilder& Int4(int32_t value);
  ArrayBuilder& Null();
  // The encoded array: valid until the builder changes or goes away.
  std::string_view Encoded();

 private:
  Oid element_type_;
  int32_t count_ = 0;
  bool has_null_ = false;
  std::string elements_;
  std::string encoded_;
};

// A statement of a store: its SQL, and its name when prepared on each connection.
struct Statement {
  std::string name;  // "" only for statements never prepared (BEGIN, COMMIT, …)
  std::string sql;
  // Parameter types as prepared (the calls must bind the same types).
  std::vector<Oid> types;
};

// One entry of a pipeline: a statement and its parameters (or none).
struct Call {
  const Statement* statement;
  const Params* params;  // null: no parameters
};

// How a pipeline sends its statements.
enum class StatementMode { kNamed, kUnnamed };

// Prepares `statements` on `conn` (one round trip). No-op for kUnnamed.
[[nodiscard]] absl::Status PrepareAll(PGconn* conn, std::span<const Statement* const> statements,
                                      std::string_view secret);

// Runs `calls` in pipeline mode with one Sync after the last: one round trip, and (outside an
// explicit transaction block) one implicit transaction. Returns one result per call. On a server
// error the failing call's result is that error and the calls after it are PGRES_PIPELINE_ABORTED;
// the caller decides (FirstError). A non-OK status means the connection failed: nothing is known
// of what the server did, and the connection must be discarded.
[[nodiscard]] absl::StatusOr<std::vector<PgResultPtr>> RunPipeline(PGconn* conn,
                                                                   std::span<const Call> calls,
                                                                   StatementMode mode,
                                                                   std::string_view operation,
                                                                   std::string_view secret);
// The first result of `results` that is an error, or null.
const PGresult* FirstError(const std::vector<PgResultPtr>& results);
// Whether `result` is a successful command or row set.
bool IsOk(const PGresult* result);

// Binary columns. REQUIRES: the column exists; a NULL reads as 0 / nullopt.
int64_t GetInt8(const PGresult* result, int row, int column);
int32_t GetInt4(const PGresult* result, int row, int column);
int16_t GetInt2(const PGresult* result, int row, int column);
std::optional<std::string> GetBytea(const PGresult* result, int row, int column);
bool IsNull(const PGresult* result, int row, int column);

// Versions are 8-byte big-endian bytea: bytea compares bytewise, so its order is unsigned order
// over the whole uint64 range.
std::string EncodeVersion(uint64_t version);
[[nodiscard]] absl::StatusOr<uint64_t> DecodeVersion(std::string_view bytes);
std::string EncodeFingerprint(const Fingerprint& fingerprint);

// Tokens are stored as the int8 with the same bit pattern.
inline int64_t TokenToSql(uint64_t token) { return static_cast<int64_t>(token); }
inline uint64_t TokenFromSql(int64_t value) { return static_cast<uint64_t>(value); }

// idem_dedup.status values, and idem_dedup.claim_origin (how the current claim was obtained, set
// by the takeover upsert from the row it replaced: RETURNING sees only the new row).
inline constexpr int kStatusInProgress = 0;
inline constexpr int kStatusReleased = 1;
inline constexpr int kStatusCompleted = 2;
inline constexpr int kOriginFresh = 0;
inline constexpr int kOriginReleased = 1;
inline constexpr int kOriginTakeover = 2;
inline constexpr int kOriginRetention = 3;

// The server's clock in milliseconds since the epoch: leases and retention are measured by it.
inline constexpr char kNowMs[] = "(extract(epoch from clock_timestamp()) * 1000)::int8";

// Fully qualified, quoted table names for one schema and prefix.
struct Tables {
  std::string schema;  // quoted
  std::string dedup;
  std::string versions;
  std::string attempts;
  std::string meta;
  std::string lock_name;  // unquoted "schema.prefix", the advisory lock's key
  std::string schema_name;  // unquoted
  std::string prefix;       // unquoted
};
// InvalidArgument unless schema and prefix are plain identifiers (see PostgresStoreOptions).
[[nodiscard]] absl::StatusOr<Tables> MakeTables(std::string_view schema, std::string_view prefix);
// `sql` with {dedup}, {versions}, {attempts}, {meta} and {now} replaced.
std::string Expand(std::string_view sql, const Tables& tables);

// Schema: version 1 holds dedup, versions and meta; version 2 adds attempts (transactional mode).
inline constexpr int kSchemaVersion = 2;
// Creates or migrates idem's tables forward, in one transaction under an advisory lock keyed by
// the tables' schema and prefix. FailedPrecondition for a newer schema or a connection inside a
// transaction.
[[nodiscard]] absl::Status EnsureSchema(PGconn* conn, const Tables& tables, std::string_view secret);

// A record as read for classification.
struct DedupRow {
  int status = kStatusInProgress;
  uint64_t token = 0;
  int64_t lease_until = 0;
  uint32_t attempts = 0;
  std::optional<std::string> fingerprint;
  std::optional<std::string> result;
  int64_t expires_at = 0;
};

// The outcome a held record gives a claim before the version gate: conflict, duplicate, in
// progress. nullopt when none applies.
std::optional<ClaimResult> ClassifyHeld(const DedupRow& row,
                                        std::optional<std::string_view> request_fingerprint,
                                        int64_t now);

// Statement name prefix unique per schema/prefix pair, so that two stores over different tables
// can share nothing by accident (each store has its own connections anyway).
inline constexpr char kStatementPrefix[] = "idem_";

}  // namespace idem::internal::pg

#endif  // IDEM_BACKENDS_POSTGRES_SRC_PG_INTERNAL_H_
