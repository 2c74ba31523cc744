// idem-admin: what an operator needs to see what a store holds and to clean it up.
//
//   idem-admin --store URI inspect SCOPE ID     state, attempts, lease, fingerprint, result
//   idem-admin --store URI version SCOPE KEY    the version gate's applied version
//   idem-admin --store URI purge [--limit N]    delete expired records, print how many
//
// --hex reads ID and KEY as hexadecimal, for binary ids. Exit codes: 0 done, 1 the store failed
// or the record is absent, 2 bad usage.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_format.h"
#include "idem/open_store.h"

ABSL_FLAG(std::string, store, "",
          "store URI, e.g. sqlite:///var/lib/app/idem.db or redis://host:6379/0");
ABSL_FLAG(bool, hex, false, "read ID and KEY arguments as hexadecimal bytes");
ABSL_FLAG(int64_t, limit, 0, "purge: delete at most this many records (0: no limit)");

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

}  // namespace

// abseil ends on an unknown flag with exit status 1, which here means "the store failed"; a usage
// error is 2, so flags are checked before abseil parses them.
bool KnownFlags(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--") break;
    if (arg.size() < 2 || arg[0] != '-') continue;
    arg.remove_prefix(arg[1] == '-' ? 2 : 1);
    const std::string_view name = arg.substr(0, arg.find('='));
    if (name != "store" && name != "hex" && name != "nohex" && name != "limit" && name != "help" &&
        name != "helpfull") {
      std::fprintf(stderr, "idem-admin: unknown flag --%.*s\n", static_cast<int>(name.size()),
                   name.data());
      return false;
    }
  }
  return true;
}

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "inspect and clean up an idem store\n"
      "  idem-admin --store URI inspect SCOPE ID\n"
      "  idem-admin --store URI version SCOPE KEY\n"
      "  idem-admin --store URI purge [--limit N]");
  if (!KnownFlags(argc, argv)) return Usage("bad flag");
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
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

  if (command == "inspect" || command == "version") {
    if (args.size() != 4) return Usage("expected SCOPE and ID/KEY");
    std::string id;
    if (!DecodeArg(args[3], &id)) return Usage("--hex argument is not hexadecimal");
    if (command == "version") {
      auto version = (*store)->AppliedVersion(args[2], id);
      if (!version.ok()) {
        std::fprintf(stderr, "idem-admin: %s\n", version.status().ToString().c_str());
        return version.status().code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
      }
      if (!version->has_value()) {
        std::printf("no version applied\n");
        return 1;
      }
      std::printf("%llu\n", static_cast<unsigned long long>(**version));
      return 0;
    }
    auto info = (*store)->Inspect(args[2], id);
    if (!info.ok()) {
      std::fprintf(stderr, "idem-admin: %s\n", info.status().ToString().c_str());
      return info.status().code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
    }
    if (!info->has_value()) {
      std::printf("absent\n");
      return 1;
    }
    const idem::RecordInfo& r = **info;
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
  if (command == "purge") {
    if (args.size() != 2) return Usage("purge takes no arguments");
    auto purged = (*store)->PurgeExpired(absl::GetFlag(FLAGS_limit));
    if (!purged.ok()) {
      std::fprintf(stderr, "idem-admin: %s\n", purged.status().ToString().c_str());
      return 1;
    }
    std::printf("purged %lld\n", static_cast<long long>(*purged));
    return 0;
  }
  return Usage("unknown command");
}
