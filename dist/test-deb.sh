#!/usr/bin/env bash
# Build the Debian package, install it, check it, remove and purge it.
#
#   dist/test-deb.sh [DEB]      (as root; DEB defaults to a fresh dist/build-deb.sh build)
#
# Checks: lintian clean (dist/build-deb.sh); `dpkg -i` works; /usr/bin/mcrelay runs; the unit
# is installed and enabled, `systemd-analyze verify` accepts it as installed (nothing on stderr: verify
# exits 0 even on unknown keys); the mcrelay system user exists; /etc/default/mcrelay is a
# conffile; `dpkg -r` removes the files but keeps the conffile; `dpkg -P` removes the
# conffile and the state directory. Refuses to run where mcrelay is already installed.
# MCRELAY_SKIP_BUILD=1 packages the release binary already built.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "test-deb: FAIL: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "must run as root (dpkg -i)"
if dpkg-query -W -f='${Status}' mcrelay 2>/dev/null | grep -q 'ok installed'; then
    fail "mcrelay is already installed on this machine; not touching it"
fi
for tool in dpkg-deb systemd-analyze adduser; do
    command -v "$tool" >/dev/null || fail "$tool is missing"
done

t0=$(date +%s)
deb=${1:-}
if [ -z "$deb" ]; then
    deb=$(dist/build-deb.sh "${TMPDIR:-/tmp}/mcrelay-test-deb" | tail -n 1)
    echo "test-deb: built $deb in $(( $(date +%s) - t0 )) s"
fi

cleanup() { dpkg -P mcrelay >/dev/null 2>&1 || true; }
trap cleanup EXIT

dpkg -i "$deb" || fail "dpkg -i"
/usr/bin/mcrelay --help >/dev/null || fail "/usr/bin/mcrelay --help"
/usr/bin/mcrelay serve --help | grep -q MCRELAY_IFACE || fail "mcrelay serve --help"
[ -f /lib/systemd/system/mcrelay.service ] || fail "unit not installed"
verify=$(systemd-analyze verify /lib/systemd/system/mcrelay.service 2>&1) || fail "systemd-analyze verify: $verify"
[ -z "$verify" ] || fail "systemd-analyze verify complained: $verify"
getent passwd mcrelay >/dev/null || fail "no mcrelay user"
getent group mcrelay >/dev/null || fail "no mcrelay group"
[ "$(getent passwd mcrelay | cut -d: -f7)" = /usr/sbin/nologin ] || fail "mcrelay user has a login shell"
dpkg-query -W -f='${Conffiles}\n' mcrelay | grep -q '/etc/default/mcrelay' || fail "/etc/default/mcrelay is not a conffile"
[ -L /etc/systemd/system/multi-user.target.wants/mcrelay.service ] || fail "unit not enabled"
man -w mcrelay >/dev/null 2>&1 || [ -f /usr/share/man/man1/mcrelay.1.gz ] || fail "no man page"
echo "test-deb: installed and checked"

# The relay runs as the packaged user with the packaged settings (no systemd needed here):
# it creates its key 0600 where the unit says, answers `ctl ping` and the HTTP monitor's
# /healthz, and stops on SIGTERM.
state=$(mktemp -d)
chown mcrelay:mcrelay "$state"
port=$((20000 + RANDOM % 20000))
env -i PATH=/usr/bin:/bin MCRELAY_KEY_FILE="$state/relay_key.pem" MCRELAY_PORT="$port" \
    MCRELAY_CONTROL="127.0.0.1:$((port + 1))" MCRELAY_MONITOR="127.0.0.1:$((port + 2))" setpriv --reuid=mcrelay --regid=mcrelay --clear-groups \
    /usr/bin/mcrelay serve 2>"$state/log" &
pid=$!
for _ in $(seq 50); do
    /usr/bin/mcrelay ctl --control "127.0.0.1:$((port + 1))" ping >/dev/null 2>&1 && break
    sleep 0.2
done
/usr/bin/mcrelay ctl --control "127.0.0.1:$((port + 1))" ping >/dev/null || fail "relay did not answer: $(cat "$state/log")"
[ "$(stat -c '%a %U' "$state/relay_key.pem")" = "600 mcrelay" ] || fail "key file not 0600 mcrelay"
health=$(exec 3<>"/dev/tcp/127.0.0.1/$((port + 2))" && printf 'GET /healthz HTTP/1.0\r\n\r\n' >&3 && cat <&3) ||
    fail "monitor did not answer"
grep -q '"status":"ok"' <<<"$health" || fail "monitor /healthz: $health"
kill -TERM "$pid"
wait "$pid" || fail "relay exited non-zero on SIGTERM"
rm -rf "$state"
echo "test-deb: ran as mcrelay, key 0600, monitor answered, clean stop"

dpkg -r mcrelay || fail "dpkg -r"
[ ! -e /usr/bin/mcrelay ] || fail "/usr/bin/mcrelay left after remove"
[ ! -e /lib/systemd/system/mcrelay.service ] || fail "unit left after remove"
[ -f /etc/default/mcrelay ] || fail "conffile removed by dpkg -r (only purge should)"
dpkg -P mcrelay || fail "dpkg -P"
[ ! -e /etc/default/mcrelay ] || fail "conffile left after purge"
[ ! -e /var/lib/mcrelay ] || fail "/var/lib/mcrelay left after purge"
[ ! -e /etc/systemd/system/multi-user.target.wants/mcrelay.service ] || fail "enable symlink left after purge"
if dpkg-query -W mcrelay >/dev/null 2>&1 && dpkg-query -W -f='${Status}' mcrelay | grep -qv 'not-installed'; then
    fail "package still known to dpkg: $(dpkg-query -W -f='${Status}' mcrelay)"
fi
trap - EXIT
echo "test-deb: removed and purged cleanly (the mcrelay user stays, as Debian policy advises)"
echo "test-deb: 1 passed, 0 failed ($(( $(date +%s) - t0 )) s)"
