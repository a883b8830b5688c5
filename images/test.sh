#!/usr/bin/env bash
# Tests images/baton-image on small synthetic disk images it builds itself
# (an MBR with a FAT boot and an ext4 root partition, like Raspberry Pi OS)
# and on a root filesystem directory (Jetson L4T), then reads the results
# back with debugfs and mtools and checks the root with e2fsck -fn.
#
# Usage: images/test.sh AGENT_BIN [HOST_AGENT_BIN]
#   AGENT_BIN       the binary to install (CI: the aarch64 musl build)
#   HOST_AGENT_BIN  a baton-agent that runs here, for burn-time keys
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tool="$here/baton-image"
agent_bin=$1
host_bin=${2:-$(command -v baton-agent)}
export MTOOLS_SKIP_CHECK=1
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
gw_key=$(printf 'ab%.0s' $(seq 32))

# An image like Pi OS: 1 MiB gap, 32 MiB FAT "bootfs", ext4 "rootfs" with
# some of the tree a real one has.
make_image() {
    local img=$1
    truncate -s 96M "$img"
    printf 'label: dos\nstart=2048, size=65536, type=c\nstart=67584, type=83\n' | sfdisk -q "$img"
    mformat -i "$img@@$((2048 * 512))" -v BOOTFS -T 65536 -h 64 -s 32 ::
    echo "console=serial0,115200 root=PARTUUID=00000000-02 rootwait" >"$t/cmdline.txt"
    mcopy -i "$img@@$((2048 * 512))" "$t/cmdline.txt" ::/cmdline.txt
    rm -rf "$t/rootsrc"
    mkdir -p "$t/rootsrc"/{etc/systemd/system/multi-user.target.wants,usr/bin,usr/lib,var/lib,boot/firmware}
    echo "raspberrypi" >"$t/rootsrc/etc/hostname"
    : >"$t/rootsrc/etc/machine-id"
    mkfs.ext4 -q -F -L rootfs -E offset=$((67584 * 512)) -d "$t/rootsrc" "$img" $(((196608 - 67584) / 2))k
}
root_of() { echo "$1?offset=$((67584 * 512))"; }
fat_of() { echo "$1@@$((2048 * 512))"; }
dump() { debugfs -R "dump $2 $3" "$(root_of "$1")" 2>/dev/null; [ -s "$3" ] || fail "$2 missing in $1"; }
stat_of() { debugfs -R "stat $2" "$(root_of "$1")" 2>/dev/null; }

# --- first-boot identity: no key in the image -------------------------------
img="$t/fleet.img"
make_image "$img"
"$tool" --image "$img" --agent-bin "$agent_bin" --cluster c1 \
    --gateway mqtts://gateway.local:8883 --gateway-key "$gw_key" --ca "$here/../README.md" \
    --identity firstboot --id-prefix pi-
e2fsck -fn "$(root_of "$img")" >/dev/null 2>&1 || fail "e2fsck after firstboot install"
dump "$img" /usr/bin/baton-agent "$t/bin"
cmp -s "$t/bin" "$agent_bin" || fail "the agent binary differs"
stat_of "$img" /usr/bin/baton-agent | grep -q "Mode:  0755" || fail "the agent is not 0755"
for u in baton-agent baton-agent-keygen; do
    dump "$img" "/usr/lib/systemd/system/$u.service" "$t/$u"
    cmp -s "$t/$u" "$here/../systemd/$u.service" || fail "$u.service differs"
    stat_of "$img" "/etc/systemd/system/multi-user.target.wants/$u.service" |
        grep -q "Fast link dest: \"/usr/lib/systemd/system/$u.service\"" || fail "$u not enabled"
done
dump "$img" /etc/baton/agent.toml "$t/agent.toml"
grep -qx 'cluster = "c1"' "$t/agent.toml" || fail "cluster not in agent.toml"
grep -qx 'gateway = "mqtts://gateway.local:8883"' "$t/agent.toml" || fail "gateway not in agent.toml"
grep -qx "gateway_key = \"$gw_key\"" "$t/agent.toml" || fail "gateway_key not in agent.toml"
dump "$img" /etc/baton/id-prefix "$t/prefix"
[ "$(cat "$t/prefix")" = pi- ] || fail "id-prefix"
debugfs -R "stat /etc/baton/agent.key" "$(root_of "$img")" 2>&1 | grep -q "File not found" ||
    fail "a golden image carries a private key"
