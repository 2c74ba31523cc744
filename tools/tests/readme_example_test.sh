#!/usr/bin/env bash
# The README's "Wrapping a handler" block is examples/quickstart.cc from its first #include, and
# that program behaves as the README says: on a fresh store, a delivery is processed, its
# redelivery is a duplicate and an older version is stale; when the store refuses a claim
# (memory:?capacity=1) or cannot be opened, it says so and never crashes.
set -euo pipefail
readme=$1 source=$2 quickstart=$3 work=$4
rm -rf "$work" && mkdir -p "$work"
fail() { echo "FAIL: $*" >&2; exit 1; }

awk '/^## Wrapping a handler/{s=1} s&&/^```cpp$/{c=1;next} c&&/^```$/{exit} c' "$readme" >"$work/readme.cc"
sed -n '/^#include/,$p' "$source" >"$work/source.cc"
diff -u "$work/source.cc" "$work/readme.cc" || fail "README block differs from $source"

out=$("$quickstart" "sqlite:$work/q.db")
grep -qx 'order-7 -> ack (processed)' <<<"$out" || fail "first delivery: $out"
grep -q '^order-7 -> ack (duplicate' <<<"$out" || fail "redelivery: $out"
grep -qx 'order-8 -> ack (processed)' <<<"$out" || fail "second id: $out"
grep -q '^order-6 -> ack (stale' <<<"$out" || fail "older version: $out"
[ "$(grep -c 'charged:' <<<"$out")" = 2 ] || fail "the handler must run once per id: $out"

# The store refuses the second id: the handler does not run, the message is not acked.
out=$("$quickstart" "memory:?capacity=1" 2>"$work/err") || fail "store-refused path exited non-zero"
grep -q '^order-8 -> nack' <<<"$out" || fail "refused claim must be nacked: $out"
grep -q 'RESOURCE_EXHAUSTED' "$work/err" || fail "store error not reported: $(cat "$work/err")"
[ "$(grep -c 'charged:' <<<"$out")" = 1 ] || fail "no handler run on a refused claim: $out"

# A store that cannot be reached: a clear error and exit 1, no abort.
set +e
"$quickstart" "redis://127.0.0.1:1/0" >/dev/null 2>"$work/err"; rc=$?
set -e
[ $rc = 1 ] || fail "unreachable store must exit 1, got $rc: $(cat "$work/err")"
echo "README example: all checks passed"
