#!/bin/sh
# Buildroot post-build script (BR2_ROOTFS_POST_BUILD_SCRIPT): runs after the overlays
# (image/rootfs of the repository, then board/cubietruck/overlay) are copied into TARGET_DIR.
# Does what image/build.sh does for the offline image beyond copying files.
# $1 is TARGET_DIR; BR2_CONFIG and the other Buildroot variables are in the environment.
set -eu
TARGET=${1:?usage: post-build.sh TARGET_DIR}
BOARD_DIR=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$BOARD_DIR/../../.." && pwd)
BOARD=cubietruck

# The serial console (boards/cubietruck/board.conf CONSOLE=ttyS0,115200).
sed -i 's/@CONSOLE_TTY@/ttyS0/' "$TARGET/etc/inittab"

# The shipped agent config, from the repository (one source of truth with the offline image).
install -D -m 0644 "$REPO/boards/$BOARD/agent.toml" "$TARGET/etc/betaas/agent.toml"

# Mount points. Buildroot's sysv skeleton links /var/log to /tmp; rcS mounts a tmpfs of its own
# there, so it must be a directory (as in the offline image).
mkdir -p "$TARGET/boot" "$TARGET/var/lib/betaas"
[ -L "$TARGET/var/log" ] && rm -f "$TARGET/var/log"
mkdir -p "$TARGET/var/log"
ln -sfn /run/resolv.conf "$TARGET/etc/resolv.conf"

# image/rootfs/etc/inittab runs its own rcS, which does not run /etc/init.d/S??*: drop the
# scripts packages install there (busybox's syslogd/klogd, mosquitto's S50mosquitto...) so that
# nobody mistakes them for what runs. The broker is started by broker-service.
rm -f "$TARGET"/etc/init.d/S[0-9][0-9]*

rm -f "$TARGET/etc/os-release"
cat > "$TARGET/etc/os-release" <<OSR
NAME="BETaaS gateway firmware"
ID=betaas
VERSION_ID=$(git -C "$REPO" describe --always --dirty 2>/dev/null || echo unknown)
BOARD=$BOARD
BUILD=buildroot
OSR

# A/B updates (as image/build.sh): the slot's own kernel and DTB where boot.scr loads them, the
# version, RAUC's system.conf and the keyring (image/rauc/keys.sh: RAUC_KEYRING, or the repository's
# development key in out/keys/), U-Boot's environment for fw_printenv/fw_setenv.
mkdir -p "$TARGET/usr/lib/betaas/boot"
mv "$TARGET/boot/zImage" "$TARGET/usr/lib/betaas/boot/zImage"
mv "$TARGET/boot/sun7i-a20-cubietruck.dtb" "$TARGET/usr/lib/betaas/boot/sun7i-a20-cubietruck.dtb"
git -C "$REPO" describe --always --dirty 2>/dev/null > "$TARGET/etc/betaas-release" || echo unknown > "$TARGET/etc/betaas-release"
keyring=$(cd "$REPO" && bash image/rauc/keys.sh | cut -d' ' -f3)
case "$keyring" in /*) ;; *) keyring=$REPO/$keyring ;; esac
install -D -m 0644 "$keyring" "$TARGET/etc/rauc/keyring.pem"
install -m 0644 "$REPO/image/rauc/bus.conf" "$TARGET/etc/rauc/bus.conf"
sed -e "s|@COMPATIBLE@|betaas-$BOARD|" -e "s|@PARTITION@|/dev/mmcblk0p|g" \
  "$REPO/image/rauc/system.conf.in" > "$TARGET/etc/rauc/system.conf"
echo "/boot/uboot.env 0x0000 0x10000" > "$TARGET/etc/fw_env.config"
