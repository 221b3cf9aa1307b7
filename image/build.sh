#!/usr/bin/env bash
# Builds out/<board>/ from Debian's armhf binary packages and the static agent. Generic: every board
# fact comes from boards/<board>/board.conf.
#
# Disk layout (like Buildroot's Cubieboard layout, plus a data partition as in Nerves/HAOS):
#   8 KiB   U-Boot SPL + U-Boot (sunxi boards only), raw, outside the partition table
#   1 MiB   p1 FAT   "boot":   zImage, DTB, initrd.img, extlinux/extlinux.conf
#           p2 ext4  "rootfs": busybox, the agent, its config and service; mounted read-only
#           p3 ext4  "data":   /var/lib/betaas, the only place the agent writes (journal, history)
# The image size is a power of two: QEMU's SD card model requires it.
set -euo pipefail
BOARD=${1:?usage: image/build.sh BOARD}
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
conf=boards/$BOARD/board.conf
[ -f "$conf" ] || { echo "image: no board '$BOARD' (boards: $(ls boards | tr '\n' ' '))" >&2; exit 2; }
# shellcheck disable=SC1090
. "$conf"
AGENT=${AGENT:-target/armv7-unknown-linux-gnueabihf/release/betaas-agent}
[ -x "$AGENT" ] || { echo "image: $AGENT missing: run 'make agent-arm'" >&2; exit 1; }
file "$AGENT" | grep -q 'ARM, EABI5.*statically linked' || { echo "image: $AGENT is not a static ARM binary" >&2; exit 1; }

OUT=out/$BOARD
ST=$OUT/staging
BOOT_MB=32 ROOT_MB=96 DATA_MB=120     # 1 + 32 + 96 + 120 + GPT-free tail < 256 MiB
IMG_MB=256
step() { echo "==> [$BOARD] $*"; }

step "resolving Debian armhf packages"
mkdir -p "$OUT"
bash image/debs.sh linux-image-armmp u-boot-sunxi busybox-static > "$OUT/packages.txt"
# mosquitto, for a gateway that runs its instance's broker (paper §II: the gateways of an instance
# share one); off unless /boot/betaas/mosquitto.conf is provisioned.
bash image/debs.sh --libs mosquitto >> "$OUT/packages.txt"
PK=dl/pkgs
KVER=$(ls "$PK/linux-image-armmp/usr/lib/modules")
KMOD=$PK/linux-image-armmp/usr/lib/modules/$KVER

rm -rf "$ST" && mkdir -p "$ST"

# Modules with their dependencies, from a depmod of the package's own tree (the .deb ships no modules.dep).
step "resolving kernel modules ($KVER)"
[ -f "$KMOD/modules.dep" ] || depmod -b "$PK/linux-image-armmp/usr" "$KVER"
ROOT_MODULES="crc32c_generic sunxi-mmc ext4"     # to mount the root filesystem
case "$PARTITION" in /dev/vd*) ROOT_MODULES="crc32c_generic virtio_blk ext4";; esac
# The boot partition is mounted read-only at /boot to pick up a provisioned /boot/betaas/agent.toml.
BASE_MODULES="vfat nls_cp437 nls_ascii"
module_files() { # NAME... -> relative .ko paths, dependencies first, each once
  for m in "$@"; do
    local path
    path=$(awk -v m="$m" -F: '{ n=$1; sub(/.*\//,"",n); sub(/\.ko.*/,"",n); gsub(/-/,"_",n); k=m; gsub(/-/,"_",k); if (n==k) { print; exit } }' "$KMOD/modules.dep")
    if [ -z "$path" ]; then
      grep -q "/${m//-/[-_]}\.ko" "$KMOD/modules.builtin" || { echo "image: module $m not in $KVER" >&2; exit 1; }
      continue
    fi
    for dep in $(echo "${path#*:}" | tr ' ' '\n' | tac) "${path%%:*}"; do echo "$dep"; done
  done | awk 'NF && !seen[$0]++'
}
install_modules() { # DEST NAME...
  local dest=$1; shift
  local f
  for f in $(module_files "$@"); do
    install -D -m 0644 "$KMOD/$f" "$dest/lib/modules/$KVER/$f"
  done
  cp "$KMOD/modules.order" "$KMOD/modules.builtin" "$KMOD/modules.builtin.modinfo" "$dest/lib/modules/$KVER/"
  depmod -b "$dest" "$KVER"
  printf '%s\n' "$@" > "$dest/etc/modules"
}

