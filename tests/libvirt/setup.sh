#!/usr/bin/env bash
# One-time, idempotent setup for running libvirtd without systemd (tests and betaas-vmd):
# the libvirt-qemu user/group the QEMU driver expects, its directories, and /etc/libvirt/qemu.conf
# settings that need neither virtlogd nor file relabelling. Packages come from image/host-deps.sh.
# A second run changes nothing and prints "libvirt: setup ok".
set -euo pipefail
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo

for tool in libvirtd virsh qemu-img; do
  command -v "$tool" >/dev/null || { echo "libvirt setup: $tool missing: run image/host-deps.sh" >&2; exit 1; }
done

getent group libvirt-qemu >/dev/null || $SUDO groupadd --system libvirt-qemu
getent passwd libvirt-qemu >/dev/null ||
  $SUDO useradd --system --gid libvirt-qemu --home-dir /var/lib/libvirt --no-create-home \
    --shell /usr/sbin/nologin libvirt-qemu

$SUDO mkdir -p /var/log/libvirt/qemu /var/lib/libvirt/qemu /var/cache/libvirt/qemu /run/libvirt

# QEMU runs as root with no security driver (test machines and the gateway's own daemon), writes
# the serial console straight to its file (stdio_handler="file": no virtlogd), and libvirt leaves
# file ownership alone (the overlays live in betaas-vmd's state directory).
conf=/etc/libvirt/qemu.conf
$SUDO touch "$conf"
set_key() {
  local key=$1 value=$2
  if grep -qE "^[[:space:]]*${key}[[:space:]]*=" "$conf"; then
    grep -qxF "${key} = ${value}" "$conf" ||
      $SUDO sed -i -E "s|^[[:space:]]*${key}[[:space:]]*=.*|${key} = ${value}|" "$conf"
  else
    echo "${key} = ${value}" | $SUDO tee -a "$conf" >/dev/null
  fi
}
set_key user '"root"'
set_key group '"root"'
set_key dynamic_ownership 0
set_key remember_owner 0
set_key security_driver '"none"'
set_key stdio_handler '"file"'
echo "libvirt: setup ok ($conf)"
