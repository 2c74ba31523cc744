// The Lua scripts behind every state change of the Redis store. Each runs atomically on the
// server: a claim, a takeover, a completion with its version gate are each one script, so no
// other client can interleave between the read and the write.
//
// Shared conventions:
//  - A dedup record is a hash with fields
//      state        'P' (IN_PROGRESS), 'R' (RELEASED) or 'C' (COMPLETED)
//      token        the fencing token as the client's decimal string; only compared for
//                   equality, never converted to a Lua number (a double would lose bits)
//      attempts     claims so far
//      lease_until  end of the lease, server clock, ms (IN_PROGRESS only; 0 otherwise)
//      expires_at   when the key's TTL runs out, server clock, ms
//      fingerprint  16 bytes, when one was given
//      result       the completion's result, when one was saved
//  - A version-gate entry is a string of exactly 20 decimal digits, zero-padded (UINT64_MAX has
//    20). Lua's numbers are doubles, where 2^53 + 1 == 2^53, so versions are never converted
//    whole: version_ge() compares the two 10-digit halves, each below 10^10 and so exact as a
//    double. (Lua's own string `<` would do too, but it goes through strcoll and redis-server sets
//    LC_COLLATE from its environment: the halves do not depend on the locale.)
//  - Time is the server's (`TIME`), never the client's; expiry is the key's TTL (`PEXPIRE`).
//  - Numbers written to the hash go through int(): "%.0f" is exact for every integer a double
//    holds (the store keeps leases and retention below 2^40 ms, so sums stay far below 2^53),
//    whereas Lua's default "%.14g" would switch to exponent notation past 14 digits.
//  - Outcomes are values in the reply, never Lua errors: an error reply means the store failed.
#ifndef IDEM_BACKENDS_REDIS_SRC_REDIS_SCRIPTS_H_
#define IDEM_BACKENDS_REDIS_SRC_REDIS_SCRIPTS_H_

#include <string_view>

namespace idem::internal::redis {

// Claim, or take over a released or expired claim.
//   KEYS[1]  the record
//   KEYS[2]  the version-gate entry (only when ARGV[6] is not empty)
//   ARGV[1]  the new token (decimal)          ARGV[2]  lease, ms
//   ARGV[3]  how long an abandoned claim is kept after its lease, ms
//   ARGV[4]  fingerprint (16 bytes) or ''     ARGV[5]  max_attempts, 0 = unlimited
//   ARGV[6]  version (20 digits) or ''
// Reply: {outcome, attempts, lease_until, extra} where outcome and extra are
//   'acquired'      attempts = this attempt, extra = 1 when an expired lease was taken over
//   'duplicate'     extra = the stored result, or nil
//   'in_progress'   lease_until = the live claim's lease end
//   'stale'         extra = the applied version (20 digits)
//   'conflict', 'dead_lettered'
inline constexpr std::string_view kClaimScript = R"lua(
local function int(n) return string.format('%.0f', n) end
-- a >= b for two 20-digit versions, exact over the whole uint64 range.
local function version_ge(a, b)
  local a_high, b_high = tonumber(string.sub(a, 1, 10)), tonumber(string.sub(b, 1, 10))
  if a_high ~= b_high then return a_high > b_high end
  return tonumber(string.sub(a, 11, 20)) >= tonumber(string.sub(b, 11, 20))
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local token, lease, keep = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local fingerprint, max_attempts, version = ARGV[4], tonumber(ARGV[5]), ARGV[6]

local rec = redis.call('HMGET', KEYS[1], 'state', 'attempts', 'lease_until', 'fingerprint', 'result')
local state, attempts = rec[1], tonumber(rec[2] or '0')
if state then
  -- The same id with another payload is a conflict whatever the record's state.
  if fingerprint ~= '' and rec[4] and rec[4] ~= fingerprint then
    return {'conflict', attempts, 0, false}
  end
  if state == 'C' then
    return {'duplicate', attempts, 0, rec[5]}
  end
  local lease_until = tonumber(rec[3] or '0')
  if state == 'P' and lease_until > now then
    return {'in_progress', attempts, lease_until, false}
  end
end

-- The early version gate only spares a stale handler; Complete repeats it atomically.
if version ~= '' then
  local applied = redis.call('GET', KEYS[2])
  if applied and version_ge(applied, version) then
    return {'stale', attempts, 0, applied}
  end
end

-- Here the id is new, released, or its lease has expired.
if state and max_attempts > 0 and attempts >= max_attempts then
  return {'dead_lettered', attempts, 0, false}
end
attempts = attempts + 1
local lease_until = now + lease
redis.call('HSET', KEYS[1], 'state', 'P', 'token', token, 'attempts', int(attempts),
           'lease_until', int(lease_until), 'expires_at', int(lease_until + keep))
if fingerprint ~= '' and not rec[4] then
  redis.call('HSET', KEYS[1], 'fingerprint', fingerprint)
end
-- An abandoned claim disappears by itself after its lease plus the retention.
redis.call('PEXPIRE', KEYS[1], int(lease + keep))
local took_over = 0
if state == 'P' then took_over = 1 end
return {'acquired', attempts, lease_until, took_over}
)lua";

