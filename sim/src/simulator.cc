#include "idem/sim/simulator.h"

#include <dirent.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "broker.h"
#include "fault_store.h"
#include "idem/memory_store.h"
#include "idem/open_options.h"
#include "idem/open_store.h"
#include "idem/processor.h"
#include "idem/sim/prng.h"
#include "idem/sqlite_store.h"
#ifdef IDEM_SIM_WITH_POSTGRES
#include "idem/postgres_store.h"
#endif
#include "in_process.h"
#include "oracle.h"
#include "scheduler.h"
#include "sim_time.h"
#include "sqlite_effects.h"
#include "text.h"

namespace idem::sim {

using internal::Sv;
namespace internal {

std::string NewScope(uint64_t seed) {
  static std::atomic<uint64_t> counter{0};
  const uint64_t nonce =
      Hash64(static_cast<uint64_t>(getpid()),
             static_cast<uint64_t>(std::chrono::system_clock::now().time_since_epoch().count()),
             counter.fetch_add(1));
  return absl::StrFormat("idem-sim.%d.%08x", seed, nonce & 0xffffffffu);
}

absl::StatusOr<std::string> MakeTempDir(const std::string& base) {
  std::string root = base;
  if (root.empty()) {
    const char* tmp = std::getenv("TMPDIR");
    root = tmp != nullptr && *tmp != '\0' ? tmp : "/tmp";
  }
  std::string templ = absl::StrCat(root, "/idem-sim-XXXXXX");
  if (mkdtemp(templ.data()) == nullptr) {
    return absl::UnavailableError(absl::StrCat("cannot create a directory under ", root));
  }
  return templ;
}

void RemoveDir(const std::string& dir) {
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) {
      const std::string name = e->d_name;
      if (name != "." && name != "..") unlink(absl::StrCat(dir, "/", name).c_str());
    }
    closedir(d);
  }
  rmdir(dir.c_str());
}

std::string TemporarySqliteUri(const std::string& dir) {
  std::string uri = "sqlite://";
  for (char c : absl::StrCat(dir, "/idem-sim.db")) {
    // Characters a URI path cannot carry as themselves.
    if (c == '%' || c == '?' || c == '#' || c == ' ') {
      absl::StrAppendFormat(&uri, "%%%02X", static_cast<unsigned char>(c));
    } else {
      uri.push_back(c);
    }
  }
  return absl::StrCat(uri, "?synchronous=normal");
}

namespace {

// Thrown from a handler to emulate the death of the consumer's process at that point. The
// consumer's context is marked crashed first, so the library's cleanup on the way out (a
// release, a batch completion) never reaches the store, as for a dead process.
struct SimulatedCrash {};

// Thrown from a transactional handler whose effect row could not be written.
struct EffectWriteFailed {
  absl::Status status;
};

class InProcessRun {
 public:
  InProcessRun(const SimConfig& config, const Workload& workload, const RunOptions& options)
      : config_(config),
        workload_(workload),
        options_(options),
        profile_(config.mode == Mode::kLease ? Profile::kInProcessLease
                                             : Profile::kInProcessTransactional) {}

  absl::StatusOr<RunResult> Run();

 private:
  absl::Status Open();
  void Consumer(int self);
  void HandleLease(int self, CallContext& ctx, const std::vector<Hand>& hands);
  void HandleTransactional(int self, CallContext& ctx, const Hand& hand);
  void Crash(int self, CallContext& ctx, const std::vector<Hand>& hands);
  void Answer(int self, const Hand& hand, const absl::StatusOr<ProcessResult>& result);
  void Trace(int self, std::string text);
  void Progress();
  void StoreBound();
  int64_t Backoff(const Hand& hand) const {
    return std::min<int64_t>(config_.lease_ms, int64_t{8} << std::min(hand.attempt, 8));
  }

  const SimConfig& config_;
  const Workload& workload_;
  const RunOptions& options_;
  const Profile profile_;

