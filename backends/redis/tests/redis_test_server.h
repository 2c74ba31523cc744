// Test support for the Redis backend: the port of the CTest fixture's server, and redis-server
// processes that a test starts, kills and restarts itself.
//
// Ports: the fixture's server listens on $IDEM_REDIS_TEST_PORT (set by CTest through the
// ENVIRONMENT property); tests that need a server of their own use that port + 1..9, each test a
// different offset, so `ctest -j` never puts two servers on one port.
#ifndef IDEM_BACKENDS_REDIS_TESTS_REDIS_TEST_SERVER_H_
#define IDEM_BACKENDS_REDIS_TESTS_REDIS_TEST_SERVER_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace idem::testing {

// $IDEM_REDIS_TEST_PORT; fails the test (returns 0) when it is not set.
int FixturePort();
// FixturePort() + offset, for a server of a test's own. REQUIRES: 1 <= offset <= 9.
int OwnServerPort(int offset);

// Runs one command on a fresh connection to 127.0.0.1:`port` (with AUTH when `password` is set);
// returns the reply as text (integers in decimal, arrays joined by '\n'), or the status of an
// error reply (Internal, with the server's text).
absl::StatusOr<std::string> RedisCommand(int port, const std::vector<std::string>& args,
                                         const std::string& password = "");
// As RedisCommand, on the Unix socket at `path`.
absl::StatusOr<std::string> RedisUnixCommand(const std::string& path,
                                             const std::vector<std::string>& args,
                                             const std::string& password = "");
// A numeric field of INFO `section` (e.g. "total_commands_processed").
absl::StatusOr<long long> RedisInfoField(int port, std::string_view section, std::string_view field,
                                         const std::string& password = "");

// A redis-server child process on 127.0.0.1, not daemonized: the test knows its PID and stops it
// by that PID. Its data directory is its own and is kept across Restart().
class TestRedisServer {
 public:
  struct Options {
    // The TCP port; 0 with `unix_socket_only`.
    int port = 0;
    // Listen only on the Unix socket dir/redis.sock (--port 0): a test that needs a server of its
    // own but no port, so that it takes none of the nine ports above the fixture's.
    bool unix_socket_only = false;
    // "NAME=value" entries added to the server's environment (e.g. LD_PRELOAD).
    std::vector<std::string> environment;
    // Created if absent; emptied by Start (not by Restart).
    std::string dir;
    bool appendonly = true;
    std::string password;  // --requirepass when non-empty
    std::vector<std::string> extra_args;
  };

  // Starts the server and waits until it answers PING (NOAUTH counts) from its own PID.
  // Errors: Unavailable if redis-server is missing, exits early (port in use?) or does not answer.
  static absl::StatusOr<std::unique_ptr<TestRedisServer>> Start(Options options);
  // SIGKILLs the server if it still runs.
  ~TestRedisServer();

  // Sends `signal` to the server's PID. SIGKILL and SIGTERM also wait for it to exit.
  void Signal(int signal);
  // Starts it again on the same port and directory (after Signal(SIGKILL or SIGTERM)).
  absl::Status Restart();

  // RedisCommand and RedisInfoField on this server (its port or its socket), with its password.
  absl::StatusOr<std::string> Command(const std::vector<std::string>& args) const;
  absl::StatusOr<long long> InfoField(std::string_view section, std::string_view field) const;

  int port() const { return options_.port; }
  // dir/redis.sock with `unix_socket_only`, else empty.
  std::string unix_socket() const {
    return options_.unix_socket_only ? options_.dir + "/redis.sock" : std::string();
  }
  pid_t pid() const { return pid_; }
  const std::string& dir() const { return options_.dir; }

 private:
  explicit TestRedisServer(Options options) : options_(std::move(options)) {}
  absl::Status Spawn();

  Options options_;
  pid_t pid_ = -1;
};

}  // namespace idem::testing

#endif  // IDEM_BACKENDS_REDIS_TESTS_REDIS_TEST_SERVER_H_
