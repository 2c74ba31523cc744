// idem::prometheus: a ProcessObserver (idem/observer.h) that keeps Prometheus metrics of every
// Processor it is set on, in a prometheus-cpp Registry the application serves (see
// examples/metrics_server.cc for an Exposer on /metrics).
//
// Metrics (all labelled by the Processor's scope):
//   idem_messages_total{scope,outcome}       counter: messages by outcome (processed, duplicate,
//                                            in_progress, stale, conflict, dead_lettered)
//   idem_store_errors_total{scope,code}      counter: messages that ended with a store error, by
//                                            absl status code (UNAVAILABLE, ...); the handler did
//                                            not run if the claim failed. Fenced completions are
//                                            not store errors: they are counted below.
//   idem_fenced_completions_total{scope}     counter: completions refused because another
//                                            consumer had taken the claim over (lease lost)
//   idem_takeovers_total{scope}              counter: claims that took over an expired lease
//   idem_handler_exceptions_total{scope}     counter: handlers that threw (claim released)
//   idem_waits_total{scope}                  counter: deliveries that waited for an in-flight
//                                            duplicate (ProcessorOptions::wait_for_in_flight)
//   idem_handler_duration_seconds{scope}     histogram: time in the handler, when it ran
//   idem_store_duration_seconds{scope}       histogram: time in store calls, per message
//   idem_in_progress{scope}                  gauge: IN_PROGRESS records, set by
//                                            UpdateInProgress (where the store can list them)
//
// Thread-safety: OnMessage and UpdateInProgress may be called from any number of threads. The
// registry must outlive the observer.
#ifndef IDEM_PROMETHEUS_OBSERVER_H_
#define IDEM_PROMETHEUS_OBSERVER_H_

#include <array>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "idem/observer.h"
#include "idem/store.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace idem {

struct PrometheusObserverOptions {
  // Histogram buckets, in seconds: 100 µs to 10 s by roughly x2.5.
  std::vector<double> handler_buckets = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                         0.025,  0.05,    0.1,    0.25,  0.5,    1,     2.5,
                                         5,      10};
  std::vector<double> store_buckets = {0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                       0.01,    0.025,  0.05,    0.1,    0.25,  0.5,    1};
};

class PrometheusObserver final : public ProcessObserver {
 public:
  // Registers the metric families in `registry` (not owned).
  explicit PrometheusObserver(prometheus::Registry& registry,
                              PrometheusObserverOptions options = {});
  PrometheusObserver(const PrometheusObserver&) = delete;
  PrometheusObserver& operator=(const PrometheusObserver&) = delete;

  void OnMessage(const ProcessEvent& event) noexcept override;

  // Counts the IN_PROGRESS records of `scope` (DedupStore::List, page by page) and sets
  // idem_in_progress{scope}. Call it from a timer, not per message: it reads the whole scope.
  // Returns the count; errors are List's (Unimplemented where the store cannot list).
  [[nodiscard]] absl::StatusOr<uint64_t> UpdateInProgress(DedupStore& store,
                                                          std::string_view scope);

 private:
  // The series of one scope, made on its first message; never freed (scopes are few).
  struct ScopeSeries {
    std::array<prometheus::Counter*, 6> outcomes{};  // by Outcome
    prometheus::Counter* fenced = nullptr;
    prometheus::Counter* takeovers = nullptr;
    prometheus::Counter* handler_exceptions = nullptr;
    prometheus::Counter* waits = nullptr;
    prometheus::Histogram* handler_seconds = nullptr;
    prometheus::Histogram* store_seconds = nullptr;
    prometheus::Gauge* in_progress = nullptr;
    std::array<prometheus::Counter*, 17> errors{};  // by absl::StatusCode, made on first use
  };
  ScopeSeries& SeriesOf(std::string_view scope);
  prometheus::Counter& ErrorCounter(ScopeSeries& series, std::string_view scope,
                                    absl::StatusCode code);

  const PrometheusObserverOptions options_;
  prometheus::Family<prometheus::Counter>& messages_;
  prometheus::Family<prometheus::Counter>& store_errors_;
  prometheus::Family<prometheus::Counter>& fenced_;
  prometheus::Family<prometheus::Counter>& takeovers_;
  prometheus::Family<prometheus::Counter>& handler_exceptions_;
  prometheus::Family<prometheus::Counter>& waits_;
  prometheus::Family<prometheus::Histogram>& handler_seconds_;
  prometheus::Family<prometheus::Histogram>& store_seconds_;
  prometheus::Family<prometheus::Gauge>& in_progress_;

  // std::mutex: taken once per message to find the scope's series (a short hash lookup); the
  // series themselves are atomic.
  std::mutex mu_;
  absl::flat_hash_map<std::string, std::unique_ptr<ScopeSeries>> scopes_;  // guarded by mu_
};

}  // namespace idem

#endif  // IDEM_PROMETHEUS_OBSERVER_H_
