#include "streams_harness.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"

namespace idem::streams_harness {

using std::chrono::milliseconds;

RedisClient::RedisClient(int port) : ctx_(redisConnect("127.0.0.1", port), &redisFree) {}

ReplyPtr RedisClient::Cmd(const std::vector<std::string>& args) {
  if (!ok()) return nullptr;
  std::vector<const char*> argv;
  std::vector<size_t> lens;
  for (const std::string& a : args) {
    argv.push_back(a.data());
    lens.push_back(a.size());
  }
  return ReplyPtr(static_cast<redisReply*>(
      redisCommandArgv(ctx_.get(), static_cast<int>(args.size()), argv.data(), lens.data())));
}

long long RedisClient::Int(const std::vector<std::string>& args) {
  ReplyPtr r = Cmd(args);
  return r != nullptr && r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
}

std::string RedisClient::Add(const std::string& stream, const std::vector<std::string>& fields) {
  std::vector<std::string> args = {"XADD", stream, "*"};
  args.insert(args.end(), fields.begin(), fields.end());
  ReplyPtr r = Cmd(args);
  return r != nullptr && r->type == REDIS_REPLY_STRING ? std::string(r->str, r->len) : "";
}

std::vector<std::pair<std::string, std::map<std::string, std::string>>> RedisClient::Range(
    const std::string& stream) {
  std::vector<std::pair<std::string, std::map<std::string, std::string>>> out;
  ReplyPtr r = Cmd({"XRANGE", stream, "-", "+"});
  if (r == nullptr || r->type != REDIS_REPLY_ARRAY) return out;
  for (size_t i = 0; i < r->elements; ++i) {
    const redisReply* e = r->element[i];
    std::map<std::string, std::string> fields;
    const redisReply* f = e->element[1];
    for (size_t k = 0; k + 1 < f->elements; k += 2) {
      fields[std::string(f->element[k]->str, f->element[k]->len)] =
          std::string(f->element[k + 1]->str, f->element[k + 1]->len);
    }
    out.emplace_back(std::string(e->element[0]->str, e->element[0]->len), std::move(fields));
  }
  return out;
}

long long RedisClient::Pending(const std::string& stream, const std::string& group) {
  ReplyPtr r = Cmd({"XPENDING", stream, group});
  if (r == nullptr || r->type != REDIS_REPLY_ARRAY || r->elements < 1) return -1;
  return r->element[0]->integer;
}

std::vector<Spec> MakeSpecs(int ids, int duplicates, int conflicts, int poison) {
  std::vector<Spec> specs;
  for (int i = 0; i < ids; ++i) {
    specs.push_back({absl::StrCat("m", i), {"body", absl::StrCat("p", i)}});
  }
  // Each duplicate lands three entries after an earlier copy: close enough that both copies are
  // often in flight at once (one finds the other's claim: kInProgress).
  for (int i = 0; i < duplicates; ++i) {
    const int j = i * 6;
    specs.insert(specs.begin() + j + 3, Spec{absl::StrCat("m", j), {"body", absl::StrCat("p", j)},
                                             Spec::kDuplicate});
  }
  for (int i = 0; i < conflicts; ++i) {
    const int j = 7 + i * 37;
    specs.push_back({absl::StrCat("m", j), {"body", "other"}, Spec::kConflict});
  }
  for (int i = 0; i < poison; ++i) {
    specs.insert(specs.begin() + 20 + i * 40,
                 Spec{absl::StrCat("x", i), {"body", "?", "poison", "1"}, Spec::kPoison});
  }
  return specs;
}

ConsumerFleet::ConsumerFleet(FleetOptions options)
    : options_(std::move(options)), rng_(options_.seed) {}

ConsumerFleet::~ConsumerFleet() {
  for (pid_t pid : alive_) {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
  }
}

pid_t ConsumerFleet::Spawn() {
  std::vector<std::string> args = options_.worker_prefix;
  for (std::string a : {std::to_string(options_.port), options_.stream, options_.group,
                        absl::StrCat("c", next_++), options_.mode, options_.path,
                        std::to_string(options_.lease_ms), std::to_string(options_.max_attempts)}) {
    args.push_back(std::move(a));
  }
  if (!options_.delivery_log.empty()) args.push_back(options_.delivery_log);
  // argv is built before fork: the child only calls execv (async-signal-safe after fork).
  std::vector<char*> argv;
  argv.push_back(options_.worker.data());
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    execv(options_.worker.c_str(), argv.data());
    _exit(127);
  }
  if (pid > 0) alive_.push_back(pid);
  return pid;
}

