// Quick start: wrap a message handler so that it runs once per message id, on the embedded
// SQLite default, and rejects an event older than one already applied for its key.
#include <cstdio>
#include <string>

#include "idem/open_store.h"
#include "idem/processor.h"

int main(int argc, char** argv) {
  auto store = idem::OpenStore(argc > 1 ? argv[1] : "sqlite:quickstart.db");
  if (!store.ok()) return std::fprintf(stderr, "%s\n", store.status().ToString().c_str()), 1;
  auto charges = idem::Processor::Create(**store, "billing/order-events",
                                         {.lease = std::chrono::seconds(30), .max_attempts = 5});
  if (!charges.ok()) return 1;

  // What a broker hands over: order-7 twice (a redelivery), then user-1's version 6 after 7.
  struct Delivery {
    std::string id, payload;
    uint64_t version;
  };
  const Delivery deliveries[] = {{"order-7", "charge 10 EUR", 7},
                                 {"order-7", "charge 10 EUR", 7},
                                 {"order-6", "charge 99 EUR", 6}};
  for (const Delivery& d : deliveries) {
    auto result = charges->Process(
        {.id = d.id, .payload = d.payload, .version = idem::VersionStamp{"user-1", d.version}},
        [&](idem::HandlerContext& ctx) {
          // Pass ctx.message_id() and ctx.token() downstream as the idempotency key.
          std::printf("  handler: %s (attempt %u)\n", d.payload.c_str(), ctx.attempt());
          ctx.set_result("receipt-" + d.id);
        });
    if (!result.ok()) {  // the store is down: nothing ran; do not ack, retry with backoff
      std::fprintf(stderr, "%s\n", result.status().ToString().c_str());
      continue;
    }
    std::printf("%s -> %s\n", d.id.c_str(),
                std::string(idem::OutcomeName(result->outcome)).c_str());
  }
}