busybox_into() { # DEST: the static busybox and one symlink per applet
  local dest=$1
  install -D -m 0755 "$PK/busybox-static/usr/bin/busybox" "$dest/bin/busybox"
  local a
  for a in $(qemu-arm-static "$dest/bin/busybox" --list-full); do
    [ -e "$dest/$a" ] || { mkdir -p "$dest/$(dirname "$a")"; ln -s /bin/busybox "$dest/$a"; }
  done
}

step "initramfs"
IR=$ST/initramfs
mkdir -p "$IR"/{bin,dev,proc,sys,newroot,etc}
install -m 0755 "$PK/busybox-static/usr/bin/busybox" "$IR/bin/busybox"
for a in sh mount umount modprobe switch_root sed sleep cat; do ln -s busybox "$IR/bin/$a"; done
ln -s bin "$IR/sbin"
install -m 0755 image/initramfs/init "$IR/init"
install_modules "$IR" $ROOT_MODULES
(cd "$IR" && find . -print0 | sort -z | cpio --null -o -H newc --quiet --owner 0:0) | gzip -9n > "$ST/initrd.img"

step "root filesystem"
RF=$ST/rootfs
mkdir -p "$RF"/{dev,proc,sys,run,tmp,root,mnt,etc/betaas,var/lib/betaas,var/log,usr/bin}
busybox_into "$RF"
cp -a image/rootfs/. "$RF/"
[ -d "boards/$BOARD/overlay" ] && cp -a "boards/$BOARD/overlay/." "$RF/"
install_modules "$RF" $MODULES $BASE_MODULES
tty=${CONSOLE%%,*}
sed -i "s/@CONSOLE_TTY@/$tty/" "$RF/etc/inittab"
echo "betaas-$BOARD" > "$RF/etc/hostname"
ln -sfn /run/resolv.conf "$RF/etc/resolv.conf"
ln -sfn /run "$RF/var/run"
mkdir -p "$RF/boot"
cat > "$RF/etc/fstab" <<FSTAB
# <device>         <mount point>    <type> <options>                            <dump> <pass>
${PARTITION}1  /boot            vfat   ro,noatime,nodev,nosuid,noexec,umask=077  0      0
${PARTITION}3  /var/lib/betaas  ext4   rw,noatime,nodev,nosuid,commit=5         0      0
FSTAB
install -m 0755 "$AGENT" "$RF/usr/bin/betaas-agent"

# A dynamically linked Debian program with exactly the shared objects it links (NEEDED, followed),
# taken from the unpacked library packages; the loader goes where PT_INTERP says (/lib).
install_dynamic() { # PKG PATH: installs dl/pkgs/PKG/PATH at PATH, and its libraries
  install -D -m 0755 "$PK/$1/$2" "$RF/$2"
  local todo=("$RF/$2") seen=" " f so src
  while [ ${#todo[@]} -gt 0 ]; do
    f=${todo[0]} todo=("${todo[@]:1}")
    for so in $(readelf -d "$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
      case "$seen" in *" $so "*) continue ;; esac
      seen="$seen$so "
      src=$(find "$PK"/lib* "$PK"/zlib1g -path '*/arm-linux-gnueabihf/*' -name "$so" 2>/dev/null | head -1)
      [ -n "$src" ] || { echo "image: $so (needed by $f) is in none of the library packages" >&2; exit 1; }
      install -D -m 0755 "$(readlink -f "$src")" "$RF/lib/arm-linux-gnueabihf/$so"
      todo+=("$RF/lib/arm-linux-gnueabihf/$so")
    done
  done
  [ -e "$RF/lib/ld-linux-armhf.so.3" ] || ln -s arm-linux-gnueabihf/ld-linux-armhf.so.3 "$RF/lib/ld-linux-armhf.so.3"
}
step "mosquitto (started only when /boot/betaas/mosquitto.conf is provisioned)"
install_dynamic mosquitto usr/sbin/mosquitto
usage=$(qemu-arm-static -L "$RF" "$RF/usr/sbin/mosquitto" -h 2>&1 || true)   # -h exits 3
case "$usage" in "mosquitto version"*) ;; *) echo "image: the installed mosquitto does not run: $usage" >&2; exit 1 ;; esac
install -m 0644 "boards/$BOARD/agent.toml" "$RF/etc/betaas/agent.toml"
step "checking the shipped agent config with the ARM agent itself"
qemu-arm-static "$RF/usr/bin/betaas-agent" check-config --config "$RF/etc/betaas/agent.toml"
cat > "$RF/etc/os-release" <<OSR
NAME="BETaaS gateway firmware"
ID=betaas
VERSION_ID=$(git describe --always --dirty 2>/dev/null || echo unknown)
BOARD=$BOARD
OSR

