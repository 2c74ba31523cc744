// The rules of the owner operations (Complete, Release, Extend), written once for every backend:
// which arguments they accept, and the one status a store returns when the presented fencing
// token no longer owns the claim. Each backend still counts its own refusals (StoreStats::fenced).
//
// Thread-safety: pure functions.
#ifndef IDEM_INTERNAL_OWNER_H_
#define IDEM_INTERNAL_OWNER_H_

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "absl/status/status.h"

namespace idem::internal {

// OK when `scope` and `id` are valid (ValidateScope, ValidateId with `max_id_bytes`) and `token`
// is not 0, which no claim ever issues; InvalidArgument otherwise.
[[nodiscard]] absl::Status ValidateOwnerArgs(std::string_view scope, std::string_view id,
                                             uint64_t token, std::size_t max_id_bytes);

// The Aborted status of an owner operation refused because `token` no longer owns the claim: it
// was taken over after its lease ended, released, completed, or the record expired. The same
// words from every backend, so that operators and callers match one message. `backend` is
// BackendName() ("sqlite"), `operation` the refused call ("complete").
[[nodiscard]] absl::Status FencedError(std::string_view backend, std::string_view operation);

}  // namespace idem::internal

#endif  // IDEM_INTERNAL_OWNER_H_
