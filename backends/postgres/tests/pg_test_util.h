// Test support for the PostgreSQL backend: where the CTest fixture's server is, fresh schemas per
// test, plain SQL on a connection of the test's own, and servers and pgbouncers that a test
// starts, crashes and restarts itself (through pg_server.sh, stopped by PID).
//
// The fixture's state directory comes from $IDEM_PG_TEST_STATE (set by CTest). Servers of a test's
// own use the fixture's port + 1..9, each test a different offset, so `ctest -j` never puts two
// servers on one port.
#ifndef IDEM_BACKENDS_POSTGRES_TESTS_PG_TEST_UTIL_H_
#define IDEM_BACKENDS_POSTGRES_TESTS_PG_TEST_UTIL_H_

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace idem::testing {

// The fixture's state directory; fails the test (returns "") when $IDEM_PG_TEST_STATE is unset.
std::string FixtureState();
int FixturePort();
// postgresql://postgres@127.0.0.1:<port>/idem_test
std::string FixtureUri();
// libpq conninfo of the fixture's server, for tests' own connections.
std::string FixtureConninfo();
// A schema name no other test (or process) uses: "t<pid>_<n>".
std::string UniqueSchema();

// Runs `sql` on a fresh connection to `conninfo`; returns the first column of the first row as
// text ("" when no row), or the error as Internal.
absl::StatusOr<std::string> PgQuery(const std::string& conninfo, const std::string& sql);

// Runs pg_server.sh with `args`; OK when it exits 0.
absl::Status RunServerScript(const std::string& args);

// A PostgreSQL cluster of a test's own on FixturePort() + offset (1..9), with the fixture's roles
// and database. Stopped (by PID) and removed when destroyed.
class OwnPgServer {
 public:
  static absl::StatusOr<std::unique_ptr<OwnPgServer>> Start(int offset);
  ~OwnPgServer();
  // pg_ctl stop -m immediate: every backend is killed, no shutdown checkpoint.
  absl::Status Crash();
  // Starts it again on the same data and port.
  absl::Status Restart();
  int port() const { return port_; }
  std::string Uri() const;
  std::string Conninfo() const;

 private:
  OwnPgServer(int port, std::string state) : port_(port), state_(std::move(state)) {}
  int port_;
  std::string state_;
};

}  // namespace idem::testing

#endif  // IDEM_BACKENDS_POSTGRES_TESTS_PG_TEST_UTIL_H_
