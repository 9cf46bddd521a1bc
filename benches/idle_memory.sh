#!/usr/bin/env bash
# Where an idle `mcrelay serve`'s resident memory is: VmRSS split into anonymous and
# file-backed pages, and PSS (file pages shared with other processes counted by share).
# Three runs, each a fresh process, loopback only; prints each run and the median.
# Usage: benches/idle_memory.sh [path/to/mcrelay]
#        (default: the release build, target/<host triple>/release/mcrelay)
set -euo pipefail
host=$(rustc -vV | sed -n 's/^host: //p')
B=${1:-target/$host/release/mcrelay}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$B" keygen --key-file "$dir/k.pem" >/dev/null
field() { awk -v k="$1" '$1 == k":" { print $2 }' "$2"; }
printf '%-4s %9s %9s %9s %9s\n' run VmRSS RssAnon RssFile Pss
for run in 1 2 3; do
    "$B" serve --port 47209 --group 239.255.9.30 --control off --key-file "$dir/k.pem" \
        --log-level warn 2>/dev/null &
    S=$!
    sleep 1
    printf '%-4s %9s %9s %9s %9s\n' "$run" "$(field VmRSS /proc/$S/status)" \
        "$(field RssAnon /proc/$S/status)" "$(field RssFile /proc/$S/status)" \
        "$(field Pss /proc/$S/smaps_rollup)"
    kill -TERM "$S"
    wait "$S" || true
done | tee "$dir/runs"
# Median of the three runs, per column (KiB).
printf '%-4s' med
for col in 2 3 4 5; do
    printf ' %9s' "$(tail -n 3 "$dir/runs" | awk -v c=$col '{ print $c }' | sort -n | sed -n 2p)"
done
echo
