#include "redis_connection.h"

#include <hiredis/hiredis.h>
#include <pthread.h>
#include <signal.h>
#include <sys/time.h>

#include <algorithm>
#include <cerrno>
#include <utility>

#include "absl/strings/str_cat.h"
#include "redis_strings.h"

namespace idem::internal::redis {
namespace {

timeval ToTimeval(std::chrono::milliseconds ms) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(ms.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((ms.count() % 1000) * 1000);
  return tv;
}

bool Contains(std::string_view haystack, std::string_view needle) {
  return haystack.find(needle) != std::string_view::npos;
}

// The leading error code of a server error reply ("WRONGPASS invalid ..." -> "WRONGPASS").
std::string_view ErrorCode(std::string_view error) {
  return error.substr(0, std::min(error.find(' '), error.size()));
}

// Server texts are short, but a script error can quote a whole line of Lua.
std::string_view Clip(std::string_view text) {
  return text.substr(0, std::min<size_t>(text.size(), 300));
}

// Blocks SIGPIPE in this thread while hiredis writes, as libpq does: hiredis 0.14 writes with
// write(2), and a write to a connection the server has closed must become a status
// (Unavailable), not a signal that kills the process. A SIGPIPE raised meanwhile is consumed.
class SigpipeGuard {
 public:
  SigpipeGuard() {
    sigemptyset(&sigpipe_);
    sigaddset(&sigpipe_, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &sigpipe_, &old_mask_);
    sigset_t pending;
    sigpending(&pending);
    was_pending_ = sigismember(&pending, SIGPIPE) == 1;
  }
  ~SigpipeGuard() {
    const int saved_errno = errno;
    if (!was_pending_) {
      sigset_t pending;
      sigpending(&pending);
      if (sigismember(&pending, SIGPIPE) == 1) {
        const timespec zero{0, 0};
        sigtimedwait(&sigpipe_, nullptr, &zero);
      }
    }
    pthread_sigmask(SIG_SETMASK, &old_mask_, nullptr);
    errno = saved_errno;
  }
  SigpipeGuard(const SigpipeGuard&) = delete;
  SigpipeGuard& operator=(const SigpipeGuard&) = delete;

