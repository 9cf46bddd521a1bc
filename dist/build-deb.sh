#!/usr/bin/env bash
# Build the Debian package of mcrelay with dpkg-deb (no cargo-deb, no debhelper).
#
#   dist/build-deb.sh [OUTDIR]      default OUTDIR: target/debian
#
# Builds the static release binary (`cargo build --release --locked`; MCRELAY_SKIP_BUILD=1 uses
# the binary already built), lays out the package tree in a temporary directory and writes
# OUTDIR/mcrelay_<version>_<arch>.deb, whose path it prints last. Needs dpkg-deb, gzip, and
# Rust 1.91+ for the build. Runs lintian on the result when lintian is installed
# (MCRELAY_LINTIAN=0 skips it); any lintian error or warning fails the build.
set -euo pipefail
cd "$(dirname "$0")/.."

out_dir=${1:-target/debian}
upstream=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
revision=1
version="$upstream-$revision"
arch=$(dpkg --print-architecture)
triple=$(rustc -vV | sed -n 's/^host: //p')
bin="target/$triple/release/mcrelay"

# The Debian changelog must describe this version.
changelog_version=$(sed -n '1s/^mcrelay (\([^)]*\)).*/\1/p' dist/debian/changelog)
if [ "$changelog_version" != "$version" ]; then
    echo "build-deb: dist/debian/changelog is for $changelog_version, Cargo.toml says $version" >&2
    exit 1
fi

if [ "${MCRELAY_SKIP_BUILD:-0}" != 1 ]; then
    cargo build --release --locked
fi
[ -x "$bin" ] || { echo "build-deb: $bin not built" >&2; exit 1; }

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
chmod 0755 "$root"
doc="$root/usr/share/doc/mcrelay"

install -D -m 0755 "$bin" "$root/usr/bin/mcrelay"
install -D -m 0644 dist/mcrelay.service "$root/lib/systemd/system/mcrelay.service"
install -D -m 0644 dist/mcrelay.env "$root/etc/default/mcrelay"
install -D -m 0644 dist/debian/copyright "$doc/copyright"
install -d -m 0755 "$doc"
gzip -9n < dist/debian/changelog > "$doc/changelog.Debian.gz"
chmod 0644 "$doc/changelog.Debian.gz"
# The unit's Documentation= points at these; they stay uncompressed so that a browser or
# `less` opens them as they are.
for f in docs/operations.md docs/control.md docs/monitoring.md README.md; do
    [ -f "$f" ] && install -m 0644 "$f" "$doc/$(basename "$f")"
done
install -m 0644 dist/mcrelay-rules.yml "$doc/mcrelay-rules.yml"
install -D -m 0644 dist/debian/lintian-overrides "$root/usr/share/lintian/overrides/mcrelay"

# mcrelay(1), made from the binary's own --help texts so that it cannot drift from them.
install -d -m 0755 "$root/usr/share/man/man1"
roff() { sed -e 's/\\/\\e/g' -e "s/^\([.']\)/\\\&\1/" -e 's/-/\\-/g'; }
{
    echo ".TH MCRELAY 1 \"$(date -u -d "@${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}" +%Y-%m-%d)\" \"mcrelay $upstream\" \"User Commands\""
    echo ".SH NAME"
    echo "mcrelay \\- secure, manageable UDP multicast relay"
    echo ".SH SYNOPSIS"
    echo ".B mcrelay"
    echo ".I command"
    echo "[flags]"
    echo ".SH DESCRIPTION"
    echo ".nf"
    "$bin" --help | roff
    echo ".fi"
    for c in serve client ctl keygen; do
        echo ".SH \"MCRELAY $(echo $c | tr a-z A-Z)\""
        echo ".nf"
        "$bin" "$c" --help | roff
        echo ".fi"
    done
    echo ".SH FILES"
    echo ".TP"
    echo ".I /etc/default/mcrelay"
    echo "settings of the systemd service (MCRELAY_* variables)"
    echo ".TP"
    echo ".I /var/lib/mcrelay/relay_key.pem"
    echo "the relay's RSA key (mode 0600), created on the first start"
    echo ".SH SEE ALSO"
    echo "/usr/share/doc/mcrelay/operations.md, /usr/share/doc/mcrelay/control.md, /usr/share/doc/mcrelay/monitoring.md"
} | gzip -9n > "$root/usr/share/man/man1/mcrelay.1.gz"
chmod 0644 "$root/usr/share/man/man1/mcrelay.1.gz"

install -d -m 0755 "$root/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" \
    dist/debian/control.in > "$root/DEBIAN/control"
install -m 0644 dist/debian/conffiles "$root/DEBIAN/conffiles"
for s in postinst prerm postrm; do
    install -m 0755 "dist/debian/$s" "$root/DEBIAN/$s"
done
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z |
    xargs -0 md5sum) > "$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/md5sums"

mkdir -p "$out_dir"
deb="$out_dir/mcrelay_${version}_${arch}.deb"
# Owners root:root without fakeroot; xz like the archive's packages.
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null

if [ "${MCRELAY_LINTIAN:-1}" != 0 ] && command -v lintian >/dev/null; then
    lintian --fail-on error,warning "$deb" >&2
fi
echo "$deb"
