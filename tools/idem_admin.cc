// idem-admin: what an operator needs to see what a store holds and to clean it up.
//
//   idem-admin --store URI inspect SCOPE ID     state, attempts, token, lease, fingerprint, result
//   idem-admin --store URI version SCOPE KEY    the version gate's applied version
//   idem-admin --store URI purge [--limit N]    delete expired records, print how many
//   idem-admin --store URI list SCOPE [--state S] [--max-attempts N] [--limit N] [--cursor C]
//       one page of records by state: all, in_progress, stuck (in progress past the lease),
//       released, dead_lettered (attempts >= --max-attempts, no live lease), completed. When
//       more follow, the last line is "next_cursor C": pass it as --cursor for the next page.
//   idem-admin --store URI release SCOPE ID TOKEN
//       frees a claim at once (a stuck one: its consumer died), fenced by the token that
//       inspect or list showed: refused if the claim changed since. Its owner's completion will
//       be refused; the next delivery claims it (attempts kept).
//   idem-admin --store URI reset SCOPE ID TOKEN
//       clears the attempt count of a dead-lettered (or stuck) record, fenced by its token, so
//       that the next delivery runs it again (attempt 1). Refused for a live claim or a
//       COMPLETED record.
//   idem-admin --store URI stats SCOPE [--max-attempts N]
//       how many records of SCOPE are in each state (walks the scope with list).
//
// --hex reads ID and KEY as hexadecimal, for binary ids. --json prints one JSON object instead
// of text (ids as "id", with bytes outside printable ASCII as \u00XX, and as "id_hex"; tokens as
// decimal strings, since they exceed JavaScript's exact integers). Exit codes: 0 done, 1 the
// store failed, refused the change, or the record is absent, 2 bad usage.
#include <cstdio>
#include <set>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "idem/open_store.h"

ABSL_FLAG(std::string, store, "",
          "store URI, e.g. sqlite:///var/lib/app/idem.db or redis://host:6379/0");
ABSL_FLAG(bool, hex, false, "read ID and KEY arguments as hexadecimal bytes");
ABSL_FLAG(int64_t, limit, 0,
          "purge: delete at most this many records (0: no limit); list: page size (0: 100)");
ABSL_FLAG(bool, json, false, "print one JSON object, for scripts");
ABSL_FLAG(std::string, state, "all",
          "list: all, in_progress, stuck, released, dead_lettered or completed");
ABSL_FLAG(int64_t, max_attempts, 0,
          "list --state dead_lettered, stats: the consumers' max_attempts (--max-attempts)");
ABSL_FLAG(std::string, cursor, "", "list: the next_cursor of the previous page");

namespace {

int Usage(const char* why) {
  std::fprintf(stderr, "idem-admin: %s\n%s\n", why,
               std::string(absl::ProgramUsageMessage()).c_str());
  return 2;
}

bool DecodeArg(const std::string& in, std::string* out) {
  if (!absl::GetFlag(FLAGS_hex)) {
    *out = in;
    return true;
  }
  if (in.size() % 2 != 0 || in.find_first_not_of("0123456789abcdefABCDEF") != std::string::npos) {
    return false;
  }
  *out = absl::HexStringToBytes(in);
  return true;
}

std::string Printable(std::string_view bytes) {
  return absl::StrFormat("\"%s\"", absl::CHexEscape(absl::string_view(bytes.data(), bytes.size())));
}

std::string Hex(std::string_view bytes) {
  return absl::BytesToHexString(absl::string_view(bytes.data(), bytes.size()));
}

// A JSON string of arbitrary bytes: printable ASCII as is (quote and backslash escaped), every
// other byte as \u00XX, so the output is valid JSON (pure ASCII) whatever the id holds.
std::string JsonString(std::string_view bytes) {
  std::string out = "\"";
  for (unsigned char c : bytes) {
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(c));
    } else if (c >= 0x20 && c < 0x7f) {
      out.push_back(static_cast<char>(c));
    } else {
      absl::StrAppendFormat(&out, "\\u%04x", c);
    }
  }
  out.push_back('"');
  return out;
}

std::string Token(uint64_t token) { return absl::StrCat(token); }

