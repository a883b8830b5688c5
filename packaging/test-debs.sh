#!/usr/bin/env bash
# Checks the .deb packages cargo-deb built (target/**/debian/*.deb): their
# control data and contents (dpkg-deb -I/-c), that each binary is built for
# the package's architecture, and installs the amd64 pair into a scratch
# root with dpkg --root (maintainer scripts run chrootless with DPKG_ROOT):
# the user, /etc/baton, one identity each, enabled units, nothing touched
# outside the root, and a purge that keeps the identities.
#
# Usage: packaging/test-debs.sh DEB...   (run as root, as CI does)
set -euo pipefail
fail() { echo "FAIL: $*" >&2; exit 1; }
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT

# ELF e_machine (bytes 18-19, little endian) per Debian architecture
declare -A machine=([amd64]=62 [arm64]=183 [armhf]=40)

for deb in "$@"; do
    pkg=$(dpkg-deb -f "$deb" Package)
    arch=$(dpkg-deb -f "$deb" Architecture)
    [ -n "${machine[$arch]:-}" ] || fail "$deb: unexpected architecture $arch"
    contents=$(dpkg-deb -c "$deb" | awk '{ print $6 }')
    want=("./usr/bin/$pkg" "./usr/lib/systemd/system/$pkg.service"
        "./usr/lib/sysusers.d/$pkg.conf" "./usr/lib/tmpfiles.d/$pkg.conf"
        "./etc/baton/${pkg#baton-}.toml")
    [ "$pkg" = baton-agent ] && want+=(./usr/lib/systemd/system/baton-agent-keygen.service ./usr/lib/baton/baton-firstboot)
    for f in "${want[@]}"; do grep -qx -- "$f" <<<"$contents" || fail "$deb lacks $f"; done
    dpkg-deb -I "$deb" conffiles | grep -qx "/etc/baton/${pkg#baton-}.toml" || fail "$deb: config is not a conffile"
    dpkg-deb -I "$deb" postinst | grep -q 'keygen' || fail "$deb: postinst makes no identity"
    dpkg-deb -I "$deb" postinst | grep -q "deb-systemd-helper enable $pkg.service" || fail "$deb: unit not enabled"
    if dpkg-deb -I "$deb" postinst | grep -q "deb-systemd-invoke start"; then fail "$deb: starts before it is configured"; fi
    mkdir -p "$t/x"
    dpkg-deb -x "$deb" "$t/x"
    m=$(od -An -tu2 -j18 -N2 "$t/x/usr/bin/$pkg" | tr -d ' ')
    [ "$m" = "${machine[$arch]}" ] || fail "$deb: /usr/bin/$pkg is for ELF machine $m, not $arch"
    rm -rf "$t/x"
    printf '%-50s %s %9d bytes (binary %d)\n' "$(basename "$deb")" "$arch" "$(stat -c %s "$deb")" \
        "$(dpkg-deb --fsys-tarfile "$deb" | tar -xO "./usr/bin/$pkg" | wc -c)"
done

# --- the amd64 pair, installed into a scratch root ---------------------------
amd64=()
for deb in "$@"; do [ "$(dpkg-deb -f "$deb" Architecture)" = amd64 ] && amd64+=("$deb"); done
((${#amd64[@]})) || fail "no amd64 package to install"
R="$t/root"
mkdir -p "$R/var/lib/dpkg/info" "$R/var/lib/dpkg/updates" "$R/var/lib/dpkg/triggers" "$R/etc"
touch "$R/var/lib/dpkg/status" "$R/var/lib/dpkg/available"
grep '^root:' /etc/passwd >"$R/etc/passwd"
grep '^root:' /etc/group >"$R/etc/group"
host_wants=$(ls /etc/systemd/system/multi-user.target.wants/ 2>/dev/null || true)
dpkg_root() {
    # the scratch root has no libc6 in its database: --force-depends
    DPKG_ROOT=$R dpkg --root="$R" --force-script-chrootless --force-depends --log=/dev/null "$@"
}
dpkg_root -i "${amd64[@]}" >"$t/install.log" 2>&1 || { cat "$t/install.log"; fail "dpkg -i into the scratch root"; }
[ "$(ls /etc/systemd/system/multi-user.target.wants/ 2>/dev/null || true)" = "$host_wants" ] ||
    fail "installing into the scratch root enabled units on the host"
uid=$(awk -F: '$1 == "baton" { print $3 }' "$R/etc/passwd")
[ -n "$uid" ] || fail "no baton user in the root's passwd"
gid=$(awk -F: '$1 == "baton" { print $3 }' "$R/etc/group")
[ "$(stat -c '%a %g' "$R/etc/baton")" = "750 $gid" ] || fail "/etc/baton is not 0750 root:baton"
for deb in "${amd64[@]}"; do
    pkg=$(dpkg-deb -f "$deb" Package)
    name=${pkg#baton-}
    grep -q "^Package: $pkg\$" "$R/var/lib/dpkg/status" || fail "$pkg not in the root's dpkg database"
    [ "$(stat -c '%a %u' "$R/etc/baton/$name.key")" = "600 $uid" ] || fail "$name.key is not 0600 baton"
    [ "$(stat -c '%a %g' "$R/etc/baton/$name.toml")" = "640 $gid" ] || fail "$name.toml is not 0640 root:baton"
    [ -L "$R/etc/systemd/system/multi-user.target.wants/$pkg.service" ] || fail "$pkg.service not enabled"
    # the installed binary runs and agrees with the public key postinst wrote
    "$R/usr/bin/$pkg" --version | grep -q "^$pkg " || fail "$pkg --version"
    [ "$("$R/usr/bin/$pkg" pubkey --data-dir "$t/scratch-$name" --key "$R/etc/baton/$name.key" 2>/dev/null)" = \
        "$(cat "$R/etc/baton/$name.pub")" ] || fail "$name.pub does not match $name.key"
    grep -qE '^[0-9a-f]{64}$' "$R/etc/baton/$name.pub" || fail "$name.pub is not a key"
done
[ -L "$R/etc/systemd/system/multi-user.target.wants/baton-agent-keygen.service" ] || fail "keygen unit not enabled"
# Reinstalling keeps each identity (keygen never overwrites one).
before=$(cat "$R"/etc/baton/*.pub)
dpkg_root -i "${amd64[@]}" >"$t/reinstall.log" 2>&1 || { cat "$t/reinstall.log"; fail "reinstall"; }
[ "$(cat "$R"/etc/baton/*.pub)" = "$before" ] || fail "a reinstall changed an identity"
# Purging removes the packages, never an identity.
for deb in "${amd64[@]}"; do dpkg_root -P "$(dpkg-deb -f "$deb" Package)" >>"$t/purge.log" 2>&1 || { cat "$t/purge.log"; fail "purge"; }; done
[ ! -e "$R/usr/bin/baton-agent" ] || fail "purge left the binary"
for deb in "${amd64[@]}"; do
    name=$(dpkg-deb -f "$deb" Package)
    [ -s "$R/etc/baton/${name#baton-}.key" ] || fail "purging $name deleted its identity"
done
[ "$(ls /etc/systemd/system/multi-user.target.wants/ 2>/dev/null || true)" = "$host_wants" ] ||
    fail "purging from the scratch root changed the host's units"
echo "packaging/test-debs.sh: ${#@} packages checked, amd64 installed, reinstalled and purged in a scratch root"
