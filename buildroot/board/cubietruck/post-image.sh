#!/bin/sh
# Buildroot post-image script (BR2_ROOTFS_POST_IMAGE_SCRIPT): the boot partition's
# extlinux.conf, an empty ext4 "data" partition, then genimage assembles sdcard.img.
# Runs from Buildroot's top directory; BINARIES_DIR and HOST_DIR are in the environment.
set -eu
BOARD_DIR=$(cd "$(dirname "$0")" && pwd)

install -D -m 0644 "$BOARD_DIR/extlinux.conf" "$BINARIES_DIR/extlinux/extlinux.conf"

rm -f "$BINARIES_DIR/data.ext4"
truncate -s 120M "$BINARIES_DIR/data.ext4"
"$HOST_DIR/sbin/mkfs.ext4" -q -F -L data -E root_owner=0:0 "$BINARIES_DIR/data.ext4"

exec support/scripts/genimage.sh -c "$BOARD_DIR/genimage.cfg"
