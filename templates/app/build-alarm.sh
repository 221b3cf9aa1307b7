#!/usr/bin/env bash
# The `app` template as the paper built it: Arch Linux ARM + OpenJDK 17 (headless) + Tomcat 10
# deploying WAR files, for users with internet (descriptor: alarm.toml). The offline build from
# Debian packages is build.sh (template.toml). NEEDS INTERNET; cannot run on CI machines (it stops at once there, before writing anything).
# Downloads (see templates/lib/alarm.sh): the Arch Linux ARM ARMv7 rootfs from $ALARM_URL and,
# with the guest's pacman from the Arch Linux ARM mirrors: linux-armv7, jre17-openjdk-headless, tomcat10.
# Output: out/templates/app/{vmlinuz,initrd.img,disk.qcow2,rootfs.tar.gz,template.toml,manifest.txt}.
# Usage (as root): templates/app/build-alarm.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
. templates/lib/alarm.sh
export TPL_DESC=templates/app/alarm.toml
tpl_start app
R=$TPL_OUT/rootfs
tpl_rootfs "$R"
tpl_pacman "$R" linux-armv7 jre17-openjdk-headless tomcat10

tpl_step "Tomcat: deploy WARs from /srv/betaas/webapps"
mkdir -p "$R/srv/betaas/webapps"
# Tomcat's Host reads its applications from the drop directory (autoDeploy and unpackWARs are on by
# default): a WAR copied there is deployed within seconds, a removed one undeployed.
sed -i 's|appBase="webapps"|appBase="/srv/betaas/webapps"|' "$R/etc/tomcat10/server.xml"
grep -q 'appBase="/srv/betaas/webapps"' "$R/etc/tomcat10/server.xml" || tpl_die "server.xml: appBase not set"
tpl_common "$R" BETAAS-APP-BOOTED tomcat10.service
# A host directory shared by the VM manager (virtio-9p, tag betaas-webapps) replaces it when present.
echo "betaas-webapps /srv/betaas/webapps 9p trans=virtio,version=9p2000.L,nofail,x-systemd.device-timeout=2s 0 0" \
  >> "$R/etc/fstab"
tpl_chroot "$R" sh -c 'chown -R tomcat10:tomcat10 /srv/betaas/webapps && systemctl enable tomcat10.service'
tpl_image "$R" "$(tpl_min_disk_gb)"
tpl_finish "$R"