  // The store's clock when it takes one (memory, SQLite); otherwise real time.
  std::unique_ptr<SimulatedTime> simulated_time_;
  std::unique_ptr<RealTime> real_time_;
  SimTime* time_ = nullptr;
  std::string temp_dir_;
  std::string sqlite_path_;  // decoded, as the store opened it
  SqliteSynchronous synchronous_ = SqliteSynchronous::kFull;
  bool capacity_bound_ = false;  // a memory store: its capacity (I7) is checked
  std::string store_description_;
  std::string scope_;
  std::unique_ptr<DedupStore> base_store_;
  std::unique_ptr<DedupStore> sabotaged_;
  std::unique_ptr<DedupStore> faulty_;
  std::optional<Processor> processor_;
  std::vector<SqliteDb> connections_;
  std::vector<std::unique_ptr<SqliteTransactional>> transactional_;
  std::vector<std::unique_ptr<EffectWriter>> writers_;
#ifdef IDEM_SIM_WITH_POSTGRES
  // Transactional mode over PostgreSQL: each consumer's connection and its transactional object
  // (used instead of the SQLite ones above); the effect table is in the store's schema.
  std::string pg_schema_;
  std::vector<PgConn> pg_connections_;
  std::vector<std::unique_ptr<PostgresTransactional>> pg_transactional_;
#endif

