# shellcheck shell=bash
# Sourced by the offline templates' build.sh (tiny, lgw): a Debian kernel plus a busybox initramfs,
# built from Debian packages only (image/debs.sh, cached in dl/). The caller sets NAME and ARCH,
# then calls, in order:
#   ir_setup [EXTRA_DEB...]    resolves the kernel (linux-image-amd64 | linux-image-armmp) and
#                              busybox-static (+ extras); sets DEB_ARCH KPKG PK KVER KMOD OUT ST IR
#   ir_tree INIT MODULES APPLET...  the initramfs tree in $IR: busybox with these applet links,
#                              INIT as /init, /lib/betaas/power-button.sh (ACPI shutdown), the
#                              modules (dependencies first) listed in /etc/modules
#   (the caller adds its own files under $IR here)
#   ir_pack                    $OUT/initrd.img (fixed mtimes, sorted: same inputs, same bytes)
#   ir_rootfs                  (optional) the same tree as $OUT/rootfs.tar.gz, a container's root
#   ir_finish SRC_DESCRIPTOR   the kernel, an empty 1 GiB qcow2 base disk (DISK_RAW=file: that raw image instead), template.toml with the
#                              sha256s, manifest.txt; removes the staging directory
# Kernel modules per arch are the caller's: everything else the guest needs is built into Debian's
# kernels (virtio-pci, 8250/PL011 serial consoles, devtmpfs, gzip initrd, gpio-keys + PL061).

# shellcheck disable=SC2153  # NAME and ARCH are set by the template recipe that sources this file
step() { echo "==> [$NAME-$ARCH] $*"; }

ir_setup() {
  case "$ARCH" in
    x86_64) DEB_ARCH=amd64 KPKG=linux-image-amd64 PK=dl/pkgs-amd64 ;;
    armhf)  DEB_ARCH=armhf KPKG=linux-image-armmp PK=dl/pkgs ;;
    *) echo "$NAME: unknown arch '$ARCH' (x86_64 or armhf)" >&2; exit 2 ;;
  esac
  OUT=out/templates/$NAME-$ARCH
  ST=$OUT/staging
  IR=$ST/initramfs
  step "resolving Debian $DEB_ARCH packages"
  mkdir -p "$OUT"
  ARCH=$DEB_ARCH bash image/debs.sh "$KPKG" busybox-static "$@" > "$OUT/packages.txt"
  KVER=$(ls "$PK/$KPKG/usr/lib/modules")
  KMOD=$PK/$KPKG/usr/lib/modules/$KVER
  [ -f "$KMOD/modules.dep" ] || depmod -b "$PK/$KPKG/usr" "$KVER"
}

ir_module_files() { # NAME... -> relative .ko paths, dependencies first, each once
  local m path dep
  for m in "$@"; do
    path=$(awk -v m="$m" -F: '{ n=$1; sub(/.*\//,"",n); sub(/\.ko.*/,"",n); gsub(/-/,"_",n); k=m; gsub(/-/,"_",k); if (n==k) { print; exit } }' "$KMOD/modules.dep")
    [ -n "$path" ] || { echo "$NAME: module $m not in $KVER" >&2; exit 1; }
    for dep in $(echo "${path#*:}" | tr ' ' '\n' | tac) "${path%%:*}"; do echo "$dep"; done
  done | awk 'NF && !seen[$0]++'
}

ir_tree() { # INIT "MODULES" APPLET...
  local init=$1 modules=$2 a f
  shift 2
  MODULES=$modules
  step "initramfs (kernel $KVER, modules: $MODULES)"
  rm -rf "$ST" && mkdir -p "$IR"/{bin,dev,proc,sys,etc,lib/modules/"$KVER"}
  install -m 0755 "$PK/busybox-static/usr/bin/busybox" "$IR/bin/busybox"
  for a in "$@"; do ln -s busybox "$IR/bin/$a"; done
  ln -s bin "$IR/sbin"
  install -m 0755 "$init" "$IR/init"
  install -D -m 0644 templates/lib/power-button.sh "$IR/lib/betaas/power-button.sh"
  # shellcheck disable=SC2086  # MODULES: module names, split on purpose
  f=$(ir_module_files $MODULES) || exit 1   # not inside `for … in $(…)`: that would drop its exit status
  for f in $f; do install -D -m 0644 "$KMOD/$f" "$IR/lib/modules/$KVER/$f"; done
  cp "$KMOD/modules.order" "$KMOD/modules.builtin" "$KMOD/modules.builtin.modinfo" "$IR/lib/modules/$KVER/"
  depmod -b "$IR" "$KVER"
  # shellcheck disable=SC2086  # MODULES: module names, split on purpose
  printf '%s\n' $MODULES > "$IR/etc/modules"
}

ir_pack() {
  find "$IR" -exec touch -h -d @0 {} +   # fixed mtimes: the same inputs give the same initrd.img
  (cd "$IR" && find . -print0 | sort -z | cpio --null -o -H newc --quiet --owner 0:0 --reproducible) | gzip -9n > "$OUT/initrd.img"
}

# ir_rootfs: the same tree as $OUT/rootfs.tar.gz, a container's root (libvirt lxc) for templates
# whose descriptor has an [lxc] section (sorted, fixed owner and mtimes: reproducible).
ir_rootfs() {
  step "container rootfs (the initramfs tree)"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$IR" -cf - . | gzip -9n > "$OUT/rootfs.tar.gz"
}

ir_finish() { # SRC_DESCRIPTOR [extra manifest lines on stdin are not read]
  local src=$1
  step "kernel and empty base disk"
  cp "$PK/$KPKG/boot/vmlinuz-$KVER" "$OUT/vmlinuz"
  rm -f "$OUT/disk.qcow2"
  if [ -n "${DISK_RAW:-}" ]; then   # a recipe's own root filesystem image (the app template)
    qemu-img convert -q -f raw -O qcow2 "$DISK_RAW" "$OUT/disk.qcow2"
  else
    qemu-img create -q -f qcow2 "$OUT/disk.qcow2" 1G
  fi

  step "template.toml"
  . templates/lib/descriptor.sh
  tpl_descriptor "$src" "$OUT" "$ARCH"
  local want=3
  grep -q '^\[lxc\]' "$src" && want=4
  [ "$(grep -c '_\?sha256 = "[0-9a-f]\{64\}"' "$OUT/template.toml")" = $want ] \
    || { echo "$NAME: $OUT/template.toml did not get its $want sha256 lines" >&2; exit 1; }

  {
    echo "# out/templates/$NAME-$ARCH built $(date -u +%Y-%m-%dT%H:%M:%SZ) from $(git describe --always --dirty 2>/dev/null || echo unknown)"
    echo "# package version sha256(.deb) file"
    cat "$OUT/packages.txt"
    echo "kernel $KVER"
    echo "modules $MODULES"
    [ -z "${MANIFEST_EXTRA:-}" ] || echo "$MANIFEST_EXTRA"
    # shellcheck disable=SC2046  # rootfs.tar.gz only when the template has one (no spaces in it)
    (cd "$OUT" && sha256sum vmlinuz initrd.img disk.qcow2 $(ls rootfs.tar.gz 2>/dev/null))
  } > "$OUT/manifest.txt"
  rm -rf "$OUT/packages.txt" "$ST"
  step "done: $OUT ($(du -sh "$OUT" | cut -f1))"
}
