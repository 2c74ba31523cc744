#include "pg_test_util.h"

#include <libpq-fe.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "gtest/gtest.h"

namespace idem::testing {
namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  std::string out = text.str();
  absl::StripTrailingAsciiWhitespace(&out);
  return out;
}

}  // namespace

std::string FixtureState() {
  const char* env = std::getenv("IDEM_PG_TEST_STATE");
  if (env == nullptr || *env == '\0') {
    ADD_FAILURE() << "IDEM_PG_TEST_STATE is not set: run the PostgreSQL tests through ctest, which "
                     "starts the fixture's server (ctest -L postgres)";
    return "";
  }
  return env;
}

int FixturePort() {
  int port = 0;
  if (!absl::SimpleAtoi(ReadFile(FixtureState() + "/port"), &port) || port <= 0) {
    ADD_FAILURE() << "the fixture's server is not running (no port in " << FixtureState() << ")";
  }
  return port;
}

std::string FixtureUri() {
  return absl::StrCat("postgresql://postgres@127.0.0.1:", FixturePort(), "/idem_test");
}

std::string FixtureConninfo() { return FixtureUri(); }

std::string UniqueSchema() {
  static std::atomic<int> counter{0};
  return absl::StrCat("t", getpid(), "_", counter.fetch_add(1));
}

absl::StatusOr<std::string> PgQuery(const std::string& conninfo, const std::string& sql) {
  PGconn* conn = PQconnectdb(conninfo.c_str());
  if (PQstatus(conn) != CONNECTION_OK) {
    std::string message = PQerrorMessage(conn);
    PQfinish(conn);
    return absl::UnavailableError(message);
  }
  PGresult* result = PQexec(conn, sql.c_str());
  const ExecStatusType status = PQresultStatus(result);
  absl::StatusOr<std::string> out;
  if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK) {
    out = absl::InternalError(PQresultErrorMessage(result));
  } else if (status == PGRES_TUPLES_OK && PQntuples(result) > 0) {
    out = std::string(PQgetvalue(result, 0, 0));
  } else {
    out = std::string();
  }
  PQclear(result);
  PQfinish(conn);
  return out;
}

absl::Status RunServerScript(const std::string& args) {
  const std::string script = ReadFile(FixtureState() + "/script");
  const std::string command = absl::StrCat("sh '", script, "' ", args);
  const int rc = std::system(command.c_str());
  if (rc != 0) return absl::InternalError(absl::StrCat("'", command, "' exited with ", rc));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<OwnPgServer>> OwnPgServer::Start(int offset) {
  const int port = FixturePort() + offset;
  const std::string state = absl::StrCat(FixtureState(), "-own", offset);
  if (absl::Status s = RunServerScript(absl::StrCat("start ", port, " '", state, "'")); !s.ok()) {
    return s;
  }
  return std::unique_ptr<OwnPgServer>(new OwnPgServer(port, state));
}

OwnPgServer::~OwnPgServer() { (void)RunServerScript(absl::StrCat("stop '", state_, "'")); }

absl::Status OwnPgServer::Crash() { return RunServerScript(absl::StrCat("crash '", state_, "'")); }

absl::Status OwnPgServer::Restart() {
  return RunServerScript(absl::StrCat("restart '", state_, "'"));
}

std::string OwnPgServer::Uri() const {
  return absl::StrCat("postgresql://postgres@127.0.0.1:", port_, "/idem_test");
}

std::string OwnPgServer::Conninfo() const { return Uri(); }

}  // namespace idem::testing
