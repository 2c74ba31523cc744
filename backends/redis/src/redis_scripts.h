// The Lua scripts behind every state change of the Redis store. Each runs atomically on the
// server: a claim, a takeover, a completion with its version gate are each one script, so no
// other client can interleave between the read and the write.
//
// Shared conventions:
//  - A dedup record is one string, packed as redis_record.h describes: a 23-byte header
//    (format, state, token, attempts, keep, flags), then the fingerprint and the result. The
//    token is 8 opaque bytes, only compared, never converted to a Lua number.
//  - Time is the server's, through the key's TTL: an IN_PROGRESS record is written with
//    PX lease + keep, so its lease is live while PTTL > keep. No script that writes reads TIME
//    (a script that calls it may not write on old servers); the client pipelines one TIME ahead
//    of its claims to report lease ends (redis_store.cc). Only Inspect's read-only script returns
//    TIME, with the TTL it reads.
//  - Durations arrive as decimal strings built by the client and go back to Redis unchanged:
//    the common paths format no numbers. (The rare ones that add durations format with '%.0f',
//    exact below 2^53; leases and retention stay below 2^40 ms.)
//  - A version-gate entry is a string of exactly 20 decimal digits, zero-padded (UINT64_MAX has
//    20). Lua's numbers are doubles, where 2^53 + 1 == 2^53, so versions are never converted
//    whole: version_ge() compares the two 10-digit halves, each below 10^10 and so exact as a
//    double. (Lua's own string `<` would do too, but it goes through strcoll and redis-server sets
//    LC_COLLATE from its environment: the halves do not depend on the locale.)
//  - Outcomes are values in the reply, never Lua errors: an error reply means the store failed.
//    A key that is not a format-1 record is the error IDEMDATA (DataLoss); a key of another type
//    (e.g. a hash written by an earlier idem) fails the script with WRONGTYPE, changing nothing.
#ifndef IDEM_BACKENDS_REDIS_SRC_REDIS_SCRIPTS_H_
#define IDEM_BACKENDS_REDIS_SRC_REDIS_SCRIPTS_H_

#include <array>
#include <cstddef>
#include <string_view>

namespace idem::internal::redis {

// Joins string constants at compile time, so that scripts can share Lua pieces (each script is
// loaded on its own and cannot call another's functions).
template <const std::string_view&... kParts>
struct JoinedScript {
  static constexpr auto kChars = [] {
    std::array<char, (kParts.size() + ...)> out{};
    std::size_t i = 0;
    for (std::string_view part : {kParts...}) {
      for (char c : part) out[i++] = c;
    }
    return out;
  }();
  static constexpr std::string_view kValue{kChars.data(), kChars.size()};
};

// version_ge(a, b): a >= b for two 20-digit versions, exact over the whole uint64 range. Shared by
// the claim's early gate and the completion's atomic one, so that both compare the same way.
inline constexpr std::string_view kVersionGe = R"lua(
-- a >= b for two 20-digit versions, exact over the whole uint64 range.
local function version_ge(a, b)
  local a_high, b_high = tonumber(string.sub(a, 1, 10)), tonumber(string.sub(b, 1, 10))
  if a_high ~= b_high then return a_high > b_high end
  return tonumber(string.sub(a, 11, 20)) >= tonumber(string.sub(b, 11, 20))
end
)lua";

// Reading a record, shared by every script that reads one (each script is loaded on its own, so the
// functions are joined into each):
//   read_record(key): the record at `key`, or nil when there is none; with a second result, the
//     IDEMDATA error reply to return when the key holds a string that is not a format-1 record.
//   owned_record(key, owner): the record at `key` while `owner` ('P' and the claim's token, the
//     record's bytes 2..10) owns its IN_PROGRESS claim; nil otherwise (fenced: the caller answers
//     0 and changes nothing), or nil and the IDEMDATA error reply. An ended lease alone does not
//     fence: only a takeover (a new token), a release or a completion does.
inline constexpr std::string_view kReadRecord = R"lua(
local function read_record(key)
  local record = redis.call('GET', key)
  if not record then return nil end
  if #record < 23 or string.byte(record, 1) ~= 1 then
    return nil, redis.error_reply('IDEMDATA the key does not hold an idem record (format 1)')
  end
  return record
