// ParseMemoryUri and OpenMemoryStoreFromUri, over the store URI grammar (internal/uri.h).
#include <string>
#include <string_view>
#include <utility>

#include "idem/memory_store.h"
#include "internal/status_macros.h"
#include "internal/uri.h"

namespace idem {

absl::StatusOr<MemoryStoreOptions> ParseMemoryUri(std::string_view text) {
  constexpr std::string_view kScheme = "memory";
  IDEM_ASSIGN_OR_RETURN(const internal::Uri uri, internal::ParseUri(text));
  if (uri.scheme != kScheme) return internal::UriError(kScheme, "the scheme must be memory:");
  if (uri.has_authority || !uri.path.empty()) {
    return internal::UriError(kScheme,
                              "memory: URIs take no host or path (use memory: or "
                              "memory:?capacity=N)");
  }
  MemoryStoreOptions store_options;
  constexpr int64_t kMaxCount = int64_t{1} << 40;
  constexpr int64_t kMaxMillis = int64_t{1} << 40;
  for (const internal::UriOption& option : uri.query) {
    const std::string& name = option.name;
    if (name == "capacity") {
      IDEM_ASSIGN_OR_RETURN(const int64_t n,
                            internal::ParseUriInteger(kScheme, name, option.value, 1, kMaxCount));
      store_options.capacity = static_cast<std::size_t>(n);
    } else if (name == "max_version_keys") {
      IDEM_ASSIGN_OR_RETURN(const int64_t n,
                            internal::ParseUriInteger(kScheme, name, option.value, 1, kMaxCount));
      store_options.max_version_keys = static_cast<std::size_t>(n);
    } else if (name == "evict") {
      IDEM_ASSIGN_OR_RETURN(store_options.evict_oldest,
                            internal::ParseUriBool(kScheme, name, option.value));
    } else if (name == "retention_ms") {
      IDEM_ASSIGN_OR_RETURN(const int64_t ms,
                            internal::ParseUriInteger(kScheme, name, option.value, 1, kMaxMillis));
      store_options.retention = std::chrono::milliseconds(ms);
    } else if (name == "shards") {
      IDEM_ASSIGN_OR_RETURN(const int64_t n,
                            internal::ParseUriInteger(kScheme, name, option.value, 1, 4096));
      store_options.shards = static_cast<std::size_t>(n);
    } else if (name == "max_id_bytes") {
      IDEM_ASSIGN_OR_RETURN(const int64_t n, internal::ParseUriInteger(kScheme, name, option.value,
                                                                       1, 512 * 1024 * 1024));
      store_options.max_id_bytes = static_cast<std::size_t>(n);
    } else {
      return internal::UnknownUriOption(
          kScheme, name,
          {"capacity", "max_version_keys", "evict", "retention_ms", "shards", "max_id_bytes"});
    }
  }
  return store_options;
}

absl::StatusOr<std::unique_ptr<DedupStore>> OpenMemoryStoreFromUri(std::string_view text,
                                                                   const OpenOptions& options) {
  IDEM_ASSIGN_OR_RETURN(MemoryStoreOptions store_options, ParseMemoryUri(text));
  store_options.clock = options.clock;
  if (options.token_source) store_options.token_source = options.token_source;
  return NewMemoryStore(std::move(store_options));
}

}  // namespace idem
