#include "redis_test_server.h"

#include <hiredis/hiredis.h>
#include <signal.h>
#include <spawn.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gtest/gtest.h"

extern char** environ;

namespace idem::testing {
namespace {

struct ContextFree {
  void operator()(redisContext* c) const { redisFree(c); }
};
struct ReplyFree {
  void operator()(redisReply* r) const { freeReplyObject(r); }
};

std::string ReplyText(const redisReply* reply) {
  switch (reply->type) {
    case REDIS_REPLY_INTEGER:
      return absl::StrCat(reply->integer);
    case REDIS_REPLY_NIL:
      return "";
    case REDIS_REPLY_ARRAY: {
      std::vector<std::string> parts;
      for (size_t i = 0; i < reply->elements; ++i) parts.push_back(ReplyText(reply->element[i]));
      return absl::StrJoin(parts, "\n");
    }
    default:
      return std::string(reply->str, reply->len);
  }
}

absl::StatusOr<std::string> RunCommand(redisContext* context,
                                       const std::vector<std::string>& args) {
  std::vector<const char*> argv;
  std::vector<size_t> lengths;
  for (const std::string& arg : args) {
    argv.push_back(arg.data());
    lengths.push_back(arg.size());
  }
  std::unique_ptr<redisReply, ReplyFree> reply(static_cast<redisReply*>(
      redisCommandArgv(context, static_cast<int>(argv.size()), argv.data(), lengths.data())));
  if (reply == nullptr) return absl::UnavailableError(context->errstr);
  if (reply->type == REDIS_REPLY_ERROR) {
    return absl::InternalError(std::string(reply->str, reply->len));
  }
  return ReplyText(reply.get());
}

}  // namespace

int FixturePort() {
  const char* env = std::getenv("IDEM_REDIS_TEST_PORT");
  int port = 0;
  if (env == nullptr || !absl::SimpleAtoi(env, &port) || port <= 0) {
    ADD_FAILURE() << "IDEM_REDIS_TEST_PORT is not set: run the Redis tests through ctest, which "
                     "starts the fixture's redis-server (ctest -L redis)";
    return 0;
  }
  return port;
}

int OwnServerPort(int offset) {
  EXPECT_TRUE(offset >= 1 && offset <= 9) << offset;
  const int base = FixturePort();
  return base == 0 ? 0 : base + offset;
}

absl::StatusOr<std::unique_ptr<TestRedisServer>> TestRedisServer::Start(Options options) {
  if ((options.port <= 0) != options.unix_socket_only) {
    return absl::InvalidArgumentError("a test redis-server needs a port, or a Unix socket only");
  }
  std::error_code ec;
  std::filesystem::remove_all(options.dir, ec);
  std::filesystem::create_directories(options.dir, ec);
  if (ec) return absl::UnavailableError(absl::StrCat("cannot create ", options.dir));
  std::unique_ptr<TestRedisServer> server(new TestRedisServer(std::move(options)));
  if (absl::Status status = server->Spawn(); !status.ok()) return status;
  return server;
}

TestRedisServer::~TestRedisServer() {
  if (pid_ > 0) Signal(SIGKILL);
}

absl::Status TestRedisServer::Spawn() {
  std::vector<std::string> args = {"redis-server",
                                   "--bind",
                                   "127.0.0.1",
                                   "--port",
                                   absl::StrCat(options_.unix_socket_only ? 0 : options_.port),
                                   "--dir",
                                   options_.dir,
                                   "--logfile",
                                   options_.dir + "/redis.log",
                                   "--daemonize",
                                   "no",
                                   "--save",
                                   "",
                                   "--appendonly",
                                   options_.appendonly ? "yes" : "no",
                                   "--appendfsync",
                                   "always"};
  if (!options_.password.empty()) {
    args.push_back("--requirepass");
    args.push_back(options_.password);
  }
  if (options_.unix_socket_only) {
    args.push_back("--unixsocket");
    args.push_back(unix_socket());
    args.push_back("--unixsocketperm");
    args.push_back("700");
  }
  for (const std::string& arg : options_.extra_args) args.push_back(arg);
  std::vector<char*> argv;
  for (std::string& arg : args) argv.push_back(arg.data());
  argv.push_back(nullptr);
  std::vector<std::string> environment = options_.environment;
  std::vector<char*> envp;
  for (char** e = environ; *e != nullptr; ++e) envp.push_back(*e);
  for (std::string& entry : environment) envp.push_back(entry.data());
  envp.push_back(nullptr);
  pid_t pid = -1;
  const int rc = posix_spawnp(&pid, "redis-server", nullptr, nullptr, argv.data(), envp.data());
  if (rc != 0) {
    return absl::UnavailableError(
        absl::StrCat(std::getenv("CI") != nullptr ? "FATAL (CI): " : "",
                     "cannot start redis-server (is it installed? apt-get install redis-server): ",
                     std::strerror(rc)));
  }
  pid_ = pid;

  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
  while (std::chrono::steady_clock::now() < deadline) {
    int wstatus = 0;
    if (waitpid(pid_, &wstatus, WNOHANG) == pid_) {
      pid_ = -1;
      return absl::UnavailableError(absl::StrCat("redis-server exited at start (port ",
                                                 options_.port, " in use?); see ", options_.dir,
                                                 "/redis.log"));
    }
    absl::StatusOr<std::string> served = Command({"INFO", "server"});
    if (served.ok()) {
      const std::string needle = absl::StrCat("process_id:", pid_, "\r\n");
      if (served->find(needle) == std::string::npos) {
        return absl::UnavailableError(
            absl::StrCat("port ", options_.port, " is served by another process"));
      }
      return absl::OkStatus();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return absl::UnavailableError(
      absl::StrCat("redis-server on port ", options_.port, " did not answer within 15 s"));
}

void TestRedisServer::Signal(int signal) {
  if (pid_ <= 0) return;
  kill(pid_, signal);
  if (signal == SIGKILL || signal == SIGTERM) {
    int wstatus = 0;
    waitpid(pid_, &wstatus, 0);
    pid_ = -1;
  }
}

absl::Status TestRedisServer::Restart() {
  if (pid_ > 0) return absl::FailedPreconditionError("the test redis-server still runs");
  return Spawn();
}

absl::StatusOr<std::string> RedisCommand(int port, const std::vector<std::string>& args,
                                         const std::string& password) {
  const timeval connect_timeout{1, 0};
  std::unique_ptr<redisContext, ContextFree> context(
      redisConnectWithTimeout("127.0.0.1", port, connect_timeout));
  if (context == nullptr) return absl::ResourceExhaustedError("hiredis context");
  if (context->err != 0) return absl::UnavailableError(context->errstr);
  redisSetTimeout(context.get(), timeval{10, 0});
  if (!password.empty()) {
    absl::StatusOr<std::string> auth = RunCommand(context.get(), {"AUTH", password});
    if (!auth.ok()) return auth.status();
  }
  return RunCommand(context.get(), args);
}

absl::StatusOr<std::string> RedisUnixCommand(const std::string& path,
                                             const std::vector<std::string>& args,
                                             const std::string& password) {
  const timeval connect_timeout{1, 0};
  std::unique_ptr<redisContext, ContextFree> context(
      redisConnectUnixWithTimeout(path.c_str(), connect_timeout));
  if (context == nullptr) return absl::ResourceExhaustedError("hiredis context");
  if (context->err != 0) return absl::UnavailableError(context->errstr);
  redisSetTimeout(context.get(), timeval{10, 0});
  if (!password.empty()) {
    absl::StatusOr<std::string> auth = RunCommand(context.get(), {"AUTH", password});
    if (!auth.ok()) return auth.status();
  }
  return RunCommand(context.get(), args);
}

namespace {

absl::StatusOr<long long> InfoFieldOf(const absl::StatusOr<std::string>& info,
                                      std::string_view field) {
  if (!info.ok()) return info.status();
  const std::string needle = "\n" + std::string(field) + ":";
  const size_t at = info->find(needle);
  if (at == std::string::npos) return absl::NotFoundError("no INFO field " + std::string(field));
  const size_t begin = at + needle.size();
  const size_t end = info->find("\r\n", begin);
  long long value = 0;
  if (!absl::SimpleAtoi(info->substr(begin, end - begin), &value)) {
    return absl::InternalError("INFO field " + std::string(field) + " is not a number");
  }
  return value;
}

}  // namespace

absl::StatusOr<long long> RedisInfoField(int port, std::string_view section, std::string_view field,
                                         const std::string& password) {
  return InfoFieldOf(RedisCommand(port, {"INFO", std::string(section)}, password), field);
}

absl::StatusOr<std::string> TestRedisServer::Command(const std::vector<std::string>& args) const {
  if (options_.unix_socket_only) return RedisUnixCommand(unix_socket(), args, options_.password);
  return RedisCommand(options_.port, args, options_.password);
}

absl::StatusOr<long long> TestRedisServer::InfoField(std::string_view section,
                                                     std::string_view field) const {
  return InfoFieldOf(Command({"INFO", std::string(section)}), field);
}

}  // namespace idem::testing
