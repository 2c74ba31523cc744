// The PostgreSQL backend: idem (pipelined claim + classify, one statement completions, pipelined
// batches) against the statements a consumer would send by hand with the same libpq, on the same
// server, in the same run.
//
// The raw baseline, per message (autocommit, one round trip each): `INSERT … ON CONFLICT DO
// NOTHING` of (id, status 0, lease_until); if it inserted, the handler, then `UPDATE … SET status =
// 1`. In batches of B: the B inserts pipelined with one Sync (one round trip, one transaction),
// the handlers, then the updates of the ids that were inserted, pipelined likewise. Transactional
// (txn): BEGIN; INSERT … ON CONFLICT DO NOTHING of a completed row; the handler; COMMIT (a
// duplicate: ROLLBACK), one round trip each. Raw statements are prepared once and bound in binary,
// as idem's are.
//
// Every pattern is paired (RunPaired: raw and idem alternate unit by unit), so that load from
// other processes on the machine and fsync latency fall on both alike. The server is the one
// bench/run.sh starts ($IDEM_BENCH_PG_URI); without one reachable, nothing is registered.
#include <libpq-fe.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bench_util.h"
#include "benchmark/benchmark.h"
#include "idem/postgres_store.h"
#include "idem/processor.h"

namespace idem::bench {
namespace {

struct ConnCloser {
  void operator()(PGconn* c) const noexcept { PQfinish(c); }
};
struct ResultClearer {
  void operator()(PGresult* r) const noexcept { PQclear(r); }
};
using Conn = std::unique_ptr<PGconn, ConnCloser>;
using Result = std::unique_ptr<PGresult, ResultClearer>;

std::string Uri() { return EnvString("IDEM_BENCH_PG_URI", "postgresql://postgres@127.0.0.1/postgres"); }
// One schema per run: the tables start empty and grow only by what the run writes.
const std::string& Schema() {
  static const std::string* schema = new std::string(absl::StrCat("bench_", getpid()));
  return *schema;
}

[[noreturn]] void Die(std::string_view what, PGconn* c) {
  std::fprintf(stderr, "postgres bench: %.*s: %s\n", static_cast<int>(what.size()), what.data(),
               c != nullptr ? PQerrorMessage(c) : "");
  std::abort();
}

Conn Connect() {
  Conn c(PQconnectdb(Uri().c_str()));
  if (PQstatus(c.get()) != CONNECTION_OK) return nullptr;
  return c;
}

void Exec(PGconn* c, const std::string& sql) {
  Result r(PQexec(c, sql.c_str()));
  const ExecStatusType st = PQresultStatus(r.get());
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) Die(sql, c);
}

void PutInt8(char* out, int64_t v) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(static_cast<uint64_t>(v) >> (56 - 8 * i));
}

// The hand-rolled consumer's statements on its own connection.
class RawPg {
 public:
  RawPg() : c_(Connect()) {
    if (c_ == nullptr) Die("connect", nullptr);
    const std::string t = absl::StrCat(Schema(), ".raw_dedup");
    Prepare("raw_claim", absl::StrCat("INSERT INTO ", t, "(id, status, lease_until) VALUES ($1, 0, "
                                      "$2) ON CONFLICT (id) DO NOTHING"));
    Prepare("raw_complete", absl::StrCat("UPDATE ", t, " SET status = 1 WHERE id = $1"));
    Prepare("raw_insert_done", absl::StrCat("INSERT INTO ", t, "(id, status, lease_until) VALUES "
                                            "($1, 1, $2) ON CONFLICT (id) DO NOTHING"));
  }

  // One round trip: true when the row was inserted.
  bool Claim(std::string_view id, const char* statement = "raw_claim") {
    Result r(Send(statement, id, true));
    if (PQresultStatus(r.get()) != PGRES_COMMAND_OK) Die("claim", c_.get());
    return std::string_view(PQcmdTuples(r.get())) == "1";
  }
  void Complete(std::string_view id) {
    Result r(Send("raw_complete", id, false));
    if (PQresultStatus(r.get()) != PGRES_COMMAND_OK) Die("complete", c_.get());
  }
  void Plain(const char* sql) { Exec(c_.get(), sql); }

