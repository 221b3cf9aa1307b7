#!/usr/bin/env bash
# Downloads Debian binary packages into dl/debs/ with a private apt state (the host's apt setup is
# untouched) and unpacks them into dl/pkgs/<name>/. Versions are resolved by name at build time.
# Usage: image/debs.sh PKG...      prints one "name version sha256 file" line per package on stdout.
#        image/debs.sh --libs PKG... the same for PKG and, followed through its Depends, every library
#                                    package it needs (lib*, zlib1g: no maintainer-script tools, the
#                                    image has no dpkg); the image copies only the sonames it links.
# Env: MIRROR (default: the host's Debian mirror), SUITE (default: stable; another suite: its own state), DL (default: dl),
#      ARCH (default: armhf). Another ARCH keeps its own state: dl/apt-<arch>/, dl/pkgs-<arch>/<name>/.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=mirror.sh
. "$here/mirror.sh"
SUITE=${SUITE:-stable}
DL=${DL:-dl}
ARCH=${ARCH:-armhf}
sfx=; [ "$ARCH" = armhf ] || sfx=-$ARCH   # armhf keeps dl/apt and dl/pkgs (image/build.sh reads dl/pkgs/<name>)
# Another suite (SUITE=bookworm) keeps its own lists and packages too: dl/apt-<arch>-<suite>/, dl/pkgs-<arch>-<suite>/.
[ "$SUITE" = stable ] || sfx=${sfx:--armhf}-$SUITE
W=$DL/apt$sfx
PK=$DL/pkgs$sfx
mkdir -p "$W/lists/partial" "$W/cache/archives/partial" "$DL/debs" "$PK"
W=$(cd "$W" && pwd)

printf 'deb [arch=%s signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s %s main\n' \
  "$ARCH" "$MIRROR" "$SUITE" > "$W/sources.list"
APT=(-o Dir::Etc::SourceList="$W/sources.list" -o Dir::Etc::SourceParts=/nonexistent
     -o Dir::State::Lists="$W/lists" -o Dir::Cache="$W/cache" -o APT::Architecture="$ARCH"
     -o APT::Architectures="$ARCH" -o Dir::State::status=/dev/null -o Debug::NoLocking=1
     -o Dir::Etc::Preferences=/dev/null -o Dir::Etc::PreferencesParts=/nonexistent)

# Package lists are refreshed at most once a day: a second build is offline-fast.
if [ -z "$(find "$W/lists" -maxdepth 1 -name '*Packages*' -mtime -1 2>/dev/null | head -1)" ]; then
  echo "==> apt update ($SUITE, $ARCH) from $MIRROR" >&2
  apt-get "${APT[@]}" -q update >&2
fi

deb_file() { # NAME VERSION: the downloaded .deb (for ARCH or all), or nothing
  local f
  for f in "$DL/debs/${1}_${2//:/%3a}_"{"$ARCH",all}.deb; do
    if [ -f "$f" ]; then echo "$f"; return; fi
  done
}

resolve() { # a metapackage (linux-image-armmp) resolves to its first linux-image-* dependency
  local name=$1 dep
  dep=$(apt-cache "${APT[@]}" depends "$name" 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}')
  echo "${dep:-$name}"
}

# The same request again, with the same package lists, every package still downloaded and unpacked:
# the previous answer.
answer=$W/answer-$(echo "$ARCH $*" | sha256sum | cut -c1-16)
newest=$(find "$W/lists" -maxdepth 1 -name '*Packages*' -printf '%T@ %p\n' | sort -n | tail -1 | cut -d' ' -f2-)
if [ -f "$answer" ] && [ "$answer" -nt "$newest" ]; then
  ok=1
  while read -r name ver _ deb; do
    if [ ! -f "$DL/debs/$deb" ] || [ "$(cat "$PK/$name/.version" 2>/dev/null)" != "$ver" ]; then ok=0; break; fi
  done < "$answer"
  if [ $ok = 1 ]; then cat "$answer"; exit 0; fi
fi

answer_all() {
  if [ "${1:-}" = --libs ]; then
    shift
    # Breadth first, one apt-cache call per layer (one per package took a second each).
    local todo=("$@") seen=" " layer p d
    set --
    while [ ${#todo[@]} -gt 0 ]; do
      layer=()
      for p in "${todo[@]}"; do
        case "$seen" in *" $p "*) continue ;; esac
        seen="$seen$p " && layer+=("$p") && set -- "$@" "$p"
      done
      todo=()
      [ ${#layer[@]} -gt 0 ] || break
      while read -r d; do
        case "$d" in lib*|zlib1g) todo+=("${d%%:*}") ;; esac
      done < <(apt-cache "${APT[@]}" depends --no-recommends --no-suggests "${layer[@]}" 2>/dev/null \
                 | awk '/^ *(Pre)?Depends: [^<]/ {print $2}')
    done
  fi

  local names=() want name ver deb dest i
  for want in "$@"; do
    case "$want" in linux-image-*) names+=("$(resolve "$want")") ;; *) names+=("$want") ;; esac
  done
  # Every candidate version in one call: the first stanza of each package is the candidate.
  local -A version=()
  while read -r name ver; do version[$name]=$ver; done < <(
    apt-cache "${APT[@]}" show "${names[@]}" 2>/dev/null \
      | awk '/^Package:/{n=$2} /^Version:/{ if (!(n in seen)) { seen[n]=1; print n, $2 } }')
  for i in "${!names[@]}"; do
    want=${*:i+1:1} name=${names[$i]}
    ver=${version[$name]:-}
    [ -n "$ver" ] || { echo "debs: package $name not found in $SUITE/$ARCH" >&2; exit 1; }
    deb=$(deb_file "$name" "$ver")
    if [ -z "$deb" ]; then
      echo "==> downloading $name $ver" >&2
      (cd "$DL/debs" && apt-get "${APT[@]}" -q download "$name=$ver" >&2)
      deb=$(deb_file "$name" "$ver")
      [ -n "$deb" ] || { echo "debs: $name $ver ($ARCH) not in $DL/debs after download" >&2; exit 1; }
    fi
    dest=$PK/$name
    if [ ! -f "$dest/.version" ] || [ "$(cat "$dest/.version")" != "$ver" ]; then
      rm -rf "$dest" && mkdir -p "$dest"
      dpkg-deb -x "$deb" "$dest"
      echo "$ver" > "$dest/.version"
    fi
    [ "$want" = "$name" ] || ln -sfn "$name" "$PK/$want"
    echo "$name $ver $(sha256sum "$deb" | cut -d' ' -f1) $(basename "$deb")"
  done
}
answer_all "$@" > "$answer.tmp"
mv "$answer.tmp" "$answer"
cat "$answer"
