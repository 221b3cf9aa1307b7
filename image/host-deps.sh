#!/usr/bin/env bash
# Installs everything the build, `make qemu` and `make test` need on a Debian 12 x86_64 host.
# Idempotent: a second run only checks. Run as root (or with sudo available).
set -euo pipefail

need_root() { if [ "$(id -u)" -ne 0 ]; then echo "sudo"; fi; }
SUDO=$(need_root)

# The Debian mirror comes from the host's own apt sources; override with MIRROR=...
# shellcheck source=mirror.sh
. "$(dirname "$0")/mirror.sh"

APT_PKGS=(
  make git                                        # the Makefile; git describe/log/ls-files (versions, SOURCE_DATE_EPOCH, shellcheck's file set)
  gcc g++                                         # cc: rustc's linker for every host binary and build script, ring's C; g++: libFuzzer (cargo fuzz)
  gcc-arm-linux-gnueabihf libc6-dev-armhf-cross   # linker and static glibc for the ARM agent
  libc6-dev                                       # static glibc (libc.a) for the x86_64 agent of the lgw template
  mosquitto mosquitto-clients                     # the local broker and its CLI for demos/tests
  mtools dosfstools e2fsprogs fdisk               # sdcard.img: FAT boot partition, ext4 rootfs, partition table
  cpio xz-utils zstd file ca-certificates curl    # initramfs, unpacking .deb members, checks
  kmod                                            # depmod for the image's module tree
  binutils                                        # readelf: the shared objects the image's mosquitto links
  openssl                                         # test certificates for MQTT over TLS
  wget                                            # the agent downloads update bundles with wget (unit test)
  iproute2                                        # network namespaces for the partition test
  procps dmsetup                                  # kill (the tests stop their agents/brokers); dmsetup: the flash tests' failing-card device
  libfaketime                                     # clock-jump test: a running agent's wall clock moved by years
  qemu-user-static                                # runs ARM busybox/agent at build time (applet list, config check)
  bmap-tools                                      # bmaptool: the flash tests check sdcard.img.bmap against it
  rauc squashfs-tools                             # `make bundle`: signed RAUC update bundles (rauc bundle runs mksquashfs)
  u-boot-tools                                    # mkimage: the A/B boot script (boot.scr); fw_printenv-compatible env images
  debian-archive-keyring apt-utils
  shellcheck bc                                   # make lint: the build, image and test scripts (tests/shellcheck.sh times itself with bc)
  # betaas-vmd: links libvirt (libvirt-dev + pkg-config for the virt crate); its tests run a real
  # libvirtd without systemd (never libvirt-daemon-system: it pulls systemd). tests/libvirt/setup.sh configures it.
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev pkg-config
  # Containers (libvirt's LXC driver; tests/support/libvirtd.rs starts libvirtd without the cgroup v2
  # mount it trips over): the app and big-data templates' tests.
  libvirt-daemon-driver-lxc
  openjdk-17-jdk-headless                         # the app test's WAR (javac, jar); its JRE runs the big-data tests' Spark driver
  mmdebstrap                                      # the big-data templates' Debian root filesystem
)

missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

# QEMU >= 10 (bookworm-backports): Debian 12's 7.2 has no I2C controller on -M cubieboard.
# qemu-system-x86 and qemu-utils (qemu-img) for the tiny templates come from the same place (matching versions).
qemu_ok() {
  command -v qemu-system-arm >/dev/null && command -v qemu-system-x86_64 >/dev/null && command -v qemu-img >/dev/null &&
    [ "$(qemu-system-arm --version | sed -n 's/.*version \([0-9]*\)\..*/\1/p' | head -1)" -ge 10 ]
}

updated=0
apt_update() { [ "$updated" = 1 ] || { echo "==> apt-get update"; $SUDO apt-get update -q; updated=1; }; }

