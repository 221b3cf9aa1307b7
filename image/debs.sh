#!/usr/bin/env bash
# Downloads Debian armhf binary packages into dl/debs/ with a private apt state (the host's apt setup is
# untouched) and unpacks them into dl/pkgs/<name>/. Versions are resolved by name at build time.
# Usage: image/debs.sh PKG...      prints one "name version sha256 file" line per package on stdout.
# Env: MIRROR (default: the host's Debian mirror), SUITE (default: stable), DL (default: dl).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/mirror.sh"
SUITE=${SUITE:-stable}
DL=${DL:-dl}
W=$DL/apt
mkdir -p "$W/lists/partial" "$W/cache/archives/partial" "$DL/debs" "$DL/pkgs"
W=$(cd "$W" && pwd)

printf 'deb [arch=armhf signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s %s main\n' \
  "$MIRROR" "$SUITE" > "$W/sources.list"
APT=(-o Dir::Etc::SourceList="$W/sources.list" -o Dir::Etc::SourceParts=/nonexistent
     -o Dir::State::Lists="$W/lists" -o Dir::Cache="$W/cache" -o APT::Architecture=armhf
     -o APT::Architectures=armhf -o Dir::State::status=/dev/null -o Debug::NoLocking=1
     -o Dir::Etc::Preferences=/dev/null -o Dir::Etc::PreferencesParts=/nonexistent)

# Package lists are refreshed at most once a day: a second build is offline-fast.
if [ -z "$(find "$W/lists" -maxdepth 1 -name '*Packages*' -mtime -1 2>/dev/null | head -1)" ]; then
  echo "==> apt update ($SUITE, armhf) from $MIRROR" >&2
  apt-get "${APT[@]}" -q update >&2
fi

resolve() { # a metapackage (linux-image-armmp) resolves to its first linux-image-* dependency
  local name=$1 dep
  dep=$(apt-cache "${APT[@]}" depends "$name" 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}')
  echo "${dep:-$name}"
}

for want in "$@"; do
  name=$(resolve "$want")
  ver=$(apt-cache "${APT[@]}" show "$name" | awk '/^Version:/{print $2; exit}')
  [ -n "$ver" ] || { echo "debs: package $name not found in $SUITE/armhf" >&2; exit 1; }
  deb=$(ls "$DL/debs/${name}_${ver//:/%3a}_"*.deb 2>/dev/null | head -1 || true)
  if [ -z "$deb" ]; then
    echo "==> downloading $name $ver" >&2
    (cd "$DL/debs" && apt-get "${APT[@]}" -q download "$name=$ver" >&2)
    deb=$(ls "$DL/debs/${name}_${ver//:/%3a}_"*.deb | head -1)
  fi
  dest=$DL/pkgs/$name
  if [ ! -f "$dest/.version" ] || [ "$(cat "$dest/.version")" != "$ver" ]; then
    rm -rf "$dest" && mkdir -p "$dest"
    dpkg-deb -x "$deb" "$dest"
    echo "$ver" > "$dest/.version"
  fi
  [ "$want" = "$name" ] || ln -sfn "$name" "$DL/pkgs/$want"
  echo "$name $ver $(sha256sum "$deb" | cut -d' ' -f1) $(basename "$deb")"
done
