#!/usr/bin/env bash
# Builds the logical-gateway template (paper §V) for one architecture, offline: the steps of the tiny
# template (templates/lib/initramfs.sh: Debian kernel + busybox initramfs from Debian packages) plus
#   /bin/betaas-agent   this repository's agent, static: x86_64 with +crt-static for
#                       x86_64-unknown-linux-gnu, armhf the `make agent-arm` build (AGENT=path to
#                       use another build); checked with `file` to be statically linked
#   virtio_net          the guest's NIC (libvirt user-mode networking, see templates/lgw/init)
# The image holds no identity: betaas-vmd writes each VM's own seed disk (agent.toml + instance keys).
# Output: out/templates/lgw-<arch>/{vmlinuz,initrd.img,disk.qcow2,template.toml,manifest.txt,inputs.sha256}.
# Skipped when its inputs (the agent binary, this recipe, init, shared scripts) did not change since
# the last build: FORCE=1 rebuilds. Usage: templates/lgw/build.sh x86_64|armhf
set -euo pipefail
NAME=lgw
ARCH=${1:?usage: templates/lgw/build.sh x86_64|armhf}
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
. templates/lib/initramfs.sh
TD=${CARGO_TARGET_DIR:-target}
case "$ARCH" in
  x86_64) MODS="button evdev virtio_blk virtio_net" RT=x86_64-unknown-linux-gnu
          FILE_RE='ELF 64-bit LSB .*x86-64.*static' ;;
  armhf)  MODS="evdev virtio_mmio virtio_blk virtio_net" RT=armv7-unknown-linux-gnueabihf
          FILE_RE='ARM, EABI5.*statically linked' ;;
  *) echo "lgw: unknown arch '$ARCH' (x86_64 or armhf)" >&2; exit 2 ;;
esac

if [ -z "${AGENT:-}" ]; then
  step "static betaas-agent for $RT (cargo: nothing to do when it is up to date)"
  # RUSTFLAGS with --target applies to the target only; armhf takes its flags from .cargo/config.toml.
  if [ "$ARCH" = x86_64 ]; then
    RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --locked -q -p betaas-agent --target "$RT"
  else
    cargo build --release --locked -q -p betaas-agent --target "$RT"
  fi
  AGENT=$TD/$RT/release/betaas-agent
fi
file -L "$AGENT" | grep -q "$FILE_RE" \
  || { echo "lgw: $AGENT is not a static $ARCH executable: $(file -L "$AGENT")" >&2; exit 1; }

OUT=out/templates/$NAME-$ARCH
key=$(cat "$AGENT" templates/lgw/build.sh templates/lgw/init templates/lgw/template.toml \
          templates/lib/initramfs.sh templates/lib/power-button.sh templates/lib/descriptor.sh \
          image/debs.sh | sha256sum | cut -d' ' -f1)
if [ -z "${FORCE:-}" ] && [ -f "$OUT/template.toml" ] && [ "$(cat "$OUT/inputs.sha256" 2>/dev/null)" = "$key" ]; then
  step "up to date (inputs unchanged; FORCE=1 rebuilds): $OUT"
  exit 0
fi
rm -f "$OUT/inputs.sha256"

# shellcheck disable=SC2119  # ir_setup takes no arguments from this script: its $1 is optional
ir_setup
ir_tree templates/lgw/init "$MODS" \
  sh mount modprobe cat dd poweroff sleep uname ip tar sed mkdir printf
install -m 0755 "$AGENT" "$IR/bin/betaas-agent"
ir_pack
MANIFEST_EXTRA="betaas-agent $(sha256sum "$AGENT" | cut -d' ' -f1) $(git describe --always --dirty 2>/dev/null || echo unknown)"
ir_finish templates/lgw/template.toml
echo "$key" > "$OUT/inputs.sha256"
