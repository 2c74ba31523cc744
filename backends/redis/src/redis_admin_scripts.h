// Lua scripts of the Redis store's operator calls (redis_scripts.h has the hot path's). Run with
// EVAL: they are rare, and EVAL caches them on the server anyway. Same conventions as
// redis_scripts.h.
#ifndef IDEM_BACKENDS_REDIS_SRC_REDIS_ADMIN_SCRIPTS_H_
#define IDEM_BACKENDS_REDIS_SRC_REDIS_ADMIN_SCRIPTS_H_

#include <string_view>

namespace idem::internal::redis {

// Clear the attempt count of a record that is not a live claim, fenced by its token.
//   KEYS[1]  the record
//   ARGV[1]  the token's 8 bytes, as the record holds them (bytes 3..10)
//   ARGV[2]  how long the released record is kept, ms
// Reply: 1 reset (now RELEASED, 0 attempts), 0 no record, 2 another token, 3 COMPLETED, 4 a
// live claim. A waiter (WaitForCompletion) is told on the record's channel.
inline constexpr std::string_view kResetAttemptsScript = R"lua(
local old = redis.call('GET', KEYS[1])
if not old then return 0 end
if #old < 23 or string.byte(old, 1) ~= 1 then
  return redis.error_reply('IDEMDATA the key does not hold an idem record (format 1)')
end
if string.sub(old, 3, 10) ~= ARGV[1] then return 2 end
local state = string.sub(old, 2, 2)
if state == 'C' then return 3 end
local keep = struct.unpack('>I8', old, 15)
if state == 'P' and redis.call('PTTL', KEYS[1]) - keep > 0 then return 4 end
redis.call('SET', KEYS[1], '\1R' .. string.sub(old, 3, 10) .. struct.pack('>I4', 0) ..
           string.sub(old, 15), 'PX', ARGV[2])
redis.call('PUBLISH', KEYS[1], 'reset')
return 1
)lua";

}  // namespace idem::internal::redis

#endif  // IDEM_BACKENDS_REDIS_SRC_REDIS_ADMIN_SCRIPTS_H_
