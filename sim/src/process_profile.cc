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
// What happened is written durably to an append-only log before it matters, so that a SIGKILL
// cannot hide it (a write() survives the death of its process):
//   RUN <message> <token>            the handler's effect (lease mode: the effect itself)
//   DONE <message> <token> <outcome> the store accepted the completion of that run
//   FAULT <message> <token> <what>   a crash point, a pause, or a failed completion
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
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
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
#include "idem/open_store.h"
#include "idem/processor.h"
#include "idem/sim/simulator.h"
#include "idem/sqlite_store.h"
#include "in_process.h"
#include "oracle.h"
#include "sqlite_effects.h"
#include "text.h"

namespace idem::sim {

using internal::Sv;
namespace {

using internal::Broker;
using internal::Hand;

constexpr int kChildFd = 3;

// The lease-mode store every process opens: the SQLite file with the run's `synchronous`, or
// any other shared store by its URI (Redis).
absl::StatusOr<std::unique_ptr<DedupStore>> OpenSharedStore(const SimConfig& config) {
  if (const std::optional<std::string> path = internal::SqlitePathOf(config.store_uri)) {
    SqliteStoreOptions options;
    options.path = *path;
    options.synchronous = config.synchronous;
    return NewSqliteStore(std::move(options));
  }
  return OpenStore(config.store_uri);
}

std::string_view SynchronousName(SqliteSynchronous s) {
  switch (s) {
    case SqliteSynchronous::kOff:
      return "off";
    case SqliteSynchronous::kNormal:
      return "normal";
    case SqliteSynchronous::kFull:
      return "full";
    case SqliteSynchronous::kExtra:
      return "extra";
  }
  return "full";
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
  [[noreturn]] void Die() {
    kill(getpid(), SIGKILL);
    while (true) pause();
  }
  void Log(std::string line) {
    line.push_back('\n');
    WriteAll(log_fd_, line);  // one write(): O_APPEND keeps lines of processes whole
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
  std::unique_ptr<DedupStore> store_;
  std::optional<Processor> processor_;
  internal::SqliteDb db_;
  std::unique_ptr<SqliteTransactional> tx_;
  std::unique_ptr<internal::EffectWriter> writer_;
};

int ChildConsumer::Run() {
  log_fd_ = open(absl::StrCat(run_dir_, "/events.log").c_str(),
                 O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (log_fd_ < 0) return 4;
  const std::optional<std::string> path = internal::SqlitePathOf(config_.store_uri);
  if (config_.mode == Mode::kLease) {
    absl::StatusOr<std::unique_ptr<DedupStore>> store = OpenSharedStore(config_);
    if (!store.ok()) {
      std::fprintf(stderr, "consumer: %s\n", store.status().ToString().c_str());
      return 5;
    }
    store_ = std::move(*store);
    absl::StatusOr<Processor> p = Processor::Create(
        *store_, scope_, ProcessorOptions{.lease = std::chrono::milliseconds(config_.lease_ms)});
    if (!p.ok()) return 5;
    processor_.emplace(std::move(*p));
  } else {
    if (!path) return 5;
    absl::StatusOr<internal::SqliteDb> db = internal::OpenConnection(*path, config_.synchronous);
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
  struct Item {
    uint64_t handle;
    int64_t message;
    Fault fault;
    uint64_t token = 0;
    bool ran = false;
  };
  std::vector<Item> items;
  std::vector<Message> messages;
  for (const auto& [handle, mf] : batch) {
    items.push_back({.handle = handle, .message = mf.first, .fault = mf.second});
    const SimMessage& m = workload_.messages[mf.first];
    messages.push_back(
        Message{.id = m.id, .payload = m.payload, .version = VersionStamp{m.key, m.version}});
    if (mf.second == Fault::kCrashBeforeClaim) {
      Log(absl::StrCat("FAULT ", mf.first, " 0 ", Sv(FaultName(mf.second))));
      Die();
    }
  }
  auto find = [&](std::string_view id) -> Item* {
    for (Item& it : items) {
      if (workload_.messages[it.message].id == id) return &it;
    }
    return nullptr;
  };
  auto run = [&](Item& it, uint64_t token, auto&& effect) {
    if (it.fault == Fault::kCrashAfterClaim) {
      Log(absl::StrCat("FAULT ", it.message, " ", token, " ", Sv(FaultName(it.fault))));
      Die();
    }
    it.token = token;
    it.ran = true;
    Log(absl::StrCat("RUN ", it.message, " ", token));
    effect();
    if (it.fault == Fault::kCrashAfterEffect) {
      Log(absl::StrCat("FAULT ", it.message, " ", token, " ", Sv(FaultName(it.fault))));
      Die();
    }
    if (it.fault == Fault::kPauseBeyondLease) {
      Log(absl::StrCat("FAULT ", it.message, " ", token, " ", Sv(FaultName(it.fault))));
      std::string paused = "P";
      for (const Item& other : items) absl::StrAppend(&paused, " ", other.handle);
      Send(paused);
      std::this_thread::sleep_for(std::chrono::milliseconds(config_.lease_ms * 3 / 2 + 1));
    }
  };

  std::vector<absl::StatusOr<ProcessResult>> results;
  if (config_.mode == Mode::kLease) {
    auto handler = [&](HandlerContext& hc) {
      Item* it = find(hc.message_id());
      if (it != nullptr) run(*it, hc.token(), [] {});
    };
    if (items.size() == 1 && config_.batch == 1) {
      results.push_back(processor_->Process(messages[0], handler));
    } else {
      results = processor_->ProcessBatch(messages, handler);
    }
  } else {
    Item& it = items[0];
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
  for (std::size_t i = 0; i < items.size(); ++i) {
    Item& it = items[i];
    const absl::StatusOr<ProcessResult>& r = results[i];
    if (it.ran) {
      if (r.ok()) {
        Log(absl::StrCat("DONE ", it.message, " ", it.token, " ", static_cast<int>(r->outcome)));
      } else {
        Log(absl::StrCat("FAULT ", it.message, " ", it.token, " completion_failed"));
      }
    }
  }
  for (const Item& it : items) {
    if (it.fault == Fault::kCrashAfterComplete) {
      Log(absl::StrCat("FAULT ", it.message, " ", it.token, " ", Sv(FaultName(it.fault))));
      Die();
    }
  }
  std::string answers;
  for (std::size_t i = 0; i < items.size(); ++i) {
    const absl::StatusOr<ProcessResult>& r = results[i];
    if (r.ok() && r->outcome != Outcome::kInProgress) {
      absl::StrAppend(&answers, "A ", items[i].handle, " ", static_cast<int>(r->outcome), "\n");
    } else {
      absl::StrAppend(&answers, "N ", items[i].handle, " ", r.ok() ? "in_progress" : "error", "\n");
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
      : config_(config), options_(options), workload_(GenerateWorkload(config)) {}
  absl::StatusOr<RunResult> Run();

 private:
  absl::Status Spawn(Slot& slot);
  void Reap(Slot& slot, int index);
  void OnLine(Slot& slot, const std::string& line);
  Report Judge(const std::vector<int64_t>& unacked);

  SimConfig config_;
  const RunOptions& options_;
  Workload workload_;
  std::string run_dir_;
  std::string db_path_;
  std::string scope_;
  std::unique_ptr<Broker> broker_;
  std::vector<Slot> slots_;
  Report report_;
  absl::flat_hash_map<int64_t, std::vector<Outcome>> acks_;
  int64_t restarts_ = 0;
  std::vector<std::string> child_errors_;
};

absl::Status ProcessRun::Spawn(Slot& slot) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    return absl::UnavailableError(absl::StrCat("socketpair: ", std::strerror(errno)));
  }
  std::vector<std::string> args;
  if (!options_.self_binary.empty()) {
    args = {options_.self_binary,
            absl::StrCat("--child_fd=", kChildFd),
            absl::StrCat("--child_dir=", run_dir_),
            absl::StrCat("--child_scope=", scope_),
            absl::StrCat("--store=", config_.store_uri),
            absl::StrCat("--mode=", Sv(ModeName(config_.mode))),
            absl::StrCat("--seed=", config_.seed),
            absl::StrCat("--messages=", config_.messages),
            absl::StrCat("--keys=", config_.keys),
            absl::StrFormat("--dup-rate=%.17g", config_.dup_rate),
            absl::StrFormat("--conflict-rate=%.17g", config_.conflict_rate),
            absl::StrCat("--reorder-window=", config_.reorder_window),
            absl::StrCat("--lease-ms=", config_.lease_ms),
            absl::StrCat("--batch=", config_.batch),
            absl::StrCat("--sqlite-synchronous=", Sv(SynchronousName(config_.synchronous)))};
  }
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
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
      execv(argv[0], argv.data());
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
    ++report_.crashes;
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
    if (broker_->Ack(*hand)) {
      const Outcome o = static_cast<Outcome>(outcome);
      acks_[hand->message].push_back(o);
    }
  } else if (f[0] == "N" && f.size() == 3) {
    std::optional<Hand> hand = take(f[1]);
    if (!hand) return;
    ++(f[2] == "in_progress" ? report_.in_progress : report_.store_errors);
    broker_->Redeliver(*hand, now + std::max<int64_t>(1, config_.lease_ms / 4));
  } else if (f[0] == "P") {
    // Paused beyond its lease: the visibility timeout hands its deliveries to others now. The
    // hand-outs stay with the slot (it will still answer them), but they are stale.
    for (const Hand& hand : slot.in_flight) broker_->Redeliver(hand, now);
  }
}

absl::StatusOr<RunResult> ProcessRun::Run() {
  const auto wall_start = std::chrono::steady_clock::now();
  absl::StatusOr<std::string> dir = internal::MakeTempDir(options_.work_dir);
  if (!dir.ok()) return dir.status();
  run_dir_ = *dir;
  std::string description;
  if (config_.store_uri.empty()) {
    db_path_ = absl::StrCat(run_dir_, "/idem-sim.db");
    config_.store_uri = absl::StrCat("sqlite://", db_path_);
  } else if (std::optional<std::string> path = internal::SqlitePathOf(config_.store_uri)) {
    db_path_ = *path;
  } else if (config_.mode == Mode::kTransactional) {
    internal::RemoveDir(run_dir_);
    return absl::InvalidArgumentError(
        "the transactional process profile needs a SQLite store shared by the consumer "
        "processes (--store=sqlite:///path/to.db)");
  }
  scope_ = internal::NewScope(config_.seed);
  if (db_path_.empty()) {
    // A server store (Redis): check it answers before starting consumers against it.
    absl::StatusOr<std::unique_ptr<DedupStore>> store = OpenSharedStore(config_);
    if (!store.ok()) return store.status();
    if ((*store)->BackendName() == "memory") {
      internal::RemoveDir(run_dir_);
      return absl::InvalidArgumentError(
          "the process profile needs a store the consumer processes share (sqlite: or redis:); "
          "memory: lives inside one process");
    }
  } else {
    // Create the schema before the consumers race to; closed again before any fork, because a
    // child exiting would drop this process's SQLite locks on the file.
    SqliteStoreOptions options;
    options.path = db_path_;
    options.synchronous = config_.synchronous;
    absl::StatusOr<std::unique_ptr<DedupStore>> store = NewSqliteStore(std::move(options));
    if (!store.ok()) return store.status();
    absl::StatusOr<internal::SqliteDb> db = internal::OpenConnection(db_path_, config_.synchronous);
    if (!db.ok()) return db.status();
    if (absl::Status s = internal::CreateEffectTable(db->get()); !s.ok()) return s;
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
        ++report_.deliveries;
        const Fault fault = PlanFault(config_, profile, hand.message, hand.copy, hand.attempt);
        absl::StrAppend(&line, line.size() > 1 ? ";" : " ", hand.handle, " ", hand.message, " ",
                        static_cast<int>(fault));
        if (fault != Fault::kNone) ++report_.faults[static_cast<int>(fault)];
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
  out.store_description =
      db_path_.empty() ? RedactUri(config_.store_uri) : absl::StrCat("sqlite://", db_path_);
  if (options_.keep_files || (options_.keep_files_on_failure && !out.report.passed())) {
    out.store_description += absl::StrCat(" (kept; logs in ", run_dir_, ")");
  } else {
    internal::RemoveDir(run_dir_);
  }
  return out;
}

Report ProcessRun::Judge(const std::vector<int64_t>& unacked) {
  Report r = report_;
  // Replays the durable log into per-run facts. Its order across processes is only roughly the
  // order of events, so every check here is a count, never a sequence.
  struct RunFacts {
    int64_t message = 0;
    bool committed = false;
    bool faulted = false;
  };
  absl::flat_hash_map<uint64_t, RunFacts> runs;
  std::vector<std::vector<uint64_t>> runs_of_id(workload_.distinct_ids);
  std::vector<std::vector<uint64_t>> commits_of_id(workload_.distinct_ids);
  std::vector<bool> committed_message(workload_.messages.size(), false);
  std::vector<bool> applied_message(workload_.messages.size(), false);
  std::vector<int> users_of_id(workload_.distinct_ids, 0);
  for (const SimMessage& m : workload_.messages) ++users_of_id[m.id_index];
  std::ifstream log(absl::StrCat(run_dir_, "/events.log"));
  std::string line;
  while (std::getline(log, line)) {
    std::vector<std::string> f = absl::StrSplit(line, ' ');
    int64_t message = 0;
    uint64_t token = 0;
    if (f.size() < 3 || !absl::SimpleAtoi(f[1], &message) || !absl::SimpleAtoi(f[2], &token) ||
        message < 0 || message >= static_cast<int64_t>(workload_.messages.size())) {
      continue;
    }
    const int64_t id = workload_.messages[message].id_index;
    if (f[0] == "RUN") {
      ++r.handler_runs;
      runs[token].message = message;
      runs_of_id[id].push_back(token);
    } else if (f[0] == "DONE") {
      runs[token].committed = true;
      if (config_.mode == Mode::kLease) {
        commits_of_id[id].push_back(token);
        committed_message[message] = true;
        int outcome = -1;
        if (f.size() > 3 && absl::SimpleAtoi(f[3], &outcome) &&
            outcome == static_cast<int>(Outcome::kProcessed)) {
          applied_message[message] = true;
        }
      }
    } else if (f[0] == "FAULT" && token != 0) {
      runs[token].faulted = true;
    }
  }
  internal::Oracle tx_oracle(workload_, config_.mode, /*exact_time=*/false);
  absl::flat_hash_map<std::string, uint64_t> applied;
  if (config_.mode == Mode::kTransactional) {
    absl::StatusOr<internal::SqliteDb> db = internal::OpenConnection(db_path_, config_.synchronous);
    absl::StatusOr<std::vector<internal::EffectRow>> rows =
        db.ok() ? internal::ReadEffects(db->get(), scope_)
                : absl::StatusOr<std::vector<internal::EffectRow>>(db.status());
    if (!rows.ok()) {
      ++r.lost;
      r.violations.push_back(rows.status().ToString());
    } else {
      for (const internal::EffectRow& row : *rows) {
        tx_oracle.EffectCommitted(row.message, row.version);
      }
    }
    for (const auto& [message, outcomes] : acks_) {
      for (Outcome o : outcomes) tx_oracle.Acked(message, o);
    }
    Report t = tx_oracle.Finish(unacked, nullptr);
    r.effects = t.effects;
    r.double_effects = t.double_effects;
    r.stale_applied = t.stale_applied;
    r.lost += t.lost;
    r.unacked = t.unacked;
    r.wrong_outcomes = t.wrong_outcomes;
    r.processed = t.processed;
    r.duplicates = t.duplicates;
    r.stale = t.stale;
    r.conflicts = t.conflicts;
    r.dead_lettered = t.dead_lettered;
    r.violations.insert(r.violations.end(), t.violations.begin(), t.violations.end());
  } else {
    for (int64_t id = 0; id < workload_.distinct_ids; ++id) {
      const std::vector<uint64_t>& commits = commits_of_id[id];
      r.effects += static_cast<int64_t>(commits.size());
      if (commits.size() > 1) {
        ++r.double_effects;
        r.violations.push_back(
            absl::StrFormat("I3/I4: id index %d completed %d times", id, commits.size()));
      }
      int64_t explained = 0;
      for (uint64_t token : runs_of_id[id]) {
        if (!runs[token].committed && runs[token].faulted) ++explained;
      }
      const int64_t count = static_cast<int64_t>(runs_of_id[id].size());
      if (count - 1 > explained) {
        r.unexplained += count - 1 - explained;
        r.violations.push_back(absl::StrFormat(
            "I3: id index %d ran %d times with %d recorded faults", id, count, explained));
      }
    }
    std::vector<bool> lost(workload_.messages.size(), false);
    for (int64_t message : unacked) {
      ++r.unacked;
      lost[message] = true;
    }
    // The version gate's final state, read back from the file.
    absl::StatusOr<std::unique_ptr<DedupStore>> store = OpenSharedStore(config_);
    absl::flat_hash_map<std::string, uint64_t> max_processed;
    for (std::size_t m = 0; m < workload_.messages.size(); ++m) {
      if (!applied_message[m]) continue;
      uint64_t& v = max_processed[workload_.messages[m].key];
      v = std::max(v, workload_.messages[m].version);
    }
    for (const auto& [message, outcomes] : acks_) {
      const SimMessage& m = workload_.messages[message];
      for (Outcome o : outcomes) {
        bool ok = true;
        switch (o) {
          case Outcome::kProcessed:
            ++r.processed;
            ok = committed_message[message];
            break;
          case Outcome::kDuplicate:
            ++r.duplicates;
            ok = committed_message[message];
            break;
          case Outcome::kStale: {
            ++r.stale;
            absl::StatusOr<std::optional<uint64_t>> v =
                store.ok() ? (*store)->AppliedVersion(scope_, m.key)
                           : absl::StatusOr<std::optional<uint64_t>>(store.status());
            ok = v.ok() && v->has_value() && **v >= m.version;
            break;
          }
          case Outcome::kConflict: {
            ++r.conflicts;
            ok = users_of_id[m.id_index] > 1;
            break;
          }
          case Outcome::kDeadLettered:
            ++r.dead_lettered;
            break;
          case Outcome::kInProgress:
            ok = false;
            break;
        }
        if (!ok) {
          ++r.wrong_outcomes;
          lost[message] = true;
        }
      }
    }
    r.lost += std::count(lost.begin(), lost.end(), true);
    if (store.ok()) {
      for (const std::string& key : workload_.keys) {
        absl::StatusOr<std::optional<uint64_t>> v = (*store)->AppliedVersion(scope_, key);
        auto it = max_processed.find(key);
        const bool applied_any = it != max_processed.end();
        if (!v.ok() || v->has_value() != applied_any || (applied_any && **v != it->second)) {
          ++r.stale_applied;
          r.violations.push_back(absl::StrCat("I5: the version gate of ", key,
                                              " disagrees with the completed versions"));
        }
      }
    }
  }
  for (const std::string& e : child_errors_) {
    r.violations.push_back(e);
    ++r.lost;
  }
  r.messages = static_cast<int64_t>(workload_.messages.size());
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
