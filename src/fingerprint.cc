// Fingerprints are XXH3-128: stable across processes and machines (unlike std::hash or
// absl::Hash, which are seeded per process), so a stored fingerprint can be compared later.
#include <xxhash.h>

#include <string>

#include "absl/strings/str_format.h"
#include "idem/types.h"

namespace idem {

Fingerprint Fingerprint::Of(std::string_view payload) {
  const XXH128_hash_t h = XXH3_128bits(payload.data(), payload.size());
  return Fingerprint{h.high64, h.low64};
}

std::string Fingerprint::ToBytes() const {
  std::string out(16, '\0');
  for (int i = 0; i < 8; ++i) {
    out[i] = static_cast<char>(high >> (56 - 8 * i));
    out[8 + i] = static_cast<char>(low >> (56 - 8 * i));
  }
  return out;
}

Fingerprint Fingerprint::FromBytes(std::string_view bytes) {
  Fingerprint f;
  if (bytes.size() != 16) return f;
  for (int i = 0; i < 8; ++i) {
    f.high = (f.high << 8) | static_cast<unsigned char>(bytes[i]);
    f.low = (f.low << 8) | static_cast<unsigned char>(bytes[8 + i]);
  }
  return f;
}

std::string Fingerprint::ToHex() const { return absl::StrFormat("%016x%016x", high, low); }

}  // namespace idem