end
local function owned_record(key, owner)
  local record, failure = read_record(key)
  if record and string.sub(record, 2, 10) ~= owner then return nil end
  return record, failure
end
)lua";

// Claim, or take over a released or expired claim.
//   KEYS[1]  the record
//   KEYS[2]  the version-gate entry (only when ARGV[4] is not empty)
//   ARGV[1]  the record of a new claim (IN_PROGRESS, the new token, attempt 1, keep,
//            fingerprint if any), built by the client
//   ARGV[2]  its TTL: lease + keep, ms          ARGV[3]  max_attempts, 0 = unlimited
//   ARGV[4]  version (20 digits) or ''
// Reply: the integer 1 when a new id was claimed (attempt 1), else {outcome, attempts, extra}:
//   'acquired'      attempts = this attempt, extra = 1 when an expired lease was taken over
//   'duplicate'     extra = the stored result, absent when none was saved
//   'in_progress'   extra = ms left in the live claim's lease
//   'stale'         extra = the applied version (20 digits)
//   'conflict', 'dead_lettered'
inline constexpr std::string_view kClaimBody = R"lua(
local key, fresh, ttl, version = KEYS[1], ARGV[1], ARGV[2], ARGV[4]

local old
if version == '' then
  -- The common case, a new id: one write and nothing else.
  if redis.call('SET', key, fresh, 'NX', 'PX', ttl) then return 1 end
end
local failure
old, failure = read_record(key)
if failure then return failure end

local attempts, took_over = 0, 0
local fingerprint = string.sub(fresh, 24, 39)  -- the request's, or ''
if old then
  local _, state, _, count, keep, flags = struct.unpack('>Bc1c8I4I8B', old)
  attempts = count
  local stored = ''
  if flags % 2 == 1 then stored = string.sub(old, 24, 39) end
  -- The same id with another payload is a conflict whatever the record's state.
  if fingerprint ~= '' and stored ~= '' and stored ~= fingerprint then
    return {'conflict', attempts}
  end
  if state == 'C' then
    if flags >= 2 then return {'duplicate', attempts, string.sub(old, 24 + #stored)} end
    return {'duplicate', attempts}
  end
  if state == 'P' then
    local left = redis.call('PTTL', key) - keep
    if left > 0 then return {'in_progress', attempts, left} end
    took_over = 1
  end
  if stored ~= '' then fingerprint = stored end
end

-- The early version gate only spares a stale handler; Complete repeats it atomically.
if version ~= '' then
  local applied = redis.call('GET', KEYS[2])
  if applied and version_ge(applied, version) then
    return {'stale', attempts, applied}
  end
end

if not old then
  redis.call('SET', key, fresh, 'PX', ttl)
  return 1
end
-- Released, or its lease expired: claim it again, keeping the count and a stored fingerprint.
local max_attempts = tonumber(ARGV[3])
if max_attempts > 0 and attempts >= max_attempts then
  return {'dead_lettered', attempts}
end
attempts = attempts + 1
local flags = 0
if fingerprint ~= '' then flags = 1 end
redis.call('SET', key, string.sub(fresh, 1, 10) .. struct.pack('>I4', attempts) ..
           string.sub(fresh, 15, 22) .. string.char(flags) .. fingerprint, 'PX', ttl)
return {'acquired', attempts, took_over}
)lua";

// Complete a claim, applying the version gate in the same atomic step.
//   KEYS[1]  the record               KEYS[2]  the version-gate entry (only with ARGV[4])
//   ARGV[1]  'P' and the claim's token: the record's bytes 2..10 while the token owns it
//   ARGV[2]  retention of the COMPLETED record, ms
//   ARGV[3]  the COMPLETED record's tail, built by the client: flags, fingerprint (if any),
//            result (if any). A fingerprint the claim stored stays.
//   ARGV[4]  version (20 digits), with KEYS[2]
// Reply: 1 completed, 2 stale (COMPLETED, the version not applied), 0 aborted (the token does
// not own an IN_PROGRESS claim; nothing changed). A completion is published on the channel named
// as the record's key, for WaitForCompletion (with no subscriber, PUBLISH costs next to nothing).
inline constexpr std::string_view kCompleteBody = R"lua(
local old, failure = owned_record(KEYS[1], ARGV[1])
if not old then return failure or 0 end

local outcome = 1
if KEYS[2] then
  local applied = redis.call('GET', KEYS[2])
  if applied and version_ge(applied, ARGV[4]) then
    outcome = 2
  else
    -- Version-gate entries never expire.
    redis.call('SET', KEYS[2], ARGV[4])
  end
end

local tail = ARGV[3]
if string.byte(old, 23) % 2 == 1 then
  local flags = string.byte(tail, 1)
  local stored = string.sub(old, 24, 39)
  if flags % 2 == 0 then
    tail = string.char(flags + 1) .. stored .. string.sub(tail, 2)
  elseif string.sub(tail, 2, 17) ~= stored then
    tail = string.char(flags) .. stored .. string.sub(tail, 18)
  end
end
-- The header (token, attempts, keep) stays; only the state changes.
redis.call('SET', KEYS[1], '\1C' .. string.sub(old, 3, 22) .. tail, 'PX', ARGV[2])
-- Tells a delivery waiting for this claim (WaitForCompletion), on the channel named as the key.
redis.call('PUBLISH', KEYS[1], 'completed')
return outcome
)lua";

