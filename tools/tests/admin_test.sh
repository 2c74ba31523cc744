#!/usr/bin/env bash
# idem-admin against a real SQLite file written by the quick start example.
set -euo pipefail
quickstart=$1 admin=$2 work=$3
rm -rf "$work" && mkdir -p "$work"
db="sqlite:$work/idem.db"
"$quickstart" "$db" >/dev/null

fail() { echo "FAIL: $*" >&2; exit 1; }
out=$("$admin" --store "$db" inspect billing/order-events order-7)
grep -q '^state       COMPLETED$' <<<"$out" || fail "order-7 not COMPLETED: $out"
grep -q '^result      "receipt-order-7"$' <<<"$out" || fail "result missing: $out"
[ "$("$admin" --store "$db" version billing/order-events user-1)" = 8 ] || fail "version of user-1"
# order-7 in hex is 6f726465722d37.
"$admin" --store "$db" --hex inspect billing/order-events 6f726465722d37 | grep -q COMPLETED ||
  fail "hex id"
set +e
"$admin" --store "$db" inspect billing/order-events no-such-id >/dev/null; [ $? = 1 ] || fail "absent id must exit 1"
"$admin" --store "$db" inspect "bad scope" x 2>/dev/null; [ $? = 2 ] || fail "bad scope must exit 2"
"$admin" --store "sqlite://host/x.db" purge 2>/dev/null; [ $? = 2 ] || fail "malformed URI must exit 2"
"$admin" --store "$db" --hex inspect s zz 2>/dev/null; [ $? = 2 ] || fail "bad hex must exit 2"
"$admin" --store "$db" --bogus=1 purge 2>/dev/null; [ $? = 2 ] || fail "unknown flag must exit 2"
"$admin" purge 2>/dev/null; [ $? = 2 ] || fail "missing --store must exit 2"
set -e
"$admin" --store "$db" purge | grep -q '^purged 0$' || fail "purge"
# Both spellings of the flag operators type (one dash or two) are read, not refused as unknown.
"$admin" --store "$db" -max-attempts=3 stats billing/order-events >/dev/null ||
  fail "-max-attempts must be read like --max-attempts"
"$admin" --store "$db" --max-attempts=3 stats billing/order-events >/dev/null ||
  fail "--max-attempts"
# A password in a store URI never reaches the terminal, whatever shape the URI has.
for uri in "redis://user:Hunter2-Pw@127.0.0.1:1/0" "redis://Hunter2-Pw@127.0.0.1:1/0" \
           "unix://Hunter2-Pw@/nonexistent.sock" "redis://user:Hunter2/Pw@127.0.0.1:1/0" \
           "redis://u:Hunter2@Pw@127.0.0.1:1/0" "redis://127.0.0.1:1/0?password=Hunter2-Pw" \
           "redis://127.0.0.1:1/0?password=Hunter2-Pw&bogus=1" "sqlite://u:Hunter2-Pw@/x.db"; do
  set +e
  "$admin" --store "$uri" inspect s x >"$work/out" 2>&1
  set -e
  if grep -q Hunter2 "$work/out"; then fail "password shown for $uri: $(cat "$work/out")"; fi
  grep -q . "$work/out" || fail "no error printed for $uri"
done
echo "idem-admin: all checks passed"
