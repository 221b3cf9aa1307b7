#!/usr/bin/env bash
# Cross-compiles betaas-vmd for armhf, dynamically linked against Debian's armhf libvirt: the same
# packages the image ships (image/debs.sh resolves them by name, from the host's mirror), merged
# into an armhf sysroot that pkg-config and the linker read. The static agent keeps its own
# target directory: vmd links with -crt-static (libvirt cannot be linked statically).
# Output: target/vmd-armhf/armv7-unknown-linux-gnueabihf/release/betaas-vmd, and out/sysroot-armhf/
# (with the packages' list in out/sysroot-armhf/packages.txt). Checks the result is an ARM EABI5
# dynamic executable that needs libvirt.so.0, and that it starts under qemu-arm with the sysroot's
# libraries (`--help`).
# Usage: image/vmd-armhf.sh
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
TARGET=armv7-unknown-linux-gnueabihf
SYSROOT=$top/out/sysroot-armhf
TRIPLE=arm-linux-gnueabihf

echo "==> armhf sysroot: libvirt-dev, libvirt0 and the libraries they need (Debian packages)"
mkdir -p out
ARCH=armhf bash image/debs.sh --libs libvirt-dev libvirt0 > out/.sysroot-packages.txt
if ! cmp -s out/.sysroot-packages.txt "$SYSROOT/packages.txt" 2>/dev/null; then
  rm -rf "$SYSROOT" && mkdir -p "$SYSROOT"
  while read -r name _; do
    cp -a "dl/pkgs/$name/." "$SYSROOT/"
  done < out/.sysroot-packages.txt
  rm -f "$SYSROOT/.version"
  # Debian's .so links are absolute (/lib/...): make them point inside the sysroot.
  find "$SYSROOT" -type l -lname '/*' | while read -r l; do
    ln -sfn "$SYSROOT$(readlink "$l")" "$l"
  done
  # Debian is merged-/usr: /lib is usr/lib (the link comes from base-files, not from these).
  [ -e "$SYSROOT/lib" ] || ln -s usr/lib "$SYSROOT/lib"
  cp out/.sysroot-packages.txt "$SYSROOT/packages.txt"
fi
echo "    $(wc -l < "$SYSROOT/packages.txt") packages in $SYSROOT"

echo "==> cross-compiling betaas-vmd ($TARGET, dynamic)"
libdirs="$SYSROOT/usr/lib/$TRIPLE:$SYSROOT/lib/$TRIPLE"
export PKG_CONFIG_ALLOW_CROSS=1
export PKG_CONFIG_SYSROOT_DIR=$SYSROOT
export PKG_CONFIG_LIBDIR=$SYSROOT/usr/lib/$TRIPLE/pkgconfig:$SYSROOT/usr/share/pkgconfig
# RUSTFLAGS replaces .cargo/config.toml's rustflags for the target (+crt-static: the agent's)
# instead of adding to them; with --target it does not reach build scripts. The cross toolchain's
# glibc (the host's Debian release) is older than the sysroot's: libvirt and its libraries need
# symbols of the newer one (GLIBC_2.38), which the image's own libc provides at run time, so the
# link does not resolve the libraries' own undefined symbols (--allow-shlib-undefined); the
# binary's own glibc references are to the older versions, which the newer libc keeps.
export RUSTFLAGS="-C target-feature=-crt-static -C link-arg=-Wl,--allow-shlib-undefined \
-C link-arg=-Wl,-rpath-link,$SYSROOT/usr/lib/$TRIPLE -C link-arg=-Wl,-rpath-link,$SYSROOT/lib/$TRIPLE"
cargo build --release --locked -p betaas-vmd --target "$TARGET" --target-dir target/vmd-armhf
BIN=target/vmd-armhf/$TARGET/release/betaas-vmd

f=$(file -L "$BIN")
echo "$f"
echo "$f" | grep -q 'ARM, EABI5.*dynamically linked' || { echo "error: $BIN is not a dynamic ARM EABI5 executable" >&2; exit 1; }
needed=$(readelf -d "$BIN" | awk '/NEEDED/{gsub(/[\[\]]/,"",$5); print $5}' | tr '\n' ' ')
echo "    needs: $needed"
case " $needed " in *" libvirt.so.0 "*) ;; *) echo "error: $BIN does not link libvirt.so.0" >&2; exit 1 ;; esac
if command -v qemu-arm-static >/dev/null || command -v qemu-arm >/dev/null; then
  q=$(command -v qemu-arm-static || command -v qemu-arm)
  # glibc's loader from the sysroot, libraries from its directories.
  "$q" -L "$SYSROOT" -E LD_LIBRARY_PATH="$libdirs" "$BIN" --help > out/.vmd-armhf-help.txt
  echo "    runs under $(basename "$q"): $(head -1 out/.vmd-armhf-help.txt)"
fi
echo "==> $BIN: $(stat -c %s "$BIN") bytes"
