// The Lua scripts of cluster mode's route pointers. Private to the Redis backend.
//
// In cluster mode every key of a message carries the hash tag of its route key (redis_cluster.h):
// the version key when the message has one, else its id, so that a record and the version-gate
// entry its completion raises share a slot and one script updates both. Claim and Complete carry
// the version key and so find the record by themselves; Release, Extend, Inspect, ResetAttempts
// and WaitForCompletion get (scope, id) only. For them, a message whose route is a version key
// other than its id has a route pointer: a string key in its id's slot,
//   {tag(id)}<len(prefix)>:<prefix>:p:<len(scope)>:<scope>:<id>  ->  the version key,
// written before the record is claimed, so a record whose route is not its id always has a
// pointer, and kept at least as long as the record (see docs/design.md, "Scale-out").
//
// The pointer and the id-routed record share the id's slot, so each script here touches one slot.
#ifndef IDEM_BACKENDS_REDIS_SRC_REDIS_CLUSTER_SCRIPTS_H_
#define IDEM_BACKENDS_REDIS_SRC_REDIS_CLUSTER_SCRIPTS_H_

#include <string_view>

#include "redis_scripts.h"

namespace idem::internal::redis {

// Writes or keeps the route pointer of a versioned message, before its record is claimed (and
// before a completion that keeps the record longer than the pointer's TTL covers).
//   KEYS[1]  the pointer            KEYS[2]  the record as routed by the id
//   ARGV[1]  the route (version key)   ARGV[2]  the pointer's least TTL, ms
// Reply: 1 the pointer holds ARGV[1] and lives at least ARGV[2] ms; {route} it holds another
// version key, `route` (nothing changed); 2 the id has a record routed by the id, i.e. it was
// delivered before without a version key (nothing changed). In both refusals the client claims
// at the record the id already has, without the version gate: the same id with another payload is
// a conflict there, as on a single server.
inline constexpr std::string_view kPointerScript = R"lua(
if redis.call('EXISTS', KEYS[2]) == 1 then return 2 end
local old = redis.call('GET', KEYS[1])
if not old then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if old ~= ARGV[1] then return {old} end
local left = redis.call('PTTL', KEYS[1])
if left >= 0 and left < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
)lua";

// Finds where the record of (scope, id) lives.
//   KEYS[1]  the record as routed by the id      KEYS[2]  the pointer
//   ARGV[1]  '0', or a least TTL (ms) the pointer is raised to first (Extend: the record will
//            live that long)
// Reply: 1 the record routed by the id exists; 0 neither it nor a pointer exists; {route} the
// record is routed by this version key.
inline constexpr std::string_view kRouteScript = R"lua(
if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
local route = redis.call('GET', KEYS[2])
if not route then return 0 end
if ARGV[1] ~= '0' then
  local left = redis.call('PTTL', KEYS[2])
  if left >= 0 and left < tonumber(ARGV[1]) then redis.call('PEXPIRE', KEYS[2], ARGV[1]) end
end
return {route}
)lua";

// The claim of a message without a version key in cluster mode: the claim script (redis_scripts.h),
// called with KEYS[2] = the id's route pointer and ARGV[5] = 'route', first answers
// {'route', 0, version key} when the id has a pointer: it was delivered before with a version key,
// so its record is routed by that key, and the client claims there (without a version gate).
inline constexpr std::string_view kRouteCheck = R"lua(
if ARGV[5] == 'route' then
  local route = redis.call('GET', KEYS[2])
  if route then return {'route', 0, route} end
end
)lua";
inline constexpr std::string_view kClusterClaimScript =
    JoinedScript<kVersionGe, kReadRecord, kRouteCheck, kClaimBody>::kValue;

}  // namespace idem::internal::redis

#endif  // IDEM_BACKENDS_REDIS_SRC_REDIS_CLUSTER_SCRIPTS_H_
