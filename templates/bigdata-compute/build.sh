#!/usr/bin/env bash
# The `bigdata-compute` template: Arch Linux ARM + OpenJDK 8 (headless) + Hadoop from CDH5 as a YARN NodeManager.
# NEEDS INTERNET; cannot run on CI machines (it stops at once there, before writing anything).
# Downloads: the Arch Linux ARM ARMv7 rootfs and packages linux-armv7, jre8-openjdk-headless (see
# templates/lib/alarm.sh), and CDH5's Hadoop tarball from Cloudera's archive (see templates/lib/cdh5.sh:
# credentials or a local copy needed since 2021).
# Output: out/templates/bigdata-compute/{vmlinuz,initrd.img,disk.qcow2,rootfs.tar.gz,template.toml,manifest.txt}.
# Usage (as root): templates/bigdata-compute/build.sh     Env: CDH5_URL, CDH5_TARBALL, CDH5_SHA256, CLOUDERA_USER/_PASSWORD.
set -euo pipefail
cd "$(dirname "$0")/../.."
. templates/lib/alarm.sh
. templates/lib/cdh5.sh
tpl_start bigdata-compute $(tpl_cdh5_urls)
R=$TPL_OUT/rootfs
tpl_rootfs "$R"
tpl_pacman "$R" linux-armv7 jre8-openjdk-headless which
tpl_cdh5 "$R" nodemanager
tpl_common "$R" BETAAS-BIGDATA-COMPUTE-BOOTED "$TPL_HADOOP_UNIT"
tpl_cdh5_enable "$R"
tpl_image "$R" "$(tpl_min_disk_gb)"
tpl_finish "$R"
