#include "sqlite_test_util.h"

#include <stdlib.h>

#include <cctype>
#include <cstdio>
#include <filesystem>
#include <mutex>

#include "gtest/gtest.h"

namespace idem::testing {
namespace {

std::mutex g_capture_mu;
std::vector<sqlite3*>* g_captured = nullptr;  // guarded by g_capture_mu

// An auto-extension runs for every connection opened in the process; it only records it.
int RecordConnection(sqlite3* db, const char**, const sqlite3_api_routines*) {
  std::lock_guard<std::mutex> lock(g_capture_mu);
  if (g_captured != nullptr) g_captured->push_back(db);
  return SQLITE_OK;
}

std::string Collapse(std::string_view sql) {
  std::string out;
  bool space = false;
  for (char c : sql) {
    if (std::isspace(static_cast<unsigned char>(c))) {
      space = !out.empty();
      continue;
    }
    if (space) out.push_back(' ');
    space = false;
    out.push_back(c);
  }
  return out;
}

}  // namespace

TempDir::TempDir() {
  std::string pattern = ::testing::TempDir() + "idem_sqlite_XXXXXX";
  if (mkdtemp(pattern.data()) == nullptr) {
    std::perror("mkdtemp");
    std::abort();
  }
  path_ = pattern;
}

TempDir::~TempDir() {
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

RawDb OpenRaw(const std::string& path, int busy_timeout_ms) {
  sqlite3* raw = nullptr;
  const int rc =
      sqlite3_open_v2(path.c_str(), &raw, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr);
  RawDb db(raw);
  if (rc != SQLITE_OK) {
    std::fprintf(stderr, "cannot open %s: %s\n", path.c_str(), sqlite3_errstr(rc));
    std::abort();
  }
  sqlite3_busy_timeout(db.get(), busy_timeout_ms);
  return db;
}

int ExecRaw(sqlite3* db, const std::string& sql) {
  return sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr);
}

int64_t QueryInt(sqlite3* db, const std::string& sql) {
  sqlite3_stmt* stmt = nullptr;
  if (sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr) != SQLITE_OK) return -1;
  int64_t value = -1;
  if (sqlite3_step(stmt) == SQLITE_ROW) value = sqlite3_column_int64(stmt, 0);
  sqlite3_finalize(stmt);
  return value;
}

std::string QueryBlob(sqlite3* db, const std::string& sql) {
  sqlite3_stmt* stmt = nullptr;
  if (sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr) != SQLITE_OK) return "";
  std::string value;
  if (sqlite3_step(stmt) == SQLITE_ROW) {
    const void* data = sqlite3_column_blob(stmt, 0);
    const int size = sqlite3_column_bytes(stmt, 0);
    if (data != nullptr) value.assign(static_cast<const char*>(data), size);
  }
  sqlite3_finalize(stmt);
  return value;
}

ConnectionCapture::ConnectionCapture() {
  {
    std::lock_guard<std::mutex> lock(g_capture_mu);
    g_captured = new std::vector<sqlite3*>();
  }
  // Registering the same entry point twice is a no-op.
  sqlite3_auto_extension(reinterpret_cast<void (*)()>(&RecordConnection));
}

ConnectionCapture::~ConnectionCapture() {
  sqlite3_cancel_auto_extension(reinterpret_cast<void (*)()>(&RecordConnection));
  std::lock_guard<std::mutex> lock(g_capture_mu);
  delete g_captured;
  g_captured = nullptr;
}

std::vector<sqlite3*> ConnectionCapture::opened() const {
  std::lock_guard<std::mutex> lock(g_capture_mu);
  return *g_captured;
}

StatementTrace::StatementTrace(sqlite3* db) : db_(db) {
  sqlite3_trace_v2(db_, SQLITE_TRACE_STMT, &StatementTrace::Callback, this);
}

StatementTrace::~StatementTrace() { sqlite3_trace_v2(db_, 0, nullptr, nullptr); }

int StatementTrace::Callback(unsigned type, void* self, void*, void* sql) {
  if (type == SQLITE_TRACE_STMT && sql != nullptr) {
    const char* text = static_cast<const char*>(sql);
    // Trigger sub-programs are reported as comments; idem defines no triggers.
    auto* trace = static_cast<StatementTrace*>(self);
    std::lock_guard<std::mutex> lock(trace->mu_);
    trace->statements_.push_back(Collapse(text));
  }
  return 0;
}

}  // namespace idem::testing