void ConsumerFleet::KillOne() {
  if (alive_.empty()) return;
  std::uniform_int_distribution<size_t> pick(0, alive_.size() - 1);
  const size_t i = pick(rng_);
  const pid_t pid = alive_[i];
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  killed_.insert(pid);
  alive_.erase(alive_.begin() + static_cast<long>(i));
  Spawn();
}

std::vector<std::string> ConsumerFleet::Run(RedisClient& redis, const std::vector<Spec>& specs,
                                            int consumers, int kills) {
  std::vector<std::string> problems;
  for (int i = 0; i < consumers; ++i) Spawn();
  // Three chunks of entries; a quarter of the kills after each of the first two, the rest after
  // the last, while the consumers work through them.
  const size_t chunk = (specs.size() + 2) / 3;
  int done_kills = 0;
  std::uniform_int_distribution<long> pause(options_.kill_pause_min.count(),
                                            options_.kill_pause_max.count());
  for (size_t i = 0; i < specs.size(); i += chunk) {
    for (size_t k = i; k < std::min(specs.size(), i + chunk); ++k) {
      std::vector<std::string> fields = {"id", specs[k].id};
      fields.insert(fields.end(), specs[k].fields.begin(), specs[k].fields.end());
      entry_ids_.push_back(redis.Add(options_.stream, fields));
      if (entry_ids_.back().empty()) {
        problems.push_back(absl::StrCat("XADD of ", specs[k].id, " failed"));
        return problems;
      }
    }
    const int kills_now = i + chunk >= specs.size() ? kills - done_kills : kills / 4;
    for (int k = 0; k < kills_now; ++k) {
      std::this_thread::sleep_for(milliseconds(pause(rng_)));
      KillOne();
      ++done_kills;
    }
  }
  const auto deadline = std::chrono::steady_clock::now() + options_.drain_timeout;
  const auto drained = [&] {
    return redis.Pending(options_.stream, options_.group) == 0 &&
           redis.Int({"XLEN", options_.stream + ":outcomes"}) >=
               static_cast<long long>(specs.size());
  };
  while (std::chrono::steady_clock::now() < deadline && !drained()) {
    std::this_thread::sleep_for(milliseconds(100));
  }
  if (!drained()) {
    problems.push_back(absl::StrCat("not drained after ", options_.drain_timeout.count(), " s"));
  }
  for (pid_t pid : alive_) kill(pid, SIGTERM);
  for (pid_t pid : alive_) {
    int status = 0;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      problems.push_back(absl::StrCat("consumer pid ", pid, " did not stop cleanly (status ",
                                      status, ")"));
    }
  }
  alive_.clear();
  if (done_kills != kills) {
    problems.push_back(absl::StrCat(done_kills, " kills instead of ", kills));
  }
  return problems;
}

