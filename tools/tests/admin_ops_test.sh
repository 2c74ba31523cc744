#!/usr/bin/env bash
# idem-admin's list, release, reset and stats (and --json) against one real store, given by URI:
# run once per backend (tools/CMakeLists.txt). admin_fixture puts the records in place.
set -euo pipefail
admin=$1 fixture=$2 uri=$3
fail() { echo "FAIL: $*" >&2; exit 1; }
# A scope of its own per run: a server's data outlives one test run.
scope="ops/admin-$$-$RANDOM"
A() { "$admin" --store "$uri" "$@"; }
F() { "$fixture" "$uri" "$@"; }
rc() { set +e; "$@" >/dev/null 2>&1; local r=$?; set -e; echo $r; }

# One record per state: stuck (lease 300 ms, then passed), live, done, dead (2 attempts,
# released), and an id with a quote, a backslash and a control byte.
stuck_token=$(F claim "$scope" stuck 300)
live_token=$(F claim "$scope" live 60000)
done_token=$(F claim "$scope" done 60000)
F complete "$scope" done "$done_token" receipt
for i in 1 2; do dead_token=$(F claim "$scope" dead 60000); F release "$scope" dead "$dead_token"; done
odd=$'we"ird\\\x01'
F claim "$scope" "$odd" 60000 >/dev/null
sleep 0.6

ids() { jq -r '[.records[].id_hex] | sort | join(" ")'; }
hex() { printf '%s' "$1" | od -An -tx1 | tr -d ' \n'; }
[ "$(A --json list "$scope" --state stuck | ids)" = "$(hex stuck)" ] || fail "stuck"
[ "$(A --json list "$scope" --state completed | ids)" = "$(hex done)" ] || fail "completed"
[ "$(A --json list "$scope" --state released | ids)" = "$(hex dead)" ] || fail "released"
[ "$(A --json list "$scope" --state dead_lettered --max-attempts 2 | ids)" = "$(hex dead)" ] ||
  fail "dead_lettered"
inprog=$(A --json list "$scope" --state in_progress | ids)
[ "$inprog" = "$(printf '%s\n' "$(hex live)" "$(hex stuck)" "$(hex "$odd")" | sort | xargs)" ] ||
  fail "in_progress: $inprog"
# The odd id survives JSON (jq decodes \u0001 back) and text output escapes it.
A --json list "$scope" --state in_progress | jq -e --arg odd "$odd" 'any(.records[]; .id == $odd)' \
  >/dev/null || fail "odd id not round-tripped through JSON"
A list "$scope" --state in_progress | grep -qF '"we\"ird\\\x01"' || fail "odd id in text: $(A list "$scope")"

# Pages of 2 with a cursor, in text and JSON, cover every record once.
seen=() cursor=""
for _ in $(seq 1 10); do
  page=$(A --json list "$scope" --limit 2 ${cursor:+--cursor "$cursor"})
  [ "$(jq '.records | length' <<<"$page")" -le 2 ] || fail "page over the limit"
  seen+=($(jq -r '.records[].id_hex' <<<"$page"))
  cursor=$(jq -r '.next_cursor // empty' <<<"$page")
  [ -n "$cursor" ] || break
done
[ -z "$cursor" ] || fail "listing did not end"
[ "$(printf '%s\n' "${seen[@]}" | sort -u | wc -l)" = 5 ] || fail "pages saw ${seen[*]}"
A list "$scope" --limit 1 | grep -q '^next_cursor ' || fail "text page without next_cursor"

stats=$(A --json stats "$scope" --max-attempts 2)
[ "$(jq -c '[.records,.in_progress,.stuck,.released,.completed,.dead_lettered]' <<<"$stats")" = \
  "[5,3,1,1,1,1]" ] || fail "stats: $stats"
A stats "$scope" | grep -q '^stuck *1$' || fail "text stats"

# release: fenced by the token list showed.
token=$(A --json list "$scope" --state stuck | jq -r '.records[0].token')
[ "$token" = "$stuck_token" ] || fail "list shows token $token, the claim has $stuck_token"
[ "$(rc A release "$scope" stuck "$live_token")" = 1 ] || fail "release with another token must exit 1"
A --json release "$scope" stuck "$token" | jq -e '.released == true' >/dev/null || fail "release"
A --json inspect "$scope" stuck | jq -e '.state == "RELEASED" and .attempts == 1' >/dev/null ||
  fail "released record: $(A inspect "$scope" stuck)"
[ "$(rc A release "$scope" stuck "$token")" = 1 ] || fail "second release must exit 1"
[ "$(rc F complete "$scope" stuck "$stuck_token" late)" = 1 ] || fail "the owner's completion must be refused"
[ "$(rc A release "$scope" live notatoken)" = 2 ] || fail "bad token must exit 2"

# reset: a dead letter is re-driven; a live claim, a completed record and an absent id are refused.
[ "$(F claim_status "$scope" dead 2)" = dead_lettered ] || fail "dead not dead-lettered"
[ "$(rc A reset "$scope" dead "$live_token")" = 1 ] || fail "reset with another token must exit 1"
A reset "$scope" dead "$dead_token" | grep -q '^reset "dead"$' || fail "reset"
A --json inspect "$scope" dead | jq -e '.attempts == 0 and .state == "RELEASED"' >/dev/null ||
  fail "reset record: $(A inspect "$scope" dead)"
[ "$(F claim_status "$scope" dead 2)" = acquired ] || fail "dead not re-driven"
[ "$(rc A reset "$scope" live "$live_token")" = 1 ] || fail "reset of a live claim must exit 1"
[ "$(rc A reset "$scope" done "$done_token")" = 1 ] || fail "reset of a completed record must exit 1"
[ "$(rc A reset "$scope" absent 7)" = 1 ] || fail "reset of an absent id must exit 1"
A --json inspect "$scope" live | jq -e '.state == "IN_PROGRESS"' >/dev/null || fail "live changed"

# Usage errors exit 2.
[ "$(rc A list "$scope" --state dead_lettered)" = 2 ] || fail "dead_lettered without --max-attempts"
[ "$(rc A list "$scope" --state bogus)" = 2 ] || fail "bad --state"
[ "$(rc A list "$scope" --cursor not-a-cursor)" = 2 ] || fail "bad cursor"
[ "$(rc A list "bad scope")" = 2 ] || fail "bad scope"
[ "$(rc A reset "$scope" dead)" = 2 ] || fail "missing token"
[ "$(rc A --json version "$scope" nokey)" = 1 ] || fail "absent version must exit 1"
{ A --json version "$scope" nokey || true; } | jq -e '.version == null' >/dev/null || fail "json version"
{ A --json inspect "$scope" absent || true; } | jq -e '.found == false' >/dev/null || fail "json absent"
echo "idem-admin ops on $("$admin" --store "$uri" --json stats "$scope" >/dev/null && echo "${uri%%:*}"): all checks passed"
