#include "internal/token.h"

#include <cstdint>
#include <functional>

#include "absl/random/random.h"

namespace idem::internal {

std::function<uint64_t()> RandomTokenSource() {
  // One generator per thread, seeded from the OS entropy source: no lock on the claim path (the
  // in-memory store draws a token under its shard lock), and two processes, threads or stores
  // draw independent sequences.
  return [] {
    thread_local absl::BitGen gen;
    return absl::Uniform<uint64_t>(absl::IntervalClosed, gen, 1, ~uint64_t{0});
  };
}

}  // namespace idem::internal
