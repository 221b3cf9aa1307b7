#!/usr/bin/env bash
# Builds the tiny test template for one architecture from Debian packages only (no internet needed
# beyond the host's Debian mirror; image/debs.sh caches them in dl/):
#   kernel      linux-image-amd64 (x86_64) or linux-image-armmp (armhf), resolved by name
#   initramfs   busybox-static + templates/tiny/init + the few modules the kernel does not build in
#   disk        an empty 1 GiB qcow2 (the base image every VM overlays; nothing reads it yet)
# Output: out/templates/tiny-<arch>/{vmlinuz,initrd.img,disk.qcow2,template.toml,manifest.txt}; the
# template.toml is templates/tiny/template.toml with this arch and the sha256 of every file.
# Usage: templates/tiny/build.sh x86_64|armhf
set -euo pipefail
ARCH=${1:?usage: templates/tiny/build.sh x86_64|armhf}
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
# Modules: everything else the guest needs is built in (checked against the package's
# /boot/config-*): virtio-pci, 8250/PL011 serial consoles, devtmpfs, gzip initrd, gpio-keys + PL061.
case "$ARCH" in
  x86_64) DEB_ARCH=amd64 KPKG=linux-image-amd64 PK=dl/pkgs-amd64
          MODULES="button evdev virtio_blk" ;;      # ACPI power button, its evdev node, the disk
  armhf)  DEB_ARCH=armhf KPKG=linux-image-armmp PK=dl/pkgs
          MODULES="evdev virtio_mmio virtio_blk" ;; # gpio-keys' evdev node, the disk (mmio or pci)
  *) echo "tiny: unknown arch '$ARCH' (x86_64 or armhf)" >&2; exit 2 ;;
esac
OUT=out/templates/tiny-$ARCH
ST=$OUT/staging
step() { echo "==> [tiny-$ARCH] $*"; }

step "resolving Debian $DEB_ARCH packages"
mkdir -p "$OUT"
ARCH=$DEB_ARCH bash image/debs.sh "$KPKG" busybox-static > "$OUT/packages.txt"
KVER=$(ls "$PK/$KPKG/usr/lib/modules")
KMOD=$PK/$KPKG/usr/lib/modules/$KVER
[ -f "$KMOD/modules.dep" ] || depmod -b "$PK/$KPKG/usr" "$KVER"

module_files() { # NAME... -> relative .ko paths, dependencies first, each once
  local m path dep
  for m in "$@"; do
    path=$(awk -v m="$m" -F: '{ n=$1; sub(/.*\//,"",n); sub(/\.ko.*/,"",n); gsub(/-/,"_",n); k=m; gsub(/-/,"_",k); if (n==k) { print; exit } }' "$KMOD/modules.dep")
    [ -n "$path" ] || { echo "tiny: module $m not in $KVER" >&2; exit 1; }
    for dep in $(echo "${path#*:}" | tr ' ' '\n' | tac) "${path%%:*}"; do echo "$dep"; done
  done | awk 'NF && !seen[$0]++'
}

step "initramfs (kernel $KVER, modules: $MODULES)"
rm -rf "$ST" && mkdir -p "$ST"
IR=$ST/initramfs
mkdir -p "$IR"/{bin,dev,proc,sys,etc,lib/modules/"$KVER"}
install -m 0755 "$PK/busybox-static/usr/bin/busybox" "$IR/bin/busybox"
for a in sh mount modprobe cat dd poweroff sleep uname; do ln -s busybox "$IR/bin/$a"; done
ln -s bin "$IR/sbin"
install -m 0755 templates/tiny/init "$IR/init"
for f in $(module_files $MODULES); do install -D -m 0644 "$KMOD/$f" "$IR/lib/modules/$KVER/$f"; done
cp "$KMOD/modules.order" "$KMOD/modules.builtin" "$KMOD/modules.builtin.modinfo" "$IR/lib/modules/$KVER/"
depmod -b "$IR" "$KVER"
printf '%s\n' $MODULES > "$IR/etc/modules"
find "$IR" -exec touch -h -d @0 {} +   # fixed mtimes: the same inputs give the same initrd.img
(cd "$IR" && find . -print0 | sort -z | cpio --null -o -H newc --quiet --owner 0:0 --reproducible) | gzip -9n > "$OUT/initrd.img"

step "kernel and empty base disk"
cp "$PK/$KPKG/boot/vmlinuz-$KVER" "$OUT/vmlinuz"
rm -f "$OUT/disk.qcow2"
qemu-img create -q -f qcow2 "$OUT/disk.qcow2" 1G

step "template.toml"
. templates/lib/descriptor.sh
tpl_descriptor templates/tiny/template.toml "$OUT" "$ARCH"
[ "$(grep -c '_\?sha256 = "[0-9a-f]\{64\}"' "$OUT/template.toml")" = 3 ] \
  || { echo "tiny: $OUT/template.toml did not get its three sha256 lines" >&2; exit 1; }

{
  echo "# out/templates/tiny-$ARCH built $(date -u +%Y-%m-%dT%H:%M:%SZ) from $(git describe --always --dirty 2>/dev/null || echo unknown)"
  echo "# package version sha256(.deb) file"
  cat "$OUT/packages.txt"
  echo "kernel $KVER"
  echo "modules $MODULES"
  (cd "$OUT" && sha256sum vmlinuz initrd.img disk.qcow2)
} > "$OUT/manifest.txt"
rm -rf "$OUT/packages.txt" "$ST"
step "done: $OUT ($(du -sh "$OUT" | cut -f1))"
