# shellcheck shell=bash
# Sourced by the paper's template recipes (templates/{app,gateway,bigdata-storage,bigdata-compute}/build.sh):
# an Arch Linux ARM (ARMv7, "armv7h") guest image with packages installed by the guest's own pacman.
#
# NEEDS INTERNET. What it downloads, and from where (no mirror host is written here: you name yours):
#   $ALARM_URL        the ARMv7 root filesystem, ArchLinuxARM-armv7-latest.tar.gz on an Arch Linux ARM
#                     download mirror of your choice (~500 MB)
#   $ALARM_URL.md5    its checksum (the project publishes md5 only)
#   pacman packages (linux-armv7 kernel + each recipe's list) from the Arch Linux ARM mirrors named in the
#   rootfs's own /etc/pacman.d/mirrorlist (whatever mirror the rootfs ships), signatures checked
#   by pacman against the archlinuxarm keyring shipped in the rootfs.
# Downloads are cached in dl/alarm/. The build host needs: curl, bsdtar (libarchive-tools), mke2fs
# (e2fsprogs), qemu-img (qemu-utils), qemu-arm-static (qemu-user-static) registered with binfmt_misc
# (the recipe runs pacman and mkinitcpio inside the ARM rootfs with chroot; bind mounts only, no loop
# devices), and root.
#
# Image layout: a whole-disk ext4 (no partition table) booted directly by the VM manager
# (kernel + initramfs copied out of the rootfs's /boot, root=/dev/vda); a rootfs tarball for lxc.
# systemd in the guest handles the power button (ACPI shutdown on -M virt: gpio-keys -> logind).

ALARM_DL=${ALARM_DL:-dl/alarm}

tpl_die() { echo "templates/$TPL: $*" >&2; exit 1; }
[ -n "${ALARM_URL:-}" ] || tpl_die "set ALARM_URL to ArchLinuxARM-armv7-latest.tar.gz on the Arch Linux ARM \
download mirror you use (its .md5 must sit beside it); this recipe needs internet. The offline test template \
is 'make templates' (templates/tiny)."
case "$ALARM_URL" in http://*|https://*) ;; *) tpl_die "ALARM_URL=$ALARM_URL is not an http(s) URL" ;; esac
tpl_step() { echo "==> [$TPL] $*"; }

# Fails early, before anything is written, when a URL cannot be reached (as on CI machines, which only
# reach package registries): these templates cannot be built there.
tpl_require_online() {
  local url
  for url in "$@"; do
    curl -fsSIL --max-time 15 -o /dev/null "$url" || tpl_die "cannot reach $url: this recipe needs \
internet (Arch Linux ARM${TPL_EXTRA_SOURCES:+, $TPL_EXTRA_SOURCES}) and cannot run offline or on CI \
machines. The offline test template is 'make templates' (templates/tiny)."
  done
}

