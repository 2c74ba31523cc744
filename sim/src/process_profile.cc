// The process profile: each consumer is a separate process on a shared store (a SQLite file, or in
// lease mode any server store such as Redis), SIGKILLed at its crash points and restarted; this
// process is the broker.
//
// Protocol on each consumer's socket, one line per message:
//   broker -> consumer   D <handle> <message> <fault>[;<handle> <message> <fault>...]   a batch
//                        Q                                                            quit
//   consumer -> broker   A <handle> <outcome>   ack
//                        N <handle> in_progress|error   nack (redeliver later)
//                        P <handle>...          paused beyond the lease: hand these to others
// What the consumers' stores applied and what their handlers did goes to one durable event log
// (event_log.h) before it matters, so that a SIGKILL cannot hide it; after the run the broker
// replays it into the oracle (oracle.h), the same one that judges the in-process profile.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "broker.h"
#include "event_log.h"
#include "fault_store.h"
#include "idem/open_store.h"
#include "idem/processor.h"
#include "idem/sim/simulator.h"
#include "idem/sqlite_store.h"
#include "in_process.h"
#include "oracle.h"
#include "sim_time.h"
#include "sqlite_effects.h"
#include "text.h"

namespace idem::sim {

using internal::Sv;
namespace {

using internal::Broker;
using internal::Hand;

constexpr int kChildFd = 3;

// The store every process opens, by its URI (real time: no clock, the store's own tokens).
absl::StatusOr<std::unique_ptr<DedupStore>> OpenSharedStore(const SimConfig& config) {
  return OpenStore(config.store_uri);
}

bool WriteAll(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t n = write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

// Reads complete lines from a descriptor.
class LineReader {
 public:
  explicit LineReader(int fd) : fd_(fd) {}
  // Appends the complete lines available after one read(); false at EOF or error.
  bool ReadSome(std::vector<std::string>* lines) {
    char buf[65536];
    ssize_t n;
    do {
      n = read(fd_, buf, sizeof buf);
    } while (n < 0 && errno == EINTR);
    if (n <= 0) return false;
    pending_.append(buf, static_cast<std::size_t>(n));
    std::size_t start = 0;
    for (std::size_t nl; (nl = pending_.find('\n', start)) != std::string::npos; start = nl + 1) {
      lines->push_back(pending_.substr(start, nl - start));
    }
    pending_.erase(0, start);
    return true;
  }

 private:
  int fd_;
  std::string pending_;
};

// ---- the consumer process -----------------------------------------------------------------

class ChildConsumer {
 public:
  ChildConsumer(const SimConfig& config, int fd, const std::string& run_dir, std::string scope)
      : config_(config),
        fd_(fd),
        run_dir_(run_dir),
        scope_(std::move(scope)),
        workload_(GenerateWorkload(config)) {}

  int Run();

 private:
  // Logs the crash point, and that it cut short every run of the batch that had started its
  // effect and not completed (their next runs are explained by it), then dies as a process
  // does: no cleanup reaches the store.
  [[noreturn]] void CrashAt(int64_t message, uint64_t token, Fault fault) {
    log_->FaultInjected(message, token, fault);
    for (const internal::CallContext::InHand& h : ctx_.in_hand) {
      if (h.ran && h.token != token) log_->RunFaulted(h.token);
    }
    kill(getpid(), SIGKILL);
    while (true) pause();
  }
  void Send(std::string line) {
    line.push_back('\n');
    if (!WriteAll(fd_, line)) _exit(3);  // the broker is gone
  }
  void HandleBatch(const std::vector<std::pair<uint64_t, std::pair<int64_t, Fault>>>& batch);

  const SimConfig& config_;
  int fd_;
  std::string run_dir_;
  std::string scope_;
  Workload workload_;
  int log_fd_ = -1;
  std::unique_ptr<internal::EventLogWriter> log_;
  internal::RealTime time_;
  internal::CallContext ctx_;
  std::unique_ptr<DedupStore> store_;
  std::unique_ptr<DedupStore> sabotaged_;
  std::unique_ptr<DedupStore> recorded_;
  std::optional<Processor> processor_;
  internal::SqliteDb db_;
  std::unique_ptr<SqliteTransactional> tx_;
  std::unique_ptr<internal::EffectWriter> writer_;
};

int ChildConsumer::Run() {
  log_fd_ = open(absl::StrCat(run_dir_, "/events.log").c_str(),
                 O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (log_fd_ < 0) return 4;
  log_ = std::make_unique<internal::EventLogWriter>(log_fd_);
  internal::CurrentCallContext() = &ctx_;
  if (config_.mode == Mode::kLease) {
    absl::StatusOr<std::unique_ptr<DedupStore>> store = OpenSharedStore(config_);
    if (!store.ok()) {
      std::fprintf(stderr, "consumer: %s\n", store.status().ToString().c_str());
      return 5;
    }
    store_ = std::move(*store);
    DedupStore* below = store_.get();
    if (config_.sabotage != Sabotage::kNone) {
      sabotaged_ = internal::NewSabotagedStore(*store_, config_.sabotage);
      below = sabotaged_.get();
    }
    // The fault injector of the in-process profile, with no faults of its own to inject here
    // (this profile's faults are SIGKILLs and pauses): it records what the store applied, as
    // seen below the library, into the event log.
    internal::FaultHooks hooks;
    hooks.sink = log_.get();
    hooks.time = &time_;
    recorded_ = internal::NewFaultInjectingStore(*below, std::move(hooks));
    absl::StatusOr<Processor> p = Processor::Create(
        *recorded_, scope_,
        ProcessorOptions{.lease = std::chrono::milliseconds(config_.lease_ms),
                         .wait_for_in_flight = std::chrono::milliseconds(config_.wait_ms)});
    if (!p.ok()) return 5;
    processor_.emplace(std::move(*p));
  } else {
    absl::StatusOr<SqliteStoreOptions> sqlite = ParseSqliteUri(config_.store_uri);
    if (!sqlite.ok()) return 5;
    absl::StatusOr<internal::SqliteDb> db =
        internal::OpenConnection(sqlite->path, sqlite->synchronous);
    if (!db.ok()) return 5;
    db_ = std::move(*db);
    absl::StatusOr<std::unique_ptr<SqliteTransactional>> tx =
        SqliteTransactional::Create(db_.get(), scope_);
    absl::StatusOr<std::unique_ptr<internal::EffectWriter>> writer =
        internal::EffectWriter::Create(db_.get());
    if (!tx.ok() || !writer.ok()) return 5;
    tx_ = std::move(*tx);
    writer_ = std::move(*writer);
  }
  LineReader reader(fd_);
  std::vector<std::string> lines;
  while (true) {
    lines.clear();
    if (!reader.ReadSome(&lines)) return 0;  // the broker closed the socket
    for (const std::string& line : lines) {
      if (line == "Q") return 0;
      if (line.empty() || line[0] != 'D') continue;
      std::vector<std::pair<uint64_t, std::pair<int64_t, Fault>>> batch;
      for (absl::string_view item : absl::StrSplit(line.substr(2), ';')) {
        std::vector<absl::string_view> f = absl::StrSplit(item, ' ');
        uint64_t handle = 0;
        int64_t message = 0;
        int fault = 0;
        if (f.size() != 3 || !absl::SimpleAtoi(f[0], &handle) ||
            !absl::SimpleAtoi(f[1], &message) || !absl::SimpleAtoi(f[2], &fault) || message < 0 ||
            message >= static_cast<int64_t>(workload_.messages.size())) {
          return 6;
        }
        batch.push_back({handle, {message, static_cast<Fault>(fault)}});
      }
      HandleBatch(batch);
    }
  }
}

void ChildConsumer::HandleBatch(
    const std::vector<std::pair<uint64_t, std::pair<int64_t, Fault>>>& batch) {
  std::vector<uint64_t> handles;
  std::vector<Message> messages;
  ctx_.in_hand.clear();
  for (const auto& [handle, mf] : batch) {
    const auto [message, fault] = mf;
    const SimMessage& m = workload_.messages[message];
    handles.push_back(handle);
    ctx_.in_hand.push_back({.id = m.id, .message = message, .fault = fault});
    messages.push_back(Message{.id = m.id, .payload = m.payload, .version = StampOf(m)});
    if (fault == Fault::kCrashBeforeClaim) CrashAt(message, 0, fault);
  }
  auto run = [&](internal::CallContext::InHand& it, uint64_t token, auto&& effect) {
    if (it.fault == Fault::kCrashAfterClaim) CrashAt(it.message, token, it.fault);
    it.token = token;
    it.ran = true;
    log_->HandlerRan(it.message, token, time_.Now());
    effect();
    if (it.fault == Fault::kCrashAfterEffect) CrashAt(it.message, token, it.fault);
    if (it.fault == Fault::kPauseBeyondLease) {
      log_->FaultInjected(it.message, token, it.fault);
      std::string paused = "P";
      for (uint64_t handle : handles) absl::StrAppend(&paused, " ", handle);
      Send(paused);
      std::this_thread::sleep_for(std::chrono::milliseconds(PauseMillis(config_)));
    }
  };

  std::vector<absl::StatusOr<ProcessResult>> results;
  if (config_.mode == Mode::kLease) {
    auto handler = [&](HandlerContext& hc) {
      internal::CallContext::InHand* it = ctx_.Find(hc.message_id());
      if (it != nullptr) run(*it, hc.token(), [] {});
    };
    if (ctx_.in_hand.size() == 1 && config_.batch == 1) {
      results.push_back(processor_->Process(messages[0], handler));
    } else {
      results = processor_->ProcessBatch(messages, handler);
    }
  } else {
    internal::CallContext::InHand& it = ctx_.in_hand[0];
    const SimMessage& m = workload_.messages[it.message];
    absl::Status write_status;
    results.push_back(tx_->Process(messages[0], [&](sqlite3*, HandlerContext& hc) {
      run(it, hc.token(), [&] {
        write_status = writer_->Write(scope_, it.message, m.id, m.version, hc.token());
        // A failed write must not commit the dedup row without the effect.
        if (!write_status.ok()) throw std::runtime_error(write_status.ToString());
      });
    }));
  }
  for (const internal::CallContext::InHand& it : ctx_.in_hand) {
    if (it.fault == Fault::kCrashAfterComplete) CrashAt(it.message, it.token, it.fault);
  }
  std::string answers;
  for (std::size_t i = 0; i < handles.size(); ++i) {
    const absl::StatusOr<ProcessResult>& r =
        i < results.size() ? results[i]
                           : absl::StatusOr<ProcessResult>(absl::InternalError("no result"));
    if (r.ok() && r->outcome != Outcome::kInProgress) {
      absl::StrAppend(&answers, "A ", handles[i], " ", static_cast<int>(r->outcome), "\n");
    } else {
      absl::StrAppend(&answers, "N ", handles[i], " ", r.ok() ? "in_progress" : "error", "\n");
    }
  }
  if (!answers.empty()) answers.pop_back();
  Send(answers);
}

// ---- the broker ---------------------------------------------------------------------------

struct Slot {
  pid_t pid = -1;
  int fd = -1;
  std::unique_ptr<LineReader> reader;
  std::vector<Hand> in_flight;  // hand-outs not yet answered (some may be stale)
};

class ProcessRun {
 public:
  ProcessRun(const SimConfig& config, const RunOptions& options)
      : config_(config),
        options_(options),
        workload_(GenerateWorkload(config)),
        oracle_(workload_, config.mode, /*exact_time=*/false) {}
  absl::StatusOr<RunResult> Run();

 private:
  absl::Status Prepare();
  absl::Status Spawn(Slot& slot);
  void Reap(Slot& slot, int index);
  void OnLine(Slot& slot, const std::string& line);
  Report Judge(const std::vector<int64_t>& unacked);

  SimConfig config_;
  const RunOptions& options_;
  Workload workload_;
  internal::Oracle oracle_;
  std::string run_dir_;
  std::string db_path_;  // of a SQLite store, decoded
  SqliteSynchronous synchronous_ = SqliteSynchronous::kFull;
  std::string scope_;
  std::unique_ptr<Broker> broker_;
  std::vector<Slot> slots_;
  int64_t restarts_ = 0;
  std::vector<std::string> child_errors_;
};

absl::Status ProcessRun::Spawn(Slot& slot) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    return absl::UnavailableError(absl::StrCat("socketpair: ", std::strerror(errno)));
  }
  // The store URI, which may hold a password, goes in the environment: a command line is
  // readable by every user of the host.
  std::vector<std::string> args;
  std::vector<std::string> env;
  if (!options_.self_binary.empty()) {
    args = {options_.self_binary,
            absl::StrCat("--child_fd=", kChildFd),
            absl::StrCat("--child_dir=", run_dir_),
            absl::StrCat("--child_scope=", scope_),
            absl::StrCat("--mode=", Sv(ModeName(config_.mode))),
            absl::StrCat("--seed=", config_.seed),
            absl::StrCat("--messages=", config_.messages),
            absl::StrCat("--keys=", config_.keys),
            absl::StrFormat("--dup-rate=%.17g", config_.dup_rate),
            absl::StrFormat("--conflict-rate=%.17g", config_.conflict_rate),
            absl::StrFormat("--unversioned-rate=%.17g", config_.unversioned_rate),
            absl::StrCat("--reorder-window=", config_.reorder_window),
            absl::StrCat("--lease-ms=", config_.lease_ms),
            absl::StrCat("--batch=", config_.batch),
            absl::StrCat("--wait-ms=", config_.wait_ms),
            absl::StrCat("--sabotage=", Sv(SabotageName(config_.sabotage)))};
    for (char** e = environ; *e != nullptr; ++e) {
      if (std::string_view(*e).rfind(kChildStoreEnv, 0) != 0) env.push_back(*e);
    }
    env.push_back(absl::StrCat(kChildStoreEnv, "=", config_.store_uri));
  }
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<char*> envp;
  for (std::string& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);
  const pid_t pid = fork();
  if (pid < 0) {
    close(sv[0]);
    close(sv[1]);
    return absl::UnavailableError(absl::StrCat("fork: ", std::strerror(errno)));
  }
  if (pid == 0) {
    // The child: its end of the socket becomes fd 3 (dup2 clears close-on-exec).
    if (dup2(sv[1], kChildFd) < 0) _exit(7);
    if (!args.empty()) {
      execve(argv[0], argv.data(), envp.data());
      _exit(8);
    }
    _exit(RunChildConsumer(config_, kChildFd, run_dir_, scope_));
  }
  close(sv[1]);
  slot.pid = pid;
  slot.fd = sv[0];
  slot.reader = std::make_unique<LineReader>(sv[0]);
  slot.in_flight.clear();
  return absl::OkStatus();
}

void ProcessRun::Reap(Slot& slot, int index) {
  int status = 0;
  while (waitpid(slot.pid, &status, 0) < 0 && errno == EINTR) {
  }
  close(slot.fd);
  slot.fd = -1;
  if (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) {
    oracle_.Crashed();
  } else {
    child_errors_.push_back(absl::StrFormat("consumer %d (pid %d) ended unexpectedly (status %d)",
                                            index, slot.pid, status));
  }
  // The broker notices the dead session and redelivers what the consumer held.
  const int64_t at = SystemClock().NowMillis() + std::max<int64_t>(1, config_.lease_ms / 4);
  for (const Hand& hand : slot.in_flight) broker_->Redeliver(hand, at);
  slot.in_flight.clear();
  slot.pid = -1;
}

void ProcessRun::OnLine(Slot& slot, const std::string& line) {
  std::vector<absl::string_view> f = absl::StrSplit(line, ' ');
  if (f.empty()) return;
  const int64_t now = SystemClock().NowMillis();
  auto take = [&](absl::string_view handle_text) -> std::optional<Hand> {
    uint64_t handle = 0;
    if (!absl::SimpleAtoi(handle_text, &handle)) return std::nullopt;
    for (auto it = slot.in_flight.begin(); it != slot.in_flight.end(); ++it) {
      if (it->handle == handle) {
        Hand hand = *it;
        slot.in_flight.erase(it);
        return hand;
      }
    }
    return std::nullopt;
  };
  if (f[0] == "A" && f.size() == 3) {
    int outcome = 0;
    std::optional<Hand> hand = take(f[1]);
    if (!hand || !absl::SimpleAtoi(f[2], &outcome)) return;
    if (broker_->Ack(*hand)) oracle_.Acked(hand->message, static_cast<Outcome>(outcome));
  } else if (f[0] == "N" && f.size() == 3) {
    std::optional<Hand> hand = take(f[1]);
    if (!hand) return;
    if (f[2] == "in_progress") {
      oracle_.InProgress();
    } else {
      oracle_.StoreError();
    }
    broker_->Redeliver(*hand, now + std::max<int64_t>(1, config_.lease_ms / 4));
  } else if (f[0] == "P") {
    // Paused beyond its lease: the visibility timeout hands its deliveries to others now. The
    // hand-outs stay with the slot (it will still answer them), but they are stale.
    for (const Hand& hand : slot.in_flight) broker_->Redeliver(hand, now);
  }
}

// Checks the store before any consumer starts, and creates the SQLite schema (and the effect
// table) before the consumers race to.
absl::Status ProcessRun::Prepare() {
  if (config_.store_uri.empty()) config_.store_uri = internal::TemporarySqliteUri(run_dir_);
  absl::StatusOr<std::unique_ptr<DedupStore>> store = OpenSharedStore(config_);
  if (!store.ok()) return store.status();
  const std::string_view backend = (*store)->BackendName();
  if (backend == "memory") {
    return absl::InvalidArgumentError(
        "the process profile needs a store the consumer processes share (sqlite: or redis:); "
        "memory: lives inside one process");
  }
  if (backend == "sqlite") {
    absl::StatusOr<SqliteStoreOptions> sqlite = ParseSqliteUri(config_.store_uri);
    if (!sqlite.ok()) return sqlite.status();
    db_path_ = sqlite->path;
    synchronous_ = sqlite->synchronous;
    absl::StatusOr<internal::SqliteDb> db = internal::OpenConnection(db_path_, synchronous_);
    if (!db.ok()) return db.status();
    if (absl::Status s = internal::CreateEffectTable(db->get()); !s.ok()) return s;
  } else if (config_.mode == Mode::kTransactional) {
    return absl::InvalidArgumentError(
        "the transactional process profile needs a SQLite store shared by the consumer "
        "processes (--store=sqlite:///path/to.db)");
  }
  // Both connections close here, before any fork: a child exiting would otherwise drop this
  // process's SQLite locks on the file.
  return absl::OkStatus();
}

absl::StatusOr<RunResult> ProcessRun::Run() {
  const auto wall_start = std::chrono::steady_clock::now();
  absl::StatusOr<std::string> dir = internal::MakeTempDir(options_.work_dir);
  if (!dir.ok()) return dir.status();
  run_dir_ = *dir;
  scope_ = internal::NewScope(config_.seed);
  if (absl::Status s = Prepare(); !s.ok()) {
    internal::RemoveDir(run_dir_);
    return s;
  }
  broker_ =
      std::make_unique<Broker>(workload_, SystemClock().NowMillis(),
                               40 * static_cast<int64_t>(workload_.deliveries.size()) + 10'000);
  slots_.resize(config_.processes);
  for (int i = 0; i < config_.processes; ++i) {
    if (absl::Status s = Spawn(slots_[i]); !s.ok()) return s;
  }
  const Profile profile = Profile::kProcesses;
  // Enough for every delivery to be retried many times; a livelock ends here.
  const auto deadline =
      std::chrono::steady_clock::now() +
      std::chrono::milliseconds(60'000 + 200 * config_.messages + 50 * config_.lease_ms);
  int64_t last_progress = -1;
  while (broker_->acked() < broker_->total() && !broker_->budget_exhausted() &&
         std::chrono::steady_clock::now() < deadline) {
    const int64_t now = SystemClock().NowMillis();
    for (int i = 0; i < config_.processes; ++i) {
      Slot& slot = slots_[i];
      if (slot.pid < 0) {
        ++restarts_;
        if (absl::Status s = Spawn(slot); !s.ok()) return s;
      }
      if (!slot.in_flight.empty()) continue;
      std::vector<Hand> hands =
          broker_->Poll(now, config_.mode == Mode::kLease ? config_.batch : 1);
      if (hands.empty()) continue;
      std::string line = "D";
      for (const Hand& hand : hands) {
        oracle_.Delivered();
        const Fault fault = PlanFault(config_, profile, hand.message, hand.copy, hand.attempt);
        absl::StrAppend(&line, line.size() > 1 ? ";" : " ", hand.handle, " ", hand.message, " ",
                        static_cast<int>(fault));
      }
      slot.in_flight = hands;
      line.push_back('\n');
      // A write to a consumer that just died fails with EPIPE; the poll below reaps it.
      (void)send(slot.fd, line.data(), line.size(), MSG_NOSIGNAL);
    }
    std::vector<pollfd> fds;
    for (const Slot& slot : slots_) fds.push_back({.fd = slot.fd, .events = POLLIN, .revents = 0});
    int timeout = 20;
    const int64_t due = broker_->NextDue();
    if (due >= 0) timeout = static_cast<int>(std::clamp<int64_t>(due - now, 0, 20));
    if (poll(fds.data(), fds.size(), timeout) < 0 && errno != EINTR) {
      return absl::InternalError(absl::StrCat("poll: ", std::strerror(errno)));
    }
    for (int i = 0; i < config_.processes; ++i) {
      if (fds[i].revents == 0) continue;
      std::vector<std::string> lines;
      const bool open = slots_[i].reader->ReadSome(&lines);
      for (const std::string& line : lines) OnLine(slots_[i], line);
      if (!open) Reap(slots_[i], i);
    }
    if (options_.progress && broker_->acked() != last_progress) {
      last_progress = broker_->acked();
      options_.progress(broker_->acked(), broker_->total());
    }
  }
  for (Slot& slot : slots_) {
    if (slot.pid < 0) continue;
    (void)send(slot.fd, "Q\n", 2, MSG_NOSIGNAL);
    shutdown(slot.fd, SHUT_WR);
    int status = 0;
    while (waitpid(slot.pid, &status, 0) < 0 && errno == EINTR) {
    }
    close(slot.fd);
  }
  RunResult out;
  out.report = Judge(broker_->Unacked());
  out.report.wall_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - wall_start).count();
  out.store_description = RedactUri(config_.store_uri);
  if (options_.keep_files || (options_.keep_files_on_failure && !out.report.passed())) {
    out.store_description += absl::StrCat(" (kept; logs in ", run_dir_, ")");
  } else {
    internal::RemoveDir(run_dir_);
  }
  return out;
}

// The consumers' event log and the effect rows into the one oracle.
Report ProcessRun::Judge(const std::vector<int64_t>& unacked) {
  std::vector<std::string> problems;
  if (absl::Status s =
          internal::ReplayEventLog(absl::StrCat(run_dir_, "/events.log"), workload_, oracle_);
      !s.ok()) {
    problems.push_back(s.ToString());
  }
  Report r;
  if (config_.mode == Mode::kTransactional) {
    absl::StatusOr<internal::SqliteDb> db = internal::OpenConnection(db_path_, synchronous_);
    absl::StatusOr<std::vector<internal::EffectRow>> rows =
        db.ok() ? internal::ReadEffects(db->get(), scope_)
                : absl::StatusOr<std::vector<internal::EffectRow>>(db.status());
    if (rows.ok()) {
      for (const internal::EffectRow& row : *rows)
        oracle_.EffectCommitted(row.message, row.version);
    } else {
      problems.push_back(rows.status().ToString());
    }
    r = oracle_.Finish(unacked, nullptr);
  } else {
    // The version gate's final state, read back from the shared store.
    absl::StatusOr<std::unique_ptr<DedupStore>> store = OpenSharedStore(config_);
    if (!store.ok()) problems.push_back(store.status().ToString());
    r = oracle_.Finish(unacked, [&](const std::string& key) {
      return store.ok() ? (*store)->AppliedVersion(scope_, key)
                        : absl::StatusOr<std::optional<uint64_t>>(store.status());
    });
  }
  // A run the oracle could not see whole is not a pass.
  for (const std::string& p : problems) {
    r.violations.push_back(p);
    ++r.lost;
  }
  for (const std::string& e : child_errors_) {
    r.violations.push_back(e);
    ++r.lost;
  }
  r.budget_exhausted = broker_->budget_exhausted();
  if (broker_->acked() < broker_->total() && !r.budget_exhausted) {
    r.violations.push_back("the run hit its time limit");
  }
  return r;
}

}  // namespace

namespace internal {

absl::StatusOr<RunResult> RunProcesses(const SimConfig& config, const RunOptions& options) {
  ProcessRun run(config, options);
  return run.Run();
}

}  // namespace internal

int RunChildConsumer(const SimConfig& config, int fd, const std::string& run_dir,
                     const std::string& scope) {
  signal(SIGPIPE, SIG_IGN);
  ChildConsumer consumer(config, fd, run_dir, scope);
  return consumer.Run();
}

}  // namespace idem::sim