// Release a claim: claimable again at once, attempts kept.
//   KEYS[1]  the record
//   ARGV[1]  'P' and the claim's token: the record's bytes 2..10 while the token owns it
//   ARGV[2]  how long the released record (and its attempt count) is kept, ms
// Reply: 1 released, 0 the token does not own an IN_PROGRESS claim (nothing changed).
inline constexpr std::string_view kReleaseBody = R"lua(
local old, failure = owned_record(KEYS[1], ARGV[1])
if not old then return failure or 0 end
redis.call('SET', KEYS[1], '\1R' .. string.sub(old, 3), 'PX', ARGV[2])
redis.call('PUBLISH', KEYS[1], 'released')
return 1
)lua";

// Extend a claim's lease to now + lease: the record's TTL becomes lease + its keep.
//   KEYS[1]  the record
//   ARGV[1]  'P' and the claim's token: the record's bytes 2..10 while the token owns it
//   ARGV[2]  lease, ms
// Reply: 1 extended, 0 the token does not own an IN_PROGRESS claim (nothing changed).
inline constexpr std::string_view kExtendBody = R"lua(
local old, failure = owned_record(KEYS[1], ARGV[1])
if not old then return failure or 0 end
local keep = struct.unpack('>I8', old, 15)
redis.call('PEXPIRE', KEYS[1], string.format('%.0f', tonumber(ARGV[2]) + keep))
return 1
)lua";

// What Inspect reads, in one atomic step and without a transaction: the record (false when
// absent), its TTL and the server's clock, so that lease and expiry are read against one instant.
// MULTI/EXEC would do the same, but Redis refuses commands queued in MULTI once used memory is
// above maxmemory, which is when an operator most needs to look; a script that only reads runs.
// The record is decoded by the client (a string that is not a record is reported as DataLoss).
//   KEYS[1]  the record
// Reply: {record or nil, PTTL, {seconds, microseconds}}
inline constexpr std::string_view kInspectScript = R"lua(
return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1]), redis.call('TIME')}
)lua";

inline constexpr std::string_view kClaimScript =
    JoinedScript<kVersionGe, kReadRecord, kClaimBody>::kValue;
inline constexpr std::string_view kCompleteScript =
    JoinedScript<kVersionGe, kReadRecord, kCompleteBody>::kValue;
inline constexpr std::string_view kReleaseScript = JoinedScript<kReadRecord, kReleaseBody>::kValue;
inline constexpr std::string_view kExtendScript = JoinedScript<kReadRecord, kExtendBody>::kValue;

}  // namespace idem::internal::redis

#endif  // IDEM_BACKENDS_REDIS_SRC_REDIS_SCRIPTS_H_
