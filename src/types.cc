#include "idem/types.h"

#include <array>
#include <chrono>
#include <string>

#include "absl/strings/str_cat.h"

namespace idem {
namespace {

// [A-Za-z0-9._:/-] as a table: scopes are validated on every store call.
constexpr std::array<bool, 256> kScopeChars = [] {
  std::array<bool, 256> table{};
  for (unsigned char c = 'a'; c <= 'z'; ++c) table[c] = true;
  for (unsigned char c = 'A'; c <= 'Z'; ++c) table[c] = true;
  for (unsigned char c = '0'; c <= '9'; ++c) table[c] = true;
  for (unsigned char c : {'.', '_', ':', '/', '-'}) table[c] = true;
  return table;
}();

bool IsScopeChar(unsigned char c) { return kScopeChars[c]; }

class WallClock final : public Clock {
 public:
  int64_t NowMillis() override {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
  }
};

class MonotonicClock final : public Clock {
 public:
  int64_t NowMillis() override {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }
};

}  // namespace

Clock& SystemClock() {
  static WallClock clock;
  return clock;
}

Clock& SteadyClock() {
  static MonotonicClock clock;
  return clock;
}

absl::Status ValidateScope(std::string_view scope) {
  if (scope.empty()) return absl::InvalidArgumentError("scope is empty");
  if (scope.size() > kMaxScopeBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("scope is ", scope.size(), " bytes; at most ", kMaxScopeBytes, " allowed"));
  }
  for (std::size_t i = 0; i < scope.size(); ++i) {
    if (!IsScopeChar(static_cast<unsigned char>(scope[i]))) {
      return absl::InvalidArgumentError(absl::StrCat(
          "scope has a character outside [A-Za-z0-9._:/-] at byte ", i, " (byte value ",
          static_cast<int>(static_cast<unsigned char>(scope[i])), ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateId(std::string_view id, std::size_t max_bytes, std::string_view what) {
  if (id.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(std::string(what), " is empty"));
  }
  if (id.size() > max_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(std::string(what), " is ", id.size(),
                                                   " bytes; at most ", max_bytes, " allowed"));
  }
  return absl::OkStatus();
}

}  // namespace idem
