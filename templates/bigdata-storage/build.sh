#!/usr/bin/env bash
# The `bigdata-storage` template: Arch Linux ARM + OpenJDK 11 (headless) + Apache Hadoop 3.3 as a HDFS DataNode.
# NEEDS INTERNET; cannot run on CI machines (it stops at once there, before writing anything).
# Downloads: the Arch Linux ARM ARMv7 rootfs and packages linux-armv7, jre8-openjdk-headless (see
# templates/lib/alarm.sh), and Apache Hadoop's binary tarball from the Apache archive (see templates/lib/hadoop.sh).
# Output: out/templates/bigdata-storage/{vmlinuz,initrd.img,disk.qcow2,rootfs.tar.gz,template.toml,manifest.txt}.
# Usage (as root): templates/bigdata-storage/build.sh     Env: HADOOP_VERSION, HADOOP_URL, HADOOP_TARBALL, HADOOP_SHA512.
set -euo pipefail
cd "$(dirname "$0")/../.."
. templates/lib/alarm.sh
. templates/lib/hadoop.sh
# shellcheck disable=SC2046  # the URLs, one argument each (no spaces in them)
tpl_start bigdata-storage $(tpl_hadoop_urls)
R=$TPL_OUT/rootfs
tpl_rootfs "$R"
tpl_pacman "$R" linux-armv7 jre11-openjdk-headless which
tpl_hadoop "$R" datanode
tpl_common "$R" BETAAS-BIGDATA-STORAGE-BOOTED "$TPL_HADOOP_UNIT"
tpl_hadoop_enable "$R"
tpl_image "$R" "$(tpl_min_disk_gb)"
tpl_finish "$R"