tpl_require_host() {
  [ "$(id -u)" = 0 ] || tpl_die "run as root (chroot into the ARM rootfs, files owned by the guest's users)"
  local c pkg
  for c in curl:curl bsdtar:libarchive-tools mke2fs:e2fsprogs qemu-img:qemu-utils \
           qemu-arm-static:qemu-user-static sha256sum:coreutils md5sum:coreutils; do
    pkg=${c#*:}; c=${c%%:*}
    command -v "$c" >/dev/null || tpl_die "$c is missing (Debian package $pkg)"
  done
  [ -e /proc/sys/fs/binfmt_misc/qemu-arm ] || tpl_die "binfmt_misc has no qemu-arm entry: ARM programs \
cannot run in the chroot (install qemu-user-static with binfmt-support, or register it by hand)"
}

# tpl_rootfs DEST: the Arch Linux ARM rootfs, downloaded once (md5 checked), unpacked into DEST.
tpl_rootfs() {
  local dest=$1 tar
  tar=$ALARM_DL/$(basename "$ALARM_URL")
  mkdir -p "$ALARM_DL"
  if [ ! -f "$tar" ] || ! (cd "$ALARM_DL" && md5sum -c --quiet "$(basename "$tar").md5" 2>/dev/null); then
    tpl_step "downloading $ALARM_URL"
    curl -fL --retry 3 -o "$tar.md5" "$ALARM_URL.md5"
    curl -fL --retry 3 -o "$tar.part" "$ALARM_URL"
    mv "$tar.part" "$tar"
    (cd "$ALARM_DL" && md5sum -c --quiet "$(basename "$tar").md5") || tpl_die "$tar: md5 mismatch"
  fi
  echo "alarm-rootfs $(sha256sum "$tar" | cut -d' ' -f1) $(basename "$tar")" >> "$TPL_OUT/sources.txt"
  rm -rf "$dest" && mkdir -p "$dest"
  tpl_step "unpacking the rootfs"
  bsdtar -xpf "$tar" -C "$dest"
}

# tpl_chroot ROOT CMD...: runs CMD in the ARM rootfs (qemu-arm-static through binfmt_misc).
tpl_chroot() {
  local root=$1; shift
  mkdir -p "$root/proc" "$root/sys" "$root/dev"
  mount -t proc proc "$root/proc"
  mount --rbind /sys "$root/sys"
  mount --rbind /dev "$root/dev"
  # The rootfs's resolv.conf may be an absolute symlink: move it aside, never write through it.
  if [ -e "$root/etc/resolv.conf" ] || [ -L "$root/etc/resolv.conf" ]; then
    mv "$root/etc/resolv.conf" "$root/etc/resolv.conf.betaas-saved"
  fi
  cp -L /etc/resolv.conf "$root/etc/resolv.conf"
  local rc=0
  chroot "$root" /usr/bin/env -i PATH=/usr/bin:/usr/sbin HOME=/root LANG=C "$@" || rc=$?
  umount -R "$root/dev" "$root/sys" "$root/proc" 2>/dev/null || umount -lR "$root/dev" "$root/sys" "$root/proc"
  rm -f "$root/etc/resolv.conf"
  if [ -e "$root/etc/resolv.conf.betaas-saved" ] || [ -L "$root/etc/resolv.conf.betaas-saved" ]; then
    mv "$root/etc/resolv.conf.betaas-saved" "$root/etc/resolv.conf"
  fi
  return $rc
}

# tpl_pacman ROOT PKG...: initialises the keyring, upgrades the rootfs and installs PKG with the
# guest's pacman; records every installed package and version in sources.txt.
tpl_pacman() {
  local root=$1; shift
  tpl_step "pacman: ${*}"
  tpl_chroot "$root" pacman-key --init
  tpl_chroot "$root" pacman-key --populate archlinuxarm
  tpl_chroot "$root" pacman -Syu --noconfirm --needed "$@"
  tpl_chroot "$root" pacman -Scc --noconfirm >/dev/null
  tpl_chroot "$root" pacman -Q | sed 's/^/pacman /' >> "$TPL_OUT/sources.txt"
}

# tpl_common ROOT MARKER AFTER_UNIT: what every paper template shares: virtio drivers in the
# initramfs, a serial console, fstab for the whole-disk root, and a unit that prints MARKER on the
# console once AFTER_UNIT has started (the VM manager's "booted").
tpl_common() {
  local root=$1 marker=$2 after=$3
  tpl_step "initramfs with virtio, boot marker after $after"
  sed -i 's/^MODULES=.*/MODULES=(virtio_pci virtio_mmio virtio_blk virtio_net virtio_console)/' "$root/etc/mkinitcpio.conf"
  tpl_chroot "$root" mkinitcpio -P
  echo "/dev/vda / ext4 rw,relatime 0 1" > "$root/etc/fstab"
  echo "$TPL" > "$root/etc/hostname"
  cat > "$root/etc/systemd/system/betaas-booted.service" <<UNIT
[Unit]
Description=BETaaS template $TPL: print the boot marker on the console
After=$after
Wants=$after

[Service]
Type=oneshot
# (\$\$ is systemd's escape for a literal \$)
ExecStart=/bin/sh -c 'echo "$marker \$\$(uname -m) \$\$(uname -r)" > /dev/console'

[Install]
WantedBy=multi-user.target
UNIT
  tpl_chroot "$root" systemctl enable betaas-booted.service
}

# tpl_image ROOT SIZE_GB: out/templates/<name>/{disk.qcow2,vmlinuz,initrd.img,rootfs.tar.gz}.
tpl_image() {
  local root=$1 gb=$2
  tpl_step "kernel, initramfs, disk image (${gb} GiB ext4), rootfs tarball"
  cp "$root/boot/zImage" "$TPL_OUT/vmlinuz"
  cp "$root/boot/initramfs-linux.img" "$TPL_OUT/initrd.img"
  rm -f "$TPL_OUT/root.ext4"
  mke2fs -q -F -t ext4 -L root -E root_owner=0:0 -d "$root" "$TPL_OUT/root.ext4" "${gb}G"
  qemu-img convert -f raw -O qcow2 "$TPL_OUT/root.ext4" "$TPL_OUT/disk.qcow2"
  rm -f "$TPL_OUT/root.ext4"
  bsdtar -czpf "$TPL_OUT/rootfs.tar.gz" -C "$root" .
}

# tpl_finish ROOT: template.toml with checksums, manifest.txt, staging removed.
tpl_finish() {
  local root=$1
  . templates/lib/descriptor.sh
  tpl_descriptor "${TPL_DESC:-templates/$TPL/template.toml}" "$TPL_OUT"
  {
    echo "# out/templates/$TPL built $(date -u +%Y-%m-%dT%H:%M:%SZ) from $(git describe --always --dirty 2>/dev/null || echo unknown)"
    cat "$TPL_OUT/sources.txt"
    (cd "$TPL_OUT" && sha256sum vmlinuz initrd.img disk.qcow2 rootfs.tar.gz)
  } > "$TPL_OUT/manifest.txt"
  rm -rf "$root" "$TPL_OUT/sources.txt"
  tpl_step "done: $TPL_OUT"
}

# tpl_start NAME [URL...]: checks the network (the rootfs and URL...) and the host, prepares out/templates/NAME.
tpl_start() {
  TPL=$1; shift
  TPL_OUT=out/templates/$TPL
  tpl_require_online "$ALARM_URL.md5" "$@"
  tpl_require_host
  mkdir -p "$TPL_OUT"
  : > "$TPL_OUT/sources.txt"
}

# tpl_min_disk_gb: the image size from the source descriptor's [image] min_disk_gb.
tpl_min_disk_gb() {
  awk '/^\[/ { t = $0 } t == "[image]" && /^min_disk_gb = / { print $3 }' "${TPL_DESC:-templates/$TPL/template.toml}"
}