  std::unique_ptr<Oracle> oracle_;
  std::unique_ptr<Broker> broker_;
  std::unique_ptr<Scheduler> scheduler_;
  int64_t start_ms_ = 0;
  int64_t last_progress_ = -1;
  std::vector<std::string> trace_;
};

absl::Status InProcessRun::Open() {
  scope_ = NewScope(config_.seed);
  std::string uri = config_.store_uri;
  if (uri.empty()) {
    absl::StatusOr<std::string> dir = MakeTempDir(options_.work_dir);
    if (!dir.ok()) return dir.status();
    temp_dir_ = *dir;
    // NORMAL (WAL) survives a crash of the process, which is all a throwaway file needs.
    uri = TemporarySqliteUri(temp_dir_);
  }
  store_description_ = RedactUri(uri);
  // Opened as every program opens a store, so a URI means here what it means everywhere: the
  // simulator only adds its clock (leases end when the scheduler says) and deterministic tokens
  // (a replay of a seed shows the same tokens in its trace). Stores on a server's clock ignore
  // the clock, and the run goes on real time.
  simulated_time_ = std::make_unique<SimulatedTime>();
  auto next_token = std::make_shared<std::atomic<uint64_t>>(0);
  OpenOptions open_options;
  // The concurrent profile runs on real time: its consumers' store calls overlap for real.
  if (!config_.concurrent) open_options.clock = simulated_time_->clock();
  open_options.token_source = [next_token] { return next_token->fetch_add(1) + 1; };
  absl::StatusOr<std::unique_ptr<DedupStore>> store = OpenStore(uri, open_options);
  if (!store.ok()) return store.status();
  base_store_ = std::move(*store);
  const std::string_view backend = base_store_->BackendName();
  if ((backend == "memory" || backend == "sqlite") && !config_.concurrent) {
    time_ = simulated_time_.get();
  } else {
    real_time_ = std::make_unique<RealTime>();
    time_ = real_time_.get();
  }
  oracle_ = std::make_unique<Oracle>(workload_, config_.mode, time_->exact());
  if (backend == "memory") {
    absl::StatusOr<MemoryStoreOptions> memory = ParseMemoryUri(uri);
    if (!memory.ok()) return memory.status();
    oracle_->SetCapacity(static_cast<int64_t>(memory->capacity), memory->evict_oldest);
    capacity_bound_ = true;
  }
  if (backend == "sqlite") {
    absl::StatusOr<SqliteStoreOptions> sqlite = ParseSqliteUri(uri);
    if (!sqlite.ok()) return sqlite.status();
    sqlite_path_ = sqlite->path;
    synchronous_ = sqlite->synchronous;
  }
#ifdef IDEM_SIM_WITH_POSTGRES
  const bool transactional_backend = backend == "sqlite" || backend == "postgres";
#else
  const bool transactional_backend = backend == "sqlite";
#endif
  if (config_.mode == Mode::kTransactional && !transactional_backend) {
    return absl::InvalidArgumentError(
        absl::StrCat("transactional mode needs a SQLite or PostgreSQL store "
                     "(--store=sqlite:///path/to.db or postgresql://...), got ",
                     store_description_));
  }
  DedupStore* below = base_store_.get();
  if (config_.sabotage != Sabotage::kNone) {
    sabotaged_ = NewSabotagedStore(*base_store_, config_.sabotage);
    below = sabotaged_.get();
  }
  FaultHooks hooks;
  hooks.sink = oracle_.get();
  hooks.time = time_;
  hooks.outage_ms = OutageMillis(config_);
  if (config_.concurrent) {
    hooks.around_store = [this](const std::function<void()>& call) { scheduler_->Unlocked(call); };
  }
  hooks.scheduling_point = [this] {
    CallContext* ctx = CurrentCallContext();
    if (ctx != nullptr && !scheduler_->finished()) {
      scheduler_->Yield(ctx->consumer, Scheduler::State::kRunnable);
    }
  };
  if (options_.record_trace) {
    hooks.trace = [this](std::string text) {
      CallContext* ctx = CurrentCallContext();
      Trace(ctx == nullptr ? -1 : ctx->consumer, std::move(text));
    };
  }
  faulty_ = NewFaultInjectingStore(*below, std::move(hooks));
  absl::StatusOr<Processor> processor = Processor::Create(
      *faulty_, scope_, ProcessorOptions{.lease = std::chrono::milliseconds(config_.lease_ms)});
  if (!processor.ok()) return processor.status();
  processor_.emplace(std::move(*processor));

#ifdef IDEM_SIM_WITH_POSTGRES
  if (config_.mode == Mode::kTransactional && backend == "postgres") {
    absl::StatusOr<PostgresStoreOptions> pg = ParsePostgresUri(uri);
    if (!pg.ok()) return pg.status();
    pg_schema_ = pg->schema;
    for (int i = 0; i < config_.consumers; ++i) {
      absl::StatusOr<PgConn> conn = OpenPgConnection(pg->conninfo);
      if (!conn.ok()) return conn.status();
      if (i == 0) {
        if (absl::Status s = CreatePgEffectTable(conn->get(), pg_schema_); !s.ok()) return s;
      }
      absl::StatusOr<std::unique_ptr<PostgresTransactional>> tx = PostgresTransactional::Create(
          conn->get(), scope_,
          PostgresTransactionalOptions{.schema = pg->schema,
                                       .table_prefix = pg->table_prefix,
                                       .token_source = open_options.token_source});
      if (!tx.ok()) return tx.status();
      pg_transactional_.push_back(std::move(*tx));
      pg_connections_.push_back(std::move(*conn));
    }
  }
#endif
  if (config_.mode == Mode::kTransactional && backend == "sqlite") {
    for (int i = 0; i < config_.consumers; ++i) {
      absl::StatusOr<SqliteDb> db = OpenConnection(sqlite_path_, synchronous_);
      if (!db.ok()) return db.status();
      if (i == 0) {
        if (absl::Status s = CreateEffectTable(db->get()); !s.ok()) return s;
      }
      absl::StatusOr<std::unique_ptr<SqliteTransactional>> tx = SqliteTransactional::Create(
          db->get(), scope_, SqliteTransactionalOptions{.clock = time_->clock()});
      if (!tx.ok()) return tx.status();
      absl::StatusOr<std::unique_ptr<EffectWriter>> writer = EffectWriter::Create(db->get());
      if (!writer.ok()) return writer.status();
      transactional_.push_back(std::move(*tx));
      writers_.push_back(std::move(*writer));
      connections_.push_back(std::move(*db));
    }
  }
  start_ms_ = time_->Now();
  const int64_t budget = 40 * static_cast<int64_t>(workload_.deliveries.size()) + 10'000;
  broker_ = std::make_unique<Broker>(workload_, start_ms_, budget);
  scheduler_ = std::make_unique<Scheduler>(
      config_.consumers, Hash64(config_.seed, 0x7363686564756c65ULL), time_,
      [this](int64_t now) { return broker_->HasDue(now); }, [this] { return broker_->NextDue(); },
      config_.concurrent);
  return absl::OkStatus();
}

void InProcessRun::StoreBound() {
  // Records are only ever added (the simulator never purges, and an eviction makes room for the
  // record that displaced it), so the count at the end is the most the store ever held.
  std::vector<bool> seen(workload_.distinct_ids, false);
  int64_t held = 0;
  for (const SimMessage& m : workload_.messages) {
    if (seen[m.id_index]) continue;
    seen[m.id_index] = true;
    absl::StatusOr<std::optional<RecordInfo>> info = base_store_->Inspect(scope_, m.id);
    if (info.ok() && info->has_value()) ++held;
  }
  oracle_->StoreBound(held, static_cast<int64_t>(base_store_->Stats().evictions));
}

void InProcessRun::Trace(int self, std::string text) {
  if (!options_.record_trace || trace_.size() >= 200'000) return;
  trace_.push_back(absl::StrFormat("t=%-6d c%d  %s", time_->Now() - start_ms_, self, text));
}

void InProcessRun::Progress() {
  if (!options_.progress) return;
  const int64_t done = broker_->acked();
  const int64_t step = std::max<int64_t>(1, broker_->total() / 200);
  if (last_progress_ >= 0 && done - last_progress_ < step && done != broker_->total()) return;
  last_progress_ = done;
  options_.progress(done, broker_->total());
}

void InProcessRun::Consumer(int self) {
  CallContext ctx;
  ctx.consumer = self;
  CurrentCallContext() = &ctx;
  const int batch = config_.mode == Mode::kLease ? config_.batch : 1;
  while (!scheduler_->finished()) {
    std::vector<Hand> hands = broker_->Poll(time_->Now(), batch);
    if (hands.empty()) {
      scheduler_->Yield(self, Scheduler::State::kIdle);
      continue;
    }
    for (const Hand& hand : hands) {
      oracle_->Delivered();
      if (options_.record_trace) {
        const SimMessage& m = workload_.messages[hand.message];
        Trace(self, absl::StrFormat("m%d deliver copy=%d attempt=%d id=%s key=%s v=%u%s",
                                    hand.message, hand.copy, hand.attempt, PrintableId(m.id), m.key,
                                    m.version, m.reuses_id ? " (reused id)" : ""));
      }
    }
    if (config_.mode == Mode::kLease) {
      HandleLease(self, ctx, hands);
    } else {
      HandleTransactional(self, ctx, hands[0]);
    }
    Progress();
    scheduler_->Yield(self, Scheduler::State::kRunnable);
  }
  CurrentCallContext() = nullptr;
}

void InProcessRun::HandleLease(int self, CallContext& ctx, const std::vector<Hand>& hands) {
  ctx.in_hand.clear();
  std::vector<Message> messages;
  bool crash_before_claim = false;
  for (const Hand& hand : hands) {
    const SimMessage& m = workload_.messages[hand.message];
    const Fault fault = PlanFault(config_, profile_, hand.message, hand.copy, hand.attempt);
    if (fault != Fault::kNone)
      Trace(self, absl::StrCat("m", hand.message, " fault planned: ", Sv(FaultName(fault))));
    if (fault == Fault::kCrashBeforeClaim) {
      crash_before_claim = true;
      oracle_->FaultInjected(hand.message, 0, fault);
    }
    ctx.in_hand.push_back({.id = m.id, .message = hand.message, .fault = fault});
    messages.push_back(Message{.id = m.id, .payload = m.payload, .version = StampOf(m)});
  }
  if (crash_before_claim) {
    Crash(self, ctx, hands);
    return;
  }

  auto handler = [&](HandlerContext& hc) {
    CallContext::InHand* h = ctx.Find(hc.message_id());
    if (h == nullptr) return;  // not ours: cannot happen, the broker never batches one id twice
    if (h->fault == Fault::kCrashAfterClaim) {
      oracle_->FaultInjected(h->message, hc.token(), h->fault);
      ctx.crashed = true;
      throw SimulatedCrash{};
    }
    h->ran = true;
    h->token = hc.token();
    oracle_->HandlerRan(h->message, hc.token(), time_->Now());
    Trace(self, absl::StrFormat("m%d effect (token=%d attempt=%d)", h->message, hc.token(),
                                hc.attempt()));
    if (h->fault == Fault::kCrashAfterEffect) {
      oracle_->FaultInjected(h->message, hc.token(), h->fault);
      ctx.crashed = true;
      throw SimulatedCrash{};
    }
    if (h->fault == Fault::kPauseBeyondLease) {
      oracle_->FaultInjected(h->message, hc.token(), h->fault);
      // Frozen for longer than the lease while the others go on: the broker hands this
      // consumer's deliveries to them at once, they find the claim in progress and retry every
      // quarter lease, and once the lease has run out they take it over (an unversioned message
      // is never refused as stale), so the completion this consumer sends when it wakes is the
      // late one that fencing must refuse (I4). Woken a quarter lease after the lease ends: long
      // enough for the takeover, short enough not to starve the others of consumers.
      for (const Hand& hand : hands) broker_->Redeliver(hand, time_->Now());
      Trace(self, absl::StrCat("m", h->message, " pauses beyond the lease"));
      scheduler_->Yield(self, Scheduler::State::kSleeping, time_->Now() + PauseMillis(config_));
      Trace(self, absl::StrCat("m", h->message, " resumes"));
      return;
    }
    scheduler_->Yield(self, Scheduler::State::kRunnable);
  };

  std::vector<absl::StatusOr<ProcessResult>> results;
  try {
    if (config_.batch == 1) {
      results.push_back(processor_->Process(messages[0], handler));
    } else {
      results = processor_->ProcessBatch(messages, handler);
    }
  } catch (const SimulatedCrash&) {
    Crash(self, ctx, hands);
    return;
  }
  bool crash_after_complete = false;
  for (const CallContext::InHand& h : ctx.in_hand) {
    if (h.fault == Fault::kCrashAfterComplete) {
      crash_after_complete = true;
      oracle_->FaultInjected(h.message, h.token, h.fault);
    }
  }
  if (crash_after_complete) {
    Crash(self, ctx, hands);
    return;
  }
  for (std::size_t i = 0; i < hands.size(); ++i) {
    Answer(self, hands[i], i < results.size() ? results[i] : absl::InternalError("no result"));
  }
  ctx.in_hand.clear();
}

void InProcessRun::HandleTransactional(int self, CallContext& ctx, const Hand& hand) {
  const SimMessage& m = workload_.messages[hand.message];
  const Fault fault = PlanFault(config_, profile_, hand.message, hand.copy, hand.attempt);
  ctx.in_hand.assign(1, {.id = m.id, .message = hand.message, .fault = fault});
  if (fault != Fault::kNone) {
    Trace(self, absl::StrCat("m", hand.message, " fault planned: ", Sv(FaultName(fault))));
  }
  if (fault == Fault::kCrashBeforeClaim) {
    oracle_->FaultInjected(hand.message, 0, fault);
    Crash(self, ctx, {hand});
    return;
  }
  const Message message{.id = m.id, .payload = m.payload, .version = StampOf(m)};
  absl::StatusOr<ProcessResult> result;
  try {
    // No scheduling point inside: the transaction holds SQLite's write lock, and another
    // consumer's connection would only wait for it.
    // The handler, on either backend: `write` writes the effect row in the library's transaction.
    auto handler = [&](HandlerContext& hc, const std::function<absl::Status()>& write) {
      if (fault == Fault::kCrashAfterClaim) {
        oracle_->FaultInjected(hand.message, hc.token(), fault);
        ctx.crashed = true;
        throw SimulatedCrash{};
      }
      oracle_->HandlerRan(hand.message, hc.token(), time_->Now());
      Trace(self, absl::StrFormat("m%d effect row (token=%d)", hand.message, hc.token()));
      if (absl::Status s = write(); !s.ok()) throw EffectWriteFailed{s};
      if (fault == Fault::kCrashAfterEffect) {
        oracle_->FaultInjected(hand.message, hc.token(), fault);
        ctx.crashed = true;
        throw SimulatedCrash{};
      }
    };
#ifdef IDEM_SIM_WITH_POSTGRES
    if (!pg_transactional_.empty()) {
      result = pg_transactional_[self]->Process(message, [&](PGconn* conn, HandlerContext& hc) {
        handler(hc, [&] {
          return WritePgEffect(conn, pg_schema_, scope_, hand.message, m.id, m.version, hc.token());
        });
      });
    } else
#endif
    {
      result = transactional_[self]->Process(message, [&](sqlite3*, HandlerContext& hc) {
        handler(hc, [&] {
          return writers_[self]->Write(scope_, hand.message, m.id, m.version, hc.token());
        });
      });
    }
  } catch (const SimulatedCrash&) {
    Crash(self, ctx, {hand});
    return;
  } catch (const EffectWriteFailed& e) {
    result = e.status;
  }
  if (result.ok() && fault == Fault::kCrashAfterComplete) {
    oracle_->FaultInjected(hand.message, 0, fault);
    Crash(self, ctx, {hand});
    return;
  }
  if (result.ok() && fault == Fault::kLostReplyOnComplete) {
    oracle_->FaultInjected(hand.message, 0, fault);
    result = absl::DeadlineExceededError("simulated: the commit's reply was lost");
  }
  Trace(self, absl::StrCat("m", hand.message, " transaction -> ",
                           result.ok() ? std::string(OutcomeName(result->outcome))
                                       : result.status().ToString()));
  Answer(self, hand, result);
  ctx.in_hand.clear();
}

void InProcessRun::Crash(int self, CallContext& ctx, const std::vector<Hand>& hands) {
  ctx.crashed = true;
  // Runs that had started their effect and not completed are explained by this crash.
  for (const CallContext::InHand& h : ctx.in_hand) {
    if (h.ran) oracle_->RunFaulted(h.token);
  }
  oracle_->Crashed();
  // The broker notices the dead session after a while and redelivers what it had.
  const int64_t at = time_->Now() + std::max<int64_t>(1, config_.lease_ms / 4);
  for (const Hand& hand : hands) broker_->Redeliver(hand, at);
  Trace(self, "CRASH; the consumer restarts");
  ctx.crashed = false;
  ctx.in_hand.clear();
}

void InProcessRun::Answer(int self, const Hand& hand, const absl::StatusOr<ProcessResult>& result) {
  if (!result.ok() && capacity_bound_ &&
      result.status().code() == absl::StatusCode::kResourceExhausted) {
    // Fail closed: the store is full and the handler did not run. Retrying cannot help until
    // records expire, so the consumer parks the delivery (acks it to a dead-letter queue); the
    // oracle checks that the store really was full.
    if (broker_->Ack(hand)) oracle_->RefusedFull(hand.message);
    Trace(self, absl::StrCat("m", hand.message, " parked: ", result.status().ToString()));
    return;
  }
  if (!result.ok()) {
    oracle_->StoreError();
    Trace(self, absl::StrCat("m", hand.message, " nack: ", result.status().ToString()));
    broker_->Redeliver(hand, time_->Now() + Backoff(hand));
    return;
  }
  if (result->outcome == Outcome::kInProgress) {
    oracle_->InProgress();
    Trace(self, absl::StrCat("m", hand.message, " nack: in progress elsewhere"));
    broker_->Redeliver(hand, time_->Now() + std::max<int64_t>(1, config_.lease_ms / 4));
    return;
  }
  if (broker_->Ack(hand)) {
    oracle_->Acked(hand.message, result->outcome);
    Trace(self, absl::StrCat("m", hand.message, " ack: ", Sv(OutcomeName(result->outcome))));
  } else {
    Trace(self, absl::StrCat("m", hand.message, " ack ignored (redelivered meanwhile): ",
                             Sv(OutcomeName(result->outcome))));
  }
}

absl::StatusOr<RunResult> InProcessRun::Run() {
  const auto wall_start = std::chrono::steady_clock::now();
  if (absl::Status s = Open(); !s.ok()) {
    if (!temp_dir_.empty()) RemoveDir(temp_dir_);
    return s;
  }
  scheduler_->Run([this](int self) { Consumer(self); });
  if (options_.progress) options_.progress(broker_->acked(), broker_->total());

  absl::Status effects_status;
  if (config_.mode == Mode::kTransactional) {
#ifdef IDEM_SIM_WITH_POSTGRES
    absl::StatusOr<std::vector<EffectRow>> rows =
        pg_connections_.empty() ? ReadEffects(connections_[0].get(), scope_)
                                : ReadPgEffects(pg_connections_[0].get(), pg_schema_, scope_);
#else
    absl::StatusOr<std::vector<EffectRow>> rows = ReadEffects(connections_[0].get(), scope_);
#endif
    if (rows.ok()) {
      for (const EffectRow& row : *rows) oracle_->EffectCommitted(row.message, row.version);
    } else {
      effects_status = rows.status();
    }
  }
  if (capacity_bound_) StoreBound();
  RunResult out;
  if (config_.mode == Mode::kLease) {
    out.report = oracle_->Finish(broker_->Unacked(), [this](const std::string& key) {
      return base_store_->AppliedVersion(scope_, key);
    });
  } else {
    out.report = oracle_->Finish(broker_->Unacked(), nullptr);
  }
  for (const std::string& e : scheduler_->errors()) {
    out.report.violations.push_back(absl::StrCat("a consumer failed: ", e));
    ++out.report.lost;
  }
  if (!effects_status.ok()) {
    out.report.violations.push_back(effects_status.ToString());
    ++out.report.lost;
  }
  out.report.budget_exhausted = broker_->budget_exhausted();
  const StoreStats stats = base_store_->Stats();
  out.report.write_groups = static_cast<int64_t>(stats.write_groups);
  out.report.grouped_calls = static_cast<int64_t>(stats.grouped_calls);
  out.report.wall_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - wall_start).count();
  out.store_description = store_description_;
  out.trace = std::move(trace_);

  transactional_.clear();
  writers_.clear();
  connections_.clear();
#ifdef IDEM_SIM_WITH_POSTGRES
  pg_transactional_.clear();  // before the connections they run on
  pg_connections_.clear();
#endif
  processor_.reset();
  faulty_.reset();
  sabotaged_.reset();
  base_store_.reset();
  oracle_.reset();
  if (!temp_dir_.empty()) {
    if (options_.keep_files || (options_.keep_files_on_failure && !out.report.passed())) {
      out.store_description += " (kept)";
    } else {
      RemoveDir(temp_dir_);
    }
  }
  return out;
}

}  // namespace
}  // namespace internal

