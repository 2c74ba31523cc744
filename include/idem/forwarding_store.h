// ForwardingStore: a DedupStore that forwards every call to another store.
//
// Decorators (metrics, logging, fault injection in tests) derive from it and override only the
// calls they change; a new DedupStore method needs a forwarder here and nowhere else.
//
// Thread-safety: as thread-safe as the wrapped store. The wrapped store is not owned and must
// outlive the decorator.
#ifndef IDEM_FORWARDING_STORE_H_
#define IDEM_FORWARDING_STORE_H_

#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "idem/store.h"

namespace idem {

class ForwardingStore : public DedupStore {
 public:
  explicit ForwardingStore(DedupStore& inner) : inner_(inner) {}

  absl::StatusOr<ClaimResult> Claim(const ClaimRequest& request) override {
    return inner_.Claim(request);
  }
  absl::StatusOr<CompleteStatus> Complete(const CompleteRequest& request) override {
    return inner_.Complete(request);
  }
  absl::Status Release(std::string_view scope, std::string_view id, uint64_t token) override {
    return inner_.Release(scope, id, token);
  }
  absl::StatusOr<int64_t> Extend(std::string_view scope, std::string_view id, uint64_t token,
                                 std::chrono::milliseconds lease) override {
    return inner_.Extend(scope, id, token, lease);
  }
  std::vector<absl::StatusOr<ClaimResult>> ClaimBatch(
      std::span<const ClaimRequest> requests) override {
    return inner_.ClaimBatch(requests);
  }
  std::vector<absl::StatusOr<CompleteStatus>> CompleteBatch(
      std::span<const CompleteRequest> requests) override {
    return inner_.CompleteBatch(requests);
  }
  absl::StatusOr<int64_t> PurgeExpired(int64_t limit) override {
    return inner_.PurgeExpired(limit);
  }
  absl::StatusOr<std::optional<uint64_t>> AppliedVersion(std::string_view scope,
                                                         std::string_view key) override {
    return inner_.AppliedVersion(scope, key);
  }
  absl::StatusOr<std::optional<RecordInfo>> Inspect(std::string_view scope,
                                                    std::string_view id) override {
    return inner_.Inspect(scope, id);
  }
  StoreStats Stats() const override { return inner_.Stats(); }
  std::string_view BackendName() const override { return inner_.BackendName(); }
  absl::StatusOr<ListPage> List(const ListRequest& request) override {
    return inner_.List(request);
  }
  absl::Status ResetAttempts(std::string_view scope, std::string_view id,
                             uint64_t token) override {
    return inner_.ResetAttempts(scope, id, token);
  }
  absl::StatusOr<bool> WaitForCompletion(
      std::string_view scope, std::string_view id,
      std::chrono::steady_clock::time_point deadline) override {
    return inner_.WaitForCompletion(scope, id, deadline);
  }

 protected:
  DedupStore& inner() const { return inner_; }

 private:
  DedupStore& inner_;
};

}  // namespace idem

#endif  // IDEM_FORWARDING_STORE_H_
