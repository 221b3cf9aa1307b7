#!/usr/bin/env bash
# `make image` twice gives the same bytes: builds BOARD (default qemu-cubieboard) into out/BOARD and
# again into out/repro/BOARD, prints both sdcard.img sha256s and build times, and fails naming the
# parts that differ. The second build's files are removed when they match (kept for inspection when
# not). make test-reproducible runs it on the lite image (VIRT=0); its first build is the image the
# end-to-end tests use. Needs what `make image` builds first (make agent-arm flash-tool vmd-arm).
# Usage: tests/reproducible.sh [BOARD]     Env: VIRT, AGENT, VMD, FLASH (passed to image/build.sh)
set -euo pipefail
BOARD=${1:-qemu-cubieboard}
cd "$(dirname "$0")/.."
first=out/$BOARD
second=out/repro/$BOARD
# Both builds from the same inputs, even if a commit lands between them (the version and the file
# times come from git otherwise).
VERSION=${VERSION:-$(git describe --always --dirty 2>/dev/null || echo unknown)}
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}
export VERSION SOURCE_DATE_EPOCH

declare -A took sum
for out in "$first" "$second"; do
  echo "==> reproducible: building $BOARD (VIRT=${VIRT:-1}) into $out"
  start=$SECONDS
  OUT=$out bash image/build.sh "$BOARD"
  took[$out]=$((SECONDS - start))
  sum[$out]=$(sha256sum "$out/sdcard.img" | cut -d' ' -f1)
done

echo "==> reproducible: $BOARD sdcard.img, version $VERSION, SOURCE_DATE_EPOCH $SOURCE_DATE_EPOCH"
for out in "$first" "$second"; do
  printf '    %s  %s/sdcard.img  (built in %s s)\n' "${sum[$out]}" "$out" "${took[$out]}"
done

differ=()
for f in sdcard.img sdcard.img.bmap manifest.txt initrd.img zImage \
         staging/boot.vfat staging/rootfs.ext4 staging/data.ext4; do
  [ -e "$first/$f" ] || continue
  where=$(cmp "$first/$f" "$second/$f" 2>&1) || differ+=("$f: $where")
done
if [ ${#differ[@]} -gt 0 ]; then
  echo "reproducible: two builds of $BOARD differ (kept in $second):" >&2
  printf '    %s\n' "${differ[@]}" >&2
  exit 1
fi
rm -rf "$second"
echo "==> reproducible: identical (sdcard.img, its block map, manifest, kernel, initramfs, every partition)"
