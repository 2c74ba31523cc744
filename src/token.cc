#include "internal/token.h"

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/random/random.h"
#include "absl/synchronization/mutex.h"

namespace idem::internal {
namespace {

// absl::BitGen is seeded from the OS entropy source, so two processes (or two stores) draw
// independent sequences; the mutex makes one generator shareable by threads.
class RandomTokens {
 public:
  uint64_t Next() {
    absl::MutexLock lock(&mu_);
    uint64_t token = 0;
    while (token == 0) token = absl::Uniform<uint64_t>(absl::IntervalClosed, gen_, 1, ~uint64_t{0});
    return token;
  }

 private:
  absl::Mutex mu_;
  absl::BitGen gen_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

std::function<uint64_t()> RandomTokenSource() {
  auto tokens = std::make_shared<RandomTokens>();
  return [tokens] { return tokens->Next(); };
}

}  // namespace idem::internal
