// Big-endian integer codecs: the one definition of the byte order in which idem stores integers
// (fingerprints, SQLite versions, Redis record headers). Most significant byte first, so that
// stored bytes compared with memcmp (SQLite BLOBs, Lua strings) order as unsigned integers.
//
// Thread-safety: pure functions.
#ifndef IDEM_INTERNAL_BIG_ENDIAN_H_
#define IDEM_INTERNAL_BIG_ENDIAN_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace idem::internal {

// Writes the low out.size() bytes of `value` into `out`, most significant first.
// REQUIRES: out.size() <= 8.
constexpr void StoreBigEndian(uint64_t value, std::span<char> out) {
  const std::size_t n = out.size();
  for (std::size_t i = 0; i < n; ++i) {
    out[i] = static_cast<char>((value >> (8 * (n - 1 - i))) & 0xFF);
  }
}

// Appends the low `bytes` bytes of `value` to `out`, most significant first.
// REQUIRES: bytes <= 8.
inline void AppendBigEndian(std::string* out, uint64_t value, std::size_t bytes) {
  char buffer[8] = {};
  StoreBigEndian(value, std::span<char>(buffer, bytes));
  out->append(buffer, bytes);
}

// The low `bytes` bytes of `value`, most significant first. REQUIRES: bytes <= 8.
inline std::string BigEndian(uint64_t value, std::size_t bytes) {
  std::string out;
  AppendBigEndian(&out, value, bytes);
  return out;
}

// The unsigned integer whose big-endian form is `bytes`. REQUIRES: bytes.size() <= 8; callers
// check the stored length first, so that a short or long value is reported, not misread.
constexpr uint64_t LoadBigEndian(std::string_view bytes) {
  uint64_t value = 0;
  for (char c : bytes) value = (value << 8) | static_cast<unsigned char>(c);
  return value;
}

}  // namespace idem::internal

#endif  // IDEM_INTERNAL_BIG_ENDIAN_H_
