# shellcheck shell=bash
# Sourced: sets MIRROR to the host's Debian mirror (first deb822 URIs: line or first sources.list deb line),
# unless MIRROR is already set. No mirror host name lives in this repository.
if [ -z "${MIRROR:-}" ]; then
  MIRROR=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$MIRROR" ] || MIRROR=$(awk '$1=="deb" && $0 ~ /debian/ && $0 !~ /security/ {for(i=2;i<=NF;i++) if ($i ~ /^(http|https|file):/) {print $i; exit}}' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$MIRROR" ] || { echo "no Debian mirror found in /etc/apt sources; set MIRROR=" >&2; exit 1; }
fi
export MIRROR
