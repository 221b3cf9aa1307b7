#!/usr/bin/env bash
# Builds the tiny test template for one architecture from Debian packages only (no internet needed
# beyond the host's Debian mirror; image/debs.sh caches them in dl/):
#   kernel      linux-image-amd64 (x86_64) or linux-image-armmp (armhf), resolved by name
#   initramfs   busybox-static + templates/tiny/init + the few modules the kernel does not build in
#   disk        an empty 1 GiB qcow2 (the base image every VM overlays; nothing reads it yet)
#   rootfs      the initramfs tree as a tarball: the template as a container (libvirt lxc)
# Output: out/templates/tiny-<arch>/{vmlinuz,initrd.img,disk.qcow2,rootfs.tar.gz,template.toml,manifest.txt}; the
# template.toml is templates/tiny/template.toml with this arch and the sha256 of every file.
# The steps are shared with the logical-gateway template: templates/lib/initramfs.sh.
# Usage: templates/tiny/build.sh x86_64|armhf
set -euo pipefail
NAME=tiny
ARCH=${1:?usage: templates/tiny/build.sh x86_64|armhf}
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
. templates/lib/initramfs.sh
case "$ARCH" in
  x86_64) MODS="button evdev virtio_blk" ;;       # ACPI power button, its evdev node, the disk
  armhf)  MODS="evdev virtio_mmio virtio_blk" ;;  # gpio-keys' evdev node, the disk (mmio or pci)
esac
# shellcheck disable=SC2119  # ir_setup takes no arguments from this script: its $1 is optional
ir_setup
ir_tree templates/tiny/init "${MODS:?}" sh mount modprobe cat dd poweroff sleep uname
ir_pack
ir_rootfs
ir_finish templates/tiny/template.toml
