#!/usr/bin/env bash
# The `gateway` template: Arch Linux ARM + OpenJDK 17 (headless) + Apache Karaf + the static ARM
# betaas-agent (make agent-arm), a logical gateway that runs the agent for another instance.
# NEEDS INTERNET; cannot run on CI machines (it stops at once there, before writing anything).
# Downloads: the Arch Linux ARM ARMv7 rootfs and packages linux-armv7, jre17-openjdk-headless (see
# templates/lib/alarm.sh), and Apache Karaf from the Apache archive:
#   https://archive.apache.org/dist/karaf/$KARAF_VERSION/apache-karaf-$KARAF_VERSION.tar.gz (+ .sha512, checked)
# Output: out/templates/gateway/{vmlinuz,initrd.img,disk.qcow2,rootfs.tar.gz,template.toml,manifest.txt}.
# Usage (as root): templates/gateway/build.sh      Env: KARAF_VERSION (default 4.4.6), AGENT.
set -euo pipefail
cd "$(dirname "$0")/../.."
. templates/lib/alarm.sh
KARAF_VERSION=${KARAF_VERSION:-4.4.6}
KARAF_URL=https://archive.apache.org/dist/karaf/$KARAF_VERSION/apache-karaf-$KARAF_VERSION.tar.gz
AGENT=${AGENT:-target/armv7-unknown-linux-gnueabihf/release/betaas-agent}
TPL_EXTRA_SOURCES="Apache archive"
[ -x "$AGENT" ] || { echo "templates/gateway: $AGENT missing: run 'make agent-arm'" >&2; exit 1; }
tpl_start gateway "$KARAF_URL.sha512"
R=$TPL_OUT/rootfs
tpl_rootfs "$R"
tpl_pacman "$R" linux-armv7 jre17-openjdk-headless

tpl_step "Apache Karaf $KARAF_VERSION"
tar=$ALARM_DL/$(basename "$KARAF_URL")
[ -f "$tar" ] || { curl -fL --retry 3 -o "$tar.part" "$KARAF_URL" && mv "$tar.part" "$tar"; }
want=$(curl -fsSL "$KARAF_URL.sha512" | awk '{print $1; exit}')
[ "$(sha512sum "$tar" | cut -d' ' -f1)" = "$want" ] || tpl_die "$tar: sha512 does not match $KARAF_URL.sha512"
echo "karaf $KARAF_VERSION $(sha256sum "$tar" | cut -d' ' -f1) $(basename "$tar")" >> "$TPL_OUT/sources.txt"
mkdir -p "$R/opt"
tar -xzf "$tar" -C "$R/opt"
ln -sfn "apache-karaf-$KARAF_VERSION" "$R/opt/karaf"
cat > "$R/etc/systemd/system/karaf.service" <<'UNIT'
[Unit]
Description=Apache Karaf (BETaaS OSGi runtime)
After=network-online.target
Wants=network-online.target

[Service]
User=karaf
Environment=JAVA_HOME=/usr/lib/jvm/default-runtime
ExecStart=/opt/karaf/bin/karaf server
Restart=on-failure

[Install]
WantedBy=multi-user.target
UNIT

tpl_step "betaas-agent ($(stat -c %s "$AGENT") bytes)"
install -D -m 0755 "$AGENT" "$R/usr/bin/betaas-agent"
echo "agent $(sha256sum "$AGENT" | cut -d' ' -f1) $(git describe --always --dirty 2>/dev/null || echo unknown)" >> "$TPL_OUT/sources.txt"
mkdir -p "$R/etc/betaas" "$R/var/lib/betaas"
cat > "$R/etc/systemd/system/betaas-agent.service" <<'UNIT'
[Unit]
Description=BETaaS agent (logical gateway of another instance)
After=network-online.target
Wants=network-online.target
# Provisioned per instance by the VM manager (or over the Karaf/SSH console).
ConditionPathExists=/etc/betaas/agent.toml

[Service]
ExecStart=/usr/bin/betaas-agent run --config /etc/betaas/agent.toml
Restart=on-failure

[Install]
WantedBy=multi-user.target
UNIT
tpl_common "$R" BETAAS-GATEWAY-BOOTED karaf.service
tpl_chroot "$R" sh -c 'useradd -r -d /opt/karaf -s /usr/bin/nologin karaf &&
  chown -R karaf:karaf /opt/apache-karaf-* && systemctl enable karaf.service betaas-agent.service'
tpl_image "$R" "$(tpl_min_disk_gb)"
tpl_finish "$R"
