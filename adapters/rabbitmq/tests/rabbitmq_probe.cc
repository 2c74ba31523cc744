// The fixture's readiness probe: exits 0 once an AMQP login and a channel open succeed on
// 127.0.0.1:PORT (RabbitMQ opens its AMQP listener last, when it is ready), 1 otherwise.
//
//   idem_rabbitmq_probe PORT
#include <cstdio>
#include <cstdlib>

#include "amqp_test_client.h"

int main(int argc, char** argv) {
  if (argc != 2) return std::fprintf(stderr, "usage: idem_rabbitmq_probe PORT\n"), 2;
  idem::testing::AmqpTestClient client(std::atoi(argv[1]));
  if (!client.ok()) return std::fprintf(stderr, "probe: %s\n", client.error().c_str()), 1;
  return 0;
}
