#!/bin/bash
# Users and ACL of an instance's broker (image/rootfs/etc/betaas/mosquitto/instance.conf).
#
#   image/instance-broker.sh --out DIR --instance NAME [--prefix betaas] \
#       --gateway ID... [--client NAME]... [--homeassistant] [--device NAME=FILTER]...
#
# Writes
#   DIR/boot/mosquitto/passwd   mosquitto_passwd hashes of every user
#   DIR/boot/mosquitto/acl      what each user may publish and read
#   DIR/passwords/USER          each user's password, one line, 0600: a gateway's [mqtt]
#                               password_file (with username = its gateway_id)
# Copy DIR/boot/* to betaas/ on the boot partition of the gateway that runs the broker
# (mcopy -s -i sdcard.img@@1M DIR/boot/mosquitto ::/betaas/); it then starts mosquitto with the
# image's instance.conf. Passwords already in DIR/passwords are kept, so adding a user later does
# not change the others'; passwd and acl are written anew from the users named.
#
# With P the prefix, I the instance, G a gateway:
#   gateway G      publishes and reads P/G/# (availability, health, things, vm/request and result);
#                  publishes P/I/$instance/G/announce and .../G/msg, reads P/I/$instance/+/+;
#                  publishes Home Assistant discovery homeassistant/+/+/config, reads
#                  homeassistant/status; reads every --device filter (its MQTT things)
#   client C       publishes P/+/vm/request (signed VM requests and releases), reads P/+/vm/result
#   homeassistant  reads P/# and homeassistant/#, publishes P/+/things/+/set and homeassistant/status
#   device D       publishes (and reads) its FILTER, e.g. --device zigbee=zigbee2mqtt/#
#   anonymous      nothing (allow_anonymous false)
# Mosquitto ACLs match whole topic levels only: a gateway may write any discovery config
# (homeassistant/<component>/<gateway>_<thing>/config cannot be narrowed to its own by an ACL).
set -euo pipefail

usage() { sed -n '4,5p' "$0" >&2; exit 2; }
die() { echo "instance-broker: $*" >&2; exit 2; }
level() { # NAME WHAT: a topic level / user name as the agent accepts ids
  [[ $1 =~ ^[A-Za-z0-9_-]{1,64}$ ]] || die "$2 \"$1\": use 1 to 64 of A-Z a-z 0-9 - _"
}

out="" instance="" prefix=betaas ha=0
gateways=() clients=() devices=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=${2:?}; shift 2 ;;
    --instance) instance=${2:?}; shift 2 ;;
    --prefix) prefix=${2:?}; shift 2 ;;
    --gateway) gateways+=("${2:?}"); shift 2 ;;
    --client) clients+=("${2:?}"); shift 2 ;;
    --device) devices+=("${2:?}"); shift 2 ;;
    --homeassistant) ha=1; shift ;;
    *) usage ;;
  esac
done
if [ -z "$out" ] || [ -z "$instance" ] || [ ${#gateways[@]} -eq 0 ]; then usage; fi
command -v mosquitto_passwd >/dev/null || die "mosquitto_passwd not found (Debian: apt-get install mosquitto)"
level "$prefix" prefix
level "$instance" instance
users=()
for g in "${gateways[@]}"; do level "$g" gateway; users+=("$g"); done
for c in "${clients[@]}"; do level "$c" client; users+=("$c"); done
filters=()
for d in "${devices[@]}"; do
  name=${d%%=*} filter=${d#*=}
  if [ "$name" = "$d" ] || [ -z "$filter" ]; then die "--device $d: use NAME=FILTER"; fi
  level "$name" device
  case "$filter" in "$prefix"/*|homeassistant/*|\$*) die "--device $d: $filter is the instance's own tree" ;; esac
  users+=("$name") filters+=("$filter")
done
[ "$ha" = 1 ] && users+=(homeassistant)
dup=$(printf '%s\n' "${users[@]}" | sort | uniq -d | head -1)
[ -z "$dup" ] || die "user \"$dup\" named twice (gateways, clients, devices and homeassistant share one name space)"

umask 077
mkdir -p "$out/boot/mosquitto" "$out/passwords"
passwd="$out/boot/mosquitto/passwd" acl="$out/boot/mosquitto/acl"
: > "$passwd.new"
for u in "${users[@]}"; do
  pw="$out/passwords/$u"
  if [ ! -s "$pw" ]; then
    chars=$(head -c 512 /dev/urandom | tr -dc 'A-Za-z0-9')   # ~124 of 62 symbols
    echo "${chars:0:32}" > "$pw.new"
    mv "$pw.new" "$pw"
  fi
  chmod 0600 "$pw"
  mosquitto_passwd -b "$passwd.new" "$u" "$(head -n1 "$pw")"
done

bus="$prefix/$instance/\$instance"
{
  echo "# The ACL of instance $instance (prefix $prefix), written by image/instance-broker.sh."
  echo "# Anonymous clients: nothing (allow_anonymous false)."
  for g in "${gateways[@]}"; do
    echo
    echo "user $g"
    echo "topic readwrite $prefix/$g/#"
    echo "topic write $bus/$g/announce"
    echo "topic write $bus/$g/msg"
    echo "topic read $bus/+/+"
    echo "topic write homeassistant/+/+/config"
    echo "topic read homeassistant/status"
    for f in "${filters[@]}"; do echo "topic read $f"; done
  done
  for c in "${clients[@]}"; do
    echo
    echo "user $c"
    echo "topic write $prefix/+/vm/request"
    echo "topic read $prefix/+/vm/result"
  done
  if [ "$ha" = 1 ]; then
    echo
    echo "user homeassistant"
    echo "topic read $prefix/#"
    echo "topic read homeassistant/#"
    echo "topic write $prefix/+/things/+/set"
    echo "topic write homeassistant/status"
  fi
  for i in "${!devices[@]}"; do
    echo
    echo "user ${devices[$i]%%=*}"
    echo "topic readwrite ${filters[$i]}"
  done
} > "$acl.new"
chmod 0600 "$passwd.new" "$acl.new"
mv "$passwd.new" "$passwd"
mv "$acl.new" "$acl"
echo "instance-broker: $passwd and $acl for ${#users[@]} users; passwords in $out/passwords/"
