// ProcessObserver: what the Processor reports for each message, on the in-memory store (the
// Processor is the same over every backend).
#include <chrono>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "idem/memory_store.h"
#include "idem/observer.h"
#include "idem/processor.h"
#include "testing/status_matchers.h"

namespace idem {
namespace {

// A copy of an event whose views outlive OnMessage.
struct Seen {
  std::string scope;
  std::string id;
  ProcessEvent event;
};

class Recorder : public ProcessObserver {
 public:
  void OnMessage(const ProcessEvent& event) noexcept override {
    std::lock_guard<std::mutex> lock(mu_);
    seen_.push_back(Seen{std::string(event.scope), std::string(event.id), event});
  }
  std::vector<Seen> seen() {
    std::lock_guard<std::mutex> lock(mu_);
    return seen_;
  }

 private:
  std::mutex mu_;
  std::vector<Seen> seen_;
};

constexpr char kScope[] = "billing/order-events";

class ObserverTest : public ::testing::Test {
 protected:
  void SetUp() override {
    MemoryStoreOptions options;
    options.clock = &clock_;
    IDEM_ASSERT_OK_AND_ASSIGN(store_, NewMemoryStore(options));
  }
  Processor Make(ProcessorOptions options = {}) {
    options.observer = &recorder_;
    options.store_clock = &clock_;
    absl::StatusOr<Processor> p = Processor::Create(*store_, kScope, options);
    EXPECT_TRUE(p.ok()) << p.status();
    return *std::move(p);
  }

  ManualClock clock_;
  std::unique_ptr<DedupStore> store_;
  Recorder recorder_;
};

TEST_F(ObserverTest, ReportsProcessedWithHandlerAndStoreTime) {
  Processor p = Make();
  IDEM_ASSERT_OK_AND_ASSIGN(ProcessResult r,
                            p.Process({.id = "m-1", .payload = "x"}, [](HandlerContext&) {
                              std::this_thread::sleep_for(std::chrono::milliseconds(20));
                            }));
  EXPECT_EQ(r.outcome, Outcome::kProcessed);
  const std::vector<Seen> seen = recorder_.seen();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].scope, kScope);
  EXPECT_EQ(seen[0].id, "m-1");
  const ProcessEvent& e = seen[0].event;
  EXPECT_EQ(e.outcome, Outcome::kProcessed);
  EXPECT_EQ(e.status, absl::StatusCode::kOk);
  EXPECT_EQ(e.attempt, 1u);
  EXPECT_FALSE(e.took_over);
  EXPECT_TRUE(e.handler_ran);
  EXPECT_FALSE(e.handler_threw);
  EXPECT_FALSE(e.fenced);
  EXPECT_GE(e.handler_time, std::chrono::milliseconds(20));
  EXPECT_GT(e.store_time.count(), 0);
}

TEST_F(ObserverTest, ReportsDuplicateWithoutHandlerTime) {
  Processor p = Make();
  IDEM_ASSERT_OK(p.Process({.id = "m-1", .payload = "x"}, [](HandlerContext&) {}).status());
  IDEM_ASSERT_OK(p.Process({.id = "m-1", .payload = "x"}, [](HandlerContext&) {}).status());
  const std::vector<Seen> seen = recorder_.seen();
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[1].event.outcome, Outcome::kDuplicate);
  EXPECT_FALSE(seen[1].event.handler_ran);
  EXPECT_EQ(seen[1].event.handler_time.count(), 0);
}

