# shellcheck shell=bash
# Sourced by templates/bigdata-{storage,compute}/build.sh: Apache Hadoop on Arch Linux ARM (the paper's
# recipe with internet; the offline big-data templates are templates/bigdata/, Spark standalone).
#
# The paper used Cloudera's CDH5 (Hadoop 2.6), whose archive has needed a vendor login since 2021 and
# never had ARM packages. This takes an Apache Hadoop release instead, the binary tarball (Java; its
# x86_64 native libraries are left out and Hadoop falls back to its Java code):
#   $HADOOP_VERSION (3.3.6), from $HADOOP_URL (default https://archive.apache.org/dist/hadoop/common/
#   hadoop-$HADOOP_VERSION/hadoop-$HADOOP_VERSION.tar.gz), its .sha512 from the same place checked;
#   or HADOOP_TARBALL=<a copy> (HADOOP_SHA512, when set, is checked). The sha256 goes to manifest.txt.
# Hadoop 3.3 runs on Java 8 or 11: jre11-openjdk-headless from the Arch Linux ARM mirrors.

HADOOP_VERSION=${HADOOP_VERSION:-3.3.6}
HADOOP_URL=${HADOOP_URL:-https://archive.apache.org/dist/hadoop/common/hadoop-$HADOOP_VERSION/hadoop-$HADOOP_VERSION.tar.gz}
# shellcheck disable=SC2034  # read by lib/alarm.sh, sourced after this file
TPL_EXTRA_SOURCES="the Apache archive"

# The URLs tpl_start must reach: the Apache archive unless a local tarball is given.
tpl_hadoop_urls() { [ -n "${HADOOP_TARBALL:-}" ] || echo "$HADOOP_URL"; }

# tpl_hadoop ROOT ROLE: installs Hadoop in ROOT/opt/hadoop and one service for ROLE (datanode: HDFS
# DataNode; nodemanager: YARN NodeManager). Its configuration is written at every boot from
# /etc/betaas/hadoop.env (NAMENODE=host[:port], RESOURCEMANAGER=host), provisioned per instance.
tpl_hadoop() {
  local root=$1 role=$2 tar
  if [ -n "${HADOOP_TARBALL:-}" ]; then
    tar=$HADOOP_TARBALL
  else
    tar=$ALARM_DL/$(basename "$HADOOP_URL")
    if [ ! -f "$tar" ]; then
      tpl_step "downloading $HADOOP_URL"
      curl -fL --retry 3 -o "$tar.part" "$HADOOP_URL" || tpl_die "cannot download $HADOOP_URL"
      curl -fL --retry 3 -o "$tar.sha512" "$HADOOP_URL.sha512" || tpl_die "cannot download $HADOOP_URL.sha512"
      mv "$tar.part" "$tar"
    fi
    # The archive's .sha512 is "SHA512 (file) = hex" or "hex  file".
    HADOOP_SHA512=${HADOOP_SHA512:-$(grep -oE '[0-9a-fA-F]{128}' "$tar.sha512" | head -1)}
  fi
  [ -z "${HADOOP_SHA512:-}" ] || [ "$(sha512sum "$tar" | cut -d' ' -f1)" = "$(echo "$HADOOP_SHA512" | tr A-F a-f)" ] \
    || tpl_die "$tar: sha512 does not match"
  local sum
  sum=$(sha256sum "$tar" | cut -d' ' -f1)
  echo "apache-hadoop $sum $(basename "$tar")" >> "$TPL_OUT/sources.txt"

  tpl_step "Apache Hadoop $HADOOP_VERSION for the $role role"
  mkdir -p "$root/opt"
  tar -xzf "$tar" -C "$root/opt"
  local top
  top=$(tar -tzf "$tar" | awk -F/ 'NR == 1 { print $1 }')   # reads it all: no SIGPIPE under pipefail
  ln -sfn "$top" "$root/opt/hadoop"
  rm -rf "$root/opt/$top/src" "$root/opt/$top/lib/native"   # sources; x86_64 native libraries
  mkdir -p "$root/etc/betaas" "$root/var/lib/hadoop"
  cat > "$root/etc/betaas/hadoop.env" <<'ENV'
# Provisioned per instance by the VM manager: where this node's masters are.
NAMENODE=namenode:8020
RESOURCEMANAGER=resourcemanager
ENV
  cat > "$root/usr/bin/betaas-hadoop-config" <<'SH'
#!/bin/sh
# Writes /etc/hadoop/*-site.xml from /etc/betaas/hadoop.env (run before the Hadoop service starts).
set -eu
. /etc/betaas/hadoop.env
mem_mb=$(awk '/^MemTotal:/ { print int($2 / 1024) }' /proc/meminfo)
mkdir -p /etc/hadoop
cp -n /opt/hadoop/etc/hadoop/* /etc/hadoop/ 2>/dev/null || true
prop() { printf '  <property><name>%s</name><value>%s</value></property>\n' "$1" "$2"; }
site() { echo '<?xml version="1.0"?>'; echo '<configuration>'; cat; echo '</configuration>'; }
{ prop fs.defaultFS "hdfs://$NAMENODE"; prop hadoop.tmp.dir /var/lib/hadoop/tmp; } | site > /etc/hadoop/core-site.xml
{ prop dfs.datanode.data.dir /var/lib/hadoop/dfs/data; } | site > /etc/hadoop/hdfs-site.xml
{ prop yarn.resourcemanager.hostname "$RESOURCEMANAGER"
  prop yarn.nodemanager.aux-services mapreduce_shuffle
  prop yarn.nodemanager.resource.memory-mb $((mem_mb * 3 / 4))
  prop yarn.nodemanager.resource.cpu-vcores "$(nproc)"
  prop yarn.nodemanager.local-dirs /var/lib/hadoop/yarn/local; } | site > /etc/hadoop/yarn-site.xml
SH
  chmod 0755 "$root/usr/bin/betaas-hadoop-config"
  local unit desc cmd
  case "$role" in
    datanode)    unit=hadoop-hdfs-datanode desc="HDFS DataNode" cmd="/opt/hadoop/bin/hdfs datanode" ;;
    nodemanager) unit=hadoop-yarn-nodemanager desc="YARN NodeManager" cmd="/opt/hadoop/bin/yarn nodemanager" ;;
    *) tpl_die "unknown Hadoop role $role" ;;
  esac
  cat > "$root/etc/systemd/system/$unit.service" <<UNIT
[Unit]
Description=$desc (Apache Hadoop)
After=network-online.target
Wants=network-online.target

[Service]
User=hadoop
Environment=JAVA_HOME=/usr/lib/jvm/java-11-openjdk HADOOP_CONF_DIR=/etc/hadoop HADOOP_LOG_DIR=/var/log/hadoop
ExecStartPre=+/usr/bin/betaas-hadoop-config
ExecStart=$cmd
Restart=on-failure

[Install]
WantedBy=multi-user.target
UNIT
  TPL_HADOOP_UNIT=$unit.service
}

# tpl_hadoop_enable ROOT: the hadoop user owns the data and log directories; the service is enabled.
tpl_hadoop_enable() {
  local root=$1
  tpl_chroot "$root" sh -c "useradd -r -d /var/lib/hadoop -s /usr/bin/nologin hadoop &&
    mkdir -p /var/log/hadoop && chown -R hadoop:hadoop /var/lib/hadoop /var/log/hadoop &&
    systemctl enable $TPL_HADOOP_UNIT"
}