// The fields of a record, for --json (without the braces).
std::string RecordJson(std::string_view id, const idem::RecordInfo& r) {
  std::string out = absl::StrCat(
      "\"id\":", JsonString(id), ",\"id_hex\":\"", Hex(id), "\",\"state\":\"",
      std::string(idem::RecordStateName(r.state)), "\",\"attempts\":", r.attempts,
      ",\"token\":\"", Token(r.token), "\"");
  if (r.state == idem::RecordState::kInProgress) {
    absl::StrAppend(&out, ",\"lease_until_ms\":", r.lease_until_ms);
  }
  absl::StrAppend(&out, ",\"expires_at_ms\":", r.expires_at_ms, ",\"fingerprint\":",
                  r.fingerprint ? absl::StrCat("\"", r.fingerprint->ToHex(), "\"") : "null");
  if (r.result) {
    absl::StrAppend(&out, ",\"result\":", JsonString(*r.result), ",\"result_hex\":\"",
                    Hex(*r.result), "\"");
  } else {
    absl::StrAppend(&out, ",\"result\":null");
  }
  return out;
}

// Prints a store error and returns the exit code: 2 for a bad request, 1 otherwise.
int StoreError(const absl::Status& status) {
  if (absl::GetFlag(FLAGS_json)) {
    std::printf("{\"error\":%s,\"code\":\"%s\"}\n", JsonString(std::string(status.message())).c_str(),
                absl::StatusCodeToString(status.code()).c_str());
  }
  std::fprintf(stderr, "idem-admin: %s\n", status.ToString().c_str());
  return status.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
}

int Inspect(idem::DedupStore& store, const std::string& scope, const std::string& id) {
  auto info = store.Inspect(scope, id);
  if (!info.ok()) return StoreError(info.status());
  const bool json = absl::GetFlag(FLAGS_json);
  if (!info->has_value()) {
    std::printf(json ? "{\"found\":false}\n" : "absent\n");
    return 1;
  }
  const idem::RecordInfo& r = **info;
  if (json) {
    std::printf("{\"found\":true,%s}\n", RecordJson(id, r).c_str());
    return 0;
  }
  std::printf("state       %s\n", std::string(idem::RecordStateName(r.state)).c_str());
  std::printf("attempts    %u\n", r.attempts);
  std::printf("token       %llu\n", static_cast<unsigned long long>(r.token));
  if (r.state == idem::RecordState::kInProgress) {
    std::printf("lease_until %lld ms\n", static_cast<long long>(r.lease_until_ms));
  }
  std::printf("expires_at  %lld ms\n", static_cast<long long>(r.expires_at_ms));
  std::printf("fingerprint %s\n", r.fingerprint ? r.fingerprint->ToHex().c_str() : "-");
  std::printf("result      %s\n", r.result ? Printable(*r.result).c_str() : "-");
  return 0;
}

std::optional<uint32_t> MaxAttemptsFlag() {
  const int64_t n = absl::GetFlag(FLAGS_max_attempts);
  if (n < 0 || n > UINT32_MAX) return std::nullopt;
  return static_cast<uint32_t>(n);
}

int List(idem::DedupStore& store, const std::string& scope) {
  const std::optional<idem::ListFilter> filter =
      idem::ParseListFilter(absl::GetFlag(FLAGS_state));
  if (!filter) return Usage("--state must be one of all, in_progress, stuck, released, "
                            "dead_lettered, completed");
  const std::optional<uint32_t> max_attempts = MaxAttemptsFlag();
  if (!max_attempts) return Usage("--max-attempts must be within 0..2^32-1");
  const int64_t limit = absl::GetFlag(FLAGS_limit);
  if (limit < 0) return Usage("--limit must be >= 0");
  const std::string cursor = absl::GetFlag(FLAGS_cursor);
  auto page = store.List(idem::ListRequest{.scope = scope,
                                           .filter = *filter,
                                           .max_attempts = *max_attempts,
                                           .limit = limit == 0 ? 100 : static_cast<size_t>(limit),
                                           .cursor = cursor});
  if (!page.ok()) return StoreError(page.status());
  if (absl::GetFlag(FLAGS_json)) {
    std::string out = absl::StrCat("{\"scope\":", JsonString(scope), ",\"state\":\"",
                                   std::string(idem::ListFilterName(*filter)), "\",\"records\":[");
    for (std::size_t i = 0; i < page->records.size(); ++i) {
      absl::StrAppend(&out, i == 0 ? "" : ",", "{",
                      RecordJson(page->records[i].id, page->records[i].info), "}");
    }
    absl::StrAppend(&out, "],\"next_cursor\":",
                    page->next_cursor.empty() ? "null" : JsonString(page->next_cursor), "}");
    std::printf("%s\n", out.c_str());
    return 0;
  }
  for (const idem::ListedRecord& r : page->records) {
    std::printf("%s %s attempts=%u token=%llu", Printable(r.id).c_str(),
                std::string(idem::RecordStateName(r.info.state)).c_str(), r.info.attempts,
                static_cast<unsigned long long>(r.info.token));
    if (r.info.state == idem::RecordState::kInProgress) {
      std::printf(" lease_until=%lld", static_cast<long long>(r.info.lease_until_ms));
    }
    std::printf(" expires_at=%lld\n", static_cast<long long>(r.info.expires_at_ms));
  }
  if (!page->next_cursor.empty()) std::printf("next_cursor %s\n", page->next_cursor.c_str());
  return 0;
}