step "boot partition"
cmdline="console=$CONSOLE root=${PARTITION}2 ro rootwait panic=10 quiet loglevel=4"
BT=$ST/boot
mkdir -p "$BT/extlinux"
cp "$PK/linux-image-armmp/boot/vmlinuz-$KVER" "$BT/zImage"
cp "$ST/initrd.img" "$BT/initrd.img"
if [ -n "$DTB" ]; then
  cp "$PK/linux-image-armmp/usr/lib/linux-image-$KVER/$DTB" "$BT/$DTB"
  fdt_line="  fdt /$DTB"
else
  fdt_line=""
fi
cat > "$BT/extlinux/extlinux.conf" <<EXT
default betaas
timeout 0
label betaas
  kernel /zImage
${fdt_line}
  initrd /initrd.img
  append $cmdline
EXT
rm -f "$ST/boot.vfat"
mkfs.vfat -n BOOT -C "$ST/boot.vfat" $((BOOT_MB * 1024)) >/dev/null
mcopy -s -i "$ST/boot.vfat" "$BT"/* ::/

step "ext4 partitions"
# Fixed timestamps and UUID-less hashing keep rebuilds comparable; -E root_owner: files belong to root.
mke2fs -q -F -t ext4 -L rootfs -E root_owner=0:0 -d "$RF" "$ST/rootfs.ext4" "${ROOT_MB}M"
mkdir -p "$ST/data"
mke2fs -q -F -t ext4 -L data -E root_owner=0:0 -d "$ST/data" "$ST/data.ext4" "${DATA_MB}M"

step "disk image ($IMG_MB MiB)"
IMG=$OUT/sdcard.img
rm -f "$IMG"
truncate -s "${IMG_MB}M" "$IMG"
sfdisk -q "$IMG" <<SF
label: dos
start=1MiB, size=${BOOT_MB}MiB, type=c, bootable
size=${ROOT_MB}MiB, type=83
size=${DATA_MB}MiB, type=83
SF
put() { dd if="$1" of="$IMG" bs=1M seek="$2" conv=notrunc,fsync status=none; }
put "$ST/boot.vfat" 1
put "$ST/rootfs.ext4" $((1 + BOOT_MB))
put "$ST/data.ext4" $((1 + BOOT_MB + ROOT_MB))
if [ -n "$UBOOT_TARGET" ]; then
  SPL=$PK/u-boot-sunxi/usr/lib/u-boot/$UBOOT_TARGET/u-boot-sunxi-with-spl.bin
  dd if="$SPL" of="$IMG" bs=1 seek="$UBOOT_OFFSET" conv=notrunc status=none
  cp "$SPL" "$OUT/u-boot-sunxi-with-spl.bin"
fi

# Loose copies for direct kernel boot and for inspection.
cp "$BT/zImage" "$ST/initrd.img" "$OUT/"
[ -n "$DTB" ] && cp "$BT/$DTB" "$OUT/"

if [ "$OUTPUT" = qemu ]; then
  step "run-qemu.sh"
  if [ "$QEMU_BOOT" = sdcard ]; then
    boot_args=""
  else
    boot_args="-kernel zImage -initrd initrd.img -append \"$cmdline\"${DTB:+ -dtb $DTB}"
  fi
  cat > "$OUT/run-qemu.sh" <<RUN
#!/bin/sh
# Generated by image/build.sh for board $BOARD. Extra QEMU arguments are appended, e.g.
#   ./run-qemu.sh -qmp unix:/tmp/qmp.sock,server=on,wait=off
# Works on a copy of the image so the build output stays pristine; serial console on stdio.
# AGENT_TOML=FILE provisions that agent config on the copy's boot partition (as betaas-flash does).
# IMAGE_COPY=FILE puts the copy elsewhere (default: run.img beside this script);
# KEEP_IMAGE=1 boots an existing copy again (a reboot after a power cut keeps its data partition).
# PROVISION=DIR copies DIR's files (agent.toml, mosquitto.conf, instance/ keys...) to betaas/ there.
# HOSTFWD=tcp:127.0.0.1:HOSTPORT-:GUESTPORT forwards a host port to the guest (user networking).
set -e
here="\$(cd "\$(dirname "\$0")" && pwd)"
img="\${IMAGE_COPY:-\$here/run.img}"
[ "\${KEEP_IMAGE:-0}" = 1 ] && [ -f "\$img" ] || cp --sparse=always "\$here/sdcard.img" "\$img"
if [ -n "\${AGENT_TOML:-}" ]; then
  mmd -D s -i "\$img@@1M" ::/betaas 2>/dev/null || true
  mcopy -o -i "\$img@@1M" "\$AGENT_TOML" ::/betaas/agent.toml
fi
if [ -n "\${PROVISION:-}" ]; then
  mmd -D s -i "\$img@@1M" ::/betaas 2>/dev/null || true
  mcopy -s -o -i "\$img@@1M" "\$PROVISION"/* ::/betaas/
fi
net="$QEMU_NET"
[ -z "\${HOSTFWD:-}" ] || net=\$(echo "\$net" | sed "s|user|user,hostfwd=\$HOSTFWD|")
cd "\$here"
exec qemu-system-arm $QEMU_MACHINE -nographic -no-reboot \\
  $(echo "$QEMU_DISK" | sed 's/sdcard\.img/"$img"/') \$net $QEMU_DEVICES $boot_args "\$@"
RUN
  chmod +x "$OUT/run-qemu.sh"
fi

step "manifest"
{
  echo "# out/$BOARD built $(date -u +%Y-%m-%dT%H:%M:%SZ) from $(git describe --always --dirty 2>/dev/null || echo unknown)"
  echo "# package version sha256(.deb) file"
  cat "$OUT/packages.txt"
  echo "kernel $KVER"
  echo "agent $(sha256sum "$AGENT" | cut -d' ' -f1) $(stat -c %s "$AGENT") bytes"
  echo "mosquitto and its libraries: $(du -cb "$RF/usr/sbin/mosquitto" "$RF"/lib/arm-linux-gnueabihf/* | tail -1 | cut -f1) bytes"
  (cd "$OUT" && sha256sum sdcard.img zImage initrd.img ${DTB:+$DTB})
} > "$OUT/manifest.txt"
rm -f "$OUT/packages.txt"

# The block map betaas-flash (and bmaptool) write from: only the blocks that hold data. It is taken
# from the partition files' own extents (mkfs left them sparse where it wrote nothing), not from
# sdcard.img's, which dd allocated whole: see flash/src/bmap.rs.
step "block map ($IMG.bmap)"
FLASH=${FLASH:-target/debug/betaas-flash}
[ -x "$FLASH" ] || { echo "image: $FLASH missing: run 'make flash-tool'" >&2; exit 1; }
"$FLASH" bmap create --image "$IMG" \
  --from "$ST/boot.vfat@1MiB" \
  --from "$ST/rootfs.ext4@$((1 + BOOT_MB))MiB" \
  --from "$ST/data.ext4@$((1 + BOOT_MB + ROOT_MB))MiB"
echo "==> [$BOARD] write it to an SD card: make flash BOARD=$BOARD DEVICE=/dev/sdX [CONFIG=agent.toml] [PROVISION=dir]"
step "done: $IMG"
