// Quick start: wrap a message handler so that it runs once per message id, on the embedded SQLite
// default, and rejects an event older than one already applied for its key. The README shows this
// file from its first include line on (a test keeps the two identical). Run it with a store URI
// as its argument, e.g. `idem_quickstart memory:?capacity=1` to see the store-refused path.
#include "idem/open_store.h"
#include "idem/processor.h"
#include "quickstart_broker.h"  // Delivery, ReceiveFromBroker, charge_card, ack, nack, dead_letter

void OnDelivery(const idem::Processor& charges, const Delivery& msg) {
  auto result = charges.Process(
      {.id = msg.id, .payload = msg.body, .version = idem::VersionStamp{"user-1", msg.version}},
      [&](idem::HandlerContext& ctx) {
        // Runs once per id. Pass ctx.message_id() + ctx.token() downstream as an idempotency key.
        charge_card(msg);
        ctx.set_result("receipt-" + msg.id);  // duplicates get this back
      });
  if (!result.ok()) {  // the store is down or refused the claim: the handler did not run
    std::fprintf(stderr, "store: %s\n", result.status().ToString().c_str());
    return nack(msg, "store error: retry with backoff");
  }
  switch (result->outcome) {
    case idem::Outcome::kProcessed:     return ack(msg, "processed");
    case idem::Outcome::kDuplicate:     return ack(msg, "duplicate: result->result has the receipt");
    case idem::Outcome::kStale:         return ack(msg, "stale: older than user-1's version");
    case idem::Outcome::kInProgress:    return nack(msg, "another consumer holds a live claim");
    case idem::Outcome::kConflict:      return dead_letter(msg, "same id, different payload");
    case idem::Outcome::kDeadLettered:  return dead_letter(msg, "max_attempts reached");
  }
}

int main(int argc, char** argv) {
  auto store = idem::OpenStore(argc > 1 ? argv[1] : "sqlite:quickstart.db");
  if (!store.ok()) return std::fprintf(stderr, "%s\n", store.status().ToString().c_str()), 1;
  auto charges = idem::Processor::Create(**store, "billing/order-events",
                                         {.lease = std::chrono::seconds(30), .max_attempts = 5});
  if (!charges.ok()) return std::fprintf(stderr, "%s\n", charges.status().ToString().c_str()), 1;
  for (const Delivery& msg : ReceiveFromBroker()) OnDelivery(*charges, msg);
}
