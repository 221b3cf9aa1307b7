#!/usr/bin/env bash
# Builds out/<board>/ from Debian's armhf binary packages and the static agent. Generic: every board
# fact comes from boards/<board>/board.conf.
#
# Disk layout: A/B root filesystems updated by RAUC (as Home Assistant OS, Nerves and Mender do),
# plus a data partition that updates never touch:
#   8 KiB   U-Boot SPL + U-Boot (sunxi boards only), raw, outside the partition table
#   1 MiB   p1 FAT   "boot":   boot.scr (the slot choice), uboot.env (U-Boot's environment: BOOT_ORDER,
#                              BOOT_A_LEFT, BOOT_B_LEFT, written by the script and by RAUC), betaas/
#           p2 ext4  "rootfs-a": slot A: busybox, the agent, its config and service, and the slot's own
#                              kernel, DTB and initramfs in /usr/lib/betaas/boot/; mounted read-only
#           p3 ext4  "rootfs-b": slot B, the same size; the factory image carries the same system in both
#           p4 ext4  "data":   /var/lib/betaas, the only place the agent writes (journal, history);
#                              the factory image puts the app template there (templates/, VIRT=1)
# The image size is a power of two: QEMU's SD card model requires it.
#
# Reproducible: the same tree gives the same sdcard.img bytes (tests/reproducible.sh). File times are
# SOURCE_DATE_EPOCH (default: the last commit's time), the file systems' UUIDs, hash seed and FAT
# volume id are derived from the board and version, the initramfs is sorted with fixed owners and times.
# Env: OUT (output directory, default out/BOARD), VIRT (0: the lite image), VERSION (default: git
# describe), SOURCE_DATE_EPOCH, AGENT, VMD, FLASH (the binaries, default: cargo's target/).
set -euo pipefail
BOARD=${1:?usage: image/build.sh BOARD}
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
conf=boards/$BOARD/board.conf
[ -f "$conf" ] || { echo "image: no board '$BOARD' (boards: $(cd boards && echo *))" >&2; exit 2; }
# The board's file, chosen at run time (tests/shellcheck.sh checks each board.conf on its own).
# shellcheck disable=SC1090
. "$conf"
AGENT=${AGENT:-target/armv7-unknown-linux-gnueabihf/release/betaas-agent}
[ -x "$AGENT" ] || { echo "image: $AGENT missing: run 'make agent-arm'" >&2; exit 1; }
file "$AGENT" | grep -q 'ARM, EABI5.*statically linked' || { echo "image: $AGENT is not a static ARM binary" >&2; exit 1; }

OUT=${OUT:-out/$BOARD}
ST=$OUT/staging
VERSION=${VERSION:-$(git describe --always --dirty 2>/dev/null || echo unknown)}
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
export SOURCE_DATE_EPOCH   # mkimage's boot.scr header time
# A UUID (RFC 4122 layout, version 5 bits) from sha256 of the board, the version and NAME: the same
# build gets the same file system identities, another board or version other ones.
uuid_for() { # NAME
  local h
  h=$(printf 'betaas %s %s %s' "$BOARD" "$VERSION" "$1" | sha256sum | cut -c1-32)
  printf '%s-%s-5%s-%x%s-%s\n' "${h:0:8}" "${h:8:4}" "${h:13:3}" $(( (0x${h:16:1} & 3) | 8 )) "${h:17:3}" "${h:20:12}"
}
fix_times() { # DIR: every file, directory and link dated SOURCE_DATE_EPOCH
  find "$1" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
}
# An ext4 image of DIR. mke2fs -d copies each file's times, but ctime cannot be set on the host:
# debugfs sets it afterwards (the superblock times come from E2FSPROGS_FAKE_TIME).
mkext4() { # LABEL DIR FILE SIZE
  local label=$1 dir=$2 img=$3 size=$4 uuid seed err
  uuid=$(uuid_for "$label") seed=$(uuid_for "$label hash_seed")
  fix_times "$dir"
  E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH mke2fs -q -F -t ext4 -L "$label" -U "$uuid" \
    -E "root_owner=0:0,hash_seed=$seed" -d "$dir" "$img" "$size"
  err=$( (echo "sif / ctime @$SOURCE_DATE_EPOCH"
          cd "$dir" && find . -mindepth 1 -printf '/%P\n' | sed "s|.*|sif \"&\" ctime @$SOURCE_DATE_EPOCH|") \
        | E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH debugfs -w -f - "$img" 2>&1 >/dev/null | grep -v '^debugfs [0-9]' || true)
  [ -z "$err" ] || { echo "image: setting the file times in $img: $err" >&2; exit 1; }
}
# 1 + boot + rootfs + data < the image size, a power of two (QEMU's SD card model requires it).
# With virtualization the rootfs holds libvirt, QEMU and the templates, and the data partition the
# VMs' overlays, unpacked container roots and saved states (a 128 MiB guest saves ~130 MiB).
if [ "${VIRT:-1}" = 1 ]; then
  BOOT_MB=32 ROOT_MB=160 DATA_MB=1688 IMG_MB=2048
