#!/usr/bin/env bash
# Builds the app template for one architecture, offline, from Debian binary packages (the userland
# from Debian 12 bookworm, the kernel and busybox from stable as for the tiny template)
# (image/debs.sh: the host's Debian mirror, a private apt state, cached in dl/; no mirror host name
# in the repository). Nothing runs a package's maintainer scripts: the packages are unpacked.
#   rootfs      busybox-static (the shell and tools of /init), libc6 libgcc-s1 libstdc++6 zlib1g (what
#               the JVM links), openjdk-17-jre-headless, tomcat10-common + libtomcat10-java (Tomcat's
#               jars) + libeclipse-jdt-core-java (the JSP compiler), Tomcat's Debian conf files, and
#               templates/app/{init,server.xml,logging.properties}; docs and manuals left out
#   container   the rootfs as rootfs.tar.gz (libvirt lxc, init /init)
#   VM          the Debian kernel, an initramfs (templates/app/vm-init: virtio disk + net + ext4
#               modules, crc32c for ext4, switch_root) and disk.qcow2: the same rootfs as an ext4 filesystem
#               (mkfs.ext4 -d: no loop device, no root needed)
# Output: out/templates/app-<arch>/{vmlinuz,initrd.img,disk.qcow2,rootfs.tar.gz,template.toml,
# manifest.txt,inputs.sha256}. Skipped when its inputs (these files, the package versions) did not
# change: FORCE=1 rebuilds. Usage: templates/app/build.sh x86_64|armhf
set -euo pipefail
NAME=app
ARCH=${1:?usage: templates/app/build.sh x86_64|armhf}
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
start=$(date +%s)
. templates/lib/initramfs.sh
case "$ARCH" in
  x86_64) MODS="button evdev virtio_blk virtio_net crc32c_generic ext4" ;;
  armhf)  MODS="evdev virtio_mmio virtio_blk virtio_net crc32c_generic ext4" ;;
  *) echo "app: unknown arch '$ARCH' (x86_64 or armhf)" >&2; exit 2 ;;
esac
PKGS="libc6 libgcc-s1 libstdc++6 zlib1g openjdk-17-jre-headless tomcat10 tomcat10-common libtomcat10-java libeclipse-jdt-core-java"

OUT=out/templates/$NAME-$ARCH
key=$(cat templates/app/* templates/lib/initramfs.sh templates/lib/power-button.sh templates/lib/descriptor.sh \
          image/debs.sh | sha256sum | cut -d' ' -f1)
if [ -z "${FORCE:-}" ] && [ -f "$OUT/template.toml" ] && [ "$(cat "$OUT/inputs.sha256" 2>/dev/null)" = "$key" ]; then
  step "up to date (inputs unchanged; FORCE=1 rebuilds): $OUT"
  exit 0
fi
rm -f "$OUT/inputs.sha256"

# shellcheck disable=SC2119  # ir_setup takes no arguments from this script: its $1 is optional
ir_setup   # the kernel and busybox-static: Debian stable's, as for the tiny template
# OpenJDK 17 is bookworm's (trixie, today's stable, has 21): the userland comes from bookworm.
step "resolving Debian bookworm $DEB_ARCH packages (Java, Tomcat)"
# shellcheck disable=SC2086  # PKGS: package names, split on purpose
SUITE=bookworm ARCH=$DEB_ARCH bash image/debs.sh $PKGS >> "$OUT/packages.txt"
JPK=dl/pkgs-$DEB_ARCH-bookworm
ir_tree templates/app/vm-init "$MODS" sh mount modprobe cat dd poweroff sleep ip tar mkdir rm cp head switch_root
ir_pack

R=$ST/rootfs
step "root filesystem (OpenJDK 17 + Tomcat 10)"
mkdir -p "$R"/{bin,dev,proc,sys,tmp,etc,srv/betaas/webapps}
for p in $PKGS; do
  tar -C "$JPK/$p" --exclude=./.version -cf - . | tar -C "$R" -xf -
done
rm -rf "$R"/usr/share/{doc,man,lintian,bug} "$R"/lib/systemd "$R"/usr/lib/tmpfiles.d "$R"/usr/lib/sysusers.d
install -m 0755 "$PK/busybox-static/usr/bin/busybox" "$R/bin/busybox"
for a in sh mount mkdir cat ls head cut sha256sum uname sleep wget grep kill poweroff dd printf; do
  ln -sf busybox "$R/bin/$a"
done
install -m 0755 templates/app/init "$R/init"
install -D -m 0644 templates/lib/power-button.sh "$R/lib/betaas/power-button.sh"
# catalina.base: Debian's web.xml (default and JSP servlets) and catalina.properties (the class
# loaders); this template's server.xml (one connector on ${betaas.port}, appBase
# /srv/betaas/webapps, no shutdown port), context.xml (no class path jar scan) and
# logging.properties (everything on the console).
B=$R/var/lib/betaas-tomcat
mkdir -p "$B/conf" "$B/work" "$B/logs"
for f in web.xml catalina.properties; do
  src=$(find "$JPK"/tomcat10* -path "*/$f" -print | grep -v '/doc/' | head -1)
  [ -n "$src" ] || { echo "app: Tomcat's $f not found in the tomcat10 packages" >&2; exit 1; }
  cp "$src" "$B/conf/$f"
done
install -m 0644 templates/app/server.xml templates/app/context.xml templates/app/logging.properties "$B/conf/"
java=$(ls "$R"/usr/lib/jvm/java-17-openjdk-*/bin/java)
if ! { [ -x "$java" ] && [ -f "$R/usr/share/tomcat10/bin/bootstrap.jar" ] && [ -f "$R/usr/share/tomcat10/lib/catalina.jar" ]; }; then
  echo "app: java or Tomcat's jars missing in the rootfs" >&2; exit 1
fi

step "container rootfs and VM disk"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$R" -cf - . | gzip -6n > "$OUT/rootfs.tar.gz"
disk_gb=$(awk '/^\[/ { t = $0 } t == "[image]" && /^min_disk_gb = / { print $3 }' templates/app/template.toml)
rm -f "$ST/disk.raw" && truncate -s "${disk_gb}G" "$ST/disk.raw"
mkfs.ext4 -q -F -L betaas-app -E root_owner=0:0 -d "$R" "$ST/disk.raw"
DISK_RAW=$ST/disk.raw
MANIFEST_EXTRA="userland suite bookworm
rootfs $(du -sm "$R" | cut -f1) MiB unpacked"
ir_finish templates/app/template.toml
echo "$key" > "$OUT/inputs.sha256"
step "built in $(( $(date +%s) - start )) s"