 private:
  sigset_t sigpipe_;
  sigset_t old_mask_;
  bool was_pending_ = false;
};

}  // namespace

void ContextDeleter::operator()(redisContext* context) const noexcept { redisFree(context); }
void ReplyDeleter::operator()(redisReply* reply) const noexcept { freeReplyObject(reply); }

absl::Status ContextErrorStatus(int err, int saved_errno, std::string_view errstr,
                                std::string_view what) {
  const std::string message = Cat("redis ", what, ": ", errstr);
  switch (err) {
    case REDIS_ERR_IO:
      // hiredis 0.14 turns SO_RCVTIMEO/SO_SNDTIMEO expiry into REDIS_ERR_IO with errno EAGAIN, and
      // a connect timeout into ETIMEDOUT. The text is a fallback for an errno that was clobbered.
      if (saved_errno == EAGAIN || saved_errno == EWOULDBLOCK || saved_errno == ETIMEDOUT ||
          saved_errno == EINPROGRESS || Contains(errstr, "Resource temporarily unavailable") ||
          Contains(errstr, "timed out")) {
        return absl::DeadlineExceededError(Cat(message, " (timeout)"));
      }
      return absl::UnavailableError(message);
    case REDIS_ERR_EOF:
      return absl::UnavailableError(Cat("redis ", what, ": connection closed by the server"));
    case REDIS_ERR_PROTOCOL:
      return absl::InternalError(Cat(message, " (protocol error)"));
    case REDIS_ERR_OOM:
      return absl::ResourceExhaustedError(Cat(message, " (client out of memory)"));
    case REDIS_ERR_OTHER:
    default:
      return absl::UnavailableError(message);
  }
}

absl::Status ErrorReplyStatus(std::string_view error, std::string_view what) {
  const std::string_view code = ErrorCode(error);
  if (code == "NOAUTH") {
    return absl::UnauthenticatedError(
        Cat("redis ", what, ": the server requires AUTH (NOAUTH); set a password"));
  }
  if (code == "WRONGPASS") {
    // The server's text is dropped on purpose: only the code is safe to repeat.
    return absl::UnauthenticatedError(
        Cat("redis ", what, ": AUTH refused (WRONGPASS: wrong user name or password)"));
  }
  if (code == "NOPERM") {
    return absl::PermissionDeniedError(Cat("redis ", what, ": ", Clip(error)));
  }
  if (code == "LOADING" || code == "BUSY" || code == "MASTERDOWN" || code == "READONLY" ||
      code == "TRYAGAIN" || code == "MISCONF" || code == "CLUSTERDOWN") {
    return absl::UnavailableError(Cat("redis ", what, ": ", Clip(error)));
  }
  if (code == "OOM") {
    return absl::ResourceExhaustedError(Cat("redis ", what, ": ", Clip(error)));
  }
  if (code == "WRONGTYPE") {
    return absl::FailedPreconditionError(
        Cat("redis ", what,
            ": a key under the prefix is not of the type idem writes (WRONGTYPE): a record of an "
            "earlier idem (a hash), or another application's key; delete it or use another "
            "key_prefix"));
  }
  if (code == "IDEMDATA") {
    return absl::DataLossError(Cat("redis ", what, ": ", Clip(error)));
  }
  return absl::InternalError(Cat("redis ", what, ": ", Clip(error)));
}

std::string ConnectParams::Endpoint() const {
  if (!unix_socket.empty()) return Cat("unix:", unix_socket);
  if (Contains(host, ":")) return Cat("[", host, "]:", port);
  return Cat(host, ":", port);
}

absl::StatusOr<std::unique_ptr<Connection>> Connection::Open(const ConnectParams& params) {
  const std::string endpoint = params.Endpoint();
  const timeval connect_tv = ToTimeval(params.connect_timeout);
  errno = 0;
  redisContext* raw = params.unix_socket.empty()
                          ? redisConnectWithTimeout(params.host.c_str(), params.port, connect_tv)
                          : redisConnectUnixWithTimeout(params.unix_socket.c_str(), connect_tv);
  const int saved_errno = errno;
  if (raw == nullptr) {
    return absl::ResourceExhaustedError("redis: cannot allocate a hiredis context");
  }
  ContextPtr context(raw);
  if (context->err != 0) {
    return ContextErrorStatus(context->err, saved_errno, context->errstr,
                              Cat("connect to ", endpoint));
  }
  if (redisSetTimeout(context.get(), ToTimeval(params.io_timeout)) != REDIS_OK) {
    return absl::UnavailableError(Cat("redis: cannot set the I/O timeout on ", endpoint));
  }
  std::unique_ptr<Connection> connection(new Connection(std::move(context), endpoint));

  if (!params.password.empty()) {
    std::vector<std::string_view> auth = {"AUTH"};
    if (!params.user.empty()) auth.push_back(params.user);
    auth.push_back(params.password);
    const std::string what = Cat("AUTH at ", endpoint);
    absl::StatusOr<ReplyPtr> reply = connection->Command(auth, "AUTH");
    if (!reply.ok()) return reply.status();
    if ((*reply)->type == REDIS_REPLY_ERROR) {
      // Whatever the server said (WRONGPASS, or "AUTH <password> called without any password
      // configured"), the credentials are what is wrong. Only the error code is repeated.
      const std::string_view error((*reply)->str, (*reply)->len);
      return absl::UnauthenticatedError(
          Cat("redis ", what, ": AUTH refused (", ErrorCode(error),
              Contains(error, "without any password") ? ": the server has no password set" : "",
              "); check the user name and password"));
    }
  }
  if (params.db != 0) {
    const std::string db = Cat(params.db);
    const std::string what = Cat("SELECT ", db, " at ", endpoint);
    const std::string_view select[] = {"SELECT", db};
    absl::StatusOr<ReplyPtr> reply = connection->Command(select, "SELECT");
    if (!reply.ok()) return reply.status();
    if ((*reply)->type == REDIS_REPLY_ERROR) {
      const std::string_view error((*reply)->str, (*reply)->len);
      if (ErrorCode(error) == "ERR") {
        // "DB index is out of range": the server has fewer databases than the URI assumes.
        return absl::FailedPreconditionError(Cat("redis ", what, ": ", Clip(error)));
      }
      return ErrorReplyStatus(error, what);
    }
  }
  if (!params.client_name.empty()) {
    const std::string what = Cat("CLIENT SETNAME at ", endpoint);
    const std::string_view setname[] = {"CLIENT", "SETNAME", params.client_name};
    absl::StatusOr<ReplyPtr> reply = connection->Command(setname, "CLIENT SETNAME");
    if (!reply.ok()) return reply.status();
    if ((*reply)->type == REDIS_REPLY_ERROR) {
      return ErrorReplyStatus(std::string_view((*reply)->str, (*reply)->len), what);
    }
  }
  return connection;
}

absl::Status Connection::Fail(int saved_errno, std::string_view what) {
  broken_ = true;
  if (context_->err == 0) {
    return absl::InternalError(
        Cat("redis ", what, " at ", endpoint_, ": hiredis failed without an error"));
  }
  return ContextErrorStatus(context_->err, saved_errno, context_->errstr,
                            Cat(what, " at ", endpoint_));
}

bool Connection::broken() const { return broken_ || context_->err != 0; }

absl::StatusOr<ReplyPtr> Connection::Command(std::span<const std::string_view> args,
                                             std::string_view what) {
  if (absl::Status status = Append(args, what); !status.ok()) return status;
  return GetReply(what);
}

absl::Status Connection::Append(std::span<const std::string_view> args, std::string_view what) {
  if (broken()) {
    return absl::UnavailableError(Cat("redis ", what, " at ", endpoint_, ": connection is broken"));
  }
  // *<argc>\r\n, then $<length>\r\n<bytes>\r\n per argument.
  command_.clear();
  command_.push_back('*');
  absl::StrAppend(&command_, args.size());
  command_.append("\r\n");
  for (std::string_view arg : args) {
    command_.push_back('$');
    absl::StrAppend(&command_, arg.size());
    command_.append("\r\n");
    command_.append(arg);
    command_.append("\r\n");
  }
  errno = 0;
  unsent_ = true;
  if (redisAppendFormattedCommand(context_.get(), command_.data(), command_.size()) != REDIS_OK) {
    return Fail(errno, what);
  }
  return absl::OkStatus();
}

absl::Status Connection::SetTimeout(std::chrono::milliseconds timeout) {
  if (redisSetTimeout(context_.get(), ToTimeval(timeout)) != REDIS_OK) {
    return absl::UnavailableError(Cat("redis: cannot set the I/O timeout on ", endpoint_));
  }
  return absl::OkStatus();
}

absl::StatusOr<ReplyPtr> Connection::GetReply(std::string_view what) {
  if (broken()) {
    return absl::UnavailableError(Cat("redis ", what, " at ", endpoint_, ": connection is broken"));
  }
  void* raw = nullptr;
  int rc = REDIS_ERR;
  int saved_errno = 0;
  if (unsent_) {
    // The first GetReply after Append writes every buffered command (hiredis writes until its
    // buffer is empty); the later ones of a pipeline only read, and need no guard's 4 syscalls.
    const SigpipeGuard guard;
    errno = 0;
    rc = redisGetReply(context_.get(), &raw);
    saved_errno = errno;
    unsent_ = false;
  } else {
    errno = 0;
    rc = redisGetReply(context_.get(), &raw);
    saved_errno = errno;
  }
  ReplyPtr reply(static_cast<redisReply*>(raw));
  if (rc != REDIS_OK || reply == nullptr) return Fail(saved_errno, what);
  return reply;
}

absl::Status Connection::Flush(std::string_view what) {
  if (broken()) {
    return absl::UnavailableError(Cat("redis ", what, " at ", endpoint_, ": connection is broken"));
  }
  if (!unsent_) return absl::OkStatus();
  const SigpipeGuard guard;
  int done = 0;
  while (done == 0) {
    errno = 0;
    if (redisBufferWrite(context_.get(), &done) != REDIS_OK) return Fail(errno, what);
  }
  unsent_ = false;
  return absl::OkStatus();
}

Pool::Handle::~Handle() {
  if (connection_ != nullptr) pool_->Return(std::move(connection_));
}

absl::StatusOr<Pool::Handle> Pool::Acquire() {
  {
    std::unique_lock lock(mu_);
    slot_free_.wait(lock, [this] { return !idle_.empty() || open_ < size_; });
    if (!idle_.empty()) {
      std::unique_ptr<Connection> connection = std::move(idle_.back());
      idle_.pop_back();
      return Handle(this, std::move(connection));
    }
    const auto now = std::chrono::steady_clock::now();
    if (backoff_.count() > 0 && now < next_connect_) {
      const auto wait =
          std::chrono::duration_cast<std::chrono::milliseconds>(next_connect_ - now).count();
      return absl::UnavailableError(Cat("redis at ", params_.Endpoint(),
                                        " is unreachable; next reconnect attempt in ", wait,
                                        " ms (last error: ", last_connect_error_.message(), ")"));
    }
    ++open_;
  }
  // Connect outside the lock: other threads keep using the idle connections meanwhile.
  absl::StatusOr<std::unique_ptr<Connection>> connection = Connection::Open(params_);
  std::unique_lock lock(mu_);
  if (!connection.ok()) {
    --open_;
    backoff_ = backoff_.count() == 0 ? backoff_min_ : std::min(backoff_ * 2, backoff_max_);
    next_connect_ = std::chrono::steady_clock::now() + backoff_;
    last_connect_error_ = connection.status();
    lock.unlock();
    slot_free_.notify_one();
    return connection.status();
  }
  backoff_ = std::chrono::milliseconds(0);
  return Handle(this, *std::move(connection));
}

void Pool::Return(std::unique_ptr<Connection> connection) {
  std::vector<std::unique_ptr<Connection>> discard;
  {
    std::lock_guard lock(mu_);
    if (!connection->broken()) {
      idle_.push_back(std::move(connection));
    } else {
      // One broken connection usually means the server went away (restart, failover, network):
      // the idle ones would each fail one more call, so they go too.
      discard.swap(idle_);
      open_ -= 1 + discard.size();
    }
  }
  slot_free_.notify_all();
  // Closed outside the lock.
  connection.reset();
  discard.clear();
}

}  // namespace idem::internal::redis