mtype -i "$(fat_of "$img")" ::/baton/README.txt | grep -q "first boot" || fail "boot partition note"
mtype -i "$(fat_of "$img")" ::/cmdline.txt | grep -q rootwait || fail "cmdline.txt damaged"
# the image's own tree is intact
dump "$img" /etc/hostname "$t/hostname"
[ "$(cat "$t/hostname")" = raspberrypi ] || fail "/etc/hostname damaged"
# idempotent: a second run replaces, and the filesystem stays clean
"$tool" --image "$img" --agent-bin "$agent_bin" --cluster c1 --gateway mqtt://gw:1883 >/dev/null
e2fsck -fn "$(root_of "$img")" >/dev/null 2>&1 || fail "e2fsck after a second run"
dump "$img" /etc/baton/agent.toml "$t/agent2.toml"
grep -qx 'gateway = "mqtt://gw:1883"' "$t/agent2.toml" || fail "the second run's config"

# --- burn-time identity: one key per card, and a manifest ------------------
keys=()
for id in pi-017 pi-018; do
    cp "$img" "$t/$id.img"
    "$tool" --image "$t/$id.img" --agent-bin "$agent_bin" --cluster c1 \
        --gateway mqtt://gw:1883 --identity burn --agent-id "$id" \
        --manifest "$t/manifest" --keygen-bin "$host_bin" --password "secret-$id" >/dev/null
    e2fsck -fn "$(root_of "$t/$id.img")" >/dev/null 2>&1 || fail "e2fsck after burning $id"
    dump "$t/$id.img" /etc/baton/agent.key "$t/$id.key"
    chmod 600 "$t/$id.key"
    stat_of "$t/$id.img" /etc/baton/agent.key | grep -q "Mode:  0600" || fail "$id key not 0600"
    dump "$t/$id.img" /etc/baton/agent.env "$t/$id.env"
    grep -qx "BATON_AGENT_ID=$id" "$t/$id.env" || fail "$id agent.env"
    grep -qx "BATON_AGENT_BROKER_PASSWORD=secret-$id" "$t/$id.env" || fail "$id password"
    # the manifest's key is the key in the image
    mkdir -p "$t/$id.state"
    [ "$("$host_bin" pubkey --data-dir "$t/$id.state" --key "$t/$id.key")" = "$(cat "$t/manifest/$id.pub")" ] ||
        fail "$id: the manifest does not match the key in the image"
    [ "$(mtype -i "$(fat_of "$t/$id.img")" ::/baton/agent.pub)" = "$(cat "$t/manifest/$id.pub")" ] ||
        fail "$id: agent.pub on the boot partition"
    keys+=("$(cat "$t/manifest/$id.pub")")
done
[ "${keys[0]}" != "${keys[1]}" ] || fail "two cards got the same key"
# one key per agent id: burning the same id again is refused
if "$tool" --image "$t/pi-017.img" --agent-bin "$agent_bin" --cluster c1 --gateway mqtt://gw:1883 \
    --identity burn --agent-id pi-017 --manifest "$t/manifest" --keygen-bin "$host_bin" 2>/dev/null; then
    fail "pi-017 burned twice"
fi

# --- bad input: clear errors, the image untouched ---------------------------
cp "$img" "$t/before.img"
for args in "--cluster C1 --gateway mqtt://gw:1883" "--cluster c1 --gateway http://gw" \
    "--cluster c1 --gateway mqtt://gw:1883 --gateway-key nothex" \
    "--cluster c1 --gateway mqtt://gw:1883 --identity burn --agent-id pi-1"; do
    # shellcheck disable=SC2086
    if err=$("$tool" --image "$img" --agent-bin "$agent_bin" $args 2>&1); then fail "accepted: $args"; fi
    echo "$err" | grep -q "baton-image: " || fail "no clear error for: $args"
done
truncate -s 8M "$t/blank.img"
if "$tool" --image "$t/blank.img" --agent-bin "$agent_bin" --cluster c1 --gateway mqtt://gw:1883 2>/dev/null; then
    fail "an image without partitions was accepted"
fi
cmp -s "$img" "$t/before.img" || fail "a refused run changed the image"

# --- a root filesystem directory (Jetson Linux_for_Tegra/rootfs) ------------
mkdir -p "$t/L4T/rootfs/etc"
"$tool" --rootfs "$t/L4T/rootfs" --agent-bin "$agent_bin" --cluster c2 --gateway mqtt://gw:1883 --id-prefix jetson- >/dev/null
cmp -s "$t/L4T/rootfs/usr/bin/baton-agent" "$agent_bin" || fail "rootfs: agent"
[ "$(readlink "$t/L4T/rootfs/etc/systemd/system/multi-user.target.wants/baton-agent.service")" = \
    /usr/lib/systemd/system/baton-agent.service ] || fail "rootfs: not enabled"
[ "$(cat "$t/L4T/rootfs/etc/baton/id-prefix")" = jetson- ] || fail "rootfs: id-prefix"

