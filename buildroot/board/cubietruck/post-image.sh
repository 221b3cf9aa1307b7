#!/bin/sh
# Buildroot post-image script (BR2_ROOTFS_POST_IMAGE_SCRIPT): the boot partition's A/B boot
# script (the offline image's image/rauc/boot.cmd.in, made with mkimage), an empty ext4 "data"
# partition, then genimage assembles sdcard.img (slots A and B both get rootfs.ext4).
# Runs from Buildroot's top directory; BINARIES_DIR and HOST_DIR are in the environment.
set -eu
BOARD_DIR=$(cd "$(dirname "$0")" && pwd)

REPO=$(cd "$BOARD_DIR/../../.." && pwd)
sed -e "s|@CONSOLE@|ttyS0,115200|" -e "s|@PARTITION@|/dev/mmcblk0p|" \
  -e "s|@SLOT_BOOT@|usr/lib/betaas/boot|g" -e "s|@DTB@|sun7i-a20-cubietruck.dtb|" \
  "$REPO/image/rauc/boot.cmd.in" > "$BINARIES_DIR/boot.cmd"
"$HOST_DIR/bin/mkimage" -A arm -O linux -T script -C none -n "BETaaS A/B boot" \
  -d "$BINARIES_DIR/boot.cmd" "$BINARIES_DIR/boot.scr" >/dev/null

rm -f "$BINARIES_DIR/data.ext4"
truncate -s 280M "$BINARIES_DIR/data.ext4"
"$HOST_DIR/sbin/mkfs.ext4" -q -F -L data -E root_owner=0:0 "$BINARIES_DIR/data.ext4"

exec support/scripts/genimage.sh -c "$BOARD_DIR/genimage.cfg"
