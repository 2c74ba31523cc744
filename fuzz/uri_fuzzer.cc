// Fuzzes the store URI grammar and every URI opener that does not connect: none may crash, leak or
// hang, and whatever the parser reads as a userinfo never survives redaction.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "idem/memory_store.h"
#include "idem/postgres_store.h"
#include "idem/redis_store.h"
#include "idem/sqlite_store.h"
#include "internal/uri.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const std::string redacted = idem::internal::RedactUriText(text);
  if (idem::internal::RedactUriText(redacted) != redacted) std::abort();  // idempotent

  const absl::StatusOr<idem::internal::Uri> uri = idem::internal::ParseUri(text);
  if (uri.ok()) {
    // The userinfo is the text between "//" and the last '@' of the authority: never shown.
    const std::size_t start = text.find("//");
    const std::size_t at = uri->user ? text.rfind('@', text.find_first_of("/?", start + 2)) : 0;
    if (uri->user && start != std::string_view::npos && at != std::string_view::npos &&
        at > start + 2 + 3) {
      const std::string_view userinfo = text.substr(start + 2, at - start - 2);
      if (redacted.find(std::string(userinfo) + "@") != std::string::npos) std::abort();
    }
  }
  // Status texts are bounded whatever the input's size.
  const absl::StatusOr<idem::SqliteStoreOptions> sqlite = idem::ParseSqliteUri(text);
  if (!sqlite.ok() && sqlite.status().message().size() > 512) std::abort();
  const absl::StatusOr<idem::RedisStoreOptions> redis = idem::ParseRedisUri(text);
  if (!redis.ok() && redis.status().message().size() > 512) std::abort();
  const absl::StatusOr<idem::PostgresStoreOptions> postgres = idem::ParsePostgresUri(text);
  if (!postgres.ok() && postgres.status().message().size() > 512) std::abort();
  if (text.substr(0, 7) == "memory:") {
    const auto memory = idem::OpenMemoryStoreFromUri(text);
    if (!memory.ok() && memory.status().message().size() > 512) std::abort();
  }
  return 0;
}
