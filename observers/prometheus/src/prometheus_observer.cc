#include "idem/prometheus_observer.h"

#include <chrono>
#include <string>
#include <utility>

#include "idem/processor.h"

namespace idem {
namespace {

constexpr Outcome kOutcomes[] = {Outcome::kProcessed, Outcome::kDuplicate,
                                 Outcome::kInProgress, Outcome::kStale,
                                 Outcome::kConflict,  Outcome::kDeadLettered};

double Seconds(std::chrono::nanoseconds d) { return std::chrono::duration<double>(d).count(); }

}  // namespace

PrometheusObserver::PrometheusObserver(prometheus::Registry& registry,
                                       PrometheusObserverOptions options)
    : options_(std::move(options)),
      messages_(prometheus::BuildCounter()
                    .Name("idem_messages_total")
                    .Help("Messages handled by idem Processors, by outcome")
                    .Register(registry)),
      store_errors_(prometheus::BuildCounter()
                        .Name("idem_store_errors_total")
                        .Help("Messages that ended with a store error, by status code")
                        .Register(registry)),
      fenced_(prometheus::BuildCounter()
                  .Name("idem_fenced_completions_total")
                  .Help("Completions refused because the claim had been taken over")
                  .Register(registry)),
      takeovers_(prometheus::BuildCounter()
                     .Name("idem_takeovers_total")
                     .Help("Claims that took over another consumer's expired lease")
                     .Register(registry)),
      handler_exceptions_(prometheus::BuildCounter()
                              .Name("idem_handler_exceptions_total")
                              .Help("Handlers that threw; their claims were released")
                              .Register(registry)),
      waits_(prometheus::BuildCounter()
                 .Name("idem_waits_total")
                 .Help("Deliveries that waited for an in-flight duplicate")
                 .Register(registry)),
      handler_seconds_(prometheus::BuildHistogram()
                           .Name("idem_handler_duration_seconds")
                           .Help("Time in the message handler")
                           .Register(registry)),
      store_seconds_(prometheus::BuildHistogram()
                         .Name("idem_store_duration_seconds")
                         .Help("Time in store calls, per message")
                         .Register(registry)),
      in_progress_(prometheus::BuildGauge()
                       .Name("idem_in_progress")
                       .Help("IN_PROGRESS records in the store, as last counted")
                       .Register(registry)) {}

PrometheusObserver::ScopeSeries& PrometheusObserver::SeriesOf(std::string_view scope) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = scopes_.find(absl::string_view(scope.data(), scope.size()));
  if (it != scopes_.end()) return *it->second;
  auto series = std::make_unique<ScopeSeries>();
  const std::string s(scope);
  for (Outcome outcome : kOutcomes) {
    series->outcomes[static_cast<std::size_t>(outcome)] =
        &messages_.Add({{"scope", s}, {"outcome", std::string(OutcomeName(outcome))}});
  }
  series->fenced = &fenced_.Add({{"scope", s}});
  series->takeovers = &takeovers_.Add({{"scope", s}});
  series->handler_exceptions = &handler_exceptions_.Add({{"scope", s}});
  series->waits = &waits_.Add({{"scope", s}});
  series->handler_seconds = &handler_seconds_.Add({{"scope", s}}, options_.handler_buckets);
  series->store_seconds = &store_seconds_.Add({{"scope", s}}, options_.store_buckets);
  series->in_progress = &in_progress_.Add({{"scope", s}});
  ScopeSeries& out = *series;
  scopes_.emplace(s, std::move(series));
  return out;
}

prometheus::Counter& PrometheusObserver::ErrorCounter(ScopeSeries& series, std::string_view scope,
                                                      absl::StatusCode code) {
  const std::size_t i = static_cast<std::size_t>(code) < series.errors.size()
                            ? static_cast<std::size_t>(code)
                            : static_cast<std::size_t>(absl::StatusCode::kUnknown);
  std::lock_guard<std::mutex> lock(mu_);
  if (series.errors[i] == nullptr) {
    series.errors[i] = &store_errors_.Add(
        {{"scope", std::string(scope)},
         {"code", absl::StatusCodeToString(static_cast<absl::StatusCode>(i))}});
  }
  return *series.errors[i];
}

void PrometheusObserver::OnMessage(const ProcessEvent& event) noexcept {
  try {
    ScopeSeries& series = SeriesOf(event.scope);
    if (event.outcome.has_value()) {
      series.outcomes[static_cast<std::size_t>(*event.outcome)]->Increment();
    } else if (event.fenced) {
      series.fenced->Increment();
    } else if (event.status != absl::StatusCode::kOk) {
      ErrorCounter(series, event.scope, event.status).Increment();
    }
    if (event.took_over) series.takeovers->Increment();
    if (event.handler_threw) series.handler_exceptions->Increment();
    if (event.waited) series.waits->Increment();
    if (event.handler_ran) series.handler_seconds->Observe(Seconds(event.handler_time));
    series.store_seconds->Observe(Seconds(event.store_time));
  } catch (...) {
    // An allocation failure while adding a series: the message's metrics are lost, the message
    // is not (OnMessage must not throw).
  }
}

absl::StatusOr<uint64_t> PrometheusObserver::UpdateInProgress(DedupStore& store,
                                                              std::string_view scope) {
  uint64_t count = 0;
  std::string cursor;
  do {
    absl::StatusOr<ListPage> page = store.List(ListRequest{
        .scope = scope, .filter = ListFilter::kInProgress, .limit = 10'000, .cursor = cursor});
    if (!page.ok()) return page.status();
    count += page->records.size();
    cursor = std::move(page->next_cursor);
  } while (!cursor.empty());
  SeriesOf(scope).in_progress->Set(static_cast<double>(count));
  return count;
}

}  // namespace idem
