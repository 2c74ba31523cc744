// postgresql:// URIs: what libpq accepts, idem's own options, and that a password never shows in
// an error or in RedactUri. No server needed.
#include <string>

#include "gtest/gtest.h"
#include "idem/postgres_store.h"
#include "internal/uri.h"

namespace idem {
namespace {

constexpr char kPassword[] = "s3cr%40t";  // decoded: s3cr@t

TEST(PostgresUri, FullUriKeepsLibpqPartsAndTakesIdemOptions) {
  absl::StatusOr<PostgresStoreOptions> o = ParsePostgresUri(
      "postgresql://app:s3cr%40t@db.example:6543/orders?sslmode=require&connect_timeout=5"
      "&table_prefix=dd_&schema=idem&pool_size=3&unnamed_statements=1&retention_ms=60000");
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->conninfo,
            "postgresql://app:s3cr%40t@db.example:6543/orders?sslmode=require&connect_timeout=5");
  EXPECT_EQ(o->table_prefix, "dd_");
  EXPECT_EQ(o->schema, "idem");
  EXPECT_EQ(o->pool_size, 3u);
  EXPECT_TRUE(o->unnamed_statements);
  EXPECT_EQ(o->retention.count(), 60000);
}

TEST(PostgresUri, PostgresSchemeUnixSocketHostAndDefaults) {
  absl::StatusOr<PostgresStoreOptions> o = ParsePostgresUri("postgres://%2Fvar%2Frun%2Fpostgresql/db");
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->conninfo, "postgres://%2Fvar%2Frun%2Fpostgresql/db");
  EXPECT_EQ(o->schema, "public");
  EXPECT_EQ(o->table_prefix, "idem_");
  EXPECT_FALSE(o->unnamed_statements);

  o = ParsePostgresUri("postgresql:///db?host=/tmp/sockets&application_name=billing");
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->conninfo, "postgresql:///db?host=/tmp/sockets&application_name=billing");

  // The scheme is case-insensitive for idem; libpq is given it in lower case.
  o = ParsePostgresUri("PostgreSQL://h/db");
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->conninfo, "postgresql://h/db");
}

TEST(PostgresUri, MalformedOrUnknownIsInvalidArgumentWithoutThePassword) {
  const std::string bad[] = {
      "postgresql://u:s3cr%40t@h/db?bogus_option=1",
      "postgresql://u:s3cr%40t@h/db?sslmode=sometimes",
      "postgresql://u:s3cr%40t@h/db?connect_timeout=soon",
      "postgresql://u:s3cr%40t@h:99999/db",
      "postgresql://u:s3cr%40t@h/db#frag",
      "postgresql://u:s3cr%40t@h/db?pool_size=0",
      "postgresql://u:s3cr%40t@h/db?schema=bad-name",
      "postgresql://u:s3cr%40t@h/db?table_prefix=1x",
      // One byte past what the store accepts: refused here, not at the first connect.
      "postgresql://u:s3cr%40t@h/db?table_prefix=p2345678901234567890123456789012345678901",
      "postgresql://u:s3cr%40t@h/db?unnamed_statements=maybe",
      "postgresql://u:s3cr%zzt@h/db",
      "postgresql:u:s3cr%40t@h/db",
      "redis://u:s3cr%40t@h/0",
      "postgresql://u:s3cr%40t@h/db?schema=a&schema=b",
  };
  for (const std::string& uri : bad) {
    absl::StatusOr<PostgresStoreOptions> o = ParsePostgresUri(uri);
    ASSERT_FALSE(o.ok()) << uri;
    EXPECT_EQ(o.status().code(), absl::StatusCode::kInvalidArgument) << uri << ": " << o.status();
    EXPECT_EQ(o.status().message().find("s3cr"), std::string::npos) << o.status();
  }
}

TEST(PostgresUri, PasswordOptionValueIsNeverQuoted) {
  absl::StatusOr<PostgresStoreOptions> o =
      ParsePostgresUri("postgresql://h/db?password=hunter2&sslmode=hunter2x");
  ASSERT_FALSE(o.ok());
  EXPECT_EQ(o.status().message().find("hunter2"), std::string::npos) << o.status();
}

TEST(PostgresUri, RedactionHidesUserinfoPasswordAndPasswordOption) {
  const std::string redacted =
      internal::RedactUriText("postgresql://app:s3cr%40t@h:5432/db?password=other&sslmode=require");
  EXPECT_EQ(redacted.find("s3cr"), std::string::npos) << redacted;
  EXPECT_EQ(redacted.find("other"), std::string::npos) << redacted;
  EXPECT_NE(redacted.find("@h:5432/db"), std::string::npos) << redacted;
}

TEST(PostgresUri, BadOptionsAreRefusedBeforeConnecting) {
  PostgresStoreOptions options;
  options.conninfo = "postgresql://127.0.0.1:1/db";
  options.schema = "x;drop";
  EXPECT_EQ(NewPostgresStore(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.schema = "ok";
  options.pool_size = 0;
  EXPECT_EQ(NewPostgresStore(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.pool_size = 2;
  options.conninfo = "host=h port=5432 password=s3cr bogus==";
  absl::Status s = NewPostgresStore(options).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_EQ(s.message().find("s3cr"), std::string::npos) << s;
}

TEST(PostgresUri, UnreachableServerIsUnavailableWithoutThePassword) {
  absl::StatusOr<std::unique_ptr<DedupStore>> store = OpenPostgresStoreFromUri(
      "postgresql://u:s3cr%40t@127.0.0.1:1/db?connect_timeout=2");
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kUnavailable) << store.status();
  EXPECT_EQ(store.status().message().find("s3cr"), std::string::npos) << store.status();
}

}  // namespace
}  // namespace idem
