// Puts records into a store for tools/tests/admin_ops_test.sh: the states idem-admin lists and
// changes (idem-admin itself never claims or completes).
//
//   admin_fixture URI claim SCOPE ID LEASE_MS       prints the token, exit 1 if not acquired
//   admin_fixture URI complete SCOPE ID TOKEN RESULT
//   admin_fixture URI release SCOPE ID TOKEN
//   admin_fixture URI claim_status SCOPE ID MAX_ATTEMPTS   prints the claim's outcome name
#include <chrono>
#include <cstdio>
#include <string>

#include "absl/strings/numbers.h"
#include "idem/open_store.h"

int main(int argc, char** argv) {
  if (argc < 5) return std::fprintf(stderr, "usage: see admin_fixture.cc\n"), 2;
  auto store = idem::OpenStore(argv[1]);
  if (!store.ok()) return std::fprintf(stderr, "%s\n", store.status().ToString().c_str()), 1;
  const std::string command = argv[2];
  const std::string scope = argv[3];
  const std::string id = argv[4];
  if (command == "claim" || command == "claim_status") {
    int64_t n = 0;
    if (argc != 6 || !absl::SimpleAtoi(argv[5], &n)) return 2;
    idem::ClaimRequest request{.scope = scope, .id = id};
    if (command == "claim") {
      request.lease = std::chrono::milliseconds(n);
    } else {
      request.max_attempts = static_cast<uint32_t>(n);
    }
    auto claim = (*store)->Claim(request);
    if (!claim.ok()) return std::fprintf(stderr, "%s\n", claim.status().ToString().c_str()), 1;
    if (command == "claim_status") {
      std::printf("%s\n", std::string(idem::ClaimStatusName(claim->status)).c_str());
      return 0;
    }
    if (claim->status != idem::ClaimStatus::kAcquired) return 1;
    std::printf("%llu\n", static_cast<unsigned long long>(claim->token));
    return 0;
  }
  uint64_t token = 0;
  if (argc < 6 || !absl::SimpleAtoi(argv[5], &token)) return 2;
  absl::Status status;
  if (command == "complete" && argc == 7) {
    status = (*store)->Complete(
        {.scope = scope, .id = id, .token = token, .result = std::string_view(argv[6])}).status();
  } else if (command == "release") {
    status = (*store)->Release(scope, id, token);
  } else {
    return 2;
  }
  if (!status.ok()) return std::fprintf(stderr, "%s\n", status.ToString().c_str()), 1;
  return 0;
}
