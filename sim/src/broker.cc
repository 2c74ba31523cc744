#include "broker.h"

#include <algorithm>

namespace idem::sim::internal {

Broker::Broker(const Workload& workload, int64_t start_ms, int64_t budget)
    : workload_(workload), budget_(budget) {
  for (const InitialDelivery& d : workload.deliveries) {
    pending_.push({start_ms + d.at_ms, next_seq_++, d.message, d.copy, 0});
  }
  total_ = static_cast<int64_t>(workload.deliveries.size());
}

bool Broker::HasDue(int64_t now) const {
  return !budget_exhausted() && !pending_.empty() && pending_.top().due <= now;
}

int64_t Broker::NextDue() const {
  if (budget_exhausted() || pending_.empty()) return -1;
  return pending_.top().due;
}

std::vector<Hand> Broker::Poll(int64_t now, int max) {
  std::vector<Hand> out;
  std::vector<Pending> set_aside;
  absl::flat_hash_set<int64_t> ids;
  while (static_cast<int>(out.size()) < max && HasDue(now)) {
    Pending p = pending_.top();
    pending_.pop();
    if (!ids.insert(workload_.messages[p.message].id_index).second) {
      set_aside.push_back(p);
      continue;
    }
    Hand hand{.handle = next_handle_++, .message = p.message, .copy = p.copy, .attempt = p.attempt};
    in_flight_[hand.handle] = hand;
    ++handed_;
    out.push_back(hand);
  }
  for (const Pending& p : set_aside) pending_.push(p);
  return out;
}

bool Broker::Ack(const Hand& hand) {
  if (in_flight_.erase(hand.handle) == 0) return false;
  ++acked_;
  return true;
}

void Broker::Redeliver(const Hand& hand, int64_t at) {
  if (in_flight_.erase(hand.handle) == 0) return;
  pending_.push({at, next_seq_++, hand.message, hand.copy, hand.attempt + 1});
}

std::vector<int64_t> Broker::Unacked() const {
  std::vector<int64_t> out;
  for (const auto& [handle, hand] : in_flight_) out.push_back(hand.message);
  auto copy = pending_;
  while (!copy.empty()) {
    out.push_back(copy.top().message);
    copy.pop();
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace idem::sim::internal