// release and reset: fenced by the token the operator read.
int Fenced(idem::DedupStore& store, const std::string& command, const std::string& scope,
           const std::string& id, const std::string& token_arg) {
  uint64_t token = 0;
  if (!absl::SimpleAtoi(token_arg, &token) || token == 0) {
    return Usage("TOKEN must be the decimal token that inspect or list showed");
  }
  const absl::Status status =
      command == "release" ? store.Release(scope, id, token) : store.ResetAttempts(scope, id, token);
  if (!status.ok()) {
    if (status.code() == absl::StatusCode::kAborted) {
      std::fprintf(stderr,
                   "idem-admin: %s refused: the record no longer holds token %s (it changed "
                   "since it was read); inspect it again\n",
                   command.c_str(), token_arg.c_str());
    }
    return StoreError(status);
  }
  if (absl::GetFlag(FLAGS_json)) {
    std::printf("{\"%s\":true,\"id\":%s,\"id_hex\":\"%s\"}\n",
                command == "release" ? "released" : "reset", JsonString(id).c_str(),
                Hex(id).c_str());
  } else {
    std::printf("%s %s\n", command == "release" ? "released" : "reset", Printable(id).c_str());
  }
  return 0;
}

int Stats(idem::DedupStore& store, const std::string& scope) {
  const std::optional<uint32_t> max_attempts = MaxAttemptsFlag();
  if (!max_attempts) return Usage("--max-attempts must be within 0..2^32-1");
  std::vector<idem::ListFilter> filters = {idem::ListFilter::kAll, idem::ListFilter::kInProgress,
                                           idem::ListFilter::kStuck, idem::ListFilter::kReleased,
                                           idem::ListFilter::kCompleted};
  if (*max_attempts > 0) filters.push_back(idem::ListFilter::kDeadLettered);
  std::vector<std::pair<std::string, uint64_t>> counts;
  for (idem::ListFilter filter : filters) {
    uint64_t n = 0;
    std::string cursor;
    do {
      auto page = store.List(idem::ListRequest{.scope = scope,
                                               .filter = filter,
                                               .max_attempts = *max_attempts,
                                               .limit = 10'000,
                                               .cursor = cursor});
      if (!page.ok()) return StoreError(page.status());
      n += page->records.size();
      cursor = page->next_cursor;
    } while (!cursor.empty());
    counts.emplace_back(filter == idem::ListFilter::kAll ? "records"
                                                         : std::string(idem::ListFilterName(filter)),
                        n);
  }
  if (absl::GetFlag(FLAGS_json)) {
    std::string out = absl::StrCat("{\"scope\":", JsonString(scope));
    for (const auto& [name, n] : counts) absl::StrAppend(&out, ",\"", name, "\":", n);
    std::printf("%s}\n", out.c_str());
  } else {
    for (const auto& [name, n] : counts) {
      std::printf("%-13s %llu\n", name.c_str(), static_cast<unsigned long long>(n));
    }
  }
  return 0;
}