else
  BOOT_MB=32 ROOT_MB=96 DATA_MB=280 IMG_MB=512
fi
# Where each slot keeps its kernel, DTB and initramfs (U-Boot loads them from the slot's ext4).
SLOT_BOOT=usr/lib/betaas/boot
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
ROOT_MODULES=(crc32c_generic sunxi-mmc ext4)     # to mount the root filesystem
case "$PARTITION" in /dev/vd*) ROOT_MODULES=(crc32c_generic virtio_blk ext4) ;; esac
# The boot partition is mounted read-only at /boot to pick up a provisioned /boot/betaas/agent.toml.
BASE_MODULES=(vfat nls_cp437 nls_ascii)
# RAUC mounts an update bundle (a squashfs image) through a loop device.
BASE_MODULES+=(loop squashfs)
read -r -a BOARD_MODULES <<< "$MODULES"   # board.conf: a space-separated list
module_files() { # NAME... -> relative .ko paths, dependencies first, each once
  local m path deps i
  for m in "$@"; do
    path=$(awk -v m="$m" -F: '{ n=$1; sub(/.*\//,"",n); sub(/\.ko.*/,"",n); gsub(/-/,"_",n); k=m; gsub(/-/,"_",k); if (n==k) { print; exit } }' "$KMOD/modules.dep")
    if [ -z "$path" ]; then
      grep -q "/${m//-/[-_]}\.ko" "$KMOD/modules.builtin" || { echo "image: module $m not in $KVER" >&2; exit 1; }
      continue
    fi
    # modules.dep lists the dependencies in reverse load order: print them backwards, then the module.
    read -r -a deps <<< "${path#*:}"
    for ((i = ${#deps[@]} - 1; i >= 0; i--)); do echo "${deps[i]}"; done
    echo "${path%%:*}"
  done | awk 'NF && !seen[$0]++'
}
install_modules() { # DEST NAME...
  local dest=$1; shift
  local out f files=()
  # Resolved first, not in `for … in $(…)`: that would drop module_files' exit status (a missing module).
  out=$(module_files "$@") || { echo "image: kernel modules for ${dest#"$ST"/} not resolved: $*" >&2; exit 1; }
  [ -z "$out" ] || mapfile -t files <<< "$out"
  for f in "${files[@]}"; do
    install -D -m 0644 "$KMOD/$f" "$dest/lib/modules/$KVER/$f"
  done
  cp "$KMOD/modules.order" "$KMOD/modules.builtin" "$KMOD/modules.builtin.modinfo" "$dest/lib/modules/$KVER/"
  depmod -b "$dest" "$KVER"
  printf '%s\n' "$@" > "$dest/etc/modules"
}

busybox_into() { # DEST: the static busybox and one symlink per applet
  local dest=$1
  install -D -m 0755 "$PK/busybox-static/usr/bin/busybox" "$dest/bin/busybox"
  local a applets
  mapfile -t applets < <(qemu-arm-static "$dest/bin/busybox" --list-full)
  # (a process substitution's exit status is lost: a busybox that did not run lists nothing)
  [ ${#applets[@]} -gt 100 ] || { echo "image: busybox --list-full listed ${#applets[@]} applets" >&2; exit 1; }
  for a in "${applets[@]}"; do
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
install_modules "$IR" "${ROOT_MODULES[@]}"
fix_times "$IR"
(cd "$IR" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet --owner 0:0 --reproducible) | gzip -9n > "$ST/initrd.img"

step "root filesystem"
RF=$ST/rootfs
mkdir -p "$RF"/{dev,proc,sys,run,tmp,root,mnt,etc/betaas,var/lib/betaas,var/log,usr/bin}
busybox_into "$RF"
cp -a image/rootfs/. "$RF/"
[ -d "boards/$BOARD/overlay" ] && cp -a "boards/$BOARD/overlay/." "$RF/"
install_modules "$RF" "${BOARD_MODULES[@]}" "${BASE_MODULES[@]}"
tty=${CONSOLE%%,*}
sed -i "s/@CONSOLE_TTY@/$tty/" "$RF/etc/inittab"
echo "betaas-$BOARD" > "$RF/etc/hostname"
echo "127.0.1.1	betaas-$BOARD" >> "$RF/etc/hosts"   # the hostname resolves (libvirt asks)
ln -sfn /run/resolv.conf "$RF/etc/resolv.conf"
ln -sfn /run "$RF/var/run"
mkdir -p "$RF/boot"
cat > "$RF/etc/fstab" <<FSTAB
# <device>         <mount point>    <type> <options>                            <dump> <pass>
${PARTITION}1  /boot            vfat   rw,noatime,flush,nodev,nosuid,noexec,umask=077  0  0
${PARTITION}4  /var/lib/betaas  ext4   rw,noatime,nodev,nosuid,commit=5         0      0
FSTAB
install -m 0755 "$AGENT" "$RF/usr/bin/betaas-agent"

# A dynamically linked Debian program with exactly the shared objects it links (NEEDED, followed),
# taken from the unpacked library packages; the loader goes where PT_INTERP says (/lib).
install_dynamic() { # PKG|FILE PATH: installs dl/pkgs/PKG/PATH (or FILE) at PATH, and its libraries
  local from=$PK/$1/$2
  [ -f "$1" ] && from=$1
  install -D -m 0755 "$from" "$RF/$2"
  local todo=("$RF/$2") seen=" " f so src needed
  while [ ${#todo[@]} -gt 0 ]; do
    f=${todo[0]} todo=("${todo[@]:1}")
    mapfile -t needed < <(readelf -d "$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
    for so in "${needed[@]}"; do
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
# Updates: RAUC (Debian's, with its service on a private D-Bus, image/rauc/bus.conf) and
# fw_printenv/fw_setenv for U-Boot's environment (uboot.env on the FAT boot partition).
step "RAUC (A/B updates), its D-Bus, fw_printenv/fw_setenv"
bash image/debs.sh --libs rauc dbus-daemon libubootenv-tool >> "$OUT/packages.txt"
install_dynamic rauc usr/bin/rauc
install_dynamic dbus-daemon usr/bin/dbus-daemon
install_dynamic libubootenv-tool usr/bin/fw_printenv
ln -sfn fw_printenv "$RF/usr/bin/fw_setenv"
read -r _ _ RAUC_KEYRING_FILE < <(bash image/rauc/keys.sh)
mkdir -p "$RF/etc/rauc"
install -m 0644 "$RAUC_KEYRING_FILE" "$RF/etc/rauc/keyring.pem"
install -m 0644 image/rauc/bus.conf "$RF/etc/rauc/bus.conf"
sed -e "s|@COMPATIBLE@|betaas-$BOARD|" -e "s|@PARTITION@|$PARTITION|g" image/rauc/system.conf.in > "$RF/etc/rauc/system.conf"
# CONFIG_ENV_SIZE of Debian's sunxi U-Boot: 64 KiB (the uboot.env it saves), no redundant copy.
echo "/boot/uboot.env 0x0000 0x10000" > "$RF/etc/fw_env.config"
for p in usr/bin/rauc usr/bin/dbus-daemon usr/bin/fw_printenv; do
  out=$(qemu-arm-static -L "$RF" "$RF/$p" --version 2>&1) || { echo "image: the installed $p does not run: $out" >&2; exit 1; }
  echo "    ${p##*/}: $(echo "$out" | head -1)"
done

step "mosquitto (started only when /boot/betaas/mosquitto.conf is provisioned)"
install_dynamic mosquitto usr/sbin/mosquitto
usage=$(qemu-arm-static -L "$RF" "$RF/usr/sbin/mosquitto" -h 2>&1 || true)   # -h exits 3
case "$usage" in "mosquitto version"*) ;; *) echo "image: the installed mosquitto does not run: $usage" >&2; exit 1 ;; esac

# The local cloud on the gateway itself (paper §II): libvirtd with its LXC and QEMU drivers,
# qemu-system-arm (TCG: 32-bit ARM has no KVM host support since Linux 5.7) and qemu-img for the
# overlays, betaas-vmd (image/vmd-armhf.sh: linked against these same libvirt packages), and the
# tiny template as a container and as an emulated VM. VIRT=0 builds the lite image without them.
if [ "${VIRT:-1}" = 1 ]; then
  step "virtualization: libvirtd (LXC + QEMU drivers), qemu-system-arm, qemu-img, betaas-vmd"
  bash image/debs.sh --libs libvirt-daemon libvirt-daemon-driver-lxc libvirt-daemon-driver-qemu \
    libvirt-clients libvirt-common qemu-system-arm qemu-utils >> "$OUT/packages.txt"
  VMD=${VMD:-target/vmd-armhf/armv7-unknown-linux-gnueabihf/release/betaas-vmd}
  [ -x "$VMD" ] || { echo "image: $VMD missing: run 'make vmd-arm'" >&2; exit 1; }
  lvdrv=usr/lib/arm-linux-gnueabihf/libvirt/connection-driver
  install_dynamic libvirt-daemon usr/sbin/libvirtd
  install_dynamic libvirt-daemon-driver-lxc usr/lib/libvirt/libvirt_lxc
  install_dynamic libvirt-daemon-driver-lxc $lvdrv/libvirt_driver_lxc.so
  install_dynamic libvirt-daemon-driver-qemu $lvdrv/libvirt_driver_qemu.so
  install_dynamic libvirt-clients usr/bin/virsh
  install_dynamic qemu-system-arm usr/bin/qemu-system-arm
  install_dynamic qemu-utils usr/bin/qemu-img
  install_dynamic "$VMD" usr/bin/betaas-vmd
  # libvirt's CPU models (the ARM ones and the index that names them).
  mkdir -p "$RF/usr/share/libvirt/cpu_map"
  cp "$PK"/libvirt-common/usr/share/libvirt/cpu_map/{index.xml,arm_*.xml} "$RF/usr/share/libvirt/cpu_map/"
  # What libvirt writes lives on the data partition (rcS makes the directories, copies the configs).
  mkdir -p "$RF/var/lib" "$RF/var/cache"
  ln -sfn /var/lib/betaas/libvirt/etc "$RF/etc/libvirt"
  ln -sfn /var/lib/betaas/libvirt/lib "$RF/var/lib/libvirt"
  ln -sfn /var/lib/betaas/libvirt/cache "$RF/var/cache/libvirt"
  for p in usr/sbin/libvirtd usr/bin/virsh usr/bin/qemu-system-arm usr/bin/qemu-img usr/bin/betaas-vmd; do
    b=${p##*/}
    out=$(qemu-arm-static -L "$RF" "$RF/$p" --version 2>&1) \
      || { echo "image: the installed $b does not run: $out" >&2; exit 1; }
    echo "    $b: $(echo "$out" | head -1)"
  done
  step "templates the gateway runs: tiny as a container and as an emulated VM"
  TINY=out/templates/tiny-armhf
  [ -f $TINY/template.toml ] || { echo "image: $TINY missing: run 'make out/templates/tiny-armhf/template.toml'" >&2; exit 1; }
  TD=$RF/usr/share/betaas/templates
  mkdir -p "$TD/tiny-armhf" "$TD/tiny-vm-armhf"
  cp $TINY/{template.toml,vmlinuz,initrd.img,disk.qcow2,rootfs.tar.gz} "$TD/tiny-armhf/"
  # tiny-vm: the same files, as an emulated VM only (a gateway prefers a container for `tiny`).
  sed -e 's/^name = "tiny"$/name = "tiny-vm"/' -e 's/^kinds = .*/kinds = ["qemu"]/' \
    -e '/^\[lxc\]/,/^$/d' -e 's/^description = "/description = "As a QEMU VM only. /' \
    $TINY/template.toml > "$TD/tiny-vm-armhf/template.toml"
  for f in vmlinuz initrd.img disk.qcow2; do ln -s ../tiny-armhf/$f "$TD/tiny-vm-armhf/$f"; done
  grep -q '^name = "tiny-vm"' "$TD/tiny-vm-armhf/template.toml" || { echo "image: tiny-vm descriptor not made" >&2; exit 1; }
else
  rm -f "$RF/etc/betaas/vmd.toml"
fi
install -m 0644 "boards/$BOARD/agent.toml" "$RF/etc/betaas/agent.toml"
step "checking the shipped agent config with the ARM agent itself"
qemu-arm-static "$RF/usr/bin/betaas-agent" check-config --config "$RF/etc/betaas/agent.toml"
cat > "$RF/etc/os-release" <<OSR
NAME="BETaaS gateway firmware"
ID=betaas
VERSION_ID=$VERSION
BOARD=$BOARD
OSR
# The firmware version (make bundle rewrites it in the bundle's copy; the agent's health reports it).
echo "$VERSION" > "$RF/etc/betaas-release"
# The slot's own kernel, DTB and initramfs: U-Boot's boot.scr loads them from this slot's partition.
mkdir -p "$RF/$SLOT_BOOT"
cp "$PK/linux-image-armmp/boot/vmlinuz-$KVER" "$RF/$SLOT_BOOT/zImage"
cp "$ST/initrd.img" "$RF/$SLOT_BOOT/initrd.img"
[ -n "$DTB" ] && cp "$PK/linux-image-armmp/usr/lib/linux-image-$KVER/$DTB" "$RF/$SLOT_BOOT/$DTB"

step "boot partition"
# Direct kernel boot (boards without U-Boot: qemu-virt) always boots slot A.
cmdline="console=$CONSOLE root=${PARTITION}2 ro rootwait panic=10 quiet loglevel=4 rauc.slot=A"
BT=$ST/boot
rm -rf "$BT" && mkdir -p "$BT"
if [ -n "$UBOOT_TARGET" ]; then
  sed -e "s|@CONSOLE@|$CONSOLE|" -e "s|@PARTITION@|$PARTITION|" -e "s|@SLOT_BOOT@|$SLOT_BOOT|g" -e "s|@DTB@|$DTB|" \
    image/rauc/boot.cmd.in > "$ST/boot.cmd"
  mkimage -A arm -O linux -T script -C none -n "BETaaS A/B boot" -d "$ST/boot.cmd" "$BT/boot.scr" >/dev/null
fi
rm -f "$ST/boot.vfat"
# -i: a volume id from the build; --invariant: a fixed time in the volume label's entry (mkfs.fat 4.2
# ignores SOURCE_DATE_EPOCH there); mcopy -m keeps the files' (fixed) times.
mkfs.vfat --invariant -i "$(uuid_for boot | cut -c1-8)" -n BOOT -C "$ST/boot.vfat" $((BOOT_MB * 1024)) >/dev/null
fix_times "$BT"
[ -z "$(ls "$BT")" ] || mcopy -m -s -i "$ST/boot.vfat" "$BT"/* ::/

step "ext4 partitions"
# Fixed times, UUIDs and hash seeds (mkext4); -E root_owner: files belong to root.
mkext4 rootfs "$RF" "$ST/rootfs.ext4" "${ROOT_MB}M"
cp "$RF/etc/betaas-release" "$OUT/version"
rm -rf "$ST/data" && mkdir -p "$ST/data"
# The app template (OpenJDK + Tomcat, 75 MiB packed) would not fit the A/B slots: it starts on the
# data partition, which updates never rewrite (a bundle carries one slot), so it stays across them.
# A container only (its rootfs and descriptor): a JVM in an emulated VM on the gateway takes far
# too long. vmd.toml lists /var/lib/betaas/templates.
if [ "${VIRT:-1}" = 1 ]; then
  step "data partition: the app template as a container (/var/lib/betaas/templates/app-armhf)"
  APP=out/templates/app-armhf
  [ -f $APP/template.toml ] || { echo "image: $APP missing: run 'make templates-app APP_ARCH=armhf'" >&2; exit 1; }
  mkdir -p "$ST/data/templates/app-armhf"
  cp $APP/rootfs.tar.gz "$ST/data/templates/app-armhf/"
  sed -e 's/^kinds = .*/kinds = ["lxc"]/' -e 's/^description = "/description = "As a container only. /' \
    $APP/template.toml > "$ST/data/templates/app-armhf/template.toml"
  grep -q '^kinds = \["lxc"\]$' "$ST/data/templates/app-armhf/template.toml" \
    || { echo "image: the app descriptor was not made container-only" >&2; exit 1; }
fi
mkext4 data "$ST/data" "$ST/data.ext4" "${DATA_MB}M"

step "disk image ($IMG_MB MiB)"
IMG=$OUT/sdcard.img
rm -f "$IMG"
truncate -s "${IMG_MB}M" "$IMG"
sfdisk -q "$IMG" <<SF
label: dos
label-id: 0x$(uuid_for disk | cut -c1-8)
start=1MiB, size=${BOOT_MB}MiB, type=c, bootable
size=${ROOT_MB}MiB, type=83
size=${ROOT_MB}MiB, type=83
size=${DATA_MB}MiB, type=83
SF
put() { dd if="$1" of="$IMG" bs=1M seek="$2" conv=notrunc,sparse,fsync status=none; }
put "$ST/boot.vfat" 1
put "$ST/rootfs.ext4" $((1 + BOOT_MB))                # slot A
put "$ST/rootfs.ext4" $((1 + BOOT_MB + ROOT_MB))      # slot B: the same system until the first update
put "$ST/data.ext4" $((1 + BOOT_MB + 2 * ROOT_MB))
if [ -n "$UBOOT_TARGET" ]; then
  SPL=$PK/u-boot-sunxi/usr/lib/u-boot/$UBOOT_TARGET/u-boot-sunxi-with-spl.bin
  dd if="$SPL" of="$IMG" bs=1 seek="$UBOOT_OFFSET" conv=notrunc status=none
  cp "$SPL" "$OUT/u-boot-sunxi-with-spl.bin"
fi

# Loose copies for direct kernel boot and for inspection.
cp "$RF/$SLOT_BOOT/zImage" "$ST/initrd.img" "$OUT/"
[ -n "$DTB" ] && cp "$RF/$SLOT_BOOT/$DTB" "$OUT/"

if [ "$OUTPUT" = qemu ]; then
  step "run-qemu.sh"
  if [ "$QEMU_BOOT" = sdcard ]; then
    boot_args=""
  else
    boot_args="-kernel zImage -initrd initrd.img -append \"$cmdline\"${DTB:+ -dtb $DTB}"
  fi
  disk=${QEMU_DISK/sdcard.img/\"\$img\"}   # the script boots its copy of the image
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
  $disk \$net $QEMU_DEVICES $boot_args "\$@"
RUN
  chmod +x "$OUT/run-qemu.sh"
fi

step "manifest"
{
  echo "# $BOARD image $VERSION, file times $(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ) (SOURCE_DATE_EPOCH)"
  echo "# package version sha256(.deb) file"
  cat "$OUT/packages.txt"
  echo "kernel $KVER"
  echo "agent $(sha256sum "$AGENT" | cut -d' ' -f1) $(stat -c %s "$AGENT") bytes"
  echo "shared libraries (mosquitto, libvirt, QEMU): $(du -cb "$RF"/lib/arm-linux-gnueabihf/* | tail -1 | cut -f1) bytes"
  echo "mosquitto: $(stat -c %s "$RF/usr/sbin/mosquitto") bytes"
  if [ "${VIRT:-1}" = 1 ]; then
    echo "betaas-vmd $(sha256sum "$VMD" | cut -d' ' -f1) $(stat -c %s "$VMD") bytes"
    echo "libvirt (libvirtd, drivers, libvirt_lxc, virsh, cpu_map): $(du -cb "$RF/usr/sbin/libvirtd" "$RF/$lvdrv" "$RF/usr/lib/libvirt" "$RF/usr/bin/virsh" "$RF/usr/share/libvirt" | tail -1 | cut -f1) bytes"
    echo "qemu-system-arm + qemu-img: $(du -cb "$RF/usr/bin/qemu-system-arm" "$RF/usr/bin/qemu-img" | tail -1 | cut -f1) bytes"
    echo "templates (/usr/share/betaas/templates): $(du -sb "$RF/usr/share/betaas/templates" | cut -f1) bytes"
    echo "data partition templates (/var/lib/betaas/templates): $(du -sb "$ST/data/templates" | cut -f1) bytes"
  fi
  echo "rootfs contents: $(du -sb "$RF" | cut -f1) bytes"
  echo "image: $IMG_MB MiB; partitions: boot $BOOT_MB MiB, rootfs A $ROOT_MB MiB, rootfs B $ROOT_MB MiB, data $DATA_MB MiB"
  echo "version $VERSION; RAUC compatible betaas-$BOARD; keyring $(openssl x509 -noout -subject -in "$RAUC_KEYRING_FILE" | sed 's/^subject=//')"
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
  --from "$ST/rootfs.ext4@$((1 + BOOT_MB + ROOT_MB))MiB" \
  --from "$ST/data.ext4@$((1 + BOOT_MB + 2 * ROOT_MB))MiB"
echo "==> [$BOARD] write it to an SD card: make flash BOARD=$BOARD DEVICE=/dev/sdX [CONFIG=agent.toml] [PROVISION=dir]"
step "done: $IMG ($SECONDS s)"
