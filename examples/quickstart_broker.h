// What the quick start needs from "your broker": four deliveries (order-7 twice, as a redelivery,
// order-8, then user-1's version 6 after versions 7 and 8) and the ack / nack / dead-letter calls, which here
// print what a consumer loop would do.
#ifndef IDEM_EXAMPLES_QUICKSTART_BROKER_H_
#define IDEM_EXAMPLES_QUICKSTART_BROKER_H_

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/status/status.h"

struct Delivery {
  std::string id, body;
  uint64_t version;
};

inline std::vector<Delivery> ReceiveFromBroker() {
  return {{"order-7", "charge 10 EUR", 7}, {"order-7", "charge 10 EUR", 7},
          {"order-8", "charge 25 EUR", 8}, {"order-6", "charge 99 EUR", 6}};
}
inline void charge_card(const Delivery& msg) { std::printf("  charged: %s\n", msg.body.c_str()); }
inline void ack(const Delivery& msg, const char* why) {
  std::printf("%s -> ack (%s)\n", msg.id.c_str(), why);
}
inline void nack(const Delivery& msg, const char* why) {
  std::printf("%s -> nack, redeliver later (%s)\n", msg.id.c_str(), why);
}
inline void dead_letter(const Delivery& msg, const char* why) {
  std::printf("%s -> dead letter (%s)\n", msg.id.c_str(), why);
}

#endif  // IDEM_EXAMPLES_QUICKSTART_BROKER_H_
