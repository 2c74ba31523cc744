// Serves idem's Prometheus metrics on 127.0.0.1 (/metrics) after running a fixed mix of
// deliveries through a Processor over the in-memory store: new ids, redeliveries, a reused id, a
// stale version, a live claim, a takeover with its fenced completion, a throwing handler and its
// dead letter, and a claim the full store refuses.
//
//   idem_metrics_server [PORT]     0 (default): any free port
//
// Prints "sent <outcome>=<n> ..." (tallied from the results the Processor returned, not from the
// metrics), then "listening 127.0.0.1:<port>", and serves until stdin closes.
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>

#include "idem/memory_store.h"
#include "idem/processor.h"
#include "idem/prometheus_observer.h"
#include "prometheus/exposer.h"
#include "prometheus/registry.h"

namespace {

constexpr char kScope[] = "demo/orders";

}  // namespace

int main(int argc, char** argv) {
  const std::string port = argc > 1 ? argv[1] : "0";
  auto registry = std::make_shared<prometheus::Registry>();
  idem::PrometheusObserver observer(*registry);

  idem::ManualClock clock;
  // Room for exactly the records below, so that one more new id is refused (a store error).
  auto store = idem::NewMemoryStore({.capacity = 9, .clock = &clock});
  if (!store.ok()) return std::fprintf(stderr, "%s\n", store.status().ToString().c_str()), 1;
  idem::DedupStore& s = **store;
  const idem::ProcessorOptions base{.lease = std::chrono::seconds(1),
                                    .store_clock = &clock,
                                    .observer = &observer};
  auto p = idem::Processor::Create(s, kScope, base);
  idem::ProcessorOptions capped = base;
  capped.max_attempts = 1;
  auto once = idem::Processor::Create(s, kScope, capped);
  if (!p.ok() || !once.ok()) return 1;

  std::map<std::string, int> sent;  // outcome or store error code -> count
  auto tally = [&](const absl::StatusOr<idem::ProcessResult>& r) {
    if (r.ok()) {
      ++sent[std::string(idem::OutcomeName(r->outcome))];
    } else {
      ++sent[absl::StatusCodeToString(r.status().code())];
    }
  };
  auto run = [&](const idem::Processor& proc, const idem::Message& m) {
    tally(proc.Process(m, [](idem::HandlerContext& ctx) { ctx.set_result("ok"); }));
  };

  for (const char* id : {"o-1", "o-2", "o-3", "o-4", "o-5"}) run(*p, {.id = id, .payload = "x"});
  for (const char* id : {"o-1", "o-2", "o-3"}) run(*p, {.id = id, .payload = "x"});  // duplicates
  run(*p, {.id = "o-1", .payload = "another payload"});                                // conflict
  run(*p, {.id = "o-6", .payload = "x", .version = idem::VersionStamp{"user-1", 5}});
  run(*p, {.id = "o-7", .payload = "x", .version = idem::VersionStamp{"user-1", 4}});  // stale
  // A consumer stalls past its lease; another takes the message over (processed, took over) and
  // the first one's completion is fenced.
  tally(p->Process({.id = "t-1", .payload = "x"}, [&](idem::HandlerContext&) {
    clock.Advance(2'000);
    run(*p, {.id = "t-1", .payload = "x"});
  }));
  // A live claim held elsewhere: in progress.
  if (!s.Claim({.scope = kScope, .id = "h-1", .lease = std::chrono::hours(1)}).ok()) return 1;
  run(*p, {.id = "h-1", .payload = "x"});
  // A handler throws (claim released), then the redelivery is dead-lettered (max_attempts 1).
  try {
    (void)once->Process({.id = "d-1", .payload = "x"},
                        [](idem::HandlerContext&) { throw std::runtime_error("bad message"); });
  } catch (const std::runtime_error&) {
    ++sent["handler_exception"];
  }
  run(*once, {.id = "d-1", .payload = "x"});
  run(*p, {.id = "o-9", .payload = "x"});  // the store is full: RESOURCE_EXHAUSTED

  auto in_progress = observer.UpdateInProgress(s, kScope);
  if (!in_progress.ok()) return 1;
  sent["in_progress_records"] = static_cast<int>(*in_progress);

  prometheus::Exposer exposer("127.0.0.1:" + port);
  exposer.RegisterCollectable(registry);
  std::printf("sent");
  for (const auto& [name, n] : sent) std::printf(" %s=%d", name.c_str(), n);
  std::printf("\nlistening 127.0.0.1:%d\n", exposer.GetListeningPorts().at(0));
  std::fflush(stdout);
  std::string line;
  while (std::getline(std::cin, line)) {
  }
  return 0;
}
