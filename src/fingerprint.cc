// Fingerprints are XXH3-128: stable across processes and machines (unlike std::hash or
// absl::Hash, which are seeded per process), so a stored fingerprint can be compared later.
#include <xxhash.h>

#include <string>

#include "absl/strings/str_format.h"
#include "idem/types.h"
#include "internal/big_endian.h"

namespace idem {

Fingerprint Fingerprint::Of(std::string_view payload) {
  const XXH128_hash_t h = XXH3_128bits(payload.data(), payload.size());
  return Fingerprint{h.high64, h.low64};
}

std::string Fingerprint::ToBytes() const {
  std::string out;
  out.reserve(16);
  internal::AppendBigEndian(&out, high, 8);
  internal::AppendBigEndian(&out, low, 8);
  return out;
}

Fingerprint Fingerprint::FromBytes(std::string_view bytes) {
  if (bytes.size() != 16) return Fingerprint{};
  return Fingerprint{internal::LoadBigEndian(bytes.substr(0, 8)),
                     internal::LoadBigEndian(bytes.substr(8, 8))};
}

std::string Fingerprint::ToHex() const { return absl::StrFormat("%016x%016x", high, low); }

}  // namespace idem