// Complete a claim, applying the version gate in the same atomic step.
//   KEYS[1]  the record               KEYS[2]  the version-gate entry (only with ARGV[6])
//   ARGV[1]  the claim's token        ARGV[2]  retention of the COMPLETED record, ms
//   ARGV[3]  '1' to save ARGV[4] as the result, '0' for no result
//   ARGV[4]  the result               ARGV[5]  fingerprint (16 bytes) or ''
//   ARGV[6]  version (20 digits) or ''
// Reply: 'completed', 'stale' (COMPLETED, the version not applied) or 'aborted' (the token does
// not own an IN_PROGRESS claim; nothing changed).
inline constexpr std::string_view kCompleteScript = R"lua(
local function int(n) return string.format('%.0f', n) end
-- a >= b for two 20-digit versions, exact over the whole uint64 range.
local function version_ge(a, b)
  local a_high, b_high = tonumber(string.sub(a, 1, 10)), tonumber(string.sub(b, 1, 10))
  if a_high ~= b_high then return a_high > b_high end
  return tonumber(string.sub(a, 11, 20)) >= tonumber(string.sub(b, 11, 20))
end
local rec = redis.call('HMGET', KEYS[1], 'state', 'token', 'fingerprint')
-- An expired lease alone does not fence: only a takeover (a new token) does.
if rec[1] ~= 'P' or rec[2] ~= ARGV[1] then
  return 'aborted'
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local retention = tonumber(ARGV[2])

local outcome = 'completed'
if ARGV[6] ~= '' then
  local applied = redis.call('GET', KEYS[2])
  if applied and version_ge(applied, ARGV[6]) then
    outcome = 'stale'
  else
    -- Version-gate entries never expire.
    redis.call('SET', KEYS[2], ARGV[6])
  end
end

redis.call('HSET', KEYS[1], 'state', 'C', 'lease_until', '0', 'expires_at', int(now + retention))
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[1], 'result', ARGV[4])
else
  redis.call('HDEL', KEYS[1], 'result')
end
if ARGV[5] ~= '' and not rec[3] then
  redis.call('HSET', KEYS[1], 'fingerprint', ARGV[5])
end
redis.call('PEXPIRE', KEYS[1], int(retention))
return outcome
)lua";

// Release a claim: claimable again at once, attempts kept.
//   KEYS[1]  the record   ARGV[1]  the claim's token
//   ARGV[2]  how long the released record (and its attempt count) is kept, ms
// Reply: 1 released, 0 the token does not own an IN_PROGRESS claim (nothing changed).
inline constexpr std::string_view kReleaseScript = R"lua(
local function int(n) return string.format('%.0f', n) end
local rec = redis.call('HMGET', KEYS[1], 'state', 'token')
if rec[1] ~= 'P' or rec[2] ~= ARGV[1] then
  return 0
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local keep = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'state', 'R', 'lease_until', '0', 'expires_at', int(now + keep))
redis.call('PEXPIRE', KEYS[1], int(keep))
return 1
)lua";

// Extend a claim's lease to now + lease.
//   KEYS[1]  the record   ARGV[1]  the claim's token   ARGV[2]  lease, ms
//   ARGV[3]  how long an abandoned claim is kept after its lease, ms
// Reply: the new lease end (ms, server clock), or nil when the token does not own an
// IN_PROGRESS claim (nothing changed).
inline constexpr std::string_view kExtendScript = R"lua(
local function int(n) return string.format('%.0f', n) end
local rec = redis.call('HMGET', KEYS[1], 'state', 'token')
if rec[1] ~= 'P' or rec[2] ~= ARGV[1] then
  return false
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local lease, keep = tonumber(ARGV[2]), tonumber(ARGV[3])
local lease_until = now + lease
redis.call('HSET', KEYS[1], 'lease_until', int(lease_until), 'expires_at', int(lease_until + keep))
redis.call('PEXPIRE', KEYS[1], int(lease + keep))
return lease_until
)lua";

}  // namespace idem::internal::redis

#endif  // IDEM_BACKENDS_REDIS_SRC_REDIS_SCRIPTS_H_