if ! qemu_ok; then
  # shellcheck source=/dev/null   # the host's file, not the repository's
  codename=$(. /etc/os-release; echo "${VERSION_CODENAME:-bookworm}")
  list=/etc/apt/sources.list.d/betaas-backports.list
  if [ "$codename" = bookworm ] && [ ! -f "$list" ]; then
    echo "==> adding ${codename}-backports (for QEMU 10) from $MIRROR"
    echo "deb $MIRROR ${codename}-backports main" | $SUDO tee "$list" >/dev/null
  fi
  apt_update
  echo "==> installing qemu-system-arm qemu-system-x86 qemu-utils (backports)"
  if [ "$codename" = bookworm ]; then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends -t bookworm-backports qemu-system-arm qemu-system-x86 qemu-utils
  else
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends qemu-system-arm qemu-system-x86 qemu-utils
  fi
fi

if [ ${#missing[@]} -gt 0 ]; then
  apt_update
  echo "==> installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Rust: rustup and the workspace's toolchain (Cargo.toml's rust-version, with clippy and rustfmt for
# make lint) when a fresh machine has none, then the ARM target for the static agent. rustup-init comes
# straight from static.rust-lang.org (sh.rustup.rs, the usual installer script, is not reachable from
# every build machine), checked against its published sha256. rustup-init adds ~/.cargo/bin to the login
# shell's PATH; this script and the Makefile add it themselves, so the same `make` goes on with cargo.
CARGO_BIN=${CARGO_HOME:-$HOME/.cargo}/bin
case ":$PATH:" in *":$CARGO_BIN:"*) ;; *) PATH=$CARGO_BIN:$PATH ;; esac
export PATH
if ! command -v rustup >/dev/null; then
  if command -v cargo >/dev/null; then
    echo "host-deps: cargo without rustup ($(command -v cargo)): the ARM target needs rustup; remove that cargo or install rustup" >&2
    exit 1
  fi
  rust_version=$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' "$(dirname "$0")/../Cargo.toml" | head -1)
  case "$rust_version" in *.*.*) ;; *.*) rust_version=$rust_version.0 ;; esac
  [ -n "$rust_version" ] || { echo "host-deps: no rust-version in Cargo.toml" >&2; exit 1; }
  rustup_url=https://static.rust-lang.org/rustup/dist/x86_64-unknown-linux-gnu/rustup-init
  tmp=$(mktemp -d)
  echo "==> installing rustup and Rust $rust_version (clippy, rustfmt) from $rustup_url"
  curl -fsSL --retry 3 -o "$tmp/rustup-init" "$rustup_url"
  curl -fsSL --retry 3 -o "$tmp/rustup-init.sha256" "$rustup_url.sha256"
  (cd "$tmp" && echo "$(cut -d' ' -f1 rustup-init.sha256)  rustup-init" | sha256sum -c --quiet) ||
    { echo "host-deps: rustup-init does not match its sha256" >&2; rm -rf "$tmp"; exit 1; }
  chmod +x "$tmp/rustup-init"
  "$tmp/rustup-init" -y --profile minimal --default-toolchain "$rust_version" -c clippy -c rustfmt
  rm -rf "$tmp"
fi
# make lint runs cargo fmt and cargo clippy with the default toolchain.
for c in clippy rustfmt; do
  if ! rustup component list --installed | grep -q "^$c"; then
    echo "==> rustup component add $c"
    rustup component add "$c"
  fi
done
if ! rustup target list --installed | grep -qx armv7-unknown-linux-gnueabihf; then
  echo "==> rustup target add armv7-unknown-linux-gnueabihf"
  rustup target add armv7-unknown-linux-gnueabihf
fi

qemu_ok || { echo "host-deps: qemu-system-arm >= 10 is required" >&2; exit 1; }
echo "==> host dependencies present ($(qemu-system-arm --version | head -1))"

# --- The web UI's browser test (agent/tests/api_ui.rs, issue 14): Debian's headless Chromium
# and its WebDriver server (chromedriver). Kept apart from the list above on purpose.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  apt_update
  echo "==> installing chromium chromium-driver (the web UI test)"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver
fi

# --- The broker test (agent/tests/brokers.rs, issue 18): a 3-node RabbitMQ cluster with the MQTT
# plugin (rabbitmq_mqtt ships in the package), started by the test itself on loopback, each node on
# its own ports with its own epmd, so the package's service (started on install where systemd runs)
# is neither used nor disturbed. Kept apart from the list above on purpose.
if [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
  apt_update
  echo "==> installing rabbitmq-server (the broker test)"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends rabbitmq-server
fi
