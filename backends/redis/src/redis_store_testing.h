// Test hooks of the Redis store. Private to the Redis backend and its tests.
#ifndef IDEM_BACKENDS_REDIS_SRC_REDIS_STORE_TESTING_H_
#define IDEM_BACKENDS_REDIS_SRC_REDIS_STORE_TESTING_H_

#include "idem/store.h"

namespace idem::internal::redis {

// Makes `store` (opened by NewRedisStore) claim every id through the claim script, as it does
// against a Redis before 7.0, which refuses the plain SET NX GET of a new id.
void UseScriptClaimsForTesting(DedupStore& store);

}  // namespace idem::internal::redis

#endif  // IDEM_BACKENDS_REDIS_SRC_REDIS_STORE_TESTING_H_