absl::StatusOr<RunResult> RunWorkload(const SimConfig& config, const Workload& workload,
                                      const RunOptions& options) {
  if (absl::Status s = ValidateConfig(config); !s.ok()) return s;
  internal::InProcessRun run(config, workload, options);
  return run.Run();
}

absl::StatusOr<RunResult> RunSimulation(const SimConfig& config, const RunOptions& options) {
  if (absl::Status s = ValidateConfig(config); !s.ok()) return s;
  if (config.processes > 0) return internal::RunProcesses(config, options);
  const Workload workload = GenerateWorkload(config);
  return RunWorkload(config, workload, options);
}

absl::StatusOr<ShrinkResult> ShrinkFailure(const SimConfig& config, int max_runs,
                                           double max_seconds) {
  SimConfig c = config;
  c.processes = 0;
  // Each attempt needs a fresh store: a temporary SQLite file for SQLite, memory for memory.
  if (ParseSqliteUri(c.store_uri).ok()) c.store_uri.clear();
  const Workload full = GenerateWorkload(c);
  const auto start = std::chrono::steady_clock::now();
  ShrinkResult out;
  out.deliveries_before = static_cast<int64_t>(full.deliveries.size());
  auto subset = [&full](const std::vector<int64_t>& keep) {
    Workload w;
    w.messages = full.messages;
    w.keys = full.keys;
    w.distinct_ids = full.distinct_ids;
    for (int64_t i : keep) w.deliveries.push_back(full.deliveries[i]);
    return w;
  };
  auto out_of_budget = [&] {
    return out.runs >= max_runs ||
           std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() >
               max_seconds;
  };
  auto fails = [&](const std::vector<int64_t>& keep) {
    ++out.runs;
    RunOptions quiet;
    quiet.keep_files_on_failure = false;
    absl::StatusOr<RunResult> r = RunWorkload(c, subset(keep), quiet);
    return r.ok() && !r->report.passed();
  };
  std::vector<int64_t> current(full.deliveries.size());
  for (std::size_t i = 0; i < current.size(); ++i) current[i] = static_cast<int64_t>(i);
  if (!fails(current)) {
    return absl::FailedPreconditionError("the run does not fail in process; nothing to shrink");
  }
  // ddmin over the initial deliveries: drop chunks while the run still fails, refining the
  // chunks when no single one can go.
  std::size_t n = 2;
  while (current.size() >= 2 && !out_of_budget()) {
    const std::size_t chunk = (current.size() + n - 1) / n;
    bool reduced = false;
    for (std::size_t start_at = 0; start_at < current.size() && !out_of_budget();
         start_at += chunk) {
      std::vector<int64_t> complement;
      complement.reserve(current.size());
      for (std::size_t i = 0; i < current.size(); ++i) {
        if (i < start_at || i >= start_at + chunk) complement.push_back(current[i]);
      }
      if (!complement.empty() && fails(complement)) {
        current = std::move(complement);
        n = std::max<std::size_t>(n - 1, 2);
        reduced = true;
        break;
      }
    }
    if (!reduced) {
      if (n >= current.size()) break;
      n = std::min(2 * n, current.size());
    }
  }
  out.workload = subset(current);
  out.deliveries_after = static_cast<int64_t>(current.size());
  RunOptions replay_options;
  replay_options.record_trace = true;
  replay_options.keep_files_on_failure = false;
  absl::StatusOr<RunResult> replay = RunWorkload(c, out.workload, replay_options);
  if (!replay.ok()) return replay.status();
  out.replay = std::move(*replay);
  return out;
}

}  // namespace idem::sim