# --- baton-firstboot, as the device runs it on its first boot -------------
# (on a root directory with the host's agent binary, BATON_ROOT)
fb="$t/fb"
mkdir -p "$fb/etc" "$fb/proc/device-tree" "$fb/boot/firmware"
"$tool" --rootfs "$fb" --agent-bin "$host_bin" --cluster c1 --gateway mqtt://gw:1883 >/dev/null
echo "baton:x:995:995:Baton:/var/lib/baton:/usr/sbin/nologin" >"$fb/etc/passwd"
printf '10000000ABCDEF12\000' >"$fb/proc/device-tree/serial-number"
BATON_ROOT="$fb" "$fb/usr/lib/baton/baton-firstboot" >/dev/null
grep -qx 'BATON_AGENT_ID=pi-10000000abcdef12' "$fb/etc/baton/agent.env" || fail "firstboot: id from the serial"
[ "$(stat -c '%a %u' "$fb/etc/baton/agent.key")" = "600 995" ] || fail "firstboot: key not 0600 baton"
[ "$("$host_bin" pubkey --data-dir "$t/fbstate" --key "$fb/etc/baton/agent.key" 2>/dev/null)" = "$(cat "$fb/etc/baton/agent.pub")" ] ||
    fail "firstboot: agent.pub does not match the key"
cmp -s "$fb/etc/baton/agent.pub" "$fb/boot/firmware/baton/agent.pub" || fail "firstboot: agent.pub on the boot partition"
[ "$(cat "$fb/boot/firmware/baton/agent-id")" = pi-10000000abcdef12 ] || fail "firstboot: agent-id on the boot partition"
# a second boot changes nothing
first=$(cat "$fb/etc/baton/agent.pub" "$fb/etc/baton/agent.env")
BATON_ROOT="$fb" "$fb/usr/lib/baton/baton-firstboot" >/dev/null
[ "$(cat "$fb/etc/baton/agent.pub" "$fb/etc/baton/agent.env")" = "$first" ] || fail "firstboot: a second run changed the identity"
# a key file cut short (a power cut mid-keygen): set aside, a new key made
head -c 40 "$fb/etc/baton/agent.key" >"$fb/etc/baton/agent.key.cut" && mv "$fb/etc/baton/agent.key.cut" "$fb/etc/baton/agent.key"
BATON_ROOT="$fb" "$fb/usr/lib/baton/baton-firstboot" >/dev/null 2>&1 || fail "firstboot: a truncated key stopped first boot"
[ "$("$host_bin" pubkey --data-dir "$t/fbstate" --key "$fb/etc/baton/agent.key" 2>/dev/null)" = "$(cat "$fb/etc/baton/agent.pub")" ] ||
    fail "firstboot: no valid key after a truncated one"
ls "$fb/etc/baton/"agent.key.unreadable-* >/dev/null 2>&1 || fail "firstboot: the truncated key was not kept aside"
: >"$fb/etc/baton/agent.key"
BATON_ROOT="$fb" "$fb/usr/lib/baton/baton-firstboot" >/dev/null 2>&1 || fail "firstboot: an empty key stopped first boot"
[ -s "$fb/etc/baton/agent.key" ] || fail "firstboot: still an empty key"
# no serial: the machine id
fb2="$t/fb2"
mkdir -p "$fb2/etc"
"$tool" --rootfs "$fb2" --agent-bin "$host_bin" --cluster c1 --gateway mqtt://gw:1883 --id-prefix jetson- >/dev/null
cp "$fb/etc/passwd" "$fb2/etc/passwd"
echo "0123456789abcdef0123456789abcdef" >"$fb2/etc/machine-id"
BATON_ROOT="$fb2" "$fb2/usr/lib/baton/baton-firstboot" >/dev/null
grep -qx 'BATON_AGENT_ID=jetson-0123456789abcdef0123456789abcdef' "$fb2/etc/baton/agent.env" || fail "firstboot: id from machine-id"

# --- the pi-gen stage, as pi-gen runs it (ROOTFS_DIR and the config) -------
mkdir -p "$t/pigen/rootfs/etc"
ROOTFS_DIR="$t/pigen/rootfs" BATON_REPO="$here/.." BATON_AGENT_BIN="$agent_bin" BATON_CLUSTER=c3 \
    BATON_GATEWAY=mqtts://gw:8883 BATON_GATEWAY_KEY="$gw_key" \
    bash "$here/pi-gen/stage-baton/00-baton/00-run.sh" >/dev/null
cmp -s "$t/pigen/rootfs/usr/bin/baton-agent" "$agent_bin" || fail "pi-gen: agent"
grep -qx 'cluster = "c3"' "$t/pigen/rootfs/etc/baton/agent.toml" || fail "pi-gen: config"
[ -L "$t/pigen/rootfs/etc/systemd/system/multi-user.target.wants/baton-agent-keygen.service" ] ||
    fail "pi-gen: first-boot identity not enabled"

echo "images/test.sh: all checks passed"
