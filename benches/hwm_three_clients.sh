#!/usr/bin/env bash
# VmHWM / VmRSS of `mcrelay serve` with three `mcrelay client`s connected, on loopback (TTL 0).
# Usage: benches/hwm_three_clients.sh [path/to/mcrelay]
#        (default: the release build, target/<host triple>/release/mcrelay)
set -euo pipefail
host=$(rustc -vV | sed -n "s/^host: //p")
B=${1:-target/$host/release/mcrelay}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$B" keygen --key-file "$dir/k.pem" >/dev/null
"$B" serve --port 47207 --group 239.255.9.29 --control 127.0.0.1:47208 \
    --key-file "$dir/k.pem" --log-level warn 2>/dev/null &
S=$!
sleep 0.7
for _ in 1 2 3; do
    (sleep 4 | "$B" client --port 47207 --group 239.255.9.29 --ttl 0 --known-relays off >/dev/null 2>&1 &)
done
sleep 1.5
"$B" ctl --control 127.0.0.1:47208 stats | grep '^clients '
grep -E "VmHWM|VmRSS" "/proc/$S/status"
"$B" ctl --control 127.0.0.1:47208 shutdown >/dev/null
wait "$S"
