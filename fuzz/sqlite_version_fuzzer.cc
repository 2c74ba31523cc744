// Fuzzes the decoder of SQLite version BLOBs: 8 bytes decode to the big-endian uint64 they hold,
// anything else is refused, never a crash.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "sqlite_internal.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  const absl::StatusOr<uint64_t> version = idem::internal::DecodeVersion(bytes);
  if (size != 8) {
    if (version.ok()) std::abort();
    return 0;
  }
  if (!version.ok()) std::abort();
  uint64_t expected = 0;
  for (std::size_t i = 0; i < 8; ++i) expected = (expected << 8) | data[i];
  if (*version != expected) std::abort();
  return 0;
}
