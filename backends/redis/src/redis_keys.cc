#include "redis_keys.h"

#include <cstdio>

#include "absl/strings/str_cat.h"
#include "redis_strings.h"

namespace idem::internal::redis {
namespace {

std::string EncodeKey(std::string_view prefix, char tag, std::string_view scope,
                      std::string_view id) {
  const char tag_text[] = {':', tag, ':', '\0'};
  std::string key = Cat(prefix.size(), ":");
  key.append(prefix);
  absl::StrAppend(&key, tag_text, scope.size(), ":");
  key.append(scope);
  key.push_back(':');
  key.append(id);  // binary-safe: appended by length, never through a C string
  return key;
}

}  // namespace

std::string RecordKey(std::string_view prefix, std::string_view scope, std::string_view id) {
  return EncodeKey(prefix, 'r', scope, id);
}

std::string VersionKey(std::string_view prefix, std::string_view scope, std::string_view key) {
  return EncodeKey(prefix, 'v', scope, key);
}

std::string EncodeVersion(uint64_t version) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%020llu", static_cast<unsigned long long>(version));
  return std::string(buffer, 20);
}

std::optional<uint64_t> DecodeVersion(std::string_view text) {
  if (text.size() != 20) return std::nullopt;
  // UINT64_MAX = 18446744073709551615; a 20-digit string above it is not a version.
  if (text > std::string_view("18446744073709551615")) return std::nullopt;
  uint64_t value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    value = value * 10 + static_cast<uint64_t>(c - '0');
  }
  return value;
}

}  // namespace idem::internal::redis
