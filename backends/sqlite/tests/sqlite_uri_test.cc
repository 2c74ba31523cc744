// ParseSqliteUri and OpenStore for sqlite: URIs: every option, percent-decoded paths, and one exact
// code per malformed input.
#include <filesystem>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "idem/open_store.h"
#include "idem/sqlite_store.h"
#include "testing/status_matchers.h"

namespace idem {
namespace {

using ::idem::testing::StatusIs;

TEST(SqliteUri, ReadsPathsAndEveryOption) {
  IDEM_ASSERT_OK_AND_ASSIGN(
      SqliteStoreOptions options,
      ParseSqliteUri("sqlite:///var/lib/app/idem%20db.sqlite?synchronous=NORMAL&busy_timeout_ms=250"
                     "&retention_ms=1000&max_id_bytes=64"));
  EXPECT_EQ(options.path, "/var/lib/app/idem db.sqlite");
  EXPECT_EQ(options.synchronous, SqliteSynchronous::kNormal);
  EXPECT_EQ(options.busy_timeout, std::chrono::milliseconds(250));
  EXPECT_EQ(options.retention, std::chrono::milliseconds(1000));
  EXPECT_EQ(options.max_id_bytes, 64u);
  IDEM_ASSERT_OK_AND_ASSIGN(options, ParseSqliteUri("sqlite:relative/x.db"));
  EXPECT_EQ(options.path, "relative/x.db");
  EXPECT_EQ(options.synchronous, SqliteSynchronous::kFull);
  IDEM_ASSERT_OK_AND_ASSIGN(options, ParseSqliteUri("SQLITE:a%40b.db"));
  EXPECT_EQ(options.path, "a@b.db");
}

TEST(SqliteUri, MalformedUrisAreInvalidArgument) {
  for (const char* uri :
       {"sqlite:", "sqlite://", "sqlite://host/db.sqlite", "sqlite://u:pw@/tmp/x.db",
        "sqlite://:1/tmp/x.db", "sqlite:///tmp/x.db?synchronous=sometimes",
        "sqlite:///tmp/x.db?busy_timeout_ms=-5", "sqlite:///tmp/x.db?busy_timeout_ms=0",
        "sqlite:///tmp/x.db?nope=1", "sqlite:a%zz.db", "sqlite:///tmp/x.db#frag",
        "sqlite:///tmp/x.db?synchronous=full&synchronous=off", "redis:x.db"}) {
    EXPECT_THAT(ParseSqliteUri(uri), StatusIs(absl::StatusCode::kInvalidArgument)) << uri;
    if (std::string_view(uri).substr(0, 6) == "sqlite") {
      EXPECT_THAT(OpenStore(uri), StatusIs(absl::StatusCode::kInvalidArgument)) << uri;
    }
  }
}

// One URI names one file: OpenStore decodes the path the way ParseSqliteUri does.
TEST(SqliteUri, OpenStoreOpensTheDecodedPath) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("idem-sqlite-uri-" + std::to_string(getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  IDEM_ASSERT_OK_AND_ASSIGN(auto store, OpenStore("sqlite://" + dir.string() + "/with%20space.db"));
  EXPECT_EQ(store->BackendName(), "sqlite");
  EXPECT_TRUE(std::filesystem::exists(dir / "with space.db"));
  store.reset();
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace idem