// abseil ends on an unknown flag with exit status 1, which here means "the store failed"; a usage
// error is 2, so flags are checked before abseil parses them. --max-attempts is the spelling
// operators type; abseil knows it as --max_attempts.
bool KnownFlags(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--") break;
    if (arg.size() < 2 || arg[0] != '-') continue;
    arg.remove_prefix(arg[1] == '-' ? 2 : 1);
    const std::string_view name = arg.substr(0, arg.find('='));
    static const std::set<std::string_view> kKnown = {
        "store", "hex",   "nohex",        "limit",        "json",   "nojson", "state",
        "cursor", "max_attempts", "max-attempts", "help", "helpfull"};
    if (!kKnown.contains(name)) {
      std::fprintf(stderr, "idem-admin: unknown flag --%.*s\n", static_cast<int>(name.size()),
                   name.data());
      return false;
    }
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "inspect and clean up an idem store\n"
      "  idem-admin --store URI [--json] inspect SCOPE ID\n"
      "  idem-admin --store URI [--json] version SCOPE KEY\n"
      "  idem-admin --store URI [--json] purge [--limit N]\n"
      "  idem-admin --store URI [--json] list SCOPE [--state S] [--max-attempts N] [--limit N] "
      "[--cursor C]\n"
      "  idem-admin --store URI [--json] release SCOPE ID TOKEN\n"
      "  idem-admin --store URI [--json] reset SCOPE ID TOKEN\n"
      "  idem-admin --store URI [--json] stats SCOPE [--max-attempts N]");
  if (!KnownFlags(argc, argv)) return Usage("bad flag");
  std::vector<std::string> respelled;
  std::vector<char*> argv2(argv, argv + argc);
  respelled.reserve(argc);
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--") break;
    // KnownFlags accepts one dash or two, as abseil does; respell both forms.
    const std::size_t dashes = arg.starts_with("--") ? 2 : arg.starts_with("-") ? 1 : 0;
    if (dashes > 0 && arg.substr(dashes).starts_with("max-attempts")) {
      respelled.push_back("--max_attempts" + std::string(arg.substr(dashes + 12)));
      argv2[i] = respelled.back().data();
    }
  }
  std::vector<char*> args = absl::ParseCommandLine(argc, argv2.data());
  if (args.size() < 2) return Usage("missing command");
  const std::string uri = absl::GetFlag(FLAGS_store);
  if (uri.empty()) return Usage("--store is required");
  const std::string command = args[1];

  auto store = idem::OpenStore(uri);
  if (!store.ok()) {
    std::fprintf(stderr, "idem-admin: cannot open %s: %s\n", idem::RedactUri(uri).c_str(),
                 store.status().ToString().c_str());
    return store.status().code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
  }
  const bool json = absl::GetFlag(FLAGS_json);

  if (command == "inspect" || command == "version") {
    if (args.size() != 4) return Usage("expected SCOPE and ID/KEY");
    std::string id;
    if (!DecodeArg(args[3], &id)) return Usage("--hex argument is not hexadecimal");
    if (command == "inspect") return Inspect(**store, args[2], id);
    auto version = (*store)->AppliedVersion(args[2], id);
    if (!version.ok()) return StoreError(version.status());
    if (!version->has_value()) {
      std::printf(json ? "{\"version\":null}\n" : "no version applied\n");
      return 1;
    }
    // A decimal string in JSON: versions span the whole uint64 range.
    std::printf(json ? "{\"version\":\"%llu\"}\n" : "%llu\n",
                static_cast<unsigned long long>(**version));
    return 0;
  }
  if (command == "purge") {
    if (args.size() != 2) return Usage("purge takes no arguments");
    auto purged = (*store)->PurgeExpired(absl::GetFlag(FLAGS_limit));
    if (!purged.ok()) return StoreError(purged.status());
    std::printf(json ? "{\"purged\":%lld}\n" : "purged %lld\n", static_cast<long long>(*purged));
    return 0;
  }
  if (command == "list") {
    if (args.size() != 3) return Usage("expected SCOPE");
    return List(**store, args[2]);
  }
  if (command == "stats") {
    if (args.size() != 3) return Usage("expected SCOPE");
    return Stats(**store, args[2]);
  }
  if (command == "release" || command == "reset") {
    if (args.size() != 5) return Usage("expected SCOPE, ID and TOKEN");
    std::string id;
    if (!DecodeArg(args[3], &id)) return Usage("--hex argument is not hexadecimal");
    return Fenced(**store, command, args[2], id, args[4]);
  }
  return Usage("unknown command");
}