TEST_F(ObserverTest, ReportsTakeoverAndFencedCompletion) {
  Processor p = Make({.lease = std::chrono::seconds(1)});
  // The first run stalls past its lease and another consumer takes over: its completion is
  // fenced; the second run took the claim over.
  absl::StatusOr<ProcessResult> first =
      p.Process({.id = "m-1", .payload = "x"}, [&](HandlerContext&) {
        clock_.Advance(2'000);
        absl::StatusOr<ProcessResult> second =
            p.Process({.id = "m-1", .payload = "x"}, [](HandlerContext&) {});
        EXPECT_TRUE(second.ok());
      });
  EXPECT_EQ(first.status().code(), absl::StatusCode::kAborted);
  const std::vector<Seen> seen = recorder_.seen();
  ASSERT_EQ(seen.size(), 2u);
  const ProcessEvent& second = seen[0].event;
  EXPECT_EQ(second.outcome, Outcome::kProcessed);
  EXPECT_TRUE(second.took_over);
  EXPECT_EQ(second.attempt, 2u);
  const ProcessEvent& late = seen[1].event;
  EXPECT_FALSE(late.outcome.has_value());
  EXPECT_EQ(late.status, absl::StatusCode::kAborted);
  EXPECT_TRUE(late.fenced);
  EXPECT_TRUE(late.handler_ran);
}

TEST_F(ObserverTest, ReportsAStoreErrorWithoutRunningTheHandler) {
  MemoryStoreOptions options;
  options.capacity = 1;
  IDEM_ASSERT_OK_AND_ASSIGN(store_, NewMemoryStore(options));
  Processor p = Make();
  IDEM_ASSERT_OK(p.Process({.id = "m-1", .payload = "x"}, [](HandlerContext&) {}).status());
  int runs = 0;
  EXPECT_EQ(p.Process({.id = "m-2", .payload = "x"}, [&](HandlerContext&) { ++runs; })
                .status()
                .code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(runs, 0);
  const std::vector<Seen> seen = recorder_.seen();
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[1].event.status, absl::StatusCode::kResourceExhausted);
  EXPECT_FALSE(seen[1].event.outcome.has_value());
  EXPECT_FALSE(seen[1].event.handler_ran);
  EXPECT_FALSE(seen[1].event.fenced);
}

TEST_F(ObserverTest, ReportsAThrowingHandlerAndTheExceptionPropagates) {
  Processor p = Make();
  EXPECT_THROW((void)p.Process({.id = "m-1", .payload = "x"},
                               [](HandlerContext&) { throw std::runtime_error("boom"); }),
               std::runtime_error);
  const std::vector<Seen> seen = recorder_.seen();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_TRUE(seen[0].event.handler_threw);
  EXPECT_TRUE(seen[0].event.handler_ran);
  EXPECT_FALSE(seen[0].event.outcome.has_value());
}

TEST_F(ObserverTest, ReportsEachMessageOfABatch) {
  Processor p = Make();
  IDEM_ASSERT_OK(p.Process({.id = "b-1", .payload = "x"}, [](HandlerContext&) {}).status());
  const std::vector<Message> batch = {{.id = "b-0", .payload = "x"},
                                      {.id = "b-1", .payload = "x"},
                                      {.id = "b-2", .payload = "other"}};
  std::vector<absl::StatusOr<ProcessResult>> out = p.ProcessBatch(batch, [](HandlerContext&) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  });
  ASSERT_EQ(out.size(), 3u);
  const std::vector<Seen> seen = recorder_.seen();
  ASSERT_EQ(seen.size(), 4u);
  EXPECT_EQ(seen[1].id, "b-0");
  EXPECT_EQ(seen[1].event.outcome, Outcome::kProcessed);
  EXPECT_GE(seen[1].event.handler_time, std::chrono::milliseconds(5));
  EXPECT_GT(seen[1].event.store_time.count(), 0);
  EXPECT_EQ(seen[2].id, "b-1");
  EXPECT_EQ(seen[2].event.outcome, Outcome::kDuplicate);
  EXPECT_FALSE(seen[2].event.handler_ran);
  EXPECT_EQ(seen[3].event.outcome, Outcome::kProcessed);
}

// The exception leaves ProcessBatch, yet every message of the batch is still reported once.
TEST_F(ObserverTest, ReportsEveryMessageOfABatchWhoseHandlerThrew) {
  Processor p = Make();
  IDEM_ASSERT_OK(p.Process({.id = "t-dup", .payload = "x"}, [](HandlerContext&) {}).status());
  const std::vector<Message> batch = {{.id = "t-0", .payload = "x"},
                                      {.id = "t-dup", .payload = "x"},
                                      {.id = "t-1", .payload = "x"},
                                      {.id = "t-2", .payload = "x"}};
  EXPECT_THROW((void)p.ProcessBatch(batch,
                                    [](HandlerContext& c) {
                                      if (c.message_id() == "t-1") {
                                        throw std::runtime_error("boom");
                                      }
                                    }),
               std::runtime_error);
  std::map<std::string, ProcessEvent> by_id;
  const std::vector<Seen> seen = recorder_.seen();
  for (std::size_t i = 1; i < seen.size(); ++i) {
    EXPECT_TRUE(by_id.emplace(seen[i].id, seen[i].event).second) << "twice: " << seen[i].id;
  }
  ASSERT_EQ(by_id.size(), 4u);
  EXPECT_EQ(by_id["t-0"].outcome, Outcome::kProcessed);
  EXPECT_EQ(by_id["t-dup"].outcome, Outcome::kDuplicate);
  EXPECT_TRUE(by_id["t-1"].handler_threw);
  EXPECT_FALSE(by_id["t-2"].handler_ran);
  EXPECT_EQ(by_id["t-2"].status, absl::StatusCode::kCancelled);
}

TEST_F(ObserverTest, ReportsThatADeliveryWaited) {
  Processor p = Make({.wait_for_in_flight = std::chrono::milliseconds(30)});
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult held,
                            store_->Claim({.scope = kScope, .id = "w-1"}));
  (void)held;
  IDEM_ASSERT_OK_AND_ASSIGN(ProcessResult r,
                            p.Process({.id = "w-1", .payload = "x"}, [](HandlerContext&) {}));
  EXPECT_EQ(r.outcome, Outcome::kInProgress);
  const std::vector<Seen> seen = recorder_.seen();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_TRUE(seen[0].event.waited);
  EXPECT_EQ(seen[0].event.outcome, Outcome::kInProgress);
  EXPECT_GE(seen[0].event.store_time, std::chrono::milliseconds(30));
}

}  // namespace
}  // namespace idem