  // A batch: the claims pipelined with one Sync, then the completions of the inserted ones.
  void Batch(std::span<const Message> messages) {
    std::vector<char> inserted(messages.size());
    Pipeline(messages.size(), [&](std::size_t i) { return SendAsync("raw_claim", messages[i].id, true); },
             [&](std::size_t i, PGresult* r) { inserted[i] = std::string_view(PQcmdTuples(r)) == "1"; });
    std::vector<std::size_t> owned;
    for (std::size_t i = 0; i < messages.size(); ++i) {
      if (inserted[i]) {
        benchmark::DoNotOptimize(messages[i].id.data());
        owned.push_back(i);
      }
    }
    Pipeline(owned.size(),
             [&](std::size_t k) { return SendAsync("raw_complete", messages[owned[k]].id, false); },
             [](std::size_t, PGresult*) {});
  }

 private:
  void Prepare(const char* name, const std::string& sql) {
    Result r(PQprepare(c_.get(), name, sql.c_str(), 0, nullptr));
    if (PQresultStatus(r.get()) != PGRES_COMMAND_OK) Die(name, c_.get());
  }
  PGresult* Send(const char* statement, std::string_view id, bool with_lease) {
    PutInt8(lease_, NowMillis() + 30'000);
    const char* values[] = {id.data(), lease_};
    const int lengths[] = {static_cast<int>(id.size()), 8};
    const int formats[] = {1, 1};
    return PQexecPrepared(c_.get(), statement, with_lease ? 2 : 1, values, lengths, formats, 1);
  }
  bool SendAsync(const char* statement, std::string_view id, bool with_lease) {
    PutInt8(lease_, NowMillis() + 30'000);
    const char* values[] = {id.data(), lease_};
    const int lengths[] = {static_cast<int>(id.size()), 8};
    const int formats[] = {1, 1};
    return PQsendQueryPrepared(c_.get(), statement, with_lease ? 2 : 1, values, lengths, formats,
                               1) == 1;
  }
  template <typename SendFn, typename ReadFn>
  void Pipeline(std::size_t n, SendFn send, ReadFn read) {
    if (n == 0) return;
    if (PQenterPipelineMode(c_.get()) != 1) Die("pipeline", c_.get());
    for (std::size_t i = 0; i < n; ++i) {
      if (!send(i)) Die("send", c_.get());
    }
    if (PQpipelineSync(c_.get()) != 1) Die("sync", c_.get());
    for (std::size_t i = 0; i < n; ++i) {
      Result r(PQgetResult(c_.get()));
      if (r == nullptr || PQresultStatus(r.get()) != PGRES_COMMAND_OK) Die("batch", c_.get());
      read(i, r.get());
      while (Result extra{PQgetResult(c_.get())}) {
      }
    }
    Result sync(PQgetResult(c_.get()));
    if (PQresultStatus(sync.get()) != PGRES_PIPELINE_SYNC) Die("sync result", c_.get());
    PQexitPipelineMode(c_.get());
  }

  Conn c_;
  char lease_[8];
};

// idem's store, processor and transactional mode, opened before any benchmark runs and left to the
// process's exit.
struct IdemPg {
  std::unique_ptr<DedupStore> store;
  std::unique_ptr<Processor> processor;
  Conn tx_conn;
  std::unique_ptr<PostgresTransactional> tx;
};

// The store with the default group_limit (with transactional mode), or with group_limit 1
// (every call written alone; no transactional mode).
IdemPg& Idem(bool alone = false) {
  static IdemPg* stores[2] = {};
  IdemPg*& idem = stores[alone ? 1 : 0];
  if (idem != nullptr) return *idem;
  idem = [alone] {
    PostgresStoreOptions options;
    options.conninfo = Uri();
    options.schema = Schema();
    options.pool_size = 4;
    if (alone) options.group_limit = 1;
    absl::StatusOr<std::unique_ptr<DedupStore>> store = NewPostgresStore(options);
    if (!store.ok()) {
      std::fprintf(stderr, "postgres store: %s\n", store.status().ToString().c_str());
      std::abort();
    }
    auto* made = new IdemPg{.store = std::move(store).value()};
    absl::StatusOr<Processor> processor = Processor::Create(*made->store, std::string(kScope));
    if (!processor.ok()) std::abort();
    made->processor = std::make_unique<Processor>(*std::move(processor));
    if (alone) return made;
    made->tx_conn = Connect();
    absl::StatusOr<std::unique_ptr<PostgresTransactional>> tx = PostgresTransactional::Create(
        made->tx_conn.get(), std::string(kScope), {.schema = Schema()});
    if (!tx.ok()) {
      std::fprintf(stderr, "postgres transactional: %s\n", tx.status().ToString().c_str());
      std::abort();
    }
    made->tx = std::move(tx).value();
    return made;
  }();
  return *idem;
}

absl::Status RawLease(RawPg& raw, std::span<const Message> messages) {
  for (const Message& m : messages) {
    if (raw.Claim(m.id)) {
      benchmark::DoNotOptimize(m.id.data());
      raw.Complete(m.id);
    }
  }
  return absl::OkStatus();
}

absl::Status IdemLease(RawPg&, std::span<const Message> messages) {
  for (const Message& m : messages) {
    absl::StatusOr<ProcessResult> result = Idem().processor->Process(m, TrivialHandler);
    if (!result.ok()) return result.status();
  }
  return absl::OkStatus();
}

absl::Status RawBatch(RawPg& raw, std::span<const Message> messages) {
  raw.Batch(messages);
  return absl::OkStatus();
}

absl::Status IdemBatch(RawPg&, std::span<const Message> messages) {
  for (const absl::StatusOr<ProcessResult>& result :
       Idem().processor->ProcessBatch(messages, TrivialHandler)) {
    if (!result.ok()) return result.status();
  }
  return absl::OkStatus();
}

absl::Status RawTransactional(RawPg& raw, std::span<const Message> messages) {
  for (const Message& m : messages) {
    raw.Plain("BEGIN");
    if (raw.Claim(m.id, "raw_insert_done")) {
      benchmark::DoNotOptimize(m.id.data());
      raw.Plain("COMMIT");
    } else {
      raw.Plain("ROLLBACK");
    }
  }
  return absl::OkStatus();
}

void TrivialPgHandler(PGconn* conn, HandlerContext& context) {
  benchmark::DoNotOptimize(conn);
  benchmark::DoNotOptimize(context.token());
}

absl::Status IdemTransactional(RawPg&, std::span<const Message> messages) {
  for (const Message& m : messages) {
    absl::StatusOr<ProcessResult> result = Idem().tx->Process(m, TrivialPgHandler);
    if (!result.ok()) return result.status();
  }
  return absl::OkStatus();
}

using SideFn = absl::Status (*)(RawPg&, std::span<const Message>);

void RegisterPaired(const std::string& pattern, std::size_t batch, SideFn raw, SideFn idem) {
  Register("postgres", pattern, "pair", [=](benchmark::State& state) {
    RawPg r;
    RunPaired(
        state, batch, [&](std::span<const Message> m) { return raw(r, m); },
        [&](std::span<const Message> m) { return idem(r, m); });
  });
}

// Group commit: per-message Process from one thread (alone and grouped) and from `threads`
// threads, against the raw batch of 100 (RunGroup).
void RegisterGroup(int threads) {
  Register("postgres", absl::StrCat("group", threads), "group", [=](benchmark::State& state) {
    RawPg r;
    RunGroup(state, threads,
             GroupSides{.raw_batch = [&](std::span<const Message> m) { return RawBatch(r, m); },
                        .alone = Idem(/*alone=*/true).processor.get(),
                        .grouped = Idem().processor.get(),
                        .grouped_store = Idem().store.get()});
  })->MinTime(kGroupMinSeconds);
}

bool RegisterAll() {
  Conn c = Connect();
  if (c == nullptr) {
    std::fprintf(stderr, "postgres bench: no server at IDEM_BENCH_PG_URI; nothing registered\n");
    return false;
  }
  Exec(c.get(), absl::StrCat("CREATE SCHEMA IF NOT EXISTS ", Schema()));
  Exec(c.get(), absl::StrCat("CREATE TABLE IF NOT EXISTS ", Schema(),
                             ".raw_dedup(id bytea PRIMARY KEY, status int2 NOT NULL, "
                             "lease_until int8 NOT NULL)"));
  Idem();  // open before any timing: connect, create the schema, prepare
  Idem(/*alone=*/true);
  RegisterPaired("lease", 1, RawLease, IdemLease);
  RegisterPaired("txn", 1, RawTransactional, IdemTransactional);
  for (std::size_t batch : {10, 100}) {
    RegisterPaired(absl::StrCat("batch", batch), batch, RawBatch, IdemBatch);
  }
  RegisterGroup(16);
  return true;
}

}  // namespace
}  // namespace idem::bench

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  if (!idem::bench::RegisterAll()) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
