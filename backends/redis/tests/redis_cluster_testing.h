// Test support for the Redis Cluster fixture (redis_cluster.sh): its ports, a store URI on it, and
// the fixture script for tests that restart a node.
#ifndef IDEM_BACKENDS_REDIS_TESTS_REDIS_CLUSTER_TESTING_H_
#define IDEM_BACKENDS_REDIS_TESTS_REDIS_CLUSTER_TESTING_H_

#include <cstdlib>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace idem::testing {

// $IDEM_REDIS_CLUSTER_PORT + node (0..5); fails the test (returns 0) when it is not set.
inline int ClusterPort(int node = 0) {
  const char* port = std::getenv("IDEM_REDIS_CLUSTER_PORT");
  if (port == nullptr) {
    ADD_FAILURE() << "IDEM_REDIS_CLUSTER_PORT is not set: run through ctest (cluster fixture)";
    return 0;
  }
  return std::atoi(port) + node;
}

// The fixture's directory (its nodes' pidfiles and configs) and its script, as the build knows
// them; the environment may name others (a cluster started by hand).
inline std::string ClusterDir() {
  const char* value = std::getenv("IDEM_REDIS_CLUSTER_DIR");
  return value != nullptr ? std::string(value) : std::string(IDEM_REDIS_CLUSTER_DIR);
}
inline std::string ClusterScript() {
  const char* value = std::getenv("IDEM_REDIS_CLUSTER_SCRIPT");
  return value != nullptr ? std::string(value) : std::string(IDEM_REDIS_CLUSTER_SCRIPT);
}

// A redis+cluster URI with two seeds of the fixture and `prefix`.
inline std::string ClusterUri(const std::string& prefix, const std::string& extra = "") {
  return absl::StrCat("redis+cluster://127.0.0.1:", ClusterPort(0), ",127.0.0.1:", ClusterPort(1),
                      "/?prefix=", prefix, extra);
}

}  // namespace idem::testing

#endif  // IDEM_BACKENDS_REDIS_TESTS_REDIS_CLUSTER_TESTING_H_
