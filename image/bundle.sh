#!/usr/bin/env bash
# A signed RAUC update bundle of a board's root filesystem (which carries the slot's kernel, DTB and
# initramfs): out/<board>/betaas-<board>-<version>.raucb, from the image build's rootfs.ext4 with the
# version written into /etc/betaas-release (and /etc/os-release).
# Usage: image/bundle.sh BOARD     Env: VERSION (default: git describe), ROOTFS (another ext4 image
# to bundle, default out/<board>/staging/rootfs.ext4), OUTPUT (the bundle's path), and the signing
# key variables of image/rauc/keys.sh (RAUC_KEY, RAUC_CERT, RAUC_KEYRING; default: out/keys/).
set -euo pipefail
BOARD=${1:?usage: image/bundle.sh BOARD}
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
OUT=out/$BOARD
ROOTFS=${ROOTFS:-$OUT/staging/rootfs.ext4}
[ -f "$ROOTFS" ] || { echo "bundle: $ROOTFS missing: run 'make image BOARD=$BOARD'" >&2; exit 1; }
VERSION=${VERSION:-$(git describe --always --dirty 2>/dev/null || echo unknown)}
case "$VERSION" in *[!A-Za-z0-9._+~-]*|'') echo "bundle: VERSION '$VERSION': use letters, digits and . _ + ~ -" >&2; exit 2 ;; esac
OUTPUT=${OUTPUT:-$OUT/betaas-$BOARD-$VERSION.raucb}
read -r KEY CERT KEYRING < <(bash image/rauc/keys.sh)
echo "==> [$BOARD] bundle $VERSION, signed by $(openssl x509 -noout -subject -in "$CERT" | sed 's/^subject=//')"

mkdir -p "$OUT"
W=$(mktemp -d "$OUT/bundle.XXXXXX")
trap 'rm -rf "$W"' EXIT
mkdir "$W/content"
cp --sparse=always "$ROOTFS" "$W/content/rootfs.ext4"
# The version, in the bundle's own copy of the root filesystem.
echo "$VERSION" > "$W/betaas-release"
debugfs -R "cat /etc/os-release" "$W/content/rootfs.ext4" 2>/dev/null \
  | sed "s/^VERSION_ID=.*/VERSION_ID=$VERSION/" > "$W/os-release"
debugfs -w -f - "$W/content/rootfs.ext4" >/dev/null 2>&1 <<CMDS
rm /etc/betaas-release
write $W/betaas-release /etc/betaas-release
rm /etc/os-release
write $W/os-release /etc/os-release
CMDS
got=$(debugfs -R "cat /etc/betaas-release" "$W/content/rootfs.ext4" 2>/dev/null)
[ "$got" = "$VERSION" ] || { echo "bundle: could not write /etc/betaas-release into the rootfs (got '$got')" >&2; exit 1; }
e2fsck -fn "$W/content/rootfs.ext4" >/dev/null 2>&1 || { echo "bundle: the rootfs does not check clean after the edit" >&2; exit 1; }

# format=plain: the signature covers the whole bundle and is checked before anything is written; it
# needs only loop + squashfs on the gateway (verity would also need dm-verity).
cat > "$W/content/manifest.raucm" <<MF
[update]
compatible=betaas-$BOARD
version=$VERSION
description=BETaaS gateway firmware $VERSION for $BOARD

[bundle]
format=plain

[image.rootfs]
filename=rootfs.ext4
MF
rm -f "$OUTPUT"
rauc bundle --cert "$CERT" --key "$KEY" --keyring "$KEYRING" "$W/content" "$OUTPUT" >/dev/null
rauc info --keyring "$KEYRING" --output-format=shell "$OUTPUT" 2>/dev/null | grep -E '^RAUC_MF_(COMPATIBLE|VERSION)=' | sed 's/^/    /'
echo "==> [$BOARD] bundle: $OUTPUT ($(stat -c %s "$OUTPUT") bytes)"
