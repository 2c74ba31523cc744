#include "event_log.h"

#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace idem::sim::internal {

void EventLogWriter::Write(std::string line) {
  line.push_back('\n');
  std::string_view data = line;
  while (!data.empty()) {
    const ssize_t n = write(fd_, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return;  // the broker finds the event missing and judges the run by what it has
    }
    data.remove_prefix(static_cast<std::size_t>(n));
  }
}

void EventLogWriter::ClaimApplied(int64_t message, const ClaimResult& result, int64_t now_ms) {
  Write(absl::StrCat("CLAIM ", message, " ", static_cast<int>(result.status), " ", result.token,
                     " ", result.lease_until_ms, " ", now_ms));
}

void EventLogWriter::ClaimReturned(uint64_t token) { Write(absl::StrCat("RETURNED ", token)); }

void EventLogWriter::CompleteApplied(int64_t message, uint64_t token,
                                     const std::optional<VersionStamp>& version,
                                     const absl::StatusOr<CompleteStatus>& result, int64_t now_ms) {
  Write(absl::StrCat("COMPLETE ", message, " ", token, " ", version.has_value() ? 1 : 0, " ",
                     static_cast<int>(result.status().code()), " ",
                     result.ok() ? static_cast<int>(*result) : 0, " ", now_ms));
}

void EventLogWriter::ReleaseApplied(int64_t message, uint64_t token, const absl::Status& status) {
  Write(absl::StrCat("RELEASE ", message, " ", token, " ", static_cast<int>(status.code())));
}

void EventLogWriter::HandlerRan(int64_t message, uint64_t token, int64_t now_ms) {
  Write(absl::StrCat("RUN ", message, " ", token, " ", now_ms));
}

void EventLogWriter::FaultInjected(int64_t message, uint64_t token, Fault fault) {
  Write(absl::StrCat("FAULT ", message, " ", token, " ", static_cast<int>(fault)));
}

void EventLogWriter::RunFaulted(uint64_t token) { Write(absl::StrCat("FAULTED ", token)); }

absl::Status ReplayEventLog(const std::string& path, const Workload& workload, EventSink& sink) {
  std::ifstream log(path);
  if (!log) return absl::NotFoundError(absl::StrCat("cannot read the event log ", path));
  std::string line;
  int64_t number = 0;
  while (std::getline(log, line)) {
    ++number;
    const std::vector<absl::string_view> f = absl::StrSplit(line, ' ');
    std::vector<int64_t> n(f.size(), 0);
    std::vector<uint64_t> u(f.size(), 0);
    bool parsed = !f.empty();
    for (std::size_t i = 1; i < f.size() && parsed; ++i) {
      // Tokens are unsigned 64-bit (a sabotaged store forges them with the top bit set); the
      // other fields are small and non-negative.
      if (absl::SimpleAtoi(f[i], &u[i])) {
        n[i] = static_cast<int64_t>(u[i]);
      } else {
        parsed = false;
      }
    }
    auto bad = [&] {
      return absl::DataLossError(
          absl::StrCat("event log ", path, " line ", number, " is malformed: ", line));
    };
    if (!parsed) return bad();
    const std::string_view kind(f[0].data(), f[0].size());
    auto message_ok = [&](std::size_t i) {
      return f.size() > i && n[i] >= 0 && n[i] < static_cast<int64_t>(workload.messages.size());
    };
    if (kind == "CLAIM" && f.size() == 6 && message_ok(1)) {
      ClaimResult r;
      r.status = static_cast<ClaimStatus>(n[2]);
      r.token = u[3];
      r.lease_until_ms = n[4];
      sink.ClaimApplied(n[1], r, n[5]);
    } else if (kind == "RETURNED" && f.size() == 2) {
      sink.ClaimReturned(u[1]);
    } else if (kind == "COMPLETE" && f.size() == 7 && message_ok(1)) {
      const SimMessage& m = workload.messages[n[1]];
      std::optional<VersionStamp> version;
      if (n[3] != 0) version = VersionStamp{m.key, m.version};
      absl::StatusOr<CompleteStatus> result = static_cast<CompleteStatus>(n[5]);
      if (n[4] != 0) {
        result = absl::Status(static_cast<absl::StatusCode>(n[4]), "as logged by a consumer");
      }
      sink.CompleteApplied(n[1], u[2], version, result, n[6]);
    } else if (kind == "RELEASE" && f.size() == 4 && message_ok(1)) {
      sink.ReleaseApplied(n[1], u[2],
                          absl::Status(static_cast<absl::StatusCode>(n[3]),
                                       n[3] == 0 ? "" : "as logged by a consumer"));
    } else if (kind == "RUN" && f.size() == 4 && message_ok(1)) {
      sink.HandlerRan(n[1], u[2], n[3]);
    } else if (kind == "FAULT" && f.size() == 4 && message_ok(1) && n[3] > 0 &&
               n[3] < static_cast<int64_t>(Fault::kCount)) {
      sink.FaultInjected(n[1], u[2], static_cast<Fault>(n[3]));
    } else if (kind == "FAULTED" && f.size() == 2) {
      sink.RunFaulted(u[1]);
    } else {
      return bad();
    }
  }
  return absl::OkStatus();
}

}  // namespace idem::sim::internal
