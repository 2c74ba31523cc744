// One hiredis connection, a small pool of them, and the one place where hiredis failures become
// absl::Status codes. Private to the Redis backend.
#ifndef IDEM_BACKENDS_REDIS_SRC_REDIS_CONNECTION_H_
#define IDEM_BACKENDS_REDIS_SRC_REDIS_CONNECTION_H_

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

struct redisContext;
struct redisReply;

namespace idem::internal::redis {

struct ContextDeleter {
  void operator()(redisContext* context) const noexcept;
};
struct ReplyDeleter {
  void operator()(redisReply* reply) const noexcept;
};
using ContextPtr = std::unique_ptr<redisContext, ContextDeleter>;
using ReplyPtr = std::unique_ptr<redisReply, ReplyDeleter>;

// The mapping of hiredis failures to the status codes of the DedupStore contract (include/idem/
// store.h), in one place.
//
// A context error (`redisContext::err`, with the errno saved right after the failing call):
//   REDIS_ERR_IO + EAGAIN/EWOULDBLOCK/ETIMEDOUT/EINPROGRESS  DeadlineExceeded (hiredis 0.14
//                                                             reports an I/O timeout this way)
//   REDIS_ERR_IO otherwise, REDIS_ERR_EOF, REDIS_ERR_OTHER    Unavailable (refused, reset, closed,
//                                                             host not resolved)
//   REDIS_ERR_PROTOCOL                                        Internal
//   REDIS_ERR_OOM                                             ResourceExhausted (client memory)
// `what` names the operation ("claim", "connect to 127.0.0.1:6379"); it never holds a password.
absl::Status ContextErrorStatus(int err, int saved_errno, std::string_view errstr,
                                std::string_view what);

// A server error reply, by its leading error code:
//   NOAUTH, WRONGPASS, and AUTH refusals            Unauthenticated (the credentials are wrong or
//                                                   missing; the server's text is dropped)
//   NOPERM                                          PermissionDenied (authenticated, but the ACL
//                                                   user may not run the command or touch the key)
//   LOADING, BUSY, MASTERDOWN, READONLY, TRYAGAIN,
//   MISCONF                                         Unavailable (retry later)
//   OOM                                             ResourceExhausted (maxmemory reached)
//   WRONGTYPE                                       FailedPrecondition (a key of another type
//                                                   under the prefix: an earlier idem's hash
//                                                   record, or another application's key)
//   IDEMDATA (raised by idem's scripts)             DataLoss (a string that is not an idem record)
//   anything else (ERR, a script error, ...)        Internal
absl::Status ErrorReplyStatus(std::string_view error, std::string_view what);

// Where and how to connect. Holds the password: never log it.
struct ConnectParams {
  std::string host;
  int port = 0;
  std::string unix_socket;
  int db = 0;
  std::string user;
  std::string password;
  std::string client_name;
  std::chrono::milliseconds connect_timeout{0};
  std::chrono::milliseconds io_timeout{0};

  // "127.0.0.1:6379" or "unix:/path": for error messages.
  std::string Endpoint() const;
};

// A blocking hiredis connection. Its statuses name the operation (`what`, e.g. "claim") and the
// endpoint, built only when a call fails. After any failure (timeout, dropped connection, protocol
// error) it is broken() and must be discarded: hiredis leaves a context unusable after an error,
// and a timed-out command's reply could otherwise be read as the next command's.
class Connection {
 public:
  // Connects with the connect timeout, sets the I/O timeout, and sends AUTH, SELECT and
  // CLIENT SETNAME as configured.
  static absl::StatusOr<std::unique_ptr<Connection>> Open(const ConnectParams& params);

  // Sends one command and reads its reply. A server error reply is returned as a reply (the
  // caller knows what NOSCRIPT means); transport failures are statuses.
  absl::StatusOr<ReplyPtr> Command(std::span<const std::string_view> args, std::string_view what);
  // Pipelining: Append buffers a command (nothing is sent); the first GetReply sends everything
  // buffered and reads one reply. Append encodes the command itself (RESP, binary-safe by
  // length): hiredis 0.14's own argv formatting costs more than the rest of a call.
  absl::Status Append(std::span<const std::string_view> args, std::string_view what);
  absl::StatusOr<ReplyPtr> GetReply(std::string_view what);
  // Writes every buffered command without reading a reply (a cluster batch writes to all its
  // nodes before it reads from any). The GetReply calls that follow only read.
  absl::Status Flush(std::string_view what);

  bool broken() const;
  // For a reply the caller cannot make sense of: the replies still to come would be misread.
  void MarkBroken() { broken_ = true; }

  // Sets the bound on each later read and write (a subscriber waiting for a message sets how
  // long it waits). Unavailable if hiredis refuses it.
  absl::Status SetTimeout(std::chrono::milliseconds timeout);

 private:
  Connection(ContextPtr context, std::string endpoint)
      : context_(std::move(context)), endpoint_(std::move(endpoint)) {}
  absl::Status Fail(int saved_errno, std::string_view what);

  ContextPtr context_;
  const std::string endpoint_;
  bool broken_ = false;
  // Append's RESP encoding of a command, reused from call to call.
  std::string command_;
  // Commands were appended and not yet written (by the next GetReply).
  bool unsent_ = false;
};

// Up to `size` connections shared by threads. Connections are made lazily; after a failed
// connect, Acquire fails fast with Unavailable until the next attempt is due (exponential backoff
// between `backoff_min` and `backoff_max`, reset by a successful connect).
class Pool {
 public:
  Pool(ConnectParams params, std::size_t size, std::chrono::milliseconds backoff_min,
       std::chrono::milliseconds backoff_max)
      : params_(std::move(params)),
        size_(size),
        backoff_min_(backoff_min),
        backoff_max_(backoff_max) {}

  // A connection lent to one caller; returned to the pool when destroyed, or discarded (with
  // every idle connection, which a dropped server has most likely broken too) if it broke.
  class Handle {
   public:
    Handle(Pool* pool, std::unique_ptr<Connection> connection)
        : pool_(pool), connection_(std::move(connection)) {}
    Handle(Handle&& other) noexcept = default;
    Handle& operator=(Handle&&) = delete;
    ~Handle();
    Connection* operator->() const { return connection_.get(); }
    Connection& operator*() const { return *connection_; }

   private:
    Pool* pool_;
    std::unique_ptr<Connection> connection_;
  };

  // Waits for an idle connection or a free slot. Errors: those of Connection::Open, or
  // Unavailable while a reconnect backoff is running.
  absl::StatusOr<Handle> Acquire();

  const ConnectParams& params() const { return params_; }

 private:
  void Return(std::unique_ptr<Connection> connection);

  const ConnectParams params_;
  const std::size_t size_;
  const std::chrono::milliseconds backoff_min_;
  const std::chrono::milliseconds backoff_max_;

  // std::mutex rather than absl::Mutex: Debian's abseil is not built for ThreadSanitizer, which
  // would miss absl::Mutex's ordering and report false races; pthread mutexes it sees.
  std::mutex mu_;
  std::condition_variable slot_free_;
  // Guarded by mu_:
  std::vector<std::unique_ptr<Connection>> idle_;
  // Connections in use, idle, or being opened.
  std::size_t open_ = 0;
  std::chrono::milliseconds backoff_{0};
  std::chrono::steady_clock::time_point next_connect_;
  absl::Status last_connect_error_;
};

}  // namespace idem::internal::redis

#endif  // IDEM_BACKENDS_REDIS_SRC_REDIS_CONNECTION_H_
