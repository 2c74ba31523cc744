// Fencing token sources shared by the backends.
#ifndef IDEM_INTERNAL_TOKEN_H_
#define IDEM_INTERNAL_TOKEN_H_

#include <cstdint>
#include <functional>

namespace idem::internal {

// A thread-safe source of random non-zero 64-bit tokens, seeded from the OS. Two claims get the
// same token with probability ~2^-64, across processes as well.
std::function<uint64_t()> RandomTokenSource();

}  // namespace idem::internal

#endif  // IDEM_INTERNAL_TOKEN_H_
