// Helpers for the SQLite backend's tests: a fresh temporary directory per test, raw connections
// for setting up and inspecting files behind the store's back, and a way to reach the store's own
// connection through SQLite's public auto-extension hook (no test-only API in the library).
#ifndef IDEM_BACKENDS_SQLITE_TESTS_SQLITE_TEST_UTIL_H_
#define IDEM_BACKENDS_SQLITE_TESTS_SQLITE_TEST_UTIL_H_

#include <sqlite3.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace idem::testing {

// A directory under ::testing::TempDir(), removed with its contents when destroyed.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string File(std::string_view name) const { return path_ + "/" + std::string(name); }

 private:
  std::string path_;
};

struct RawDbCloser {
  void operator()(sqlite3* db) const noexcept { sqlite3_close_v2(db); }
};
using RawDb = std::unique_ptr<sqlite3, RawDbCloser>;

// Opens `path` read-write (creating it) with the given busy timeout; aborts the test binary on
// failure, which only a broken environment causes.
RawDb OpenRaw(const std::string& path, int busy_timeout_ms = 5'000);
// Runs `sql`; returns SQLite's result code.
int ExecRaw(sqlite3* db, const std::string& sql);
// The first column of the first row of `sql` as an integer (-1 when there is no row).
int64_t QueryInt(sqlite3* db, const std::string& sql);
// The first column of the first row of `sql` as bytes ("" when there is no row).
std::string QueryBlob(sqlite3* db, const std::string& sql);

// Records every connection opened in this process from construction on, so a test can inspect
// (or trace) the connection a store opened. Only one may exist at a time.
class ConnectionCapture {
 public:
  ConnectionCapture();
  ~ConnectionCapture();
  ConnectionCapture(const ConnectionCapture&) = delete;
  ConnectionCapture& operator=(const ConnectionCapture&) = delete;

  // The connections opened so far, oldest first.
  std::vector<sqlite3*> opened() const;
};

// Collects the SQL text (unexpanded: parameters stay `?N`, so no ids) of every statement that
// starts running on `db` while tracing is on.
class StatementTrace {
 public:
  explicit StatementTrace(sqlite3* db);
  ~StatementTrace();
  StatementTrace(const StatementTrace&) = delete;
  StatementTrace& operator=(const StatementTrace&) = delete;

  void Clear() { statements_.clear(); }
  // Whitespace-collapsed statement texts, in order.
  const std::vector<std::string>& statements() const { return statements_; }

 private:
  static int Callback(unsigned type, void* self, void* stmt, void* sql);

  sqlite3* db_;
  // The callback runs on whichever thread runs a statement (under the store's absl::Mutex, which
  // ThreadSanitizer does not see in Debian's uninstrumented abseil): its own lock says so.
  std::mutex mu_;
  std::vector<std::string> statements_;
};

}  // namespace idem::testing

#endif  // IDEM_BACKENDS_SQLITE_TESTS_SQLITE_TEST_UTIL_H_