StreamReport CheckStreams(RedisClient& redis, const std::string& stream,
                          const std::vector<std::string>& entry_ids,
                          const std::vector<Spec>& specs) {
  StreamReport r;
  auto& v = r.violations;
  std::map<std::string, int> count;
  for (const auto& [id, f] : redis.Range(stream + ":outcomes")) {
    ++r.outcome_records;
    r.outcome[f.at("entry")] = f.at("outcome");
    ++count[f.at("entry")];
  }
  r.pending = redis.Pending(stream, "g");
  if (r.pending != 0) v.push_back(absl::StrCat(r.pending, " entries still pending"));
  if (r.outcome.size() != specs.size()) {
    v.push_back(absl::StrCat(r.outcome.size(), " entries with an outcome, ", specs.size(),
                             " produced"));
  }
  if (entry_ids.size() != specs.size()) {
    v.push_back(absl::StrCat(entry_ids.size(), " entries produced of ", specs.size()));
    return r;
  }
  for (const std::string& e : entry_ids) {
    if (count[e] != 1) v.push_back(absl::StrCat("entry ", e, ": ", count[e], " final outcomes"));
  }

  std::map<std::string, std::string> dead;  // entry -> reason
  for (const auto& [id, f] : redis.Range(stream + ":dead-letter")) {
    ++r.dead_letters;
    if (dead.count(f.at("idem_source_id")) != 0) {
      v.push_back(absl::StrCat("entry ", f.at("idem_source_id"), " dead-lettered twice"));
    }
    dead[f.at("idem_source_id")] = f.at("idem_reason");
  }
  // Looked up without inserting: the size of `dead` is checked at the end.
  const auto reason = [&dead](const std::string& e) -> std::string {
    auto it = dead.find(e);
    return it == dead.end() ? "" : it->second;
  };
  for (const auto& [e, o] : r.outcome) {
    if (o == "processed") {
      ++r.processed;
    } else if (o == "duplicate") {
      ++r.duplicates;
    } else if (o == "conflict") {
      ++r.conflicts;
    } else if (o == "dead_lettered") {
      ++r.dead_lettered;
    } else {
      ++r.other;
    }
  }
  std::map<std::string, std::vector<size_t>> by_id;
  for (size_t k = 0; k < specs.size(); ++k) by_id[specs[k].id].push_back(k);
  for (size_t k = 0; k < specs.size(); ++k) {
    const std::string& e = entry_ids[k];
    if (specs[k].kind != Spec::kPoison) continue;
    ++r.expected_dead_letters;
    if (reason(e) != "max_attempts") {
      v.push_back(absl::StrCat(specs[k].id, ": dead-letter reason '", reason(e), "'"));
    }
    if (r.outcome[e] != "dead_lettered") {
      v.push_back(absl::StrCat(specs[k].id, ": poison entry's outcome '", r.outcome[e], "'"));
    }
  }
  for (const auto& [id, ks] : by_id) {
    int processed = 0, conflicts = 0;
    bool has_conflict = false;
    for (size_t k : ks) {
      const std::string& e = entry_ids[k];
      if (specs[k].kind == Spec::kPoison) continue;
      has_conflict |= specs[k].kind == Spec::kConflict;
      const std::string& o = r.outcome[e];
      if (o == "processed") ++processed;
      if (o == "conflict") {
        ++conflicts;
        if (reason(e) != "conflict") {
          v.push_back(absl::StrCat(id, ": conflict dead-lettered as '", reason(e), "'"));
        }
      } else {
        if (o != "processed" && o != "duplicate") v.push_back(absl::StrCat(id, ": outcome ", o));
        if (dead.count(e) != 0) v.push_back(absl::StrCat(id, ": dead-lettered without cause"));
      }
    }
    if (processed > 1) v.push_back(absl::StrCat(id, ": processed ", processed, " times"));
    if (has_conflict) {
      // One of the two payloads lost: exactly one dead letter.
      if (conflicts != 1) v.push_back(absl::StrCat(id, ": ", conflicts, " conflicts, expected 1"));
      ++r.expected_dead_letters;
    } else if (conflicts != 0) {
      v.push_back(absl::StrCat(id, ": a conflict without a conflicting payload"));
    }
  }
  if (dead.size() != r.expected_dead_letters) {
    v.push_back(absl::StrCat(dead.size(), " dead letters, expected ", r.expected_dead_letters));
  }
  return r;
}

LedgerReport CheckLedger(const std::string& ledger_path, const std::vector<Spec>& specs,
                         const std::set<pid_t>& killed, DedupStore& store,
                         std::string_view scope) {
  LedgerReport r;
  std::map<std::string, std::vector<std::pair<uint64_t, pid_t>>> runs;
  std::ifstream in(ledger_path);
  std::string id;
  uint64_t token = 0;
  pid_t pid = 0;
  while (in >> id >> token >> pid) {
    runs[id].push_back({token, pid});
    ++r.runs;
  }
  std::set<std::string> seen;
  for (const Spec& s : specs) {
    if (!seen.insert(s.id).second) continue;
    if (s.kind == Spec::kPoison) {
      if (runs.count(s.id) != 0) r.violations.push_back(absl::StrCat(s.id, ": poison entry ran"));
      continue;
    }
    const auto& rs = runs[s.id];
    if (rs.empty()) {
      r.violations.push_back(absl::StrCat(s.id, " never ran"));
      continue;
    }
    absl::StatusOr<std::optional<RecordInfo>> info = store.Inspect(scope, s.id);
    if (!info.ok() || !info->has_value()) {
      r.violations.push_back(absl::StrCat(s.id, ": no record (",
                                          info.ok() ? "absent" : info.status().ToString(), ")"));
      continue;
    }
    if ((*info)->state != RecordState::kCompleted) {
      r.violations.push_back(absl::StrCat(s.id, ": record not completed"));
    }
    if ((*info)->token != rs.back().first) {
      r.violations.push_back(absl::StrCat(s.id, ": a run after the completion"));
    }
    for (size_t k = 0; k + 1 < rs.size(); ++k) {
      ++r.extra_runs;
      if (killed.count(rs[k].second) == 0) {
        ++r.unexplained;
        r.violations.push_back(
            absl::StrCat(s.id, ": ran again after a run in pid ", rs[k].second, ", never killed"));
      }
    }
  }
  return r;
}

DeliveryReport ReadDeliveryLog(const std::string& path) {
  DeliveryReport r;
  std::ifstream in(path);
  std::string entry, outcome;
  int reclaimed = 0;
  pid_t pid = 0;
  while (in >> entry >> outcome >> reclaimed >> pid) {
    ++r.deliveries;
    if (reclaimed != 0) ++r.reclaimed;
    ++r.by_outcome[outcome];
  }
  return r;
}

}  // namespace idem::streams_harness
